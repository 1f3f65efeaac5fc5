//! Unit tests of `schema`.

use super::*;
use millrace_proto::v1::{DecimalType, RecordType};

fn f(name: &str, kind: Kind) -> Field {
    Field { name: name.into(), r#type: Some(FieldType { kind: Some(kind) }), nullable: false, key: false, ..Default::default() }
}
fn s(t: ScalarType) -> Kind {
    Kind::Scalar(t as i32)
}

fn schema() -> Schema {
    let mut id = f("id", s(ScalarType::String));
    id.key = true;
    let mut note = f("note", s(ScalarType::String));
    note.nullable = true;
    let point = RecordType { fields: vec![f("x", s(ScalarType::Float64)), f("y", s(ScalarType::Int8))] };
    Schema::new(
        &[
            id,
            f("small", s(ScalarType::Int8)),
            f("big", s(ScalarType::Uint64)),
            f("at", s(ScalarType::Datetime)),
            f("day", s(ScalarType::Date)),
            f("uid", s(ScalarType::Uuid)),
            f("amount", Kind::Decimal(DecimalType { precision: 6, scale: 2 })),
            f("tags", Kind::Array(Box::new(FieldType { kind: Some(s(ScalarType::String)) }))),
            f("point", Kind::Record(point)),
            note,
        ],
        false,
    )
}

const GOOD: &str = r#"{"id":"a-1","small":-128,"big":18446744073709551615,"at":"2026-11-25T10:00:00Z","day":"2026-11-25",
    "uid":"0f8fad5b-d9cb-469f-a165-70867728950e","amount":"1234.50","tags":["x"],"point":{"x":1.5,"y":3}}"#;

#[test]
fn a_good_record_passes_and_gives_its_key() {
    assert_eq!(schema().check(GOOD.as_bytes()), Ok(Some(Cow::Borrowed(&b"a-1"[..]))));
    let with_null = GOOD.replace(r#""tags""#, r#""note":null,"tags""#);
    assert!(schema().check(with_null.as_bytes()).is_ok());
}

#[test]
fn every_error_of_a_record_is_listed_with_its_field() {
    let bad = r#"{"id":"a","small":300,"big":-1,"at":"yesterday","day":"2026-13-01","uid":"nope","amount":12345.5,
        "tags":["x",1],"point":{"x":"1","y":1},"extra":1}"#;
    let errors = schema().check(bad.as_bytes()).unwrap_err();
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["small", "big", "at", "day", "uid", "amount", "tags[1]", "point.x", "extra"]);
    assert!(errors[0].reason.contains("300 is out of range (-128 to 127)"), "{errors:?}");
    assert!(errors[5].reason.contains("does not fit Decimal(6, 2)"), "{errors:?}");
}

#[test]
fn missing_fields_wrong_shapes_and_bad_json_are_refused() {
    let errs = schema().check(br#"{"id":"a"}"#).unwrap_err();
    assert!(errs.iter().any(|e| e.field == "small" && e.reason == "required, missing"));
    assert!(!errs.iter().any(|e| e.field == "note"), "optional fields may be absent");
    assert_eq!(schema().check(b"[1,2]").unwrap_err()[0].reason, "expected an object, got an array");
    assert!(schema().check(b"{\"id\":").unwrap_err()[0].reason.starts_with("not valid JSON"));
    let mut allow = schema();
    allow.allow_extra = true;
    let extra = GOOD.replace("\"tags\"", "\"other\":[1],\"tags\"");
    assert!(allow.check(extra.as_bytes()).is_ok());
    let stripped = allow.strip_extra(extra.as_bytes()).unwrap();
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&stripped).unwrap(), serde_json::from_str::<serde_json::Value>(GOOD).unwrap());
    assert_eq!(allow.strip_extra(GOOD.as_bytes()), None);
}

#[test]
fn keys_are_the_key_fields_text_in_declaration_order() {
    let key = |name: &str, kind: Kind| Field { key: true, ..f(name, kind) };
    let one = Schema::new(&[f("v", s(ScalarType::Int64)), key("id", s(ScalarType::String))], false);
    let k = one.check(br#"{"v":1,"id":"a\"b"}"#).unwrap().unwrap();
    assert_eq!(&*k, b"a\"b", "escapes are resolved");
    let both = Schema::new(&[key("region", s(ScalarType::String)), f("v", s(ScalarType::Int64)), key("n", s(ScalarType::Int32))], false);
    assert_eq!(&*both.check(br#"{"n":7,"v":1,"region":"eu"}"#).unwrap().unwrap(), b"eu|7");
    let none = Schema::new(&[f("v", s(ScalarType::Int64))], false);
    assert_eq!(none.check(br#"{"v":1}"#), Ok(None));
}

#[test]
fn an_int_enum_key_spelled_by_label_or_number_is_one_key() {
    use millrace_proto::v1::{EnumMember, EnumType};
    let members = vec![EnumMember { label: "ACTIVE".into(), number: 1, aliases: vec![] }, EnumMember { label: "GONE".into(), number: 2, aliases: vec![] }];
    let status = Kind::Enumeration(EnumType { members, numbers: true, labels_too: true });
    let keyed = Schema::new(&[Field { key: true, ..f("status", status) }, f("v", s(ScalarType::Int64))], false);
    let by_label = keyed.check(br#"{"status":"GONE","v":1}"#).unwrap().unwrap();
    let by_number = keyed.check(br#"{"status":2,"v":1}"#).unwrap().unwrap();
    assert_eq!(by_label, by_number, "one member's records share a partition however they spell it");
    assert_eq!(&*by_number, b"2");
}

#[test]
fn wide_records_are_checked_like_narrow_ones() {
    // Over 16 fields the names are looked up by hash, over 64 the given ones are tracked in a vector.
    for width in [10, 40, 100] {
        let fields: Vec<Field> = (0..width).map(|i| f(&format!("f{i}"), s(ScalarType::Int32))).collect();
        let wide = Schema::new(&fields, false);
        let record = |skip: usize| {
            let body: Vec<String> = (0..width).filter(|i| *i != skip).map(|i| format!("\"f{i}\":{i}")).collect();
            format!("{{{}}}", body.join(","))
        };
        assert!(wide.check(record(usize::MAX).as_bytes()).is_ok(), "width {width}");
        let errs = wide.check(record(width - 1).as_bytes()).unwrap_err();
        assert_eq!(errs, vec![FieldError { field: format!("f{}", width - 1), reason: "required, missing".into() }]);
        let twice = record(usize::MAX).replace("}", ",\"f0\":1}");
        assert_eq!(wide.check(twice.as_bytes()).unwrap_err()[0].reason, "given twice", "width {width}");
    }
}

#[test]
fn decimals_are_checked_on_their_digits() {
    assert!(check_decimal("-1234.5", 6, 2).is_ok());
    assert!(check_decimal("0001234.500", 6, 2).is_ok());
    assert!(check_decimal("12345.1", 6, 2).is_err());
    assert!(check_decimal("1.234", 6, 2).is_err());
    assert!(check_decimal("1e4", 6, 2).is_err());
}
