//! What goes to the broker: output keys, and dead letters.

use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::HashMap;

/// The key of an output record: its key fields' values (joined by `|` when there are several), or the source
/// record's key when the output lacks them.
pub fn output_key(value: &[u8], key_fields: &[String], source_key: Option<&[u8]>) -> Option<Vec<u8>> {
    if key_fields.is_empty() {
        return source_key.map(<[u8]>::to_vec);
    }
    let fields: HashMap<&str, &RawValue> = match serde_json::from_slice(value) {
        Ok(f) => f,
        Err(_) => return source_key.map(<[u8]>::to_vec),
    };
    let mut key = Vec::new();
    for (i, name) in key_fields.iter().enumerate() {
        let Some(raw) = fields.get(name.as_str()) else { return source_key.map(<[u8]>::to_vec) };
        if i > 0 {
            key.push(b'|');
        }
        // Strings by their content, numbers and the rest by their JSON text.
        match serde_json::from_str::<&str>(raw.get()) {
            Ok(s) => key.extend_from_slice(s.as_bytes()),
            Err(_) => match serde_json::from_str::<String>(raw.get()) {
                Ok(s) => key.extend_from_slice(s.as_bytes()),
                Err(_) => key.extend_from_slice(raw.get().as_bytes()),
            },
        }
    }
    Some(key)
}

/// A dead letter, as written to the dead letter topic.
#[derive(Serialize)]
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
            output_key(v.as_bytes(), &f, Some(b"src")).map(|k| String::from_utf8(k).unwrap())
        };
        assert_eq!(k(r#"{"id":"a1","v":2}"#, &["id"]).as_deref(), Some("a1"));
        assert_eq!(k(r#"{"id":7,"v":2}"#, &["id", "v"]).as_deref(), Some("7|2"));
        assert_eq!(k(r#"{"v":2}"#, &["id"]).as_deref(), Some("src"));
        assert_eq!(k("not json", &["id"]).as_deref(), Some("src"));
        assert_eq!(k(r#"{"id":"a"}"#, &[]).as_deref(), Some("src"));
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
            })
            .unwrap()
        };
        assert_eq!(dl(br#"{"id":"x"}"#)["original_record"]["id"], "x");
        assert_eq!(dl(b"\xff garbage")["original_record"], "\u{fffd} garbage");
        assert_eq!(dl(b"{}")["offset"], 5);
    }
}
