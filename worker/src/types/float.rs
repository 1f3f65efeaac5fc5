//! Float32 and Float64: any JSON number (a Float32's within its range), copied into rows as written.

use super::{Family, Refusal, Scalar};

#[derive(Debug, Clone, PartialEq)]
pub struct Float {
    pub f32: bool,
}

impl Family for Float {
    fn want(&self) -> &'static str {
        "a number"
    }
    fn check(&self, v: Scalar<'_>) -> Result<(), Refusal> {
        match v {
            Scalar::Float(v) if self.f32 && v.is_finite() && v.abs() > f32::MAX as f64 => {
                Err(Refusal::Bad(format!("{v} is out of range for Float32")))
            }
            Scalar::Int(_) | Scalar::Float(_) => Ok(()),
            _ => Err(Refusal::Wrong),
        }
    }
}
