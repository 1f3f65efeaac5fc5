//! Map(K, V) (ClickHouse 21.8): a JSON object. Its keys are JSON strings, each checked as K: an integer key as the
//! decimal text of an integer within K's range (canonical: no sign but `-`, no leading zeros, so that two keys
//! never name one integer), any other key as K's string value (a string, FixedString, UUID, date or date-time). A
//! key given twice is refused. Each value is checked as V, nested maps, arrays and optionals included. Rows get a
//! JSON object with keys and values as K and V write them (a date-time key in ClickHouse's form, an integer key as
//! its text, which ClickHouse reads for an integer key).

use super::record_fields::Name;
use super::value::{At, Loc, ValueSeed};
use super::{write_value, Family, Refusal, Scalar, Ty};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub struct Map {
    pub key: Box<Ty>,
    pub value: Box<Ty>,
}

impl Map {
    /// The check of one key.
    fn check_key(&self, key: &str) -> Result<(), String> {
        let scalar = match &*self.key {
            Ty::Int(_) => {
                let digits = key.strip_prefix('-').unwrap_or(key);
                let canonical = !digits.is_empty()
                    && digits.bytes().all(|c| c.is_ascii_digit())
                    && (digits == "0" || !digits.starts_with('0'))
                    && key != "-0";
                match key.parse::<i128>() {
                    Ok(n) if canonical => Scalar::Int(n),
                    _ => return Err(format!("map key {key:?} is not an integer in decimal (like \"7\")")),
                }
            }
            _ => Scalar::Str(key),
        };
        match self.key.check(scalar) {
            Ok(()) => Ok(()),
            Err(Refusal::Wrong) => Err(format!("map key {key:?}: expected {}", self.key.want())),
            Err(Refusal::Bad(reason)) => Err(format!("map key: {reason}")),
        }
    }
}

impl Family for Map {
    fn want(&self) -> &'static str {
        "an object"
    }
    fn check_map<'de, A: MapAccess<'de>>(&self, mut map: A, at: At<'_, '_>) -> Result<(), A::Error> {
        let At { loc: parent, errors } = at;
        let mut seen: HashSet<Cow<'de, str>> = HashSet::new();
        while let Some(Name(key)) = map.next_key::<Name<'de>>()? {
            let loc = Loc::Key(&parent, &key);
            if let Err(reason) = self.check_key(&key) {
                At { loc, errors: &mut *errors }.push(reason);
            }
            map.next_value_seed(ValueSeed { ty: &self.value, at: At { loc, errors: &mut *errors } })?;
            if !seen.insert(key.clone()) {
                At { loc: Loc::Key(&parent, &key), errors: &mut *errors }.push("map key given twice".into());
            }
        }
        Ok(())
    }
    fn verbatim(&self) -> bool {
        false
    }
    fn write(&self, raw: &RawValue, out: &mut Vec<u8>) -> Result<(), String> {
        let text = raw.get();
        let mut entries = Vec::new();
        let mut de = serde_json::Deserializer::from_str(text);
        de.deserialize_map(Entries(&mut entries)).map_err(|_| format!("expected an object, got {text}"))?;
        let mut seen = HashSet::with_capacity(entries.len());
        let mut key_text = Vec::new();
        out.push(b'{');
        for (i, (key, value)) in entries.iter().enumerate() {
            self.check_key(key)?;
            key_text.clear();
            if self.key.verbatim() || matches!(*self.key, Ty::Int(_)) {
                serde_json::to_writer(&mut key_text, key.as_ref()).expect("writing to a Vec");
            } else {
                let quoted = RawValue::from_string(serde_json::to_string(key.as_ref()).expect("a string"))
                    .expect("a JSON string");
                write_value(&self.key, &quoted, &mut key_text).map_err(|e| format!("map key {key:?}: {e}"))?;
            }
            if !seen.insert(key_text.clone()) {
                return Err(format!("map key {key:?} given twice"));
            }
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&key_text);
            out.push(b':');
            write_value(&self.value, value, out).map_err(|e| format!("[{key:?}]: {e}"))?;
        }
        out.push(b'}');
        Ok(())
    }
}

/// An object's entries in order, values unparsed.
pub(super) struct Entries<'v, 'de>(pub(super) &'v mut Vec<(Cow<'de, str>, &'de RawValue)>);

impl<'de> Visitor<'de> for Entries<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(Name(k)) = map.next_key::<Name<'de>>()? {
            self.0.push((k, map.next_value()?));
        }
        Ok(())
    }
}
