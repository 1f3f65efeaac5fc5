//! Optional(T), and any nullable field: null or a value of T. In rows a null is written as null (as `[]` or `{}`
//! where T is a list, map or JSON object, which ClickHouse cannot make Nullable), a value as T writes it (see
//! `write_value`).

use super::value::{At, ValueSeed};
use super::{write_value, Family, Ty};
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub struct Optional(pub Box<Ty>);

impl Optional {
    /// The ingest check of a value: null, or what T takes.
    pub(super) fn seed<'s, 'e>(&'s self, at: At<'s, 'e>) -> Nullable<'s, 'e> {
        Nullable(ValueSeed { ty: &self.0, at })
    }
}

impl Optional {
    /// What a null is written as: ClickHouse has no Nullable of a list, map or JSON object, whose columns keep their
    /// plain type (see the control plane's column types), so a null there is the empty value.
    pub fn null(&self) -> &'static [u8] {
        match &*self.0 {
            Ty::Array(_) => b"[]",
            Ty::Map(_) | Ty::Json(_) => b"{}",
            _ => b"null",
        }
    }
}

impl Family for Optional {
    fn want(&self) -> &'static str {
        "a value or null"
    }
    fn verbatim(&self) -> bool {
        self.0.verbatim() && self.null() == b"null"
    }
    fn write(&self, raw: &RawValue, out: &mut Vec<u8>) -> Result<(), String> {
        write_value(&self.0, raw, out)
    }
}

/// T's seed, taking null.
pub(super) struct Nullable<'s, 'e>(ValueSeed<'s, 'e>);

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
