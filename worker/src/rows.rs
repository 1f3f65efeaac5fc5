//! A stream record as a row of its table, in ClickHouse's JSONEachRow: the record's own bytes for most values,
//! rewritten only where ClickHouse (18.16 and later alike) reads another form: date-times as `YYYY-MM-DD hh:mm:ss`
//! in UTC, booleans as 0/1, decimals unquoted, records as tuples, a top-level array of records as its Nested
//! column's arrays (a nullable one's null as empty arrays). A DEFAULT column a record leaves out, or sets null where
//! it is not nullable, is left out of the row (inserted with `DEFAULTS_SETTING`);
//! MATERIALIZED and ALIAS columns never appear. A value ClickHouse would store as something else
//! without an error (a date out of its range or not in the calendar, a decimal it reads only in part) is refused
//! here, so that its record goes to the dead letter queue rather than into the table wrong. Each type's conversion
//! lives with its family in `types`.

use crate::schema::Schema;
use crate::types::{left_out, of_field, write_value, Array, Optional, Pick, Ty};
use millrace_proto::v1::field_type::Kind;
use millrace_proto::v1::Field;
use serde::de::Deserializer;
use serde_json::value::RawValue;
use std::collections::HashMap;

pub use crate::types::datetime_seconds;

/// The ClickHouse setting a table with DEFAULT columns is inserted with, so that a row leaving one out gets its
/// DEFAULT expression (rather than the type's zero; the control plane refuses such tables before 19.12).
pub const DEFAULTS_SETTING: (&str, &str) = ("input_format_defaults_for_omitted_fields", "1");

/// How a field goes into a row.
enum Shape {
    /// One column `"name": value`.
    Plain,
    /// A Nested column (a top-level array of records): one array per field of the records, `"name.sub": [...]`
    /// (what ClickHouse 18.16 and, flattening Nested, current servers read), with those keys ready to write.
    /// `single`: an optional record (a record: one element), as the control plane makes it. `optional`: null or
    /// absent is no element (an optional record, or a nullable list of records, whose Nested column has no null).
    Nested { record: Schema, index: HashMap<String, usize>, prefixes: Vec<Vec<u8>>, names: Vec<String>, single: bool, optional: bool },
}

/// The records of a field the control plane makes a Nested column (its `nested_fields`: a list of records, nullable
/// or not; a nullable or optional record), and whether it is a single record.
fn nested_record<'t>(f: &Field, ty: &'t Ty) -> Option<(&'t Schema, bool)> {
    let declared = f.r#type.as_ref().and_then(|t| t.kind.as_ref());
    let element = |t: &'t Ty| match t {
        Ty::Record(r) => Some(r),
        _ => None,
    };
    match (declared, ty) {
        (Some(Kind::Array(_)), Ty::Array(Array(inner))) => Some((element(inner)?, false)),
        (Some(Kind::Array(_)), Ty::Optional(Optional(list))) => match &**list {
            Ty::Array(Array(inner)) => Some((element(inner)?, false)),
            _ => None,
        },
        (Some(Kind::Record(_) | Kind::Optional(_)), Ty::Optional(Optional(inner))) => Some((element(inner)?, true)),
        _ => None,
    }
}

struct Column {
    /// `"name":`, ready to write.
    prefix: Vec<u8>,
    name: String,
    ty: Ty,
    shape: Shape,
    /// It has a DEFAULT expression: a record leaving it out leaves it out of the row.
    default: bool,
}

/// Turns a stream's records into rows of its table. MATERIALIZED and ALIAS columns are never written (ClickHouse
/// refuses them in an insert), nor in the insert's column list.
pub struct RowWriter {
    columns: Vec<Column>,
    index: HashMap<String, usize>,
}

fn key_prefix(name: &str) -> Vec<u8> {
    format!("{}:", serde_json::Value::from(name)).into_bytes()
}

