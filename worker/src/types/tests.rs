//! Unit tests of `types`: each type of the contract through both halves of its family.

use crate::rows::RowWriter;
use crate::schema::{FieldError, Schema};
use millrace_proto::v1::field_type::Kind;
use millrace_proto::v1::{DateTime64Type, DecimalType, Field, FieldType, FixedStringType, JsonType, MapType, RecordType, ScalarType};

fn ty(kind: Kind) -> FieldType {
    FieldType { kind: Some(kind) }
}
fn scalar(s: ScalarType) -> FieldType {
    ty(Kind::Scalar(s as i32))
}
fn field(name: &str, t: Option<FieldType>, nullable: bool) -> Field {
    Field { name: name.into(), r#type: t, nullable, key: false, ..Default::default() }
}

/// A field `v` of one type: values ingest takes with their row text, and a value it refuses with where and why.
struct Case {
    v: Field,
    good: &'static [(&'static str, &'static str)],
    bad: (&'static str, &'static str, &'static str),
}

fn case(t: Option<FieldType>, good: &'static [(&'static str, &'static str)], bad: (&'static str, &'static str, &'static str)) -> Case {
    Case { v: field("v", t, false), good, bad }
}

fn cases() -> Vec<Case> {
    use ScalarType::*;
    let s = |t| Some(scalar(t));
    let decimal = || ty(Kind::Decimal(DecimalType { precision: 6, scale: 2 }));
    let array = |inner: FieldType| Some(ty(Kind::Array(Box::new(inner))));
    let optional = |inner: FieldType| Some(ty(Kind::Optional(Box::new(inner))));
    let point = RecordType { fields: vec![field("x", s(Float64), false), field("y", s(Bool), false), field("n", s(String), true)] };
    let mut nullable_date = case(s(Date), &[("null", "null"), (r#""2026-11-25""#, r#""2026-11-25""#)], ("v", r#""x""#, r#""x" is not a YYYY-MM-DD date"#));
    nullable_date.v.nullable = true;
    vec![
        case(s(Unspecified), &[(r#""x""#, r#""x""#)], ("v", "true", "expected a string, got a boolean")),
        case(None, &[(r#""x""#, r#""x""#)], ("v", "[1]", "expected a string, got an array")),
        case(s(String), &[(r#""a\"b""#, r#""a\"b""#)], ("v", "1", "expected a string, got a number")),
        case(s(Int8), &[("-128", "-128")], ("v", "128", "128 is out of range (-128 to 127)")),
        case(s(Int16), &[("32767", "32767")], ("v", "-32769", "-32769 is out of range (-32768 to 32767)")),
        case(s(Int32), &[("-2147483648", "-2147483648")], ("v", "2147483648", "2147483648 is out of range (-2147483648 to 2147483647)")),
        case(s(Int64), &[("9223372036854775807", "9223372036854775807")], ("v", "1.5", "expected an integer, got 1.5")),
        case(s(Uint8), &[("255", "255")], ("v", "-1", "-1 is out of range (0 to 255)")),
        case(s(Uint16), &[("65535", "65535")], ("v", "65536", "65536 is out of range (0 to 65535)")),
        case(s(Uint32), &[("4294967295", "4294967295")], ("v", r#""1""#, "expected an integer, got a string")),
        case(s(Uint64), &[("18446744073709551615", "18446744073709551615")], ("v", "-1", "-1 is out of range (0 to 18446744073709551615)")),
        case(s(Float32), &[("1.5", "1.5"), ("3", "3")], ("v", "1e39", "1000000000000000000000000000000000000000 is out of range for Float32")),
        case(s(Float64), &[("-2.5e300", "-2.5e300")], ("v", r#""2.5""#, "expected a number, got a string")),
        case(s(Bool), &[("true", "1"), ("false", "0")], ("v", r#""true""#, "expected true or false, got a string")),
        case(
            s(Datetime),
            &[(r#""2026-11-25T11:00:00+01:00""#, r#""2026-11-25 10:00:00""#)],
            ("v", r#""yesterday""#, r#""yesterday" is not an RFC 3339 date-time (like 2026-11-25T10:00:00Z)"#),
        ),
        case(s(Date), &[(r#""2026-11-25""#, r#""2026-11-25""#)], ("v", r#""2026-13-01""#, r#""2026-13-01" is not a YYYY-MM-DD date"#)),
        case(
            s(Uuid),
            &[(r#""0f8fad5b-d9cb-469f-a165-70867728950e""#, r#""0f8fad5b-d9cb-469f-a165-70867728950e""#)],
            ("v", r#""nope""#, r#""nope" is not a UUID"#),
        ),
        case(Some(decimal()), &[(r#""1234.50""#, "1234.50"), ("-7", "-7")], ("v", "12345.5", "12345.5 does not fit Decimal(6, 2)")),
        case(array(decimal()), &[(r#"["0.5",2]"#, "[0.5,2]")], ("v[1]", r#"["1",1.555]"#, "1.555 does not fit Decimal(6, 2)")),
        case(array(scalar(String)), &[(r#"["x","y"]"#, r#"["x","y"]"#)], ("v", r#"{"a":1}"#, "expected an array, got an object")),
        case(array(scalar(Bool)), &[("[true,false]", "[1,0]"), ("[]", "[]")], ("v[1]", r#"[true,"x"]"#, "expected true or false, got a string")),
        case(
            Some(ty(Kind::Record(point))),
            &[(r#"{"y":true,"x":1.5}"#, "[1.5,1,null]"), (r#"{"x":1,"y":false,"n":"a"}"#, r#"[1,0,"a"]"#)],
            ("v.x", r#"{"x":"1","y":true}"#, "expected a number, got a string"),
        ),
        case(optional(scalar(Int32)), &[("null", "null"), ("5", "5")], ("v", r#""5""#, "expected an integer, got a string")),
        case(
            optional(scalar(Datetime)),
            &[("null", "null"), (r#""2026-11-25T10:00:00Z""#, r#""2026-11-25 10:00:00""#)],
            ("v", "1", "expected an RFC 3339 date-time string, got a number"),
        ),
        nullable_date,
        case(s(Ipv4), &[(r#""10.0.0.1""#, r#""10.0.0.1""#)], ("v", r#""10.0.0.256""#, r#""10.0.0.256" is not an IPv4 address (like 10.0.0.1)"#)),
        case(
            s(Ipv6),
            &[(r#""2001:DB8:0::7""#, r#""2001:db8::7""#), (r#""::ffff:10.0.0.1""#, r#""::ffff:10.0.0.1""#), (r#""::1""#, r#""::1""#)],
            ("v", r#""10.0.0.1""#, r#""10.0.0.1" is not an IPv6 address (like 2001:db8::7 or ::ffff:10.0.0.1)"#),
        ),
        case(
            Some(ty(Kind::Datetime64(DateTime64Type { precision: 3 }))),
            &[(r#""2026-11-25T11:00:00.123456+01:00""#, r#""2026-11-25 10:00:00.123""#), (r#""2026-11-25 10:00:00""#, r#""2026-11-25 10:00:00.000""#)],
            ("v", r#""2300-01-01T00:00:00Z""#, r#""2300-01-01T00:00:00Z" is outside what a ClickHouse DateTime64 holds (1900-01-01 to 2299-12-31)"#),
        ),
        case(Some(fixed(4)), &[(r#""abcd""#, r#""abcd""#), (r#""é""#, r#""é""#), (r#""""#, r#""""#)], ("v", r#""abcdé""#, "is 6 bytes; FixedString(4) holds at most 4")),
        case(Some(fixed(2)), &[(r#""\u00e9""#, r#""\u00e9""#)], ("v", r#""\u00e9\u00e9""#, "is 4 bytes; FixedString(2) holds at most 2")),
        case(map(scalar(String), scalar(Int64)), &[(r#"{"a":1,"b":-2}"#, r#"{"a":1,"b":-2}"#), ("{}", "{}")], ("v[\"a\"]", r#"{"a":"x"}"#, "expected an integer, got a string")),
        case(map(scalar(String), scalar(Int64)), &[], ("v[\"a\"]", r#"{"a":1,"a":2}"#, "map key given twice")),
        case(map(scalar(String), scalar(Int64)), &[], ("v", "[]", "expected an object, got an array")),
        case(map(scalar(Uint32), scalar(String)), &[(r#"{"7":"a","0":"b"}"#, r#"{"7":"a","0":"b"}"#)], ("v[\"07\"]", r#"{"07":"a"}"#, r#"map key "07" is not an integer in decimal (like "7")"#)),
        case(map(scalar(Uint8), scalar(String)), &[], ("v[\"256\"]", r#"{"256":"a"}"#, "map key: 256 is out of range (0 to 255)")),
        case(map(scalar(Int8), scalar(String)), &[(r#"{"-128":"a"}"#, r#"{"-128":"a"}"#)], ("v[\"+1\"]", r#"{"+1":"a"}"#, r#"map key "+1" is not an integer in decimal (like "7")"#)),
        case(
            map(scalar(Datetime), ty(Kind::Array(Box::new(scalar(Bool))))),
            &[(r#"{"2026-11-25T11:00:00+01:00":[true,false]}"#, r#"{"2026-11-25 10:00:00":[1,0]}"#)],
            ("v[\"x\"]", r#"{"x":[]}"#, r#"map key: "x" is not an RFC 3339 date-time (like 2026-11-25T10:00:00Z)"#),
        ),
        case(map(fixed(2), scalar(Uuid)), &[], ("v[\"abc\"]", r#"{"abc":"0f8fad5b-d9cb-469f-a165-70867728950e"}"#, "map key: is 3 bytes; FixedString(2) holds at most 2")),
        case(
            map(scalar(String), map(scalar(Date), ty(Kind::Optional(Box::new(scalar(Int8))))).unwrap()),
            &[(r#"{"a":{"2026-11-25":null,"2026-11-26":1}}"#, r#"{"a":{"2026-11-25":null,"2026-11-26":1}}"#)],
            ("v[\"a\"][\"2026-11-25\"]", r#"{"a":{"2026-11-25":300}}"#, "300 is out of range (-128 to 127)"),
        ),
        case(
            json(vec![]),
            &[(r#"{"a": {"b": [1, {"c": null}]}, "s": "x y\n"}"#, r#"{"a":{"b":[1,{"c":null}]},"s":"x y\n"}"#), ("{}", "{}")],
            ("v", "[1]", "expected a JSON object, got an array"),
        ),
        case(json(vec![]), &[], ("v", r#""{}""#, "expected a JSON object, got a string")),
        case(
            json(vec![field("a.b", s(Int8), false), field("ts", s(Datetime), true)]),
            &[(r#"{"a":{"b":1,"c":"x"},"ts":null}"#, r#"{"a":{"b":1,"c":"x"},"ts":null}"#), (r#"{"a":[{"b":"x"}],"b":{"a":"x"}}"#, r#"{"a":[{"b":"x"}],"b":{"a":"x"}}"#)],
            ("v.a.b", r#"{"a.b":"1"}"#, "expected an integer, got a string"),
        ),
        case(json(vec![field("a.b", s(Int8), false)]), &[], ("v.a.b", r#"{"a":{"b":300}}"#, "300 is out of range (-128 to 127)")),
    ]
}

fn fixed(size: u32) -> FieldType {
    ty(Kind::FixedString(FixedStringType { size }))
}
fn map(key: FieldType, value: FieldType) -> Option<FieldType> {
    Some(ty(Kind::Map(Box::new(MapType { key: Some(Box::new(key)), value: Some(Box::new(value)) }))))
}
fn json(typed_paths: Vec<Field>) -> Option<FieldType> {
    Some(ty(Kind::Json(JsonType { typed_paths, ..Default::default() })))
}

#[test]
fn every_type_is_checked_at_ingest_and_written_as_clickhouse_reads_it() {
    let cases = cases();
    for n in 0.. {
        let Ok(t) = ScalarType::try_from(n) else { break };
        assert!(cases.iter().any(|c| c.v.r#type == Some(scalar(t))), "no case for {t:?}");
    }
    for c in &cases {
        let (schema, writer) = (Schema::new(std::slice::from_ref(&c.v), false), RowWriter::new(std::slice::from_ref(&c.v)));
        let name = format!("{:?}", c.v.r#type);
        for (value, row) in c.good {
            let record = format!(r#"{{"v":{value}}}"#);
            assert_eq!(schema.check(record.as_bytes()), Ok(None), "{name}: {value} is taken");
            let mut out = Vec::new();
            writer.write(record.as_bytes(), &mut out).unwrap_or_else(|e| panic!("{name}: {value} is written: {e}"));
            assert_eq!(String::from_utf8(out).unwrap(), format!("{{\"v\":{row}}}\n"), "{name}: {value}");
        }
        let (at, value, reason) = c.bad;
        let errors = schema.check(format!(r#"{{"v":{value}}}"#).as_bytes()).unwrap_err();
        assert_eq!(errors, [FieldError { field: at.into(), reason: reason.into() }], "{name}: {value} is refused");
    }
}

#[test]
fn null_and_absence_are_taken_only_where_the_type_is_optional() {
    let required = [field("v", Some(scalar(ScalarType::Date)), false)];
    let nullable = [field("v", Some(scalar(ScalarType::Date)), true)];
    let errors = Schema::new(&required, false).check(br#"{"v":null}"#).unwrap_err();
    assert_eq!(errors, [FieldError { field: "v".into(), reason: "required, got null".into() }]);
    assert_eq!(RowWriter::new(&required).write(br#"{"v":null}"#, &mut Vec::new()), Err("v: null where a value is required".into()));
    assert_eq!(Schema::new(&nullable, false).check(b"{}"), Ok(None));
    let mut out = Vec::new();
    RowWriter::new(&nullable).write(b"{}", &mut out).unwrap();
    assert_eq!(out, b"{\"v\":null}\n");
}

#[test]
fn a_json_value_nested_deeper_than_64_levels_is_refused() {
    let schema = Schema::new(&[field("v", json(vec![]), false)], false);
    let nested = |levels: usize| format!(r#"{{"v":{}1{}}}"#, r#"{"a":"#.repeat(levels - 1) + "[", "]".to_string() + &"}".repeat(levels - 1));
    assert_eq!(schema.check(nested(64).as_bytes()), Ok(None));
    let errors = schema.check(nested(65).as_bytes()).unwrap_err();
    assert_eq!(errors, [FieldError { field: "v".into(), reason: "nested deeper than 64 levels".into() }]);
    let wide = format!(r#"{{"v":{{"x":{0},"y":{0}}}}}"#, "[".repeat(70) + &"]".repeat(70));
    assert_eq!(schema.check(wide.as_bytes()).unwrap_err().len(), 1, "refused once");
}

#[test]
fn column_attributes_that_shape_only_the_column_change_nothing_for_records() {
    use millrace_proto::v1::AggregateType;
    let plain = field("v", Some(scalar(ScalarType::String)), false);
    let mut shaped = plain.clone();
    shaped.low_cardinality = true;
    shaped.codec = "ZSTD(3)".into();
    shaped.ttl = "ts + INTERVAL 1 DAY".into();
    shaped.comment = "a comment".into();
    shaped.aggregate = Some(AggregateType { function: "any".into(), arguments: vec![scalar(ScalarType::String)], simple: true });
    let mut state = plain.clone();
    state.aggregate = Some(AggregateType { function: "uniqExact".into(), arguments: vec![scalar(ScalarType::String)], simple: false });
    for f in [&shaped, &state] {
        let schema = Schema::new(std::slice::from_ref(f), false);
        assert_eq!(schema, Schema::new(std::slice::from_ref(&plain), false));
        assert!(schema.check(br#"{"v":1}"#).is_err() && schema.check(b"{}").is_err());
        let mut out = Vec::new();
        RowWriter::new(std::slice::from_ref(f)).write(br#"{"v":"x"}"#, &mut out).unwrap();
        assert_eq!(out, b"{\"v\":\"x\"}\n");
    }
}
