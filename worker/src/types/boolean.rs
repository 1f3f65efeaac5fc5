//! Bool: true or false, written to rows as 1 or 0 (what every ClickHouse version reads).

use super::{Family, Refusal, Scalar};
use serde_json::value::RawValue;

#[derive(Debug, Clone, PartialEq)]
pub struct Bool;

impl Family for Bool {
    fn want(&self) -> &'static str {
        "true or false"
    }
    fn check(&self, v: Scalar<'_>) -> Result<(), Refusal> {
        match v {
            Scalar::Bool(_) => Ok(()),
            _ => Err(Refusal::Wrong),
        }
    }
    fn verbatim(&self) -> bool {
        false
    }
    fn write(&self, raw: &RawValue, out: &mut Vec<u8>) -> Result<(), String> {
        let text = raw.get();
        let bit = match text {
            "true" | "1" => b'1',
            "false" | "0" => b'0',
            _ => return Err(format!("expected true or false, got {text}")),
        };
        out.push(bit);
        Ok(())
    }
}
