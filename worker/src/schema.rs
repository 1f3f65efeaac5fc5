//! A stream's fields, compiled for checking records: every error of a record is found in one pass over its JSON,
//! without building a tree, and the key is taken on the way.

use millrace_proto::v1::field_type::Kind;
use millrace_proto::v1::{Field, FieldType, ScalarType};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

#[path = "schema_record.rs"]
mod record;
use record::{Keys, Name, Seen};

#[derive(Debug, Clone, PartialEq)]
pub enum Ty {
    Str,
    Int { min: i128, max: i128 },
    Float { f32: bool },
    Bool,
    DateTime,
    Date,
    Uuid,
    Decimal { precision: u32, scale: u32 },
    Array(Box<Ty>),
    Record(Schema),
    Optional(Box<Ty>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct FieldSpec {
    pub name: String,
    pub ty: Ty,
    pub required: bool,
    pub key: bool,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Schema {
    pub fields: Vec<FieldSpec>,
    index: HashMap<String, usize>,
    /// Extra fields are dropped instead of refused.
    pub allow_extra: bool,
}

/// One thing wrong with one record.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl Schema {
    pub fn new(fields: &[Field], allow_extra: bool) -> Self {
        let fields: Vec<FieldSpec> = fields
            .iter()
            .map(|f| {
                let ty = f.r#type.as_ref().map(compile).unwrap_or(Ty::Str);
                let optional = f.nullable || matches!(ty, Ty::Optional(_));
                let ty = if f.nullable { Ty::Optional(Box::new(ty)) } else { ty };
                FieldSpec { name: f.name.clone(), ty, required: !optional, key: f.key }
            })
            .collect();
        let index = fields.iter().enumerate().map(|(i, f)| (f.name.clone(), i)).collect();
        Self { fields, index, allow_extra }
    }

    pub fn key_fields(&self) -> impl Iterator<Item = &FieldSpec> {
        self.fields.iter().filter(|f| f.key)
    }

    /// Checks one record. Ok: the record's key (key fields joined by `|`, strings by their content, as workers key
    /// outputs; borrowed from the record where it can be), or None without key fields. Err: everything wrong with it.
    pub fn check<'r>(&self, record: &'r [u8]) -> Result<Option<Cow<'r, [u8]>>, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut keys = Keys::default();
        let mut de = serde_json::Deserializer::from_slice(record);
        let seed = RecordSeed { schema: self, loc: Loc::Root, errors: &mut errors, keys: Some(&mut keys) };
        if let Err(e) = seed.deserialize(&mut de).and_then(|()| de.end()) {
            errors.push(FieldError { field: String::new(), reason: format!("not valid JSON: {e}") });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(keys.joined(self))
    }

    /// A field's position: a scan for the few fields most streams have (cheaper than hashing the name).
    fn position(&self, name: &str) -> Option<usize> {
        if self.fields.len() <= 16 {
            self.fields.iter().position(|f| f.name == name)
        } else {
            self.index.get(name).copied()
        }
    }
}

impl Schema {
    /// The record without the fields the stream does not declare, when it has any (for `allow_extra`).
    pub fn strip_extra(&self, record: &[u8]) -> Option<Vec<u8>> {
        let fields: Vec<(Cow<'_, str>, &RawValue)> =
            serde_json::from_slice::<std::collections::BTreeMap<Cow<'_, str>, &RawValue>>(record).ok()?.into_iter().collect();
        if fields.iter().all(|(k, _)| self.index.contains_key(k.as_ref())) {
            return None;
        }
        let mut out = Vec::with_capacity(record.len());
        out.push(b'{');
        for (k, v) in fields.iter().filter(|(k, _)| self.index.contains_key(k.as_ref())) {
            if out.len() > 1 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, k.as_ref()).expect("writing to a Vec");
            out.push(b':');
            out.extend_from_slice(v.get().as_bytes());
        }
        out.push(b'}');
        Some(out)
    }
}

pub fn compile(t: &FieldType) -> Ty {
    match &t.kind {
        Some(Kind::Scalar(s)) => match ScalarType::try_from(*s).unwrap_or(ScalarType::String) {
            ScalarType::Int8 => Ty::Int { min: i8::MIN as i128, max: i8::MAX as i128 },
            ScalarType::Int16 => Ty::Int { min: i16::MIN as i128, max: i16::MAX as i128 },
            ScalarType::Int32 => Ty::Int { min: i32::MIN as i128, max: i32::MAX as i128 },
            ScalarType::Int64 => Ty::Int { min: i64::MIN as i128, max: i64::MAX as i128 },
            ScalarType::Uint8 => Ty::Int { min: 0, max: u8::MAX as i128 },
            ScalarType::Uint16 => Ty::Int { min: 0, max: u16::MAX as i128 },
            ScalarType::Uint32 => Ty::Int { min: 0, max: u32::MAX as i128 },
            ScalarType::Uint64 => Ty::Int { min: 0, max: u64::MAX as i128 },
            ScalarType::Float32 => Ty::Float { f32: true },
            ScalarType::Float64 => Ty::Float { f32: false },
            ScalarType::Bool => Ty::Bool,
            ScalarType::Datetime => Ty::DateTime,
            ScalarType::Date => Ty::Date,
            ScalarType::Uuid => Ty::Uuid,
            ScalarType::String | ScalarType::Unspecified => Ty::Str,
        },
        Some(Kind::Decimal(d)) => Ty::Decimal { precision: d.precision, scale: d.scale },
        Some(Kind::Array(inner)) => Ty::Array(Box::new(compile(inner))),
        Some(Kind::Record(r)) => Ty::Record(Schema::new(&r.fields, false)),
        Some(Kind::Optional(inner)) => Ty::Optional(Box::new(compile(inner))),
        None => Ty::Str,
    }
}

/// Where a value lies in a record, rendered only when something is wrong there (this runs for every value).
#[derive(Clone, Copy)]
enum Loc<'a> {
    Root,
    Field(&'a Loc<'a>, &'a str),
    Index(&'a Loc<'a>, usize),
}

impl Loc<'_> {
    fn render(&self) -> String {
        match self {
            Loc::Root => String::new(),
            Loc::Field(Loc::Root, name) => name.to_string(),
            Loc::Field(parent, name) => format!("{}.{name}", parent.render()),
            Loc::Index(parent, i) => format!("{}[{i}]", parent.render()),
        }
    }
}

