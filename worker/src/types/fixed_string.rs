//! FixedString(n): a string of at most n bytes of UTF-8 (ClickHouse pads a shorter one with zero bytes), copied into
//! rows as written. Its length is checked again when written, so that a longer value a function produced becomes
//! its record's dead letter rather than a refused insert.

use super::{Family, Refusal, Scalar};
use serde_json::value::RawValue;
use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq)]
pub struct FixedString {
    pub size: usize,
}

impl FixedString {
    fn fits(&self, s: &str) -> Result<(), String> {
        match s.len() <= self.size {
            true => Ok(()),
            false => Err(format!("is {} bytes; FixedString({n}) holds at most {n}", s.len(), n = self.size)),
        }
    }
}

impl Family for FixedString {
    fn want(&self) -> &'static str {
        "a string"
    }
    fn check(&self, v: Scalar<'_>) -> Result<(), Refusal> {
        match v {
            Scalar::Str(s) => self.fits(s).map_err(Refusal::Bad),
            _ => Err(Refusal::Wrong),
        }
    }
    fn verbatim(&self) -> bool {
        false
    }
    fn write(&self, raw: &RawValue, out: &mut Vec<u8>) -> Result<(), String> {
        let text = raw.get();
        let s = serde_json::from_str::<Cow<'_, str>>(text).map_err(|_| format!("expected a string, got {text}"))?;
        self.fits(&s)?;
        out.extend_from_slice(text.as_bytes());
        Ok(())
    }
}
