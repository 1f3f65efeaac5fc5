//! The ingest check's walk over one value: each JSON token is handed to the value's family as it is read, so a
//! record is checked in one pass without building a tree.

use super::{Decimal, Family, Refusal, Scalar, Ty};
use crate::schema::FieldError;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;

/// The errors kept for one record, and a last one saying there were more: a record refused for a million wrong
/// items would otherwise hold a million errors (about 100 bytes of memory for each byte of the record).
pub const MAX_ERRORS: usize = 100;

/// Records an error of a record, unless it has `MAX_ERRORS` already (the error is made only when kept).
pub fn push_error(errors: &mut Vec<FieldError>, error: impl FnOnce() -> FieldError) {
    match errors.len().cmp(&MAX_ERRORS) {
        std::cmp::Ordering::Less => errors.push(error()),
        std::cmp::Ordering::Equal => errors.push(FieldError { field: String::new(), reason: format!("more than {MAX_ERRORS} errors: the rest are not listed") }),
        std::cmp::Ordering::Greater => {}
    }
}

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
        push_error(self.errors, || FieldError { field: self.loc.render(), reason });
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
            Ty::Decimal(dec) => raw_decimal(dec, false, d, self.at),
            Ty::Optional(o) => match &*o.0 {
                Ty::Decimal(dec) => raw_decimal(dec, true, d, self.at),
                _ => d.deserialize_any(o.seed(self.at)),
            },
            _ => d.deserialize_any(self),
        }
    }
}

/// A decimal anywhere (optional, in a list, a map, a record, a JSON path) is checked on its digits as written, as
/// rows write them: read as a float, 1e-400 or 0.1000000000000000001 would pass as 0 or 0.1.
fn raw_decimal<'de, D: Deserializer<'de>>(dec: &Decimal, optional: bool, d: D, at: At<'_, '_>) -> Result<(), D::Error> {
    let raw = <&'de RawValue as serde::Deserialize>::deserialize(d)?;
    if !(optional && raw.get() == "null") {
        if let Err(reason) = dec.check_raw(raw) {
            at.push(reason);
        }
    }
    Ok(())
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
    // What serde_json cannot read (a number beyond f64, 1e400) must be refused, not dropped with its error.
    let At { loc, errors } = at;
    if let Err(e) = (ValueSeed { ty, at: At { loc, errors: &mut *errors } }).deserialize(&mut de) {
        At { loc, errors }.push(format!("cannot be read: {e}"));
    }
}
