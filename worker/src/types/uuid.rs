//! UUID: a hyphenated UUID string, written to rows decoded and in lower case (ClickHouse parses a UUID without
//! decoding JSON escapes; ingest checks the decoded text).

use super::{string_of, Family, Refusal, Scalar};
use serde_json::value::RawValue;

#[derive(Debug, Clone, PartialEq)]
pub struct Uuid;

pub fn check_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| if matches!(i, 8 | 13 | 18 | 23) { *c == b'-' } else { c.is_ascii_hexdigit() })
}

impl Family for Uuid {
    fn want(&self) -> &'static str {
        "a UUID string"
    }
    fn check(&self, v: Scalar<'_>) -> Result<(), Refusal> {
        match v {
            Scalar::Str(s) if check_uuid(s) => Ok(()),
            Scalar::Str(s) => Err(Refusal::Bad(format!("{s:?} is not a UUID"))),
            _ => Err(Refusal::Wrong),
        }
    }
    fn verbatim(&self) -> bool {
        false
    }
    fn write(&self, raw: &RawValue, out: &mut Vec<u8>) -> Result<(), String> {
        let s = string_of(raw).ok_or_else(|| format!("expected a UUID string, got {}", raw.get()))?;
        if !check_uuid(&s) {
            return Err(format!("{s:?} is not a UUID"));
        }
        out.push(b'"');
        out.extend(s.bytes().map(|c| c.to_ascii_lowercase()));
        out.push(b'"');
        Ok(())
    }
}
