//! The ClickHouse column type of each (validated) field, written the way `system.columns` reports it, so that a
//! declared column and an existing one compare as text. docs/types.md has the table.
//!
//! ClickHouse has no Nullable of a composite type, so optional composites keep their plain column and the worker
//! writes a null as the empty value: an optional list is an Array (null: []), an optional map a Map and an
//! optional JSON object a JSON column (null: {}), and an optional record a Nested column with zero or one element.

use super::{err, FieldError};
use crate::names::{quote_ch, quote_str};
use millrace_proto::v1::{field_type::Kind, AggregateType, EnumMember, EnumType, Field, FieldType, JsonType, ScalarType};

/// `Enum8('a' = 1, 'b' = 2)` (Enum16 when a number is outside Int8), members by number as ClickHouse lists them.
pub(super) fn enum_ch(e: &EnumType) -> String {
    let mut members: Vec<&EnumMember> = e.members.iter().collect();
    members.sort_by_key(|m| m.number);
    let width = if members.iter().all(|m| i8::try_from(m.number).is_ok()) { 8 } else { 16 };
    let list: Vec<String> = members.iter().map(|m| format!("{} = {}", quote_str(&m.label), m.number)).collect();
    format!("Enum{width}({})", list.join(", "))
}

/// What a server's column types look like where they differ: `Bool` exists from ClickHouse 21.12 (moose declares
/// booleans so); before it, booleans are `UInt8` 0/1, which is what `Bool` is underneath.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dialect {
    pub bool_type: bool,
}

impl Dialect {
    /// A current server's: what the diff compares and `millrace-ddl` renders.
    pub const MODERN: Dialect = Dialect { bool_type: true };
}

fn scalar_ch(s: ScalarType, d: Dialect) -> &'static str {
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
        ScalarType::Bool if d.bool_type => "Bool",
        ScalarType::Bool => "UInt8",
        ScalarType::Datetime => "DateTime('UTC')",
        ScalarType::Date => "Date",
        ScalarType::Uuid => "UUID",
        ScalarType::Ipv4 => "IPv4",
        ScalarType::Ipv6 => "IPv6",
    }
}

/// The fields of a top-level field stored as a Nested column: a list of records (moose's `list[Model]`), or an
/// optional record (zero or one element).
pub fn nested_fields(f: &Field) -> Option<&[Field]> {
    let kind = f.r#type.as_ref()?.kind.as_ref()?;
    match kind {
        Kind::Array(inner) => match &inner.kind {
            Some(Kind::Record(r)) => Some(&r.fields),
            _ => None,
        },
        Kind::Record(r) if f.nullable => Some(&r.fields),
        Kind::Optional(inner) => match &inner.kind {
            Some(Kind::Record(r)) => Some(&r.fields),
            _ => None,
        },
        _ => None,
    }
}

/// The declared type of a (validated) field's column, as CREATE TABLE takes it on a current server.
pub fn ch_column_type(f: &Field) -> Result<String, FieldError> {
    ch_column_type_on(f, Dialect::MODERN)
}

/// The same, on a server of dialect `d`.
pub fn ch_column_type_on(f: &Field, d: Dialect) -> Result<String, FieldError> {
    let ty = f.r#type.as_ref().ok_or_else(|| err(&f.name, "the field has no type"))?;
    if let Some(fields) = nested_fields(f) {
        let parts: Result<Vec<String>, FieldError> =
            fields.iter().map(|s| Ok(format!("{} {}", quote_ch(&s.name), sub_column_type(s, &f.name, d)?))).collect();
        return Ok(format!("Nested({})", parts?.join(", ")));
    }
    if let Some(agg) = &f.aggregate {
        return aggregate_ch(agg, &f.name, d);
    }
    let mut out = ch_type(ty, &f.name, d)?;
    if f.nullable {
        out = nullable(out, ty);
    }
    if f.low_cardinality {
        out = format!("LowCardinality({out})");
    }
    Ok(out)
}

/// The columns ClickHouse lists for the field in `system.columns` on a server of dialect `d`: a Nested column is
/// one Array column per field.
pub fn physical_columns(f: &Field, d: Dialect) -> Result<Vec<(String, String)>, FieldError> {
    match nested_fields(f) {
        Some(fields) => fields
            .iter()
            .map(|s| Ok((format!("{}.{}", f.name, s.name), format!("Array({})", sub_column_type(s, &f.name, d)?))))
            .collect(),
        None => Ok(vec![(f.name.clone(), ch_column_type_on(f, d)?)]),
    }
}

