//! Unit tests of `types` for values at the edges: escaped text, ranges, optional lists left out, DEFAULT fields set
//! null, decimals in exponent notation.

use crate::clickhouse::{cause, Cause};
use crate::rows::RowWriter;
use crate::schema::Schema;
use millrace_proto::v1::field_type::Kind;
use millrace_proto::v1::{DateTime64Type, DecimalType, Field, FieldType, JsonType, MapType, RecordType, ScalarType};

fn ty(kind: Kind) -> FieldType {
    FieldType { kind: Some(kind) }
}
fn scalar(s: ScalarType) -> FieldType {
    ty(Kind::Scalar(s as i32))
}
fn field(name: &str, t: FieldType, nullable: bool) -> Field {
    Field { name: name.into(), r#type: Some(t), nullable, key: false, ..Default::default() }
}
fn record(fields: Vec<Field>) -> FieldType {
    ty(Kind::Record(RecordType { fields }))
}
fn list(inner: FieldType) -> FieldType {
    ty(Kind::Array(Box::new(inner)))
}
fn datetime64(precision: u32) -> FieldType {
    ty(Kind::Datetime64(DateTime64Type { precision }))
}
fn decimal(precision: u32, scale: u32) -> FieldType {
    ty(Kind::Decimal(DecimalType { precision, scale }))
}

/// The rows of the records, or the first error.
fn rows(fields: &[Field], records: &[&str]) -> Result<String, String> {
    let w = RowWriter::new(fields);
    let mut out = Vec::new();
    for r in records {
        w.write(r.as_bytes(), &mut out)?;
    }
    Ok(String::from_utf8(out).unwrap())
}

/// The reasons ingest gives for refusing the record (empty: taken).
fn refusals(fields: &[Field], record: &str) -> Vec<String> {
    match Schema::new(fields, false).check(record.as_bytes()) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.into_iter().map(|e| format!("{}: {}", e.field, e.reason)).collect(),
    }
}