impl RowWriter {
    pub fn new(columns: &[Field]) -> Self {
        let columns: Vec<Column> = columns
            .iter()
            .filter(|f| f.materialized.is_empty() && f.alias.is_empty())
            .map(|f| {
                let ty = of_field(f);
                let shape = match nested_record(f, &ty) {
                    Some((record, single)) => {
                        let names: Vec<String> = record.fields.iter().map(|s| format!("{}.{}", f.name, s.name)).collect();
                        Shape::Nested {
                            index: record.fields.iter().enumerate().map(|(i, s)| (s.name.clone(), i)).collect(),
                            prefixes: names.iter().map(|n| key_prefix(n)).collect(),
                            record: record.clone(),
                            names,
                            single,
                            optional: matches!(ty, Ty::Optional(_)),
                        }
                    }
                    None => Shape::Plain,
                };
                Column { prefix: key_prefix(&f.name), name: f.name.clone(), ty, shape, default: !f.default_expression.is_empty() }
            })
            .collect();
        let index = columns.iter().enumerate().map(|(i, c)| (c.name.clone(), i)).collect();
        Self { columns, index }
    }

    /// The insert's columns: every written field, a Nested one as its arrays (`items.sku`, `items.qty`).
    pub fn column_names(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().flat_map(|c| match &c.shape {
            Shape::Plain => std::slice::from_ref(&c.name).iter().map(String::as_str),
            Shape::Nested { names, .. } => names.iter().map(String::as_str),
        })
    }