/// A record (JSON object) of `schema`; records what is wrong in `errors` and carries on.
struct RecordSeed<'s, 'e, 'r> {
    schema: &'s Schema,
    loc: Loc<'s>,
    errors: &'e mut Vec<FieldError>,
    /// Top level only: where key fields' values go.
    keys: Option<&'e mut Keys<'r>>,
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_, '_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_, '_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        let schema = self.schema;
        let mut seen = Seen::new(schema.fields.len());
        while let Some(Name(name)) = map.next_key::<Name<'de>>()? {
            let Some(i) = schema.position(&name) else {
                if !schema.allow_extra {
                    let field = Loc::Field(&self.loc, &name).render();
                    self.errors.push(FieldError { field, reason: "not a field of the stream".into() });
                }
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            if seen.mark(i) {
                self.errors.push(FieldError { field: Loc::Field(&self.loc, &name).render(), reason: "given twice".into() });
            }
            let f = &schema.fields[i];
            let loc = Loc::Field(&self.loc, &f.name);
            match (&f.ty, self.keys.as_deref_mut()) {
                // Key fields and top-level decimals are read as raw text: a key exactly as written, a decimal's digits
                // exactly (a float would round them).
                (ty, keys) if f.key || matches!(ty, Ty::Decimal { .. }) => {
                    let raw: &'de RawValue = map.next_value()?;
                    check_raw(ty, raw, loc, self.errors);
                    if let (true, Some(keys)) = (f.key, keys) {
                        keys.set(i, key_text(raw));
                    }
                }
                (ty, _) => map.next_value_seed(ValueSeed { ty, loc, errors: self.errors })?,
            }
        }
        for (i, f) in schema.fields.iter().enumerate() {
            if !seen.has(i) && f.required {
                self.errors.push(FieldError { field: Loc::Field(&self.loc, &f.name).render(), reason: "required, missing".into() });
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.errors.push(FieldError { field: self.loc.render(), reason: "expected an object, got an array".into() });
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.errors.push(FieldError { field: self.loc.render(), reason: "expected an object, got a string".into() });
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.not_object("a number")
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.not_object("a number")
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.not_object("a number")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.not_object("a boolean")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.not_object("null")
    }
}

