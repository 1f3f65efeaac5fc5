//! The field types. Each family has one module holding both halves of its type side by side: the ingest check of a
//! JSON value (`Family::check`, run by `value`'s one-pass walk) and its form in a ClickHouse row
//! (`Family::write`, run by `rows`). This module compiles the contract's `FieldType` to a `Ty` and dispatches to
//! the family with a `match` (no boxing or dynamic dispatch per value): a new type is a new module, a line in
//! `families!` and its arm in `compile`.

mod array;
mod boolean;
mod datetime;
mod datetime64;
mod decimal;
mod enumeration;
mod fixed_string;
mod float;
mod integer;
mod ip;
mod json;
mod map;
mod optional;
mod record;
mod record_fields;
mod string;
mod uuid;
pub(crate) mod value;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod edge_tests;

pub use array::Array;
pub use boolean::Bool;
pub use datetime::{check_date, check_datetime, datetime_seconds, Date, DateTime};
pub use datetime64::DateTime64;
pub use decimal::{check_decimal, Decimal};
pub use enumeration::Enum;
pub use fixed_string::FixedString;
pub use float::Float;
pub use integer::Int;
pub use ip::{Ipv4, Ipv6};
pub use json::Json;
pub use map::Map;
pub use optional::Optional;
pub(crate) use record::{Pick, RecordSeed};
pub(crate) use record_fields::Keys;
pub use string::Str;
pub use uuid::{check_uuid, Uuid};

use crate::schema::Schema;
use millrace_proto::v1::field_type::Kind;
use millrace_proto::v1::{Field, FieldType, ScalarType};
use serde::de::{IgnoredAny, MapAccess, SeqAccess};
use serde_json::value::RawValue;
use value::At;

/// One JSON scalar as the ingest check meets it.
#[derive(Clone, Copy)]
pub enum Scalar<'a> {
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(&'a str),
}

impl Scalar<'_> {
    /// What it is, for "expected ..., got ...".
    fn kind(&self) -> &'static str {
        match self {
            Scalar::Bool(_) => "a boolean",
            Scalar::Int(_) | Scalar::Float(_) => "a number",
            Scalar::Str(_) => "a string",
        }
    }
}

/// Why a value is refused.
pub enum Refusal {
    /// Not the family's kind of value at all: "expected <want>, got <kind>".
    Wrong,
    /// The family's own message.
    Bad(String),
}

/// What a family knows about its values. The defaults fit a family that takes no JSON arrays or objects and is
/// copied into rows as written.
pub trait Family {
    /// What a value should be, for "expected ..., got ...".
    fn want(&self) -> &'static str;

    /// The ingest check of one scalar.
    fn check(&self, _v: Scalar<'_>) -> Result<(), Refusal> {
        Err(Refusal::Wrong)
    }

    /// The ingest check of a JSON array: skipped and refused unless the family takes arrays.
    fn check_seq<'de, A: SeqAccess<'de>>(&self, mut seq: A, at: At<'_, '_>) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        at.wrong(self.want(), "an array")
    }

    /// The ingest check of a JSON object: skipped and refused unless the family takes objects.
    fn check_map<'de, A: MapAccess<'de>>(&self, mut map: A, at: At<'_, '_>) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        at.wrong(self.want(), "an object")
    }

    /// Whether a value goes into a row exactly as written (then `write` is not called).
    fn verbatim(&self) -> bool {
        true
    }

    /// Writes a value, not null, as ClickHouse reads it; refuses one ClickHouse would store wrongly.
    fn write(&self, raw: &RawValue, out: &mut Vec<u8>) -> Result<(), String> {
        out.extend_from_slice(raw.get().as_bytes());
        Ok(())
    }
}

/// Declares `Ty` with one variant per family and its dispatch to the family's `Family` methods (called by path:
/// `Schema` has an inherent `check` of its own).
macro_rules! families {
    ($($variant:ident($family:ty)),* $(,)?) => {
        /// A field's type, compiled from the contract's `FieldType`.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Ty {
            $($variant($family)),*
        }

        impl Family for Ty {
            fn want(&self) -> &'static str {
                match self { $(Ty::$variant(t) => Family::want(t)),* }
            }
            fn check(&self, v: Scalar<'_>) -> Result<(), Refusal> {
                match self { $(Ty::$variant(t) => Family::check(t, v)),* }
            }
            fn check_seq<'de, A: SeqAccess<'de>>(&self, seq: A, at: At<'_, '_>) -> Result<(), A::Error> {
                match self { $(Ty::$variant(t) => Family::check_seq(t, seq, at)),* }
            }
            fn check_map<'de, A: MapAccess<'de>>(&self, map: A, at: At<'_, '_>) -> Result<(), A::Error> {
                match self { $(Ty::$variant(t) => Family::check_map(t, map, at)),* }
            }
            fn verbatim(&self) -> bool {
                match self { $(Ty::$variant(t) => Family::verbatim(t)),* }
            }
            fn write(&self, raw: &RawValue, out: &mut Vec<u8>) -> Result<(), String> {
                match self { $(Ty::$variant(t) => Family::write(t, raw, out)),* }
            }
        }
    };
}

