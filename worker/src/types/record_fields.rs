//! What the check of one record keeps track of (see `record`): its key fields' values, the fields it gave, and their
//! names, without allocating for the usual record.

use crate::schema::Schema;
use serde::de::{self, Deserializer, Visitor};
use std::borrow::Cow;
use std::fmt;

/// The key fields' values of one record, by field position (most streams have one: kept without allocating).
#[derive(Default)]
pub(crate) struct Keys<'r> {
    first: Option<(usize, Cow<'r, str>)>,
    rest: Vec<(usize, Cow<'r, str>)>,
}

impl<'r> Keys<'r> {
    pub(crate) fn set(&mut self, i: usize, text: Cow<'r, str>) {
        match self.first {
            None => self.first = Some((i, text)),
            Some(_) => self.rest.push((i, text)),
        }
    }

    /// Every key field in declaration order, a missing one as empty, joined by `|`.
    pub(crate) fn joined(self, schema: &Schema) -> Option<Cow<'r, [u8]>> {
        let key_count = schema.fields.iter().filter(|f| f.key).count();
        match (key_count, self.first) {
            (0, _) => None,
            (1, Some((_, text))) => Some(match text {
                Cow::Borrowed(t) => Cow::Borrowed(t.as_bytes()),
                Cow::Owned(t) => Cow::Owned(t.into_bytes()),
            }),
            (_, first) => {
                let found: Vec<(usize, Cow<'r, str>)> = first.into_iter().chain(self.rest).collect();
                let parts: Vec<&str> = schema
                    .fields
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| f.key)
                    .map(|(i, _)| found.iter().find(|(j, _)| *j == i).map_or("", |(_, t)| t.as_ref()))
                    .collect();
                Some(Cow::Owned(parts.join("|").into_bytes()))
            }
        }
    }
}

/// A field name, borrowed from the record unless it has escapes.
pub(crate) struct Name<'r>(pub(crate) Cow<'r, str>);

impl<'de> de::Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Which fields a record gave: bits for up to 64 fields, else a vector.
pub(crate) enum Seen {
    Bits(u64),
    Many(Vec<bool>),
}

impl Seen {
    pub(crate) fn new(n: usize) -> Self {
        if n <= 64 {
            Seen::Bits(0)
        } else {
            Seen::Many(vec![false; n])
        }
    }

    /// Marks field `i`; true when it was already marked.
    pub(crate) fn mark(&mut self, i: usize) -> bool {
        match self {
            Seen::Bits(b) => std::mem::replace(b, *b | 1 << i) & (1 << i) != 0,
            Seen::Many(v) => std::mem::replace(&mut v[i], true),
        }
    }

    pub(crate) fn has(&self, i: usize) -> bool {
        match self {
            Seen::Bits(b) => b & (1 << i) != 0,
            Seen::Many(v) => v[i],
        }
    }
}
