//! Int8 to Int64 and UInt8 to UInt64: a JSON integer within the type's range, copied into rows as written.

use super::{Family, Refusal, Scalar};

#[derive(Debug, Clone, PartialEq)]
pub struct Int {
    pub min: i128,
    pub max: i128,
}

impl Int {
    pub fn new(min: i128, max: i128) -> Self {
        Self { min, max }
    }
}

impl Family for Int {
    fn want(&self) -> &'static str {
        "an integer"
    }
    fn check(&self, v: Scalar<'_>) -> Result<(), Refusal> {
        let Int { min, max } = *self;
        match v {
            Scalar::Int(v) if v < min || v > max => Err(Refusal::Bad(format!("{v} is out of range ({min} to {max})"))),
            Scalar::Int(_) => Ok(()),
            Scalar::Float(v) => Err(Refusal::Bad(format!("expected an integer, got {v}"))),
            _ => Err(Refusal::Wrong),
        }
    }
}
