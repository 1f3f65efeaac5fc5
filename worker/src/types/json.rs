//! JSON (ClickHouse 24.8's JSON column): any JSON object; at the top level nothing else ("expected a JSON object").
//! A typed path (`typed_paths`, Fields whose names may be dotted paths `a.b.c`) constrains the value found there,
//! when present, to its field's type (checked as that type is anywhere, with its nullability); a path is met through
//! nested objects and through dotted keys alike (`{"a":{"b":1}}` and `{"a.b":1}`, as ClickHouse reads both), not
//! inside arrays. Objects and arrays nested deeper than 64 levels are refused (hostile input), the top object being
//! level 1. Rows get the object without whitespace outside strings, each typed path's value as its type writes it
//! (a date-time as `YYYY-MM-DD hh:mm:ss` in UTC, a boolean as 0/1, ...; a value its type would store wrongly, a
//! date-time past 2105 say, is refused as anywhere else): current servers read an object into a JSON column in
//! JSONEachRow.

use super::map::Entries;
use super::value::{push_error, At, Loc, ValueSeed};
use super::{of_field, write_value, Family, Ty};
use crate::schema::FieldError;
use millrace_proto::v1::JsonType;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::fmt;

/// The deepest nesting of objects and arrays a JSON value may have.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub struct Json {
    paths: Paths,
}

/// The typed paths as a tree of path segments.
#[derive(Debug, Clone, PartialEq, Default)]
struct Paths {
    ty: Option<Box<Ty>>,
    children: HashMap<String, Paths>,
}

impl Paths {
    /// The node a key leads to (a dotted key through several).
    fn descend(&self, key: &str) -> Option<&Paths> {
        key.split('.').try_fold(self, |node, segment| node.children.get(segment))
    }
}

impl Json {
    pub fn new(j: &JsonType) -> Self {
        let mut paths = Paths::default();
        for f in &j.typed_paths {
            let node = f.name.split('.').fold(&mut paths, |node, segment| node.children.entry(segment.to_string()).or_default());
            node.ty = Some(Box::new(of_field(f)));
        }
        Json { paths }
    }
}

impl Family for Json {
    fn want(&self) -> &'static str {
        "a JSON object"
    }
    fn check_map<'de, A: MapAccess<'de>>(&self, map: A, at: At<'_, '_>) -> Result<(), A::Error> {
        let mut st = State { errors: at.errors, root: at.loc, too_deep: false };
        Walk { node: Some(&self.paths), depth: 1, loc: at.loc, st: &mut st }.visit_map(map)
    }
    fn verbatim(&self) -> bool {
        false
    }
    fn write(&self, raw: &RawValue, out: &mut Vec<u8>) -> Result<(), String> {
        let text = raw.get();
        if !text.starts_with('{') {
            return Err(format!("expected a JSON object, got {}", text.chars().take(40).collect::<String>()));
        }
        match self.paths.children.is_empty() {
            true => compact(text.as_bytes(), out),
            false => write_object(&self.paths, raw, "", out)?,
        }
        Ok(())
    }
}

/// An object whose typed paths lie at or below `node` (`path`: the dotted path to it): each typed path's value
/// written as its type writes it (a date-time in ClickHouse's form, a boolean as 0/1, and refused where its type
/// would store it wrongly), the rest without whitespace.
fn write_object(node: &Paths, raw: &RawValue, path: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let mut entries = Vec::new();
    let mut de = serde_json::Deserializer::from_str(raw.get());
    de.deserialize_map(Entries(&mut entries)).map_err(|_| format!("{path}: expected an object"))?;
    out.push(b'{');
    for (i, (key, value)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, key.as_ref()).expect("writing to a Vec");
        out.push(b':');
        match node.descend(key) {
            Some(Paths { ty: Some(ty), .. }) => write_value(ty, value, out).map_err(|e| format!("{path}{key}: {e}"))?,
            Some(below) if !below.children.is_empty() && value.get().starts_with('{') => {
                write_object(below, value, &format!("{path}{key}."), out)?
            }
            _ => compact(value.get().as_bytes(), out),
        }
    }
    out.push(b'}');
    Ok(())
}

/// JSON text without the whitespace outside its strings.
pub fn compact(text: &[u8], out: &mut Vec<u8>) {
    if !text.iter().any(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r')) {
        out.extend_from_slice(text);
        return;
    }
    let (mut in_string, mut escaped) = (false, false);
    for &c in text {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
            continue;
        } else if c == b'"' {
            in_string = true;
        }
        out.push(c);
    }
}

/// What the walk of one JSON value shares: where errors go, and whether its depth was already refused.
struct State<'s, 'e> {
    errors: &'e mut Vec<FieldError>,
    root: Loc<'s>,
    too_deep: bool,
}

/// One value inside the JSON value, at `depth` if it is an object or an array; `node` is the typed paths below it.
struct Walk<'p, 'w, 's, 'e> {
    node: Option<&'p Paths>,
    depth: usize,
    loc: Loc<'p>,
    st: &'w mut State<'s, 'e>,
}

impl Walk<'_, '_, '_, '_> {
    /// Whether this container is one level too many (refused once per value).
    fn too_deep(&mut self) -> bool {
        if self.depth <= MAX_DEPTH {
            return false;
        }
        if !self.st.too_deep {
            self.st.too_deep = true;
            let field = self.st.root.render();
            push_error(self.st.errors, || FieldError { field, reason: format!("nested deeper than {MAX_DEPTH} levels") });
        }
        true
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_, '_, '_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_, '_, '_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        if self.too_deep() {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(());
        }
        for i in 0.. {
            let item = Walk { node: None, depth: self.depth + 1, loc: Loc::Index(&self.loc, i), st: &mut *self.st };
            if seq.next_element_seed(item)?.is_none() {
                break;
            }
        }
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        if self.too_deep() {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(());
        }
        while let Some(super::record_fields::Name(key)) = map.next_key()? {
            let loc = Loc::Field(&self.loc, &key);
            match self.node.and_then(|n| n.descend(&key)) {
                Some(Paths { ty: Some(ty), .. }) => map.next_value_seed(ValueSeed { ty, at: At { loc, errors: &mut *self.st.errors } })?,
                node => map.next_value_seed(Walk { node, depth: self.depth + 1, loc, st: &mut *self.st })?,
            }
        }
        Ok(())
    }
}
