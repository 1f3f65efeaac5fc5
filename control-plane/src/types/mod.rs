//! Field types: their validation (here and, for column attributes, in `column`) and the ClickHouse column type
//! each maps to (`render`; docs/types.md has the table). What each type needs of the server is checked apart
//! (`table::features`), so a plan is valid or not whatever server it meets.

pub mod column;
mod render;

pub use render::{ch_column_type, ch_column_type_on, nested_fields, physical_columns, Dialect};
use render::enum_ch;

use millrace_proto::v1::{field_type::Kind, EnumType, Field, FieldType, JsonType, MapType, ScalarType};
use std::collections::HashSet;

/// Deeper nesting than this is refused: no real schema needs it, and hostile ones should not recurse forever.
const MAX_DEPTH: usize = 16;

/// What is wrong with one field: `field` is its dotted path (`address.city`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

fn err(field: &str, reason: impl Into<String>) -> FieldError {
    FieldError { field: field.to_string(), reason: reason.into() }
}

/// Checks names, uniqueness, types, key rules and column attributes of a top-level field list.
pub fn validate_fields(fields: &[Field]) -> Result<(), FieldError> {
    if fields.is_empty() {
        return Err(err("fields", "a schema needs at least one field"));
    }
    validate_list(fields, "", 0, true)
}

