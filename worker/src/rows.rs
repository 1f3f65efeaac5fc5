//! A stream record as a row of its table, in ClickHouse's JSONEachRow: the record's own bytes for most values,
//! rewritten only where ClickHouse (18.16 and later alike) reads another form: date-times as `YYYY-MM-DD hh:mm:ss`
//! in UTC, booleans as 0/1, decimals unquoted, records as tuples. A value ClickHouse would store as something else
//! without an error (a date out of its range or not in the calendar, a decimal it reads only in part) is refused
//! here, so that its record goes to the dead letter queue rather than into the table wrong.

use crate::schema::{check_date, check_decimal, compile, Ty};
use millrace_proto::v1::Field;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::fmt;
use std::io::Write;

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
                let ty = f.r#type.as_ref().map(compile).unwrap_or(Ty::Str);
                let ty = if f.nullable { Ty::Optional(Box::new(ty)) } else { ty };
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
                    Some(raw) => convert(&c.ty, raw, out).map_err(|e| format!("{}: {e}", c.name))?,
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

/// Takes the raw values of the wanted top-level fields, skipping the rest unparsed.
struct Pick<'i, 'v, 'de> {
    index: &'i HashMap<String, usize>,
    values: &'v mut Vec<Option<&'de RawValue>>,
}

impl<'de> Visitor<'de> for Pick<'_, '_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match self.index.get(k.as_ref()) {
                Some(&i) => self.values[i] = Some(map.next_value()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Whether a value of this type can be copied as written.
fn verbatim(ty: &Ty) -> bool {
    match ty {
        Ty::DateTime | Ty::Date | Ty::Bool | Ty::Decimal { .. } | Ty::Record(_) => false,
        Ty::Array(inner) | Ty::Optional(inner) => verbatim(inner),
        _ => true,
    }
}

fn convert(ty: &Ty, raw: &RawValue, out: &mut Vec<u8>) -> Result<(), String> {
    let text = raw.get();
    if verbatim(ty) {
        out.extend_from_slice(text.as_bytes());
        return Ok(());
    }
    match ty {
        Ty::Optional(_) | Ty::Array(_) | Ty::Record(_) | Ty::DateTime | Ty::Date | Ty::Bool | Ty::Decimal { .. } if text == "null" => {
            if matches!(ty, Ty::Optional(_)) {
                out.extend_from_slice(b"null");
                Ok(())
            } else {
                Err("null where a value is required".into())
            }
        }
        Ty::Optional(inner) => convert(inner, raw, out),
        Ty::DateTime => {
            let secs = datetime_seconds(raw)?;
            let t = chrono::DateTime::from_timestamp(secs, 0).ok_or("out of range")?;
            write!(out, "\"{}\"", t.format("%Y-%m-%d %H:%M:%S")).expect("writing to a Vec");
            Ok(())
        }
        Ty::Bool => {
            let bit = match text {
                "true" | "1" => b'1',
                "false" | "0" => b'0',
                _ => return Err(format!("expected true or false, got {text}")),
            };
            out.push(bit);
            Ok(())
        }
        Ty::Date => {
            let day = serde_json::from_str::<&str>(text).map_err(|_| format!("expected a YYYY-MM-DD date, got {text}"))?;
            if !check_date(day) {
                return Err(format!("{day:?} is not a YYYY-MM-DD date"));
            }
            // ClickHouse 18.16 stores any other day as 0000-00-00, without an error. Valid dates of this form
            // order as their text.
            if !(DATE_MIN..=DATE_MAX).contains(&day) {
                return Err(format!("{day} is outside what a ClickHouse Date holds ({DATE_MIN} to {DATE_MAX})"));
            }
            out.extend_from_slice(text.as_bytes());
            Ok(())
        }
        Ty::Decimal { precision, scale } => {
            // ClickHouse reads `1.5.5` as 1.55 and `1e3` as 1000: only plain decimals within the type go through.
            let digits = serde_json::from_str::<&str>(text).unwrap_or(text);
            check_decimal(digits, *precision, *scale)?;
            out.extend_from_slice(digits.as_bytes());
            Ok(())
        }
        Ty::Array(inner) => {
            let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|_| format!("expected an array, got {text}"))?;
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                convert(inner, item, out)?;
            }
            out.push(b']');
            Ok(())
        }
        Ty::Record(schema) => {
            let index: HashMap<String, usize> = schema.fields.iter().enumerate().map(|(i, f)| (f.name.clone(), i)).collect();
            let mut values = vec![None; schema.fields.len()];
            let mut de = serde_json::Deserializer::from_str(text);
            de.deserialize_map(Pick { index: &index, values: &mut values }).map_err(|_| format!("expected an object, got {text}"))?;
            out.push(b'[');
            for (i, (f, v)) in schema.fields.iter().zip(values).enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                match v {
                    Some(v) => convert(&f.ty, v, out).map_err(|e| format!("{}: {e}", f.name))?,
                    None if !f.required => out.extend_from_slice(b"null"),
                    None => return Err(format!("{}: missing", f.name)),
                }
            }
            out.push(b']');
            Ok(())
        }
        _ => {
            out.extend_from_slice(text.as_bytes());
            Ok(())
        }
    }
}

/// The days a ClickHouse `Date` holds (18.16's: two bytes of days since 1970, read and written only up to 2105).
const DATE_MIN: &str = "1970-01-01";
const DATE_MAX: &str = "2105-12-31";

/// Seconds since the epoch of a date-time given as RFC 3339, as a date and time without offset (taken as UTC, with
/// `T` or a space, any fraction), or as a number of seconds.
pub fn datetime_seconds(raw: &RawValue) -> Result<i64, String> {
    let text = raw.get();
    let secs = if let Ok(s) = serde_json::from_str::<&str>(text) {
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
            t.timestamp()
        } else {
            let naive = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f"))
                .map_err(|_| format!("{s:?} is not a date-time"))?;
            naive.and_utc().timestamp()
        }
    } else {
        text.parse::<f64>().map_err(|_| format!("expected a date-time, got {text}"))? as i64
    };
    // ClickHouse's DateTime holds 1970-01-01 to 2105-12-31; outside it a value would wrap silently.
    if !(0..=4_291_747_199).contains(&secs) {
        return Err(format!("{text} is outside what a ClickHouse DateTime holds (1970 to 2105)"));
    }
    Ok(secs)
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
