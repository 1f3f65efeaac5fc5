//! What goes to the broker: output keys, and dead letters.

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// The key of an output record: its key fields' values (joined by `|` when there are several), or the source
/// record's key when the output lacks them. Written into `buf` (reused across records: this runs for each).
pub fn output_key<'k>(value: &[u8], key_fields: &[String], source_key: Option<&'k [u8]>, buf: &'k mut Vec<u8>) -> Option<&'k [u8]> {
    if key_fields.is_empty() {
        return source_key;
    }
    let mut on_stack = [None; 8];
    let mut on_heap = Vec::new();
    let found: &mut [Option<&RawValue>] = if key_fields.len() <= on_stack.len() {
        &mut on_stack[..key_fields.len()]
    } else {
        on_heap.resize(key_fields.len(), None);
        &mut on_heap
    };
    let mut de = serde_json::Deserializer::from_slice(value);
    if (KeyFields { names: key_fields, found }).deserialize(&mut de).is_err() {
        return source_key;
    }
    let found: &[Option<&RawValue>] = if key_fields.len() <= on_stack.len() { &on_stack[..key_fields.len()] } else { &on_heap };
    buf.clear();
    for (i, raw) in found.iter().enumerate() {
        let Some(raw) = raw else { return source_key };
        if i > 0 {
            buf.push(b'|');
        }
        // Strings by their content, numbers and the rest by their JSON text.
        match serde_json::from_str::<&str>(raw.get()) {
            Ok(s) => buf.extend_from_slice(s.as_bytes()),
            Err(_) => match serde_json::from_str::<String>(raw.get()) {
                Ok(s) => buf.extend_from_slice(s.as_bytes()),
                Err(_) => buf.extend_from_slice(raw.get().as_bytes()),
            },
        }
    }
    Some(buf.as_slice())
}

/// Reads only the named top-level fields of a JSON object, skipping the others unparsed and stopping once all
/// are found: this runs for every output record, whose key usually comes first.
struct KeyFields<'f, 'de> {
    names: &'f [String],
    found: &'f mut [Option<&'de RawValue>],
}