fn validate_list(fields: &[Field], prefix: &str, depth: usize, top: bool) -> Result<(), FieldError> {
    let mut seen = HashSet::new();
    for f in fields {
        let path = format!("{prefix}{}", f.name);
        if !crate::names::is_valid_name(&f.name) {
            return Err(err(&path, "field names must match [A-Za-z_][A-Za-z0-9_]{0,127}"));
        }
        if !seen.insert(f.name.as_str()) {
            return Err(err(&path, "duplicate field name"));
        }
        let ty = f.r#type.as_ref().ok_or_else(|| err(&path, "the field has no type"))?;
        if f.nullable && matches!(ty.kind, Some(Kind::Optional(_))) {
            return Err(err(&path, "nullable and optional both set: use one"));
        }
        validate_type(ty, &path, depth)?;
        if matches!(ty.kind, Some(Kind::Json(_))) && !top {
            return Err(err(&path, "a JSON object is a column only as a top-level field: make it one, or use a map"));
        }
        if let Some(sub) = nested_fields(f) {
            if !top {
                return Err(err(&path, "an optional record or a list of records is a column only as a top-level field"));
            }
            // A Nested column's fields are arrays already: ClickHouse stores no records in them.
            if let Some(inner) = sub.iter().find(|s| contains_record(s.r#type.as_ref())) {
                return Err(err(&format!("{path}.{}", inner.name), "a list of records (or an optional record) cannot hold records: flatten them into its fields"));
            }
        }
        if f.key {
            if !top {
                return Err(err(&path, "only top-level fields can be key fields"));
            }
            if !is_sortable(f) {
                return Err(err(&path, "a key field must have a non-nullable scalar type"));
            }
        }
        if top {
            column::validate(f, &path)?;
        } else if column::has_attributes(f) {
            return Err(err(&path, "column attributes (default, materialized, alias, codec, TTL, comment, LowCardinality, aggregate) belong on top-level fields"));
        }
    }
    Ok(())
}

fn contains_record(ty: Option<&FieldType>) -> bool {
    match ty.and_then(|t| t.kind.as_ref()) {
        Some(Kind::Record(_)) => true,
        Some(Kind::Optional(i)) | Some(Kind::Array(i)) => contains_record(Some(i)),
        Some(Kind::Map(m)) => contains_record(m.value.as_deref()),
        _ => false,
    }
}

/// A field that can be a key or an ORDER BY column: a non-nullable scalar, decimal, enum, time or fixed string.
pub fn is_sortable(f: &Field) -> bool {
    !f.nullable
        && f.aggregate.is_none()
        && matches!(
            f.r#type.as_ref().and_then(|t| t.kind.as_ref()),
            Some(Kind::Scalar(_)) | Some(Kind::Decimal(_)) | Some(Kind::Enumeration(_)) | Some(Kind::Datetime64(_)) | Some(Kind::FixedString(_))
        )
}

fn validate_type(ty: &FieldType, path: &str, depth: usize) -> Result<(), FieldError> {
    if depth > MAX_DEPTH {
        return Err(err(path, format!("types nest deeper than {MAX_DEPTH} levels")));
    }
    match &ty.kind {
        None => Err(err(path, "the type has no kind (set scalar, decimal, array, record, optional, enumeration, datetime64, fixed_string, map or json)")),
        Some(Kind::Scalar(s)) => match ScalarType::try_from(*s) {
            Ok(ScalarType::Unspecified) => Err(err(path, "scalar type is unspecified")),
            Ok(_) => Ok(()),
            Err(_) => Err(err(path, format!("unknown scalar type {s}"))),
        },
        Some(Kind::Decimal(d)) => {
            if !(1..=38).contains(&d.precision) || d.scale > d.precision {
                Err(err(path, format!("decimal({}, {}) needs 1 <= precision <= 38 and scale <= precision", d.precision, d.scale)))
            } else {
                Ok(())
            }
        }
        Some(Kind::Datetime64(d)) if d.precision > 9 => Err(err(path, format!("datetime64({}): the precision is 0 to 9 digits", d.precision))),
        Some(Kind::Datetime64(_)) => Ok(()),
        Some(Kind::FixedString(s)) if !(1..=65_535).contains(&s.size) => {
            Err(err(path, format!("FixedString({}): the size is 1 to 65535 bytes", s.size)))
        }
        Some(Kind::FixedString(_)) => Ok(()),
        Some(Kind::Map(m)) => validate_map(m, path, depth),
        Some(Kind::Json(j)) => validate_json(j, path, depth),
        Some(Kind::Array(inner)) => validate_type(inner, &format!("{path}[]"), depth + 1),
        Some(Kind::Optional(inner)) => {
            if matches!(inner.kind, Some(Kind::Optional(_))) {
                return Err(err(path, "optional of optional"));
            }
            validate_type(inner, path, depth + 1)
        }
        Some(Kind::Record(r)) => {
            if r.fields.is_empty() {
                return Err(err(path, "a record needs at least one field"));
            }
            validate_list(&r.fields, &format!("{path}."), depth + 1, false)
        }
        Some(Kind::Enumeration(e)) => validate_enum(e, path),
    }
}

fn validate_map(m: &MapType, path: &str, depth: usize) -> Result<(), FieldError> {
    let (Some(key), Some(value)) = (m.key.as_deref(), m.value.as_deref()) else {
        return Err(err(path, "a map needs its key and value types"));
    };
    let key_ok = match &key.kind {
        Some(Kind::Scalar(s)) => !matches!(
            ScalarType::try_from(*s),
            Ok(ScalarType::Float32 | ScalarType::Float64 | ScalarType::Bool | ScalarType::Ipv4 | ScalarType::Ipv6) | Err(_)
        ),
        Some(Kind::FixedString(_)) | Some(Kind::Enumeration(_)) => true,
        _ => false,
    };
    if !key_ok {
        return Err(err(path, "a map's keys must be strings, integers, dates, datetimes, UUIDs, enums or fixed strings (and not optional)"));
    }
    validate_type(key, &format!("{path}{{key}}"), depth + 1)?;
    if matches!(value.kind, Some(Kind::Json(_))) || contains_record(Some(value)) {
        return Err(err(path, "a map's values cannot be JSON objects or records: use a JSON field for nested objects"));
    }
    validate_type(value, &format!("{path}{{}}"), depth + 1)
}

fn validate_json(j: &JsonType, path: &str, depth: usize) -> Result<(), FieldError> {
    let good_path = |p: &str| !p.is_empty() && p.len() <= 1024 && p.split('.').all(crate::names::is_valid_name);
    let mut seen = HashSet::new();
    for t in &j.typed_paths {
        let at = format!("{path}.{}", t.name);
        if !good_path(&t.name) || !seen.insert(t.name.as_str()) {
            return Err(err(&at, "a typed JSON path is distinct names [A-Za-z_][A-Za-z0-9_]* joined by dots"));
        }
        let ty = t.r#type.as_ref().ok_or_else(|| err(&at, "the path has no type"))?;
        if matches!(ty.kind, Some(Kind::Json(_))) || contains_record(Some(ty)) || t.key || column::has_attributes(t) {
            return Err(err(&at, "a typed JSON path has a plain type (no JSON, records, key or column attributes)"));
        }
        validate_type(ty, &at, depth + 1)?;
    }
    if let Some(p) = j.skip_paths.iter().find(|p| !good_path(p)) {
        return Err(err(path, format!("skip path {p:?}: names [A-Za-z_][A-Za-z0-9_]* joined by dots")));
    }
    if let Some(r) = j.skip_regexps.iter().find(|r| r.is_empty() || r.len() > 1024 || r.chars().any(char::is_control)) {
        return Err(err(path, format!("skip regexp {r:?}: 1 to 1024 characters, no control characters")));
    }
    if j.max_dynamic_types.is_some_and(|n| n > 254) {
        return Err(err(path, "max_dynamic_types is at most 254 (ClickHouse's limit)"));
    }
    Ok(())
}

fn validate_enum(e: &EnumType, path: &str) -> Result<(), FieldError> {
    if e.members.is_empty() || e.members.len() > 65_536 {
        return Err(err(path, format!("an enum needs 1 to 65536 members, not {}", e.members.len())));
    }
    let (mut labels, mut numbers) = (HashSet::new(), HashSet::new());
    for m in &e.members {
        if m.label.is_empty() || m.label.len() > 1024 || m.label.chars().any(char::is_control) {
            return Err(err(path, format!("enum label {:?}: 1 to 1024 characters, no control characters", m.label)));
        }
        if !(i16::MIN as i32..=i16::MAX as i32).contains(&m.number) {
            return Err(err(path, format!("enum member {:?}: its number {} is outside Int16 (ClickHouse's Enum16)", m.label, m.number)));
        }
        if !labels.insert(&m.label) || !numbers.insert(m.number) {
            return Err(err(path, format!("enum member {:?} = {}: labels and numbers must be distinct", m.label, m.number)));
        }
    }
    // A number enum's records carry numbers: a label that reads as an integer would be taken for another member.
    if e.numbers {
        if let Some(l) = e.members.iter().flat_map(|m| std::iter::once(&m.label).chain(&m.aliases)).find(|l| l.trim().parse::<i64>().is_ok()) {
            return Err(err(path, format!("enum label {l:?} reads as a number, which records of a number enum carry for members: use a name")));
        }
    }
    for m in &e.members {
        for a in &m.aliases {
            if a.is_empty() || a.len() > 1024 || a.chars().any(char::is_control) {
                return Err(err(path, format!("enum alias {a:?}: 1 to 1024 characters, no control characters")));
            }
            if !labels.insert(a) {
                return Err(err(path, format!("enum alias {a:?} of {:?}: aliases are distinct from every label and other alias", m.label)));
            }
        }
    }
    // ClickHouse refuses statements past its max_query_size (256 KiB by default): keep room for the rest of them.
    let rendered = enum_ch(e).len();
    if rendered > MAX_ENUM_DDL {
        return Err(err(path, format!("the enum's column type is {rendered} bytes of DDL; at most {MAX_ENUM_DDL}: use fewer or shorter members, or a string")));
    }
    Ok(())
}

const MAX_ENUM_DDL: usize = 64 << 10;

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_proto::v1::{DecimalType, EnumMember, RecordType};

    fn scalar(s: ScalarType) -> FieldType {
        FieldType { kind: Some(Kind::Scalar(s as i32)) }
    }
    fn field(name: &str, ty: FieldType) -> Field {
        Field { name: name.into(), r#type: Some(ty), nullable: false, key: false, ..Default::default() }
    }

    #[test]
    fn maps_every_supported_type_to_a_clickhouse_column() {
        let cases = [
            (scalar(ScalarType::String), "String"),
            (scalar(ScalarType::Int8), "Int8"),
            (scalar(ScalarType::Uint64), "UInt64"),
            (scalar(ScalarType::Float32), "Float32"),
            (scalar(ScalarType::Bool), "Bool"),
            (scalar(ScalarType::Datetime), "DateTime('UTC')"),
            (scalar(ScalarType::Date), "Date"),
            (scalar(ScalarType::Uuid), "UUID"),
            (FieldType { kind: Some(Kind::Decimal(DecimalType { precision: 10, scale: 2 })) }, "Decimal(10, 2)"),
            (FieldType { kind: Some(Kind::Array(Box::new(scalar(ScalarType::Int32)))) }, "Array(Int32)"),
            (FieldType { kind: Some(Kind::Optional(Box::new(scalar(ScalarType::String)))) }, "Nullable(String)"),
            (
                FieldType {
                    kind: Some(Kind::Record(RecordType {
                        fields: vec![field("a", scalar(ScalarType::String)), field("b", scalar(ScalarType::Int64))],
                    })),
                },
                "Tuple(String, Int64)",
            ),
        ];
        for (ty, want) in cases {
            let f = field("x", ty);
            validate_fields(std::slice::from_ref(&f)).unwrap();
            assert_eq!(ch_column_type(&f).unwrap(), want);
        }
        let mut n = field("n", scalar(ScalarType::Int64));
        n.nullable = true;
        assert_eq!(ch_column_type(&n).unwrap(), "Nullable(Int64)");
        // Before ClickHouse 21.12 a boolean is UInt8 0/1, at any depth.
        let flags = field("f", FieldType { kind: Some(Kind::Array(Box::new(scalar(ScalarType::Bool)))) });
        assert_eq!(ch_column_type_on(&flags, Dialect { bool_type: false }).unwrap(), "Array(UInt8)");
        assert_eq!(ch_column_type(&flags).unwrap(), "Array(Bool)");
    }

    #[test]
    fn an_enum_is_an_enum8_or_enum16_column_and_bad_members_are_refused() {
        let m = |label: &str, number| EnumMember { label: label.into(), number, aliases: vec![] };
        let en = |members: Vec<EnumMember>| field("e", FieldType { kind: Some(Kind::Enumeration(EnumType { members, ..Default::default() })) });
        assert_eq!(ch_column_type(&en(vec![m("b", 2), m("it's", 1)])).unwrap(), "Enum8('it\\'s' = 1, 'b' = 2)");
        assert_eq!(ch_column_type(&en(vec![m("a", 1), m("b", 300)])).unwrap(), "Enum16('a' = 1, 'b' = 300)");
        let aliased = |label: &str, number, alias: &str| EnumMember { label: label.into(), number, aliases: vec![alias.into()] };
        assert!(validate_fields(&[en(vec![aliased("red", 1, "RED"), aliased("green", 2, "GREEN")])]).is_ok());
        assert!(validate_fields(&[en(vec![aliased("red", 1, "green"), m("green", 2)])]).unwrap_err().reason.contains("alias"));
        assert_eq!(ch_column_type(&en(vec![aliased("red", 1, "RED")])).unwrap(), "Enum8('red' = 1)", "aliases are no part of the column");
        for bad in [vec![], vec![m("a", 1), m("a", 2)], vec![m("a", 1), m("b", 1)], vec![m("", 1)], vec![m("a", 40_000)]] {
            assert!(validate_fields(&[en(bad.clone())]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn refuses_inconsistent_types_naming_the_field() {
        let unknown = field("x", FieldType { kind: Some(Kind::Scalar(99)) });
        assert_eq!(validate_fields(&[unknown]).unwrap_err().field, "x");
        let no_kind = field("y", FieldType { kind: None });
        assert!(validate_fields(&[no_kind]).unwrap_err().reason.contains("no kind"));
        let bad_dec = field("d", FieldType { kind: Some(Kind::Decimal(DecimalType { precision: 40, scale: 2 })) });
        assert!(validate_fields(&[bad_dec]).is_err());
        let mut nullable_key = field("k", scalar(ScalarType::String));
        nullable_key.nullable = true;
        nullable_key.key = true;
        assert!(validate_fields(&[nullable_key]).unwrap_err().reason.contains("key"));
        let nested_bad = field(
            "r",
            FieldType { kind: Some(Kind::Record(RecordType { fields: vec![field("bad name", scalar(ScalarType::String))] })) },
        );
        assert_eq!(validate_fields(&[nested_bad]).unwrap_err().field, "r.bad name");
        let dup = [field("a", scalar(ScalarType::String)), field("a", scalar(ScalarType::Int8))];
        assert!(validate_fields(&dup).unwrap_err().reason.contains("duplicate"));
        let record = FieldType { kind: Some(Kind::Record(RecordType { fields: vec![field("a", scalar(ScalarType::String))] })) };
        let arr_of_rec = field("l", FieldType { kind: Some(Kind::Array(Box::new(record.clone()))) });
        assert_eq!(ch_column_type(&arr_of_rec).unwrap(), "Nested(`a` String)");
        let inside = field("r", FieldType { kind: Some(Kind::Record(RecordType { fields: vec![arr_of_rec.clone()] })) });
        assert!(validate_fields(&[inside]).unwrap_err().reason.contains("top-level"));
        let nested_in_nested = field("n", FieldType { kind: Some(Kind::Array(Box::new(FieldType { kind: Some(Kind::Record(RecordType { fields: vec![arr_of_rec] })) }))) });
        assert!(validate_fields(&[nested_in_nested]).is_err());
    }

    #[test]
    fn composite_types_map_to_modern_columns_and_optional_ones_keep_their_plain_column() {
        use millrace_proto::v1::{DateTime64Type, FixedStringType, JsonType, MapType};
        let ty = |kind| FieldType { kind: Some(kind) };
        let map = |k: FieldType, v: FieldType| ty(Kind::Map(Box::new(MapType { key: Some(Box::new(k)), value: Some(Box::new(v)) })));
        let optional = |t: FieldType| ty(Kind::Optional(Box::new(t)));
        let cases = [
            (ty(Kind::Datetime64(DateTime64Type { precision: 3 })), "DateTime64(3, 'UTC')"),
            (ty(Kind::FixedString(FixedStringType { size: 16 })), "FixedString(16)"),
            (scalar(ScalarType::Ipv4), "IPv4"),
            (scalar(ScalarType::Ipv6), "IPv6"),
            (map(scalar(ScalarType::String), optional(scalar(ScalarType::Int64))), "Map(String, Nullable(Int64))"),
            (map(scalar(ScalarType::Uint32), ty(Kind::Array(Box::new(scalar(ScalarType::String))))), "Map(UInt32, Array(String))"),
            (ty(Kind::Json(JsonType::default())), "JSON"),
            (
                ty(Kind::Json(JsonType {
                    max_dynamic_paths: Some(8),
                    typed_paths: vec![field("a.b", scalar(ScalarType::Int64))],
                    skip_paths: vec!["x.y".into()],
                    skip_regexps: vec!["^t".into()],
                    ..Default::default()
                })),
                "JSON(max_dynamic_paths=8, `a`.`b` Int64, SKIP `x`.`y`, SKIP REGEXP '^t')",
            ),
            (optional(ty(Kind::Array(Box::new(scalar(ScalarType::String))))), "Array(String)"),
            (optional(ty(Kind::Json(JsonType::default()))), "JSON"),
        ];
        for (t, want) in cases {
            let f = field("x", t);
            validate_fields(std::slice::from_ref(&f)).unwrap();
            assert_eq!(ch_column_type(&f).unwrap(), want);
        }
        let rec = ty(Kind::Record(RecordType { fields: vec![field("a", scalar(ScalarType::String))] }));
        let optional_record = Field { nullable: true, ..field("r", rec) };
        assert_eq!(physical_columns(&optional_record, Dialect::MODERN).unwrap(), vec![("r.a".to_string(), "Array(String)".to_string())]);
        for bad in [
            map(scalar(ScalarType::Float64), scalar(ScalarType::String)),
            map(optional(scalar(ScalarType::String)), scalar(ScalarType::String)),
            map(scalar(ScalarType::String), ty(Kind::Json(JsonType::default()))),
            ty(Kind::Datetime64(DateTime64Type { precision: 10 })),
            ty(Kind::FixedString(FixedStringType { size: 0 })),
            ty(Kind::Json(JsonType { skip_paths: vec!["a..b".into()], ..Default::default() })),
        ] {
            assert!(validate_fields(&[field("x", bad.clone())]).is_err(), "{bad:?}");
        }
        let json_in_record = ty(Kind::Record(RecordType { fields: vec![field("j", ty(Kind::Json(JsonType::default())))] }));
        assert!(validate_fields(&[field("r", json_in_record)]).unwrap_err().reason.contains("top-level"));
    }

    #[test]
    fn refuses_hostile_nesting() {
        let mut ty = scalar(ScalarType::String);
        for _ in 0..100 {
            ty = FieldType { kind: Some(Kind::Array(Box::new(ty))) };
        }
        assert!(validate_fields(&[field("deep", ty)]).unwrap_err().reason.contains("nest"));
    }
}
