//! Field types: their validation, and the ClickHouse column type each maps to (docs/types.md has the table).
//! The mapping keeps to types ClickHouse 18.16 has, which newer servers read the same way.

use millrace_proto::v1::{field_type::Kind, EnumMember, EnumType, Field, FieldType, ScalarType};
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

/// Checks names, uniqueness, types and key rules of a top-level field list.
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
        if f.key {
            if !top {
                return Err(err(&path, "only top-level fields can be key fields"));
            }
            if !is_sortable(f) {
                return Err(err(&path, "a key field must have a non-nullable scalar type"));
            }
        }
    }
    Ok(())
}

/// A field that can be a key or an ORDER BY column: a non-nullable scalar or decimal.
pub fn is_sortable(f: &Field) -> bool {
    !f.nullable
        && matches!(f.r#type.as_ref().and_then(|t| t.kind.as_ref()), Some(Kind::Scalar(_)) | Some(Kind::Decimal(_)) | Some(Kind::Enumeration(_)))
}

fn validate_type(ty: &FieldType, path: &str, depth: usize) -> Result<(), FieldError> {
    if depth > MAX_DEPTH {
        return Err(err(path, format!("types nest deeper than {MAX_DEPTH} levels")));
    }
    match &ty.kind {
        None => Err(err(path, "the type has no kind (set scalar, decimal, array, record, optional or enumeration)")),
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
    // ClickHouse refuses statements past its max_query_size (256 KiB by default): keep room for the rest of them.
    let rendered = enum_ch(e).len();
    if rendered > MAX_ENUM_DDL {
        return Err(err(path, format!("the enum's column type is {rendered} bytes of DDL; at most {MAX_ENUM_DDL}: use fewer or shorter members, or a string")));
    }
    Ok(())
}

const MAX_ENUM_DDL: usize = 64 << 10;

/// `Enum8('a' = 1, 'b' = 2)` (Enum16 when a number is outside Int8), members by number as ClickHouse lists them.
fn enum_ch(e: &EnumType) -> String {
    let mut members: Vec<&EnumMember> = e.members.iter().collect();
    members.sort_by_key(|m| m.number);
    let width = if members.iter().all(|m| i8::try_from(m.number).is_ok()) { 8 } else { 16 };
    let list: Vec<String> = members.iter().map(|m| format!("{} = {}", crate::names::quote_str(&m.label), m.number)).collect();
    format!("Enum{width}({})", list.join(", "))
}

fn scalar_ch(s: ScalarType) -> &'static str {
    match s {
        ScalarType::Unspecified => "Nothing",
        ScalarType::String => "String",
        ScalarType::Int8 => "Int8",
        ScalarType::Int16 => "Int16",
        ScalarType::Int32 => "Int32",
        ScalarType::Int64 => "Int64",
        ScalarType::Uint8 => "UInt8",
        ScalarType::Uint16 => "UInt16",
        ScalarType::Uint32 => "UInt32",
        ScalarType::Uint64 => "UInt64",
        ScalarType::Float32 => "Float32",
        ScalarType::Float64 => "Float64",
        // ClickHouse 18.16 has no Bool; UInt8 0/1 is what Bool is underneath on newer servers too.
        ScalarType::Bool => "UInt8",
        ScalarType::Datetime => "DateTime('UTC')",
        ScalarType::Date => "Date",
        ScalarType::Uuid => "UUID",
    }
}

/// The ClickHouse column type of a (validated) field, written the way `system.columns` reports it.
pub fn ch_column_type(f: &Field) -> Result<String, FieldError> {
    let ty = f.r#type.as_ref().ok_or_else(|| err(&f.name, "the field has no type"))?;
    let inner = ch_type(ty, &f.name)?;
    if f.nullable {
        nullable(inner, ty, &f.name)
    } else {
        Ok(inner)
    }
}

fn nullable(inner: String, ty: &FieldType, path: &str) -> Result<String, FieldError> {
    match ty.kind {
        Some(Kind::Scalar(_)) | Some(Kind::Decimal(_)) | Some(Kind::Enumeration(_)) => Ok(format!("Nullable({inner})")),
        _ => Err(err(path, "ClickHouse cannot store a nullable array or record: make the field required, or make its elements optional")),
    }
}

fn ch_type(ty: &FieldType, path: &str) -> Result<String, FieldError> {
    match &ty.kind {
        None => Err(err(path, "the type has no kind")),
        Some(Kind::Scalar(s)) => Ok(scalar_ch(ScalarType::try_from(*s).unwrap_or(ScalarType::Unspecified)).to_string()),
        Some(Kind::Decimal(d)) => Ok(format!("Decimal({}, {})", d.precision, d.scale)),
        Some(Kind::Enumeration(e)) => Ok(enum_ch(e)),
        Some(Kind::Optional(inner)) => nullable(ch_type(inner, path)?, inner, path),
        Some(Kind::Array(inner)) => {
            if contains_record(inner) {
                // 18.16 flattens Array(Tuple(...)) into one array column per element, so it cannot round-trip.
                return Err(err(path, "an array of records cannot be a ClickHouse column: sync the records to their own table instead"));
            }
            Ok(format!("Array({})", ch_type(inner, &format!("{path}[]"))?))
        }
        Some(Kind::Record(r)) => {
            let parts: Result<Vec<_>, _> = r
                .fields
                .iter()
                .map(|f| {
                    let mut f = f.clone();
                    f.name = format!("{path}.{}", f.name);
                    ch_column_type(&f)
                })
                .collect();
            Ok(format!("Tuple({})", parts?.join(", ")))
        }
    }
}

fn contains_record(ty: &FieldType) -> bool {
    match &ty.kind {
        Some(Kind::Record(_)) => true,
        Some(Kind::Optional(i)) | Some(Kind::Array(i)) => contains_record(i),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_proto::v1::{DecimalType, RecordType};

    fn scalar(s: ScalarType) -> FieldType {
        FieldType { kind: Some(Kind::Scalar(s as i32)) }
    }
    fn field(name: &str, ty: FieldType) -> Field {
        Field { name: name.into(), r#type: Some(ty), nullable: false, key: false }
    }

    #[test]
    fn maps_every_supported_type_to_a_clickhouse_column() {
        let cases = [
            (scalar(ScalarType::String), "String"),
            (scalar(ScalarType::Int8), "Int8"),
            (scalar(ScalarType::Uint64), "UInt64"),
            (scalar(ScalarType::Float32), "Float32"),
            (scalar(ScalarType::Bool), "UInt8"),
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
    }

    #[test]
    fn an_enum_is_an_enum8_or_enum16_column_and_bad_members_are_refused() {
        let m = |label: &str, number| EnumMember { label: label.into(), number };
        let en = |members: Vec<EnumMember>| field("e", FieldType { kind: Some(Kind::Enumeration(EnumType { members, ..Default::default() })) });
        assert_eq!(ch_column_type(&en(vec![m("b", 2), m("it's", 1)])).unwrap(), "Enum8('it\\'s' = 1, 'b' = 2)");
        assert_eq!(ch_column_type(&en(vec![m("a", 1), m("b", 300)])).unwrap(), "Enum16('a' = 1, 'b' = 300)");
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
        let arr_of_rec = field("l", FieldType { kind: Some(Kind::Array(Box::new(record))) });
        assert!(ch_column_type(&arr_of_rec).is_err());
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
