//! The ingest check's walk over one value: each JSON token is handed to the value's family as it is read, so a
//! record is checked in one pass without building a tree.

use super::{Family, Refusal, Scalar, Ty};
use crate::schema::FieldError;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;

/// Where a value lies in a record, rendered only when something is wrong there (this runs for every value).
#[derive(Clone, Copy)]
pub enum Loc<'a> {
    Root,
    Field(&'a Loc<'a>, &'a str),
    Index(&'a Loc<'a>, usize),
    /// A map's key: `field["key"]`.
    Key(&'a Loc<'a>, &'a str),
}

impl Loc<'_> {
    pub fn render(&self) -> String {
        match self {
            Loc::Root => String::new(),
            Loc::Field(Loc::Root, name) => name.to_string(),
            Loc::Field(parent, name) => format!("{}.{name}", parent.render()),
            Loc::Index(parent, i) => format!("{}[{i}]", parent.render()),
            Loc::Key(parent, key) => format!("{}[{}]", parent.render(), serde_json::Value::from(*key)),
        }
    }
}

/// A value's place and where its errors go.
pub struct At<'s, 'e> {
    pub loc: Loc<'s>,
    pub errors: &'e mut Vec<FieldError>,
}

impl At<'_, '_> {
    pub fn wrong<E>(self, want: &str, got: &str) -> Result<(), E> {
        self.bad(format!("expected {want}, got {got}"))
    }

    pub fn bad<E>(self, reason: String) -> Result<(), E> {
        self.push(reason);
        Ok(())
    }

    pub fn push(self, reason: String) {
        self.errors.push(FieldError { field: self.loc.render(), reason });
    }
}

/// One value of type `ty`; records what is wrong in `at.errors` and carries on.
pub struct ValueSeed<'s, 'e> {
    pub ty: &'s Ty,
    pub at: At<'s, 'e>,
}

impl ValueSeed<'_, '_> {
    fn scalar<E>(self, v: Scalar<'_>) -> Result<(), E> {
        match self.ty.check(v) {
            Ok(()) => Ok(()),
            Err(Refusal::Wrong) => self.at.wrong(self.ty.want(), v.kind()),
            Err(Refusal::Bad(reason)) => self.at.bad(reason),
        }
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.ty {
            Ty::Optional(o) => d.deserialize_any(o.seed(self.at)),
            _ => d.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a value of the field's type")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.at.bad("required, got null".into())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.scalar(Scalar::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.scalar(Scalar::Int(v as i128))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.scalar(Scalar::Int(v as i128))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.scalar(Scalar::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.scalar(Scalar::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        self.ty.check_seq(seq, self.at)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.ty.check_map(map, self.at)
    }
}

/// Checks a value already read as raw text (a key field or a top-level decimal, see `record`).
pub fn check_raw(ty: &Ty, raw: &RawValue, at: At<'_, '_>) {
    if let Ty::Decimal(d) = ty {
        if let Err(reason) = d.check_raw(raw) {
            at.push(reason);
        }
        return;
    }
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let _ = ValueSeed { ty, at }.deserialize(&mut de);
}
