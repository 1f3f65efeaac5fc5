//! Records: a JSON object of declared fields (a stream's records, and nested records), written to rows as tuples.
//! `Schema` is the compiled record type.

use super::record_fields::{Keys, Name, Seen};
use super::value::{check_raw, push_error, At, Loc, ValueSeed};
use super::{left_out, write_value, Family, Ty};
use crate::schema::{FieldError, Schema};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

impl Family for Schema {
    fn want(&self) -> &'static str {
        "an object"
    }
    fn check_map<'de, A: MapAccess<'de>>(&self, map: A, at: At<'_, '_>) -> Result<(), A::Error> {
        RecordSeed { schema: self, loc: at.loc, errors: at.errors, keys: None }.visit_map(map)
    }
    fn verbatim(&self) -> bool {
        false
    }
    fn write(&self, raw: &RawValue, out: &mut Vec<u8>) -> Result<(), String> {
        let text = raw.get();
        let index: HashMap<String, usize> = self.fields.iter().enumerate().map(|(i, f)| (f.name.clone(), i)).collect();
        let mut values = vec![None; self.fields.len()];
        let mut de = serde_json::Deserializer::from_str(text);
        de.deserialize_map(Pick { index: &index, values: &mut values }).map_err(|_| format!("expected an object, got {text}"))?;
        out.push(b'[');
        for (i, (f, v)) in self.fields.iter().zip(values).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match v {
                Some(v) => write_value(&f.ty, v, out).map_err(|e| format!("{}: {e}", f.name))?,
                None if !f.required => out.extend_from_slice(left_out(&f.ty)),
                None => return Err(format!("{}: missing", f.name)),
            }
        }
        out.push(b']');
        Ok(())
    }
}

/// Takes the raw values of the wanted top-level fields of an object, skipping the rest unparsed.
pub(crate) struct Pick<'i, 'v, 'de> {
    pub index: &'i HashMap<String, usize>,
    pub values: &'v mut Vec<Option<&'de RawValue>>,
}

impl<'de> Visitor<'de> for Pick<'_, '_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(k) = map.next_key::<Cow<'de, str>>()? {
            match self.index.get(k.as_ref()) {
                Some(&i) => self.values[i] = Some(map.next_value()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// The ingest check of a record (JSON object) of `schema`; records what is wrong in `errors` and carries on.
pub(crate) struct RecordSeed<'s, 'e, 'r> {
    pub schema: &'s Schema,
    pub loc: Loc<'s>,
    pub errors: &'e mut Vec<FieldError>,
    /// Top level only: where key fields' values go.
    pub keys: Option<&'e mut Keys<'r>>,
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
                    push_error(self.errors, || FieldError { field: Loc::Field(&self.loc, &name).render(), reason: "not a field of the stream".into() });
                }
                // As raw text, which serde_json checks is UTF-8 (IgnoredAny does not): an extra field is dropped
                // only when the record is sent, and a record that is not UTF-8 must be refused here.
                map.next_value::<&'de RawValue>()?;
                continue;
            };
            if seen.mark(i) {
                push_error(self.errors, || FieldError { field: Loc::Field(&self.loc, &name).render(), reason: "given twice".into() });
            }
            let f = &schema.fields[i];
            let loc = Loc::Field(&self.loc, &f.name);
            match (&f.ty, self.keys.as_deref_mut()) {
                // Key fields and top-level decimals are read as raw text: a key exactly as written, a decimal's digits
                // exactly (a float would round them).
                (ty, keys) if f.key || matches!(ty, Ty::Decimal(_)) => {
                    let raw: &'de RawValue = map.next_value()?;
                    check_raw(ty, raw, At { loc, errors: self.errors });
                    if let (true, Some(keys)) = (f.key, keys) {
                        let text = key_text(raw);
                        keys.set(i, if let Ty::Enum(e) = ty { e.key_form(text) } else { text });
                    }
                }
                (ty, _) => map.next_value_seed(ValueSeed { ty, at: At { loc, errors: self.errors } })?,
            }
        }
        for (i, f) in schema.fields.iter().enumerate() {
            if !seen.has(i) && f.required {
                push_error(self.errors, || FieldError { field: Loc::Field(&self.loc, &f.name).render(), reason: "required, missing".into() });
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.not_object("an array")
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.not_object("a string")
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
        push_error(self.errors, || FieldError { field: self.loc.render(), reason: format!("expected an object, got {got}") });
        Ok(())
    }
}

/// A key's text: a string's content (borrowed unless it has escapes), anything else as written.
fn key_text(raw: &RawValue) -> Cow<'_, str> {
    super::string_of(raw).unwrap_or(Cow::Borrowed(raw.get()))
}