impl RecordSeed<'_, '_, '_> {
    fn not_object<E>(self, got: &str) -> Result<(), E> {
        self.errors.push(FieldError { field: self.loc.render(), reason: format!("expected an object, got {got}") });
        Ok(())
    }
}

/// A key's text: a string's content (borrowed unless it has escapes), anything else as written.
fn key_text(raw: &RawValue) -> Cow<'_, str> {
    let text = raw.get();
    if !text.starts_with('"') {
        return Cow::Borrowed(text);
    }
    match serde_json::from_str::<&str>(text) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => serde_json::from_str::<String>(text).map_or(Cow::Borrowed(text), Cow::Owned),
    }
}

fn check_raw(ty: &Ty, raw: &RawValue, loc: Loc<'_>, errors: &mut Vec<FieldError>) {
    if let Ty::Decimal { precision, scale } = ty {
        let text = raw.get();
        let digits = serde_json::from_str::<&str>(text).unwrap_or(text);
        if text == "null" {
            errors.push(FieldError { field: loc.render(), reason: "required, got null".into() });
        } else if let Err(reason) = check_decimal(digits, *precision, *scale) {
            errors.push(FieldError { field: loc.render(), reason });
        }
        return;
    }
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let _ = ValueSeed { ty, loc, errors }.deserialize(&mut de);
}

/// A decimal as text: an optional sign, digits, an optional point and digits, within precision and scale.
pub fn check_decimal(s: &str, precision: u32, scale: u32) -> Result<(), String> {
    let body = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let ok = !int.is_empty() && int.bytes().all(|b| b.is_ascii_digit()) && frac.bytes().all(|b| b.is_ascii_digit());
    if !ok {
        return Err(format!("expected a decimal number, got {s}"));
    }
    let int_digits = int.trim_start_matches('0').len() as u32;
    let frac_digits = frac.trim_end_matches('0').len() as u32;
    if frac_digits > scale || int_digits > precision - scale {
        return Err(format!("{s} does not fit Decimal({precision}, {scale})"));
    }
    Ok(())
}

/// RFC 3339, as the ingest API requires.
pub fn check_datetime(s: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

pub fn check_date(s: &str) -> bool {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() && s.len() == 10
}

pub fn check_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| if matches!(i, 8 | 13 | 18 | 23) { *c == b'-' } else { c.is_ascii_hexdigit() })
}

/// One value of type `ty`.
struct ValueSeed<'s, 'e> {
    ty: &'s Ty,
    loc: Loc<'s>,
    errors: &'e mut Vec<FieldError>,
}

impl ValueSeed<'_, '_> {
    fn wrong<E>(self, got: &str) -> Result<(), E> {
        let want = match self.ty {
            Ty::Str => "a string",
            Ty::Int { .. } => "an integer",
            Ty::Float { .. } => "a number",
            Ty::Bool => "true or false",
            Ty::DateTime => "an RFC 3339 date-time string",
            Ty::Date => "a YYYY-MM-DD date string",
            Ty::Uuid => "a UUID string",
            Ty::Decimal { .. } => "a decimal number",
            Ty::Array(_) => "an array",
            Ty::Record(_) => "an object",
            Ty::Optional(_) => "a value or null",
        };
        self.errors.push(FieldError { field: self.loc.render(), reason: format!("expected {want}, got {got}") });
        Ok(())
    }

