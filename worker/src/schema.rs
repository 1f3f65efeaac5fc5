//! A stream's fields, compiled for checking records: every error of a record is found in one pass over its JSON,
//! without building a tree, and the key is taken on the way. Each type's check lives with its family in `types`.

use crate::types::value::Loc;
use crate::types::{of_field, Keys, RecordSeed};
use millrace_proto::v1::Field;
use serde::de::DeserializeSeed;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::HashMap;

pub use crate::types::{check_date, check_datetime, check_decimal, check_uuid, compile, Ty};

// The unit tests name the contract's types through this module.
#[cfg(test)]
use millrace_proto::v1::{field_type::Kind, FieldType, ScalarType};

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
                let mut ty = of_field(f);
                // ClickHouse computes a MATERIALIZED or ALIAS column and fills a DEFAULT one: a record may leave such
                // a field out or set it null (a Python model does unless given); a value it carries is checked.
                // `rows` never writes a computed one, nor a DEFAULT one left out or null.
                let filled = !f.materialized.is_empty() || !f.alias.is_empty() || !f.default_expression.is_empty();
                if filled && !matches!(ty, Ty::Optional(_)) {
                    ty = ty.nullable();
                }
                let required = !matches!(ty, Ty::Optional(_));
                FieldSpec { name: f.name.clone(), ty, required, key: f.key }
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
    pub(crate) fn position(&self, name: &str) -> Option<usize> {
        if self.fields.len() <= 16 {
            self.fields.iter().position(|f| f.name == name)
        } else {
            self.index.get(name).copied()
        }
    }

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

#[cfg(test)]
#[path = "schema_tests.rs"]
mod tests;