    /// The settings the insert needs: `DEFAULTS_SETTING` when a column has a DEFAULT expression.
    pub fn settings(&self) -> Vec<(&'static str, &'static str)> {
        match self.columns.iter().any(|c| c.default) {
            true => vec![DEFAULTS_SETTING],
            false => Vec::new(),
        }
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
            for (c, v) in self.columns.iter().zip(&values) {
                // A DEFAULT field left out, or set null where its column is not Nullable, is ClickHouse's to fill.
                if c.default && v.is_none_or(|raw| raw.get() == "null" && !matches!(c.ty, Ty::Optional(_))) {
                    continue;
                }
                if out.len() > start + 1 {
                    out.push(b',');
                }
                match (v, &c.shape) {
                    (Some(raw), Shape::Plain) => {
                        out.extend_from_slice(&c.prefix);
                        write_value(&c.ty, raw, out).map_err(|e| format!("{}: {e}", c.name))?
                    }
                    (v, Shape::Nested { record, index, prefixes, single, optional, .. }) if v.is_some() || *optional => {
                        let items: Vec<&RawValue> = match v.filter(|raw| !(*optional && raw.get() == "null")) {
                            Some(raw) if *single => vec![raw],
                            Some(raw) => serde_json::from_str(raw.get())
                                .map_err(|_| format!("{}: expected an array of objects, got {}", c.name, raw.get()))?,
                            None => Vec::new(),
                        };
                        write_nested(record, index, prefixes, &items, out).map_err(|e| format!("{}{e}", c.name))?
                    }
                    (None, _) if matches!(c.ty, Ty::Optional(_)) => {
                        out.extend_from_slice(&c.prefix);
                        out.extend_from_slice(left_out(&c.ty));
                    }
                    _ => return Err(format!("{}: missing (the column has no default here)", c.name)),
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

/// Records as a Nested column's arrays: for each field of the records, `"name.sub":[...]` with each record's value
/// (where one leaves an optional field out, its null: [] or {} for a list or map). Errors start with what follows the column's name.
fn write_nested(record: &Schema, index: &HashMap<String, usize>, prefixes: &[Vec<u8>], items: &[&RawValue], out: &mut Vec<u8>) -> Result<(), String> {
    let mut values: Vec<Vec<Option<&RawValue>>> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let mut v = vec![None; record.fields.len()];
        let mut de = serde_json::Deserializer::from_str(item.get());
        de.deserialize_map(Pick { index, values: &mut v }).map_err(|_| format!("[{i}]: expected an object, got {}", item.get()))?;
        values.push(v);
    }
    for (j, (f, prefix)) in record.fields.iter().zip(prefixes).enumerate() {
        if j > 0 {
            out.push(b',');
        }
        out.extend_from_slice(prefix);
        out.push(b'[');
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match v[j] {
                Some(raw) => write_value(&f.ty, raw, out).map_err(|e| format!("[{i}].{}: {e}", f.name))?,
                None if !f.required => out.extend_from_slice(left_out(&f.ty)),
                None => return Err(format!("[{i}].{}: missing", f.name)),
            }
        }
        out.push(b']');
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_proto::v1::field_type::Kind;
    use millrace_proto::v1::{DecimalType, FieldType, ScalarType};

    fn f(name: &str, kind: Kind, nullable: bool) -> Field {
        Field { name: name.into(), r#type: Some(FieldType { kind: Some(kind) }), nullable, key: false, ..Default::default() }
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
            (r#""2026-11-25""#, "1e8", "amount"),
            (r#""2026-11-25""#, r#""1.555""#, "amount"),
            (r#""2026-11-25""#, r#""123456789.5""#, "amount"),
            (r#""2026-11-25""#, r#""""#, "amount"),
        ] {
            let e = w.write(row(day, amount).as_bytes(), &mut out).expect_err(&format!("{day} {amount} refused"));
            assert!(e.starts_with(&format!("{field}:")), "{e}");
        }
    }

    fn record(fields: Vec<Field>) -> FieldType {
        FieldType { kind: Some(Kind::Record(millrace_proto::v1::RecordType { fields })) }
    }

    #[test]
    fn an_array_of_records_is_written_as_its_nested_columns_arrays() {
        let s = |t: ScalarType| FieldType { kind: Some(Kind::Scalar(t as i32)) };
        let item = record(vec![
            f("sku", Kind::Scalar(ScalarType::String as i32), false),
            f("at", Kind::Scalar(ScalarType::Datetime as i32), true),
            f("tags", Kind::Array(Box::new(s(ScalarType::Bool))), false),
        ]);
        let w = RowWriter::new(&[f("id", Kind::Scalar(ScalarType::String as i32), false), f("items", Kind::Array(Box::new(item)), false)]);
        assert_eq!(w.column_names().collect::<Vec<_>>(), ["id", "items.sku", "items.at", "items.tags"]);
        let mut out = Vec::new();
        w.write(br#"{"id":"a","items":[{"sku":"p","at":"2026-11-25T11:00:00+01:00","tags":[true]},{"tags":[],"sku":"q"}]}"#, &mut out).unwrap();
        w.write(br#"{"id":"b","items":[]}"#, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "{\"id\":\"a\",\"items.sku\":[\"p\",\"q\"],\"items.at\":[\"2026-11-25 10:00:00\",null],\"items.tags\":[[1],[]]}\n\
             {\"id\":\"b\",\"items.sku\":[],\"items.at\":[],\"items.tags\":[]}\n"
        );
        let before = out.len();
        assert_eq!(w.write(br#"{"id":"c","items":[{"tags":[]}]}"#, &mut out).unwrap_err(), "items[0].sku: missing");
        assert_eq!(w.write(br#"{"id":"c","items":[{"sku":"p","tags":["x"]}]}"#, &mut out).unwrap_err(), "items[0].tags: expected true or false, got \"x\"");
        assert_eq!(w.write(br#"{"id":"c","items":[null]}"#, &mut out).unwrap_err(), "items[0]: expected an object, got null");
        assert!(w.write(br#"{"id":"c","items":{"sku":"p"}}"#, &mut out).unwrap_err().starts_with("items: expected an array of objects"));
        assert_eq!(out.len(), before, "a refused record writes nothing");
    }

    #[test]
    fn a_default_field_left_out_is_left_out_of_the_row_and_the_insert_asks_for_defaults() {
        let s = |t: ScalarType| Kind::Scalar(t as i32);
        let mut n = f("n", s(ScalarType::Int32), false);
        n.default_expression = "42".into();
        let mut note = f("note", s(ScalarType::String), true);
        note.default_expression = "'none'".into();
        let w = RowWriter::new(&[n.clone(), f("id", s(ScalarType::String), false), note]);
        assert_eq!(w.settings(), [DEFAULTS_SETTING]);
        let mut out = Vec::new();
        for record in [r#"{"id":"a"}"#, r#"{"id":"b","n":7,"note":null}"#, r#"{"note":"x","id":"c"}"#] {
            w.write(record.as_bytes(), &mut out).unwrap();
        }
        assert_eq!(String::from_utf8(out).unwrap(), "{\"id\":\"a\"}\n{\"n\":7,\"id\":\"b\",\"note\":null}\n{\"id\":\"c\",\"note\":\"x\"}\n");
        assert!(RowWriter::new(&[f("id", s(ScalarType::String), false)]).settings().is_empty());
        let schema = crate::schema::Schema::new(&[n, f("id", s(ScalarType::String), false)], false);
        assert!(schema.check(br#"{"id":"a"}"#).is_ok(), "a record may leave a DEFAULT field out");
        assert!(schema.check(br#"{"id":"a","n":"7"}"#).is_err(), "a DEFAULT field's value is checked");
    }

    #[test]
    fn materialized_and_alias_fields_are_checked_but_never_written() {
        let s = |t: ScalarType| Kind::Scalar(t as i32);
        let mut m = f("m", s(ScalarType::Int32), false);
        m.materialized = "length(id)".into();
        let mut a = f("a", s(ScalarType::Date), false);
        a.alias = "toDate(now())".into();
        let fields = [f("id", s(ScalarType::String), false), m, a];
        let w = RowWriter::new(&fields);
        assert_eq!(w.column_names().collect::<Vec<_>>(), ["id"]);
        assert!(w.settings().is_empty());
        let schema = crate::schema::Schema::new(&fields, false);
        let mut out = Vec::new();
        for record in [r#"{"id":"x"}"#, r#"{"id":"x","m":null,"a":null}"#, r#"{"id":"x","m":3,"a":"2026-11-25"}"#] {
            assert!(schema.check(record.as_bytes()).is_ok(), "{record}");
            w.write(record.as_bytes(), &mut out).unwrap();
        }
        assert_eq!(String::from_utf8(out).unwrap(), "{\"id\":\"x\"}\n".repeat(3));
        let errors = schema.check(br#"{"id":"x","m":"3","a":"soon"}"#).unwrap_err();
        assert_eq!(errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), ["m", "a"]);
    }

    #[test]
    fn a_null_list_map_or_json_is_its_empty_value_and_an_optional_record_is_a_nested_column_of_at_most_one() {
        let s = |t: ScalarType| FieldType { kind: Some(Kind::Scalar(t as i32)) };
        let map = millrace_proto::v1::MapType { key: Some(Box::new(s(ScalarType::String))), value: Some(Box::new(s(ScalarType::Int8))) };
        let inner_list = FieldType { kind: Some(Kind::Optional(Box::new(FieldType { kind: Some(Kind::Array(Box::new(s(ScalarType::String)))) }))) };
        let point = record(vec![f("x", Kind::Scalar(ScalarType::Int8 as i32), false)]);
        let w = RowWriter::new(&[
            f("l", Kind::Array(Box::new(s(ScalarType::String))), true),
            f("m", Kind::Map(Box::new(map)), true),
            f("j", Kind::Json(Default::default()), true),
            f("ll", Kind::Array(Box::new(inner_list)), false),
            f("p", point.kind.unwrap(), true),
        ]);
        assert_eq!(w.column_names().collect::<Vec<_>>(), ["l", "m", "j", "ll", "p.x"]);
        let mut out = Vec::new();
        w.write(br#"{"l":null,"m":null,"j":null,"ll":[null,["a"]],"p":null}"#, &mut out).unwrap();
        w.write(br#"{"ll":[]}"#, &mut out).unwrap();
        w.write(br#"{"l":["a"],"m":{"k":1},"j":{"a":1},"ll":[],"p":{"x":3}}"#, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"l\":[],\"m\":{},\"j\":{},\"ll\":[[],[\"a\"]],\"p.x\":[]}\n{\"l\":[],\"m\":{},\"j\":{},\"ll\":[],\"p.x\":[]}\n\
             {\"l\":[\"a\"],\"m\":{\"k\":1},\"j\":{\"a\":1},\"ll\":[],\"p.x\":[3]}\n"
        );
    }
}
