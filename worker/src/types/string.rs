//! String: any JSON string, copied into rows as written.

use super::{Family, Refusal, Scalar};

#[derive(Debug, Clone, PartialEq)]
pub struct Str;

impl Family for Str {
    fn want(&self) -> &'static str {
        "a string"
    }
    fn check(&self, v: Scalar<'_>) -> Result<(), Refusal> {
        match v {
            Scalar::Str(_) => Ok(()),
            _ => Err(Refusal::Wrong),
        }
    }
}
