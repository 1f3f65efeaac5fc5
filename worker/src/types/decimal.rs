//! Decimal(P, S): a decimal within precision and scale, given as a number or a string, plain ("-12.50") or in
//! exponent notation ("1E-8", what Python writes for small Decimals), written to rows unquoted in plain notation
//! (which ClickHouse 18.16 and current servers read exactly; they read `1e3` or `1.5.5` as something else or not at
//! all). Checked on its digits: at the top level of a record it is read as raw text, since a float would round them.

use super::{string_of, Family, Refusal, Scalar};
use serde_json::value::RawValue;
use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq)]
pub struct Decimal {
    pub precision: u32,
    pub scale: u32,
}

/// A decimal as text: an optional `-`, digits, an optional point and digits, an optional exponent (`e`/`E`, an
/// optional sign, digits), within precision and scale. Ok: its plain text (as given when it has no exponent).
pub fn check_decimal(s: &str, precision: u32, scale: u32) -> Result<Cow<'_, str>, String> {
    // At most 40 characters of what was sent: a refusal echoing a megabyte would not fit its dead letter.
    let bad = || {
        let shown: String = s.chars().take(40).collect();
        let more = if shown.len() < s.len() { "…" } else { "" };
        format!("expected a decimal number, got {shown}{more}")
    };
    let (negative, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let (mantissa, exponent) = match body.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (body, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) {
        return Err(bad());
    }
    let exp = match exponent {
        None => 0,
        Some(e) => {
            let e_digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if e_digits.is_empty() || !digits(e_digits) {
                return Err(bad());
            }
            // Beyond any precision (38): a nonzero mantissa does not fit, a zero one is 0.
            let magnitude = e_digits.trim_start_matches('0');
            let magnitude: i64 = if magnitude.len() > 6 { 1_000_000 } else { magnitude.parse().unwrap_or(0) };
            if e.starts_with('-') { -magnitude } else { magnitude }
        }
    };
    // The significant digits and where the point falls in them.
    let all = format!("{int}{frac}");
    let lead = all.len() - all.trim_start_matches('0').len();
    let sig = all.trim_matches('0');
    let point = int.len() as i64 + exp - lead as i64;
    let (int_digits, frac_digits) = match sig.is_empty() {
        true => (0, 0),
        false => (point.max(0), (sig.len() as i64 - point).max(0)),
    };
    if frac_digits > i64::from(scale) || int_digits > i64::from(precision - scale) {
        return Err(format!("{s} does not fit Decimal({precision}, {scale})"));
    }
    if exponent.is_none() {
        return Ok(Cow::Borrowed(s));
    }
    if sig.is_empty() {
        return Ok(Cow::Borrowed("0"));
    }
    let mut plain = String::with_capacity(sig.len() + 42);
    if negative {
        plain.push('-');
    }
    let zeros = |n: i64| "0".repeat(n.max(0) as usize);
    match point {
        p if p <= 0 => plain.extend(["0.", &zeros(-p), sig]),
        p if p as usize >= sig.len() => plain.extend([sig, &zeros(p - sig.len() as i64)]),
        p => plain.extend([&sig[..p as usize], ".", &sig[p as usize..]]),
    }
    Ok(Cow::Owned(plain))
}

impl Decimal {
    fn digits(&self, s: &str) -> Result<(), Refusal> {
        check_decimal(s, self.precision, self.scale).map(|_| ()).map_err(Refusal::Bad)
    }

    /// A string's content or a number as written.
    fn text<'r>(raw: &'r RawValue) -> Cow<'r, str> {
        string_of(raw).unwrap_or(Cow::Borrowed(raw.get()))
    }

    /// The check of a value read as raw text (a string's content or a number as written).
    pub fn check_raw(&self, raw: &RawValue) -> Result<(), String> {
        if raw.get() == "null" {
            return Err("required, got null".into());
        }
        check_decimal(&Self::text(raw), self.precision, self.scale).map(|_| ())
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
        let text = Self::text(raw);
        let plain = check_decimal(&text, self.precision, self.scale)?;
        out.extend_from_slice(plain.as_bytes());
        Ok(())
    }
}
