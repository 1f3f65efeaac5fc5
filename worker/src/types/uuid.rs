//! UUID: a hyphenated UUID string, copied into rows as written.

use super::{Family, Refusal, Scalar};

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
}