#[test]
fn an_optional_list_of_records_is_a_nested_column_whose_null_is_empty_arrays() {
    let item = record(vec![field("sku", scalar(ScalarType::String), false), field("qty", scalar(ScalarType::Int32), false)]);
    let fields = [field("id", scalar(ScalarType::String), false), field("items", list(item), true)];
    assert_eq!(RowWriter::new(&fields).column_names().collect::<Vec<_>>(), ["id", "items.sku", "items.qty"]);
    let got = rows(&fields, &[r#"{"id":"a","items":[{"sku":"p","qty":2}]}"#, r#"{"id":"b","items":null}"#, r#"{"id":"c"}"#]).unwrap();
    assert_eq!(
        got,
        "{\"id\":\"a\",\"items.sku\":[\"p\"],\"items.qty\":[2]}\n{\"id\":\"b\",\"items.sku\":[],\"items.qty\":[]}\n\
         {\"id\":\"c\",\"items.sku\":[],\"items.qty\":[]}\n"
    );
}

#[test]
fn escaped_text_is_written_decoded_where_clickhouse_reads_it_unescaped() {
    use ScalarType::*;
    let uuid = r#""0f8fad5b-d9cb-469f-a165-70867728950\u0065""#;
    for (t, value, row) in [
        (scalar(Ipv4), r#""10.0.0.\u0031""#, r#""10.0.0.1""#),
        (scalar(Ipv6), r#""\u003a:1""#, r#""::1""#),
        (scalar(Uuid), uuid, r#""0f8fad5b-d9cb-469f-a165-70867728950e""#),
        (scalar(Date), r#""2026-11-2\u0035""#, r#""2026-11-25""#),
        (scalar(Datetime), r#""2026-11-25T10:00:00\u005a""#, r#""2026-11-25 10:00:00""#),
        (datetime64(3), r#""2026-11-25T10:00:00.5\u005a""#, r#""2026-11-25 10:00:00.500""#),
        (decimal(6, 2), r#""1\u002e5""#, "1.5"),
    ] {
        let fields = [field("v", list(t), false)];
        let record = format!(r#"{{"v":[{value}]}}"#);
        assert!(refusals(&fields, &record).is_empty(), "{value}: {:?}", refusals(&fields, &record));
        assert_eq!(rows(&fields, &[&record]), Ok(format!("{{\"v\":[{row}]}}\n")), "{value}");
    }
    for code in [675, 676] {
        assert_eq!(cause(code), Cause::Rows, "CANNOT_PARSE_IPV4/IPV6 ({code}) is a row's fault");
    }
}

#[test]
fn dates_and_date_times_outside_clickhouse_s_range_are_refused_at_ingest_json_typed_paths_included() {
    use ScalarType::*;
    let fields = [field("d", scalar(Date), true), field("t", scalar(Datetime), true)];
    assert_eq!(refusals(&fields, r#"{"d":"2106-01-01"}"#), ["d: 2106-01-01 is outside what a ClickHouse Date holds (1970-01-01 to 2105-12-31)"]);
    assert_eq!(refusals(&fields, r#"{"d":"1969-12-31"}"#).len(), 1);
    assert_eq!(
        refusals(&fields, r#"{"t":"2200-01-01T00:00:00Z"}"#),
        ["t: \"2200-01-01T00:00:00Z\" is outside what a ClickHouse DateTime holds (1970 to 2105)"]
    );
    assert_eq!(refusals(&fields, r#"{"t":"1970-01-01T00:30:00+01:00"}"#).len(), 1);
    assert!(refusals(&fields, r#"{"d":"2105-12-31","t":"2105-12-31T23:59:59Z"}"#).is_empty());
    let paths = vec![field("ts", scalar(Datetime), false), field("a.day", scalar(Date), true), field("ns", datetime64(9), true), field("ok", scalar(Bool), true)];
    let json = [field("j", ty(Kind::Json(JsonType { typed_paths: paths, ..Default::default() })), false)];
    assert_eq!(refusals(&json, r#"{"j":{"ts":"2200-01-01T00:00:00Z"}}"#).len(), 1);
    assert_eq!(refusals(&json, r#"{"j":{"a.day":"2106-01-01"}}"#).len(), 1);
    assert_eq!(refusals(&json, r#"{"j":{"ns":"2263-01-01T00:00:00Z"}}"#).len(), 1);
    // Typed paths' values are written as their types write them.
    let got = rows(&json, &[r#"{"j":{"ts":"2026-11-25T11:00:00+01:00", "a":{"day":null,"x":[1, 2]},"ok":true,"other":"2026-11-25T11:00:00+01:00"}}"#]);
    assert_eq!(got.unwrap(), "{\"j\":{\"ts\":\"2026-11-25 10:00:00\",\"a\":{\"day\":null,\"x\":[1,2]},\"ok\":1,\"other\":\"2026-11-25T11:00:00+01:00\"}}\n");
    assert!(rows(&json, &[r#"{"j":{"a.day":"2106-01-01"}}"#]).unwrap_err().starts_with("j: a.day:"));
}

#[test]
fn a_datetime64_of_9_digits_ends_where_int64_nanoseconds_do() {
    let fields = [field("t", datetime64(9), false)];
    assert!(refusals(&fields, r#"{"t":"2262-04-11T23:47:16.854775807Z"}"#).is_empty());
    let outside = "is outside what a ClickHouse DateTime64(9) holds (1900-01-01 to 2262-04-11 23:47:16.854775807)";
    assert_eq!(refusals(&fields, r#"{"t":"2262-04-11T23:47:16.854775808Z"}"#), [format!("t: \"2262-04-11T23:47:16.854775808Z\" {outside}")]);
    assert_eq!(refusals(&fields, r#"{"t":"2299-01-01T00:00:00Z"}"#).len(), 1);
    assert_eq!(rows(&fields, &[r#"{"t":"2262-04-12 00:00:00"}"#]).unwrap_err(), format!("t: \"2262-04-12 00:00:00\" {outside}"));
    assert_eq!(rows(&fields, &[r#"{"t":"2262-04-11T23:47:16.854775807Z"}"#]).unwrap(), "{\"t\":\"2262-04-11 23:47:16.854775807\"}\n");
    assert!(refusals(&[field("t", datetime64(6), false)], r#"{"t":"2299-01-01T00:00:00Z"}"#).is_empty(), "other precisions hold to 2299");
}

#[test]
fn an_optional_list_or_map_left_out_of_a_record_or_a_nested_element_is_written_empty() {
    let s = scalar(ScalarType::String);
    let map = ty(Kind::Map(Box::new(MapType { key: Some(Box::new(s.clone())), value: Some(Box::new(s.clone())) })));
    let inner = record(vec![field("n", s.clone(), false), field("tags", list(s.clone()), true), field("attrs", map, true)]);
    let fields = [field("one", inner.clone(), false), field("many", list(inner), false)];
    let got = rows(&fields, &[r#"{"one":{"n":"a"},"many":[{"n":"b"},{"n":"c","tags":["x"],"attrs":null}]}"#]).unwrap();
    assert_eq!(got, "{\"one\":[\"a\",[],{}],\"many.n\":[\"b\",\"c\"],\"many.tags\":[[],[\"x\"]],\"many.attrs\":[{},{}]}\n");
}

#[test]
fn a_default_field_set_null_is_taken_and_left_out_of_the_row() {
    let mut n = field("n", scalar(ScalarType::Int32), false);
    n.default_expression = "42".into();
    let fields = [field("id", scalar(ScalarType::String), false), n];
    assert!(refusals(&fields, r#"{"id":"a","n":null}"#).is_empty());
    assert_eq!(refusals(&fields, r#"{"id":"a","n":"7"}"#), ["n: expected an integer, got a string"]);
    assert_eq!(rows(&fields, &[r#"{"id":"a","n":null}"#, r#"{"id":"b","n":7}"#]).unwrap(), "{\"id\":\"a\"}\n{\"id\":\"b\",\"n\":7}\n");
}

#[test]
fn decimals_in_exponent_notation_are_taken_within_the_type_and_written_plain() {
    let fields = [field("v", decimal(10, 8), false), field("vs", list(decimal(10, 2)), false)];
    for (v, vs, row) in [
        (r#""1E-8""#, "[1e3]", r#"{"v":0.00000001,"vs":[1000]}"#),
        ("1.5E+1", r#"["-2.5e-1", 0E+5]"#, r#"{"v":15,"vs":[-0.25,0]}"#),
        (r#""-0.000123e2""#, r#"["12.50",1]"#, r#"{"v":-0.0123,"vs":[12.50,1]}"#),
    ] {
        let record = format!(r#"{{"v":{v},"vs":{vs}}}"#);
        assert_eq!(refusals(&fields, &record), Vec::<String>::new(), "{record}");
        assert_eq!(rows(&fields, &[&record]), Ok(format!("{row}\n")), "{record}");
    }
    for (v, vs) in [(r#""1E-9""#, "[]"), ("1e2", "[]"), (r#""1e""#, "[]"), ("1", "[1e8]"), ("1", r#"["1E-3"]"#), ("1", r#"["1e99999999999"]"#)] {
        let record = format!(r#"{{"v":{v},"vs":{vs}}}"#);
        assert_eq!(refusals(&fields, &record).len(), 1, "{record}");
        assert!(rows(&fields, &[&record]).is_err(), "{record}");
    }
}