fn sub_column_type(s: &Field, parent: &str, d: Dialect) -> Result<String, FieldError> {
    let path = format!("{parent}.{}", s.name);
    let ty = s.r#type.as_ref().ok_or_else(|| err(&path, "the field has no type"))?;
    let inner = ch_type(ty, &path, d)?;
    Ok(if s.nullable { nullable(inner, ty) } else { inner })
}

fn aggregate_ch(agg: &AggregateType, path: &str, d: Dialect) -> Result<String, FieldError> {
    let args: Result<Vec<String>, FieldError> = agg.arguments.iter().map(|a| ch_type(a, path, d)).collect();
    let name = if agg.simple { "SimpleAggregateFunction" } else { "AggregateFunction" };
    Ok(format!("{name}({}, {})", agg.function, args?.join(", ")))
}

/// Nullable(inner) where ClickHouse has it; a composite keeps its plain type (see the module's note).
fn nullable(inner: String, ty: &FieldType) -> String {
    match ty.kind {
        Some(Kind::Array(_)) | Some(Kind::Map(_)) | Some(Kind::Json(_)) | Some(Kind::Record(_)) => inner,
        _ => format!("Nullable({inner})"),
    }
}

fn json_ch(j: &JsonType, path: &str, d: Dialect) -> Result<String, FieldError> {
    let mut params = Vec::new();
    if let Some(n) = j.max_dynamic_paths {
        params.push(format!("max_dynamic_paths={n}"));
    }
    if let Some(n) = j.max_dynamic_types {
        params.push(format!("max_dynamic_types={n}"));
    }
    for t in &j.typed_paths {
        params.push(format!("{} {}", json_path(&t.name), sub_column_type(t, path, d)?));
    }
    params.extend(j.skip_paths.iter().map(|p| format!("SKIP {}", json_path(p))));
    params.extend(j.skip_regexps.iter().map(|r| format!("SKIP REGEXP {}", quote_str(r))));
    Ok(if params.is_empty() { "JSON".into() } else { format!("JSON({})", params.join(", ")) })
}

/// A JSON path `a.b` with each part quoted.
fn json_path(p: &str) -> String {
    p.split('.').map(quote_ch).collect::<Vec<_>>().join(".")
}

fn ch_type(ty: &FieldType, path: &str, d: Dialect) -> Result<String, FieldError> {
    match &ty.kind {
        None => Err(err(path, "the type has no kind")),
        Some(Kind::Scalar(s)) => Ok(scalar_ch(ScalarType::try_from(*s).unwrap_or(ScalarType::Unspecified), d).to_string()),
        Some(Kind::Decimal(d)) => Ok(format!("Decimal({}, {})", d.precision, d.scale)),
        Some(Kind::Enumeration(e)) => Ok(enum_ch(e)),
        Some(Kind::Datetime64(d)) => Ok(format!("DateTime64({}, 'UTC')", d.precision)),
        Some(Kind::FixedString(s)) => Ok(format!("FixedString({})", s.size)),
        Some(Kind::Map(m)) => {
            let (k, v) = (m.key.as_deref(), m.value.as_deref());
            let (Some(k), Some(v)) = (k, v) else { return Err(err(path, "a map needs its key and value types")) };
            Ok(format!("Map({}, {})", ch_type(k, &format!("{path}{{key}}"), d)?, ch_type(v, &format!("{path}{{}}"), d)?))
        }
        Some(Kind::Json(j)) => json_ch(j, path, d),
        Some(Kind::Optional(inner)) => Ok(nullable(ch_type(inner, path, d)?, inner)),
        Some(Kind::Array(inner)) => {
            if contains_record(inner) {
                // 18.16 flattens Array(Tuple(...)) into one array column per element, so it cannot round-trip.
                return Err(err(
                    path,
                    "a list of records is a column only as a top-level field (a Nested column): make it one, or sync the records to their own table",
                ));
            }
            Ok(format!("Array({})", ch_type(inner, &format!("{path}[]"), d)?))
        }
        Some(Kind::Record(r)) => {
            let parts: Result<Vec<_>, _> = r
                .fields
                .iter()
                .map(|f| {
                    let p = format!("{path}.{}", f.name);
                    if nested_fields(f).is_some() {
                        return Err(err(&p, "an optional record or a list of records inside a record has no ClickHouse column: make it required, or a top-level field"));
                    }
                    let ty = f.r#type.as_ref().ok_or_else(|| err(&p, "the field has no type"))?;
                    let inner = ch_type(ty, &p, d)?;
                    Ok(if f.nullable { nullable(inner, ty) } else { inner })
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
