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
                original_record_truncated: None,
                original_bytes: None,
            })
            .unwrap()
        };
        assert_eq!(dl(br#"{"id":"x"}"#)["original_record"]["id"], "x");
        assert_eq!(dl(b"\xff garbage")["original_record"], "\u{fffd} garbage");
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
        assert_eq!(v["original_record"]["id"], "big");
        assert!(v.get("original_record_truncated").is_none());
        let cut = letter(original.as_bytes()).to_bytes(original.as_bytes(), 10_000);
        assert!(cut.len() <= 10_000, "{} bytes", cut.len());
        let v: serde_json::Value = serde_json::from_slice(&cut).unwrap();
        assert_eq!(v["original_record_truncated"], true);
        assert_eq!(v["original_bytes"], original.len());
        assert!(v["original_record"].as_str().unwrap().starts_with(r#"{"id":"big""#));
        assert_eq!(v["error_type"], "OutputTooLarge");
    }
}