families! {
    Str(Str),
    Int(Int),
    Float(Float),
    Bool(Bool),
    DateTime(DateTime),
    Date(Date),
    Uuid(Uuid),
    Ipv4(Ipv4),
    Ipv6(Ipv6),
    Decimal(Decimal),
    Enum(Enum),
    DateTime64(DateTime64),
    FixedString(FixedString),
    Map(Map),
    Json(Json),
    Array(Array),
    Record(Schema),
    Optional(Optional),
}

impl Ty {
    /// The same type, taking null.
    pub fn nullable(self) -> Ty {
        Ty::Optional(Optional(Box::new(self)))
    }
}

/// A field's type: its declared type (a string when unset), taking null when the field is nullable.
pub fn of_field(f: &Field) -> Ty {
    let ty = f.r#type.as_ref().map(compile).unwrap_or(Ty::Str(Str));
    if f.nullable {
        ty.nullable()
    } else {
        ty
    }
}

pub fn compile(t: &FieldType) -> Ty {
    match &t.kind {
        Some(Kind::Scalar(s)) => match ScalarType::try_from(*s).unwrap_or(ScalarType::String) {
            ScalarType::Int8 => Ty::Int(Int::new(i8::MIN.into(), i8::MAX.into())),
            ScalarType::Int16 => Ty::Int(Int::new(i16::MIN.into(), i16::MAX.into())),
            ScalarType::Int32 => Ty::Int(Int::new(i32::MIN.into(), i32::MAX.into())),
            ScalarType::Int64 => Ty::Int(Int::new(i64::MIN.into(), i64::MAX.into())),
            ScalarType::Uint8 => Ty::Int(Int::new(0, u8::MAX.into())),
            ScalarType::Uint16 => Ty::Int(Int::new(0, u16::MAX.into())),
            ScalarType::Uint32 => Ty::Int(Int::new(0, u32::MAX.into())),
            ScalarType::Uint64 => Ty::Int(Int::new(0, u64::MAX.into())),
            ScalarType::Float32 => Ty::Float(Float { f32: true }),
            ScalarType::Float64 => Ty::Float(Float { f32: false }),
            ScalarType::Bool => Ty::Bool(Bool),
            ScalarType::Datetime => Ty::DateTime(DateTime),
            ScalarType::Date => Ty::Date(Date),
            ScalarType::Uuid => Ty::Uuid(Uuid),
            ScalarType::Ipv4 => Ty::Ipv4(Ipv4),
            ScalarType::Ipv6 => Ty::Ipv6(Ipv6),
            ScalarType::String | ScalarType::Unspecified => Ty::Str(Str),
        },
        Some(Kind::Decimal(d)) => Ty::Decimal(Decimal { precision: d.precision, scale: d.scale }),
        Some(Kind::Enumeration(e)) => Ty::Enum(Enum::new(e)),
        Some(Kind::Array(inner)) => Ty::Array(Array(Box::new(compile(inner)))),
        Some(Kind::Record(r)) => Ty::Record(Schema::new(&r.fields, false)),
        Some(Kind::Optional(inner)) => compile(inner).nullable(),
        Some(Kind::Datetime64(d)) => Ty::DateTime64(DateTime64 { precision: d.precision.min(9) }),
        Some(Kind::FixedString(f)) => Ty::FixedString(FixedString { size: f.size as usize }),
        Some(Kind::Map(m)) => {
            let part = |t: &Option<Box<FieldType>>| Box::new(t.as_deref().map(compile).unwrap_or(Ty::Str(Str)));
            Ty::Map(Map { key: part(&m.key), value: part(&m.value) })
        }
        Some(Kind::Json(j)) => Ty::Json(Json::new(j)),
        None => Ty::Str(Str),
    }
}

/// A JSON string's content, its escapes decoded (borrowed when it has none); None when the text is not a string.
/// Families whose text ClickHouse parses without decoding JSON escapes (addresses, UUIDs, dates, decimals) write
/// this, not the text as written: ingest checks the decoded value.
pub(crate) fn string_of(raw: &RawValue) -> Option<std::borrow::Cow<'_, str>> {
    let text = raw.get();
    if !text.starts_with('"') {
        return None;
    }
    // `Cow<str>`'s own Deserialize always allocates: borrow first, decode only a string that has escapes.
    match serde_json::from_str::<&str>(text) {
        Ok(s) => Some(std::borrow::Cow::Borrowed(s)),
        Err(_) => serde_json::from_str::<String>(text).ok().map(std::borrow::Cow::Owned),
    }
}

/// What a value left out is written as where a row cannot leave it out (a record's tuple, a Nested column's
/// element): an optional's null ([] or {} for a list, map or JSON object, whose columns are never Nullable), else null.
pub fn left_out(ty: &Ty) -> &'static [u8] {
    match ty {
        Ty::Optional(o) => o.null(),
        _ => b"null",
    }
}

/// Writes one value of a row: as written where ClickHouse reads it so, else through its family. A null goes only
/// where the type is optional.
pub fn write_value(ty: &Ty, raw: &RawValue, out: &mut Vec<u8>) -> Result<(), String> {
    if ty.verbatim() {
        out.extend_from_slice(raw.get().as_bytes());
        return Ok(());
    }
    if raw.get() == "null" {
        return match ty {
            Ty::Optional(o) => {
                out.extend_from_slice(o.null());
                Ok(())
            }
            _ => Err("null where a value is required".into()),
        };
    }
    ty.write(raw, out)
}
