//! Decimal(P, S): a plain decimal within precision and scale, given as a number or a string, written to rows
//! unquoted. Checked on its digits: at the top level of a record it is read as raw text, since a float would round
//! them.

use super::{Family, Refusal, Scalar};
use serde_json::value::RawValue;

#[derive(Debug, Clone, PartialEq)]
pub struct Decimal {
    pub precision: u32,
    pub scale: u32,
}

/// A decimal as text: an optional sign, digits, an optional point and digits, within precision and scale.
pub fn check_decimal(s: &str, precision: u32, scale: u32) -> Result<(), String> {
    let body = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let ok = !int.is_empty() && int.bytes().all(|b| b.is_ascii_digit()) && frac.bytes().all(|b| b.is_ascii_digit());
    if !ok {
        return Err(format!("expected a decimal number, got {s}"));
    }
    let int_digits = int.trim_start_matches('0').len() as u32;
    let frac_digits = frac.trim_end_matches('0').len() as u32;
    if frac_digits > scale || int_digits > precision - scale {
        return Err(format!("{s} does not fit Decimal({precision}, {scale})"));
    }
    Ok(())
}

impl Decimal {
    fn digits(&self, s: &str) -> Result<(), Refusal> {
        check_decimal(s, self.precision, self.scale).map_err(Refusal::Bad)
    }

    /// The check of a value read as raw text (a string's content or a number as written).
    pub fn check_raw(&self, raw: &RawValue) -> Result<(), String> {
        let text = raw.get();
        if text == "null" {
            return Err("required, got null".into());
        }
        check_decimal(serde_json::from_str::<&str>(text).unwrap_or(text), self.precision, self.scale)
    }
}

impl Family for Decimal {
    fn want(&self) -> &'static str {
        "a decimal number"
    }
    fn check(&self, v: Scalar<'_>) -> Result<(), Refusal> {
        match v {
            Scalar::Int(v) => self.digits(&v.to_string()),
            Scalar::Float(v) => self.digits(&v.to_string()),
            Scalar::Str(v) => self.digits(v),
            Scalar::Bool(_) => Err(Refusal::Wrong),
        }
    }
    fn verbatim(&self) -> bool {
        false
    }
    fn write(&self, raw: &RawValue, out: &mut Vec<u8>) -> Result<(), String> {
        // ClickHouse reads `1.5.5` as 1.55 and `1e3` as 1000: only plain decimals within the type go through.
        let text = raw.get();
        let digits = serde_json::from_str::<&str>(text).unwrap_or(text);
        check_decimal(digits, self.precision, self.scale)?;
        out.extend_from_slice(digits.as_bytes());
        Ok(())
    }
}