/// An object key, borrowed where it has no escapes.
struct FieldName<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for FieldName<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FieldName<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(FieldName(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(FieldName(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> DeserializeSeed<'de> for KeyFields<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for KeyFields<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut missing = self.names.len();
        while let Some(FieldName(name)) = map.next_key()? {
            match self.names.iter().position(|f| *f == name) {
                Some(i) => {
                    if self.found[i].is_none() {
                        missing -= 1;
                    }
                    self.found[i] = Some(map.next_value::<&RawValue>()?);
                    if missing == 0 {
                        // The rest is skipped without reading its names (an early error would cost more).
                        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                        return Ok(());
                    }
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// A dead letter, as written to the dead letter topic: under moose's (camelCase) names, so that MooseStack apps'
/// dead letter consumers read them unchanged.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter<'a> {
    /// The input record as it was: embedded JSON when it parses, else a string.
    pub original_record: OriginalRecord<'a>,
    pub error_message: &'a str,
    pub error_type: &'a str,
    pub failed_at: String,
    pub source: &'static str,
    pub function: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// Set when the original record was cut so that the dead letter fits the broker's limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_record_truncated: Option<bool>,
    /// The original record's size in bytes, when it was cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_bytes: Option<usize>,
}

impl DeadLetter<'_> {
    /// The dead letter as JSON, at most `max` bytes: when the original record makes it larger, the original is
    /// cut to what fits (as text) and marked, never dropped.
    pub fn to_bytes(mut self, original: &[u8], max: usize) -> Vec<u8> {
        let bytes = serde_json::to_vec(&self).expect("dead letters always serialise");
        if bytes.len() <= max {
            return bytes;
        }
        self.original_record_truncated = Some(true);
        self.original_bytes = Some(original.len());
        self.original_record = OriginalRecord::Text(String::new());
        let envelope = serde_json::to_vec(&self).expect("dead letters always serialise").len();
        // Escaping may grow the text: halve until it fits.
        let mut keep = max.saturating_sub(envelope).min(original.len());
        loop {
            let mut cut = String::from_utf8_lossy(&original[..keep]).into_owned();
            // A multi-byte character cut in half becomes U+FFFD; drop it rather than mislead.
            if cut.ends_with('\u{fffd}') && keep < original.len() {
                cut.pop();
            }
            self.original_record = OriginalRecord::Text(cut);
            let bytes = serde_json::to_vec(&self).expect("dead letters always serialise");
            if bytes.len() <= max || keep == 0 {
                return bytes;
            }
            keep /= 2;
        }
    }
}

#[derive(Serialize)]
#[serde(untagged)]
pub enum OriginalRecord<'a> {
    Json(&'a RawValue),
    Text(String),
}

impl<'a> OriginalRecord<'a> {
    pub fn of(bytes: &'a [u8]) -> Self {
        match std::str::from_utf8(bytes).ok().and_then(|s| serde_json::from_str::<&RawValue>(s).ok()) {
            Some(raw) => OriginalRecord::Json(raw),
            None => OriginalRecord::Text(String::from_utf8_lossy(bytes).into_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_key_fields_or_fall_back_to_the_source_key() {
        let k = |v: &str, f: &[&str]| {
            let f: Vec<String> = f.iter().map(|s| s.to_string()).collect();
            let mut buf = Vec::new();
            output_key(v.as_bytes(), &f, Some(b"src"), &mut buf).map(|k| String::from_utf8(k.to_vec()).unwrap())
        };
        assert_eq!(k(r#"{"id":"a1","v":2}"#, &["id"]).as_deref(), Some("a1"));
        assert_eq!(k(r#"{"id":7,"v":2}"#, &["id", "v"]).as_deref(), Some("7|2"));
        assert_eq!(k(r#"{"v":2}"#, &["id"]).as_deref(), Some("src"));
        assert_eq!(k("not json", &["id"]).as_deref(), Some("src"));
        assert_eq!(k(r#"{"id":"a"}"#, &[]).as_deref(), Some("src"));
        // Escapes in names and values, nested values skipped, fields in any order.
        assert_eq!(k(r#"{"n":{"id":1},"v":[1,2],"\u0069d":"a\"b"}"#, &["id"]).as_deref(), Some("a\"b"));
        assert_eq!(k(r#"{"v":2,"id":"x"}"#, &["id", "v"]).as_deref(), Some("x|2"));
    }

    #[test]
    fn dead_letters_embed_json_originals_and_quote_the_rest() {
        let dl = |orig: &[u8]| {
            serde_json::to_value(DeadLetter {
                original_record: OriginalRecord::of(orig),
                error_message: "boom",
                error_type: "ValueError",
                failed_at: "t".into(),
                source: "transform",
                function: "f",
                topic: "t",
                partition: 1,
                offset: 5,
                original_record_truncated: None,
                original_bytes: None,
            })
            .unwrap()
        };
        assert_eq!(dl(br#"{"id":"x"}"#)["originalRecord"]["id"], "x");
        assert_eq!(dl(b"\xff garbage")["originalRecord"], "\u{fffd} garbage");
        assert_eq!(dl(b"{}")["offset"], 5);
    }

    #[test]
    fn a_dead_letter_too_large_for_the_broker_is_cut_and_marked() {
        let original = format!(r#"{{"id":"big","pad":"{}"}}"#, r#"x\"y"#.repeat(50_000));
        let letter = |o| DeadLetter {
            original_record: OriginalRecord::of(o),
            error_message: "too large",
            error_type: "OutputTooLarge",
            failed_at: "t".into(),
            source: "transform",
            function: "f",
            topic: "t",
            partition: 0,
            offset: 1,
            original_record_truncated: None,
            original_bytes: None,
        };
        let fits = letter(original.as_bytes()).to_bytes(original.as_bytes(), 1 << 20);
        let v: serde_json::Value = serde_json::from_slice(&fits).unwrap();
        assert_eq!(v["originalRecord"]["id"], "big");
        assert!(v.get("originalRecordTruncated").is_none());
        let cut = letter(original.as_bytes()).to_bytes(original.as_bytes(), 10_000);
        assert!(cut.len() <= 10_000, "{} bytes", cut.len());
        let v: serde_json::Value = serde_json::from_slice(&cut).unwrap();
        assert_eq!(v["originalRecordTruncated"], true);
        assert_eq!(v["originalBytes"], original.len());
        assert!(v["originalRecord"].as_str().unwrap().starts_with(r#"{"id":"big""#));
        assert_eq!(v["errorType"], "OutputTooLarge");
    }
}