    fn bad<E>(self, reason: String) -> Result<(), E> {
        self.errors.push(FieldError { field: self.loc.render(), reason });
        Ok(())
    }

    fn int<E>(self, v: i128) -> Result<(), E> {
        match self.ty {
            Ty::Int { min, max } if v < *min || v > *max => self.bad(format!("{v} is out of range ({min} to {max})")),
            Ty::Int { .. } | Ty::Float { .. } => Ok(()),
            Ty::Decimal { precision, scale } => match check_decimal(&v.to_string(), *precision, *scale) {
                Ok(()) => Ok(()),
                Err(r) => self.bad(r),
            },
            _ => self.wrong("a number"),
        }
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.ty {
            Ty::Optional(inner) => d.deserialize_any(ValueSeed { ty: inner, loc: self.loc, errors: self.errors }.nullable()),
            _ => d.deserialize_any(self),
        }
    }
}

/// The same seed, taking null.
struct Nullable<'s, 'e>(ValueSeed<'s, 'e>);

impl<'s, 'e> ValueSeed<'s, 'e> {
    fn nullable(self) -> Nullable<'s, 'e> {
        Nullable(self)
    }
}

macro_rules! forward {
    ($($m:ident($t:ty)),*) => {$(
        fn $m<E: de::Error>(self, v: $t) -> Result<(), E> { self.0.$m(v) }
    )*};
}

impl<'de> Visitor<'de> for Nullable<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a value or null")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    forward!(visit_bool(bool), visit_i64(i64), visit_u64(u64), visit_f64(f64), visit_str(&str));
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        self.0.visit_seq(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.0.visit_map(map)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a value of the field's type")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.bad("required, got null".into())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        match self.ty {
            Ty::Bool => Ok(()),
            _ => self.wrong("a boolean"),
        }
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.int(v as i128)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.int(v as i128)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        match self.ty {
            Ty::Float { f32: true } if v.is_finite() && v.abs() > f32::MAX as f64 => self.bad(format!("{v} is out of range for Float32")),
            Ty::Float { .. } => Ok(()),
            Ty::Int { .. } => self.bad(format!("expected an integer, got {v}")),
            Ty::Decimal { precision, scale } => match check_decimal(&v.to_string(), *precision, *scale) {
                Ok(()) => Ok(()),
                Err(r) => self.bad(r),
            },
            _ => self.wrong("a number"),
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        match self.ty {
            Ty::Str => Ok(()),
            Ty::DateTime if check_datetime(v) => Ok(()),
            Ty::DateTime => self.bad(format!("{v:?} is not an RFC 3339 date-time (like 2026-11-25T10:00:00Z)")),
            Ty::Date if check_date(v) => Ok(()),
            Ty::Date => self.bad(format!("{v:?} is not a YYYY-MM-DD date")),
            Ty::Uuid if check_uuid(v) => Ok(()),
            Ty::Uuid => self.bad(format!("{v:?} is not a UUID")),
            Ty::Decimal { precision, scale } => match check_decimal(v, *precision, *scale) {
                Ok(()) => Ok(()),
                Err(r) => self.bad(r),
            },
            _ => self.wrong("a string"),
        }
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Ty::Array(elem) = self.ty else {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return self.wrong("an array");
        };
        let parent = self.loc;
        let mut i = 0;
        loop {
            if seq.next_element_seed(ValueSeed { ty: elem, loc: Loc::Index(&parent, i), errors: self.errors })?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        match self.ty {
            Ty::Record(schema) => RecordSeed { schema, loc: self.loc, errors: self.errors, keys: None }.visit_map(map),
            _ => {
                let mut map = map;
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                self.wrong("an object")
            }
        }
    }
}

#[cfg(test)]
#[path = "schema_tests.rs"]
mod tests;
