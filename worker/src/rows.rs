//! A stream record as a row of its table, in ClickHouse's JSONEachRow: the record's own bytes for most values,
//! rewritten only where ClickHouse (18.16 and later alike) reads another form: date-times as `YYYY-MM-DD hh:mm:ss`
//! in UTC, booleans as 0/1, decimals unquoted, records as tuples. A value ClickHouse would store as something else
//! without an error (a date out of its range or not in the calendar, a decimal it reads only in part) is refused
//! here, so that its record goes to the dead letter queue rather than into the table wrong. Each type's conversion
//! lives with its family in `types`.

use crate::types::{of_field, write_value, Pick, Ty};
use millrace_proto::v1::Field;
use serde::de::Deserializer;
use serde_json::value::RawValue;
use std::collections::HashMap;

pub use crate::types::datetime_seconds;

struct Column {
    /// `"name":`, ready to write.
    prefix: Vec<u8>,
    name: String,
    ty: Ty,
}

pub struct RowWriter {
    columns: Vec<Column>,
    index: HashMap<String, usize>,
}

impl RowWriter {
    pub fn new(columns: &[Field]) -> Self {
        let columns: Vec<Column> = columns
            .iter()
            .map(|f| {
                let ty = of_field(f);
                Column { prefix: format!("{}:", serde_json::Value::from(f.name.as_str())).into_bytes(), name: f.name.clone(), ty }
            })
            .collect();
        let index = columns.iter().enumerate().map(|(i, c)| (c.name.clone(), i)).collect();
        Self { columns, index }
    }

    pub fn column_names(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().map(|c| c.name.as_str())
    }

    /// Appends the record as one line of JSONEachRow; on an error nothing is appended.
    pub fn write(&self, record: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        let mut values: Vec<Option<&RawValue>> = vec![None; self.columns.len()];
        let mut de = serde_json::Deserializer::from_slice(record);
        de.deserialize_map(Pick { index: &self.index, values: &mut values })
            .and_then(|()| de.end())
            .map_err(|e| format!("the record is not a JSON object: {e}"))?;
        let start = out.len();
        let result = (|| {
            out.push(b'{');
            for (i, (c, v)) in self.columns.iter().zip(&values).enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&c.prefix);
                match v {
                    Some(raw) => write_value(&c.ty, raw, out).map_err(|e| format!("{}: {e}", c.name))?,
                    None if matches!(c.ty, Ty::Optional(_)) => out.extend_from_slice(b"null"),
                    None => return Err(format!("{}: missing (the column has no default here)", c.name)),
                }
            }
            out.extend_from_slice(b"}\n");
            Ok(())
        })();
        if result.is_err() {
            out.truncate(start);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_proto::v1::field_type::Kind;
    use millrace_proto::v1::{DecimalType, FieldType, ScalarType};

    fn f(name: &str, kind: Kind, nullable: bool) -> Field {
        Field { name: name.into(), r#type: Some(FieldType { kind: Some(kind) }), nullable, key: false }
    }

    #[test]
    fn records_become_rows_clickhouse_reads() {
        let s = |t: ScalarType| Kind::Scalar(t as i32);
        let w = RowWriter::new(&[
            f("id", s(ScalarType::String), false),
            f("at", s(ScalarType::Datetime), false),
            f("ok", s(ScalarType::Bool), false),
            f("amount", Kind::Decimal(DecimalType { precision: 10, scale: 2 }), false),
            f("tags", Kind::Array(Box::new(FieldType { kind: Some(s(ScalarType::String)) })), false),
            f("note", s(ScalarType::String), true),
        ]);
        let mut out = Vec::new();
        w.write(br#"{"extra":{"x":[1]},"id":"a\"b","at":"2026-11-25T11:00:00+01:00","ok":true,"amount":"12.50","tags":["x"]}"#, &mut out).unwrap();
        w.write(br#"{"id":"c","at":"2026-11-25T10:00:00.123456","ok":false,"amount":1.5,"tags":[],"note":"n"}"#, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "{\"id\":\"a\\\"b\",\"at\":\"2026-11-25 10:00:00\",\"ok\":1,\"amount\":12.50,\"tags\":[\"x\"],\"note\":null}\n\
             {\"id\":\"c\",\"at\":\"2026-11-25 10:00:00\",\"ok\":0,\"amount\":1.5,\"tags\":[],\"note\":\"n\"}\n"
        );
        let before = out.len();
        assert!(w.write(br#"{"id":"d","at":"yesterday","ok":true,"amount":1,"tags":[]}"#, &mut out).unwrap_err().starts_with("at:"));
        assert!(w.write(br#"{"id":"d","at":"1960-01-01T00:00:00Z","ok":true,"amount":1,"tags":[]}"#, &mut out).is_err());
        assert!(w.write(br#"{"id":"d","ok":true,"amount":1,"tags":[]}"#, &mut out).unwrap_err().contains("missing"));
        assert!(w.write(b"not json", &mut out).is_err());
        assert_eq!(out.len(), before, "a refused record writes nothing");
    }

    #[test]
    fn dates_out_of_range_and_malformed_decimals_are_refused() {
        let s = |t: ScalarType| Kind::Scalar(t as i32);
        let w = RowWriter::new(&[
            f("day", s(ScalarType::Date), false),
            f("amount", Kind::Decimal(DecimalType { precision: 10, scale: 2 }), false),
            f("days", Kind::Array(Box::new(FieldType { kind: Some(s(ScalarType::Date)) })), false),
        ]);
        let row = |day: &str, amount: &str| format!(r#"{{"day":{day},"amount":{amount},"days":[{day}]}}"#);
        let mut out = Vec::new();
        for (day, amount) in [(r#""1970-01-01""#, "7"), (r#""2105-12-31""#, r#""-0.5""#), (r#""2026-11-25""#, r#""12345678.99""#)] {
            w.write(row(day, amount).as_bytes(), &mut out).unwrap_or_else(|e| panic!("{day} {amount}: {e}"));
        }
        assert_eq!(String::from_utf8(out.clone()).unwrap().lines().nth(1), Some(r#"{"day":"2105-12-31","amount":-0.5,"days":["2105-12-31"]}"#));
        for (day, amount, field) in [
            (r#""1969-12-31""#, "1", "day"),
            (r#""2106-01-01""#, "1", "day"),
            (r#""2026-02-30""#, "1", "day"),
            (r#""2026-1-1""#, "1", "day"),
            ("20261125", "1", "day"),
            (r#""2026-11-25""#, r#""1.5.5""#, "amount"),
            (r#""2026-11-25""#, "1e3", "amount"),
            (r#""2026-11-25""#, r#""1.555""#, "amount"),
            (r#""2026-11-25""#, r#""123456789.5""#, "amount"),
            (r#""2026-11-25""#, r#""""#, "amount"),
        ] {
            let e = w.write(row(day, amount).as_bytes(), &mut out).expect_err(&format!("{day} {amount} refused"));
            assert!(e.starts_with(&format!("{field}:")), "{e}");
        }
    }
}
