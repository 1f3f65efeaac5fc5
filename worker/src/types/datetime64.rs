//! DateTime64(p, 'UTC') (ClickHouse 20.1): a date-time with up to 9 fraction digits.
//!
//! Ingest takes what DATETIME's rows take as text: RFC 3339 ("2026-11-25T10:00:00.123456Z", "...+01:00", with `T`,
//! `t` or a space), or a date and time without offset, taken as UTC ("2026-11-25 10:00:00.5"); the fraction has 1 to
//! 9 digits (any of them, whatever p is). Like DATETIME, ingest takes no number, but a row takes one (seconds since
//! the epoch, a function's output). Unlike DATETIME, ingest also checks the range, so a record is refused at once
//! rather than dead-lettered by its table sync: DateTime64 holds 1900-01-01 00:00:00 to 2299-12-31 23:59:59.(9s)
//! on current servers, and outside it a value would be stored wrong without an error; DateTime64(9) ends at
//! 2262-04-11 23:47:16.854775807, the last nanosecond an Int64 counts (ClickHouse refuses later ones,
//! DECIMAL_OVERFLOW). Rows get the decoded text's instant (JSON escapes included).
//!
//! Rows get `YYYY-MM-DD hh:mm:ss.fff` in UTC with exactly p fraction digits (none when p is 0), which ClickHouse
//! 20.1 and later read for DateTime64(p, 'UTC'). A fraction longer than p is TRUNCATED to p digits, never
//! refused: Python's datetime carries microseconds, so a model's datetime64(3) field still sends six digits
//! (pydantic writes them all), and such records must go in. A shorter fraction is padded with zeros.

use super::{string_of, Family, Refusal, Scalar};
use serde_json::value::RawValue;
use std::io::Write;

#[derive(Debug, Clone, PartialEq)]
pub struct DateTime64 {
    /// Fraction digits, 0 to 9.
    pub precision: u32,
}

/// An instant: whole seconds since the epoch (UTC) and the nanoseconds after them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Instant {
    pub secs: i64,
    pub nanos: u32,
}

/// 1900-01-01 00:00:00 and 2299-12-31 23:59:59 UTC, what DateTime64 holds (any fraction of the last second too).
const MIN_SECS: i64 = -2_208_988_800;
const MAX_SECS: i64 = 10_413_791_999;

/// A date-time as text: RFC 3339, or a date and time without offset (taken as UTC); up to 9 fraction digits.
pub fn parse_datetime64(s: &str) -> Result<Instant, String> {
    let bad = || format!("{s:?} is not a date-time (like 2026-11-25T10:00:00.123Z)");
    let b = s.as_bytes();
    let shape = b.len() >= 19
        && b[..19].iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => matches!(c, b'T' | b't' | b' '),
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        });
    if !shape {
        return Err(bad());
    }
    let n = |from: usize, to: usize| s[from..to].parse::<u32>().expect("digits");
    let mut rest = &s[19..];
    let mut nanos = 0;
    if let Some(r) = rest.strip_prefix('.') {
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        if digits > 9 {
            return Err(format!("{s:?} has {digits} fraction digits; a date-time has at most 9"));
        }
        nanos = r[..digits].parse::<u32>().expect("digits") * 10u32.pow(9 - digits as u32);
        rest = &r[digits..];
    }
    let offset = match rest.as_bytes() {
        [] | [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] if [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()) => {
            let (h, m) = (i64::from((h1 - b'0') * 10 + (h2 - b'0')), i64::from((m1 - b'0') * 10 + (m2 - b'0')));
            if h > 23 || m > 59 {
                return Err(bad());
            }
            if *sign == b'-' { -(h * 3600 + m * 60) } else { h * 3600 + m * 60 }
        }
        _ => return Err(bad()),
    };
    let date = chrono::NaiveDate::from_ymd_opt(n(0, 4) as i32, n(5, 7), n(8, 10)).ok_or_else(bad)?;
    let time = chrono::NaiveTime::from_hms_opt(n(11, 13), n(14, 16), n(17, 19)).ok_or_else(bad)?;
    Ok(Instant { secs: date.and_time(time).and_utc().timestamp() - offset, nanos })
}

/// A number of seconds since the epoch as written: its fraction read as digits (a float would round them).
fn seconds(text: &str) -> Option<Instant> {
    if text.contains(['e', 'E']) {
        let v = text.parse::<f64>().ok().filter(|v| v.is_finite() && v.abs() < 1e15)?;
        let whole = v.floor();
        return Some(Instant { secs: whole as i64, nanos: (((v - whole) * 1e9) as u32).min(999_999_999) });
    }
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs = int.parse::<i64>().ok().filter(|s| s.abs() < 1 << 40)?;
    if !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let digits = &frac[..frac.len().min(9)];
    let nanos = if digits.is_empty() { 0 } else { digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32) };
    Some(match (int.starts_with('-'), nanos) {
        (true, n) if n > 0 => Instant { secs: secs - 1, nanos: 1_000_000_000 - n },
        _ => Instant { secs, nanos },
    })
}

/// The last instant DateTime64(9) holds: its value is Int64 nanoseconds since the epoch (2262-04-11 23:47:16.854775807
/// UTC), before 2299; beyond it ClickHouse refuses the row (DECIMAL_OVERFLOW) rather than the ingest API.
const MAX_NANOS_9: Instant = Instant { secs: 9_223_372_036, nanos: 854_775_807 };

impl DateTime64 {
    fn in_range(&self, t: Instant, shown: &str) -> Result<Instant, String> {
        let (max, until) = match self.precision {
            9 => ((MAX_NANOS_9.secs, MAX_NANOS_9.nanos), "2262-04-11 23:47:16.854775807"),
            _ => ((MAX_SECS, 999_999_999), "2299-12-31"),
        };
        match t.secs >= MIN_SECS && (t.secs, t.nanos) <= max {
            true => Ok(t),
            false if self.precision == 9 => Err(format!("{shown} is outside what a ClickHouse DateTime64(9) holds (1900-01-01 to {until})")),
            false => Err(format!("{shown} is outside what a ClickHouse DateTime64 holds (1900-01-01 to {until})")),
        }
    }
}

impl DateTime64 {
    /// The row text of an instant: UTC, exactly `precision` fraction digits (the rest truncated).
    pub fn format(&self, t: Instant, out: &mut Vec<u8>) {
        let p = self.precision.min(9);
        let at = chrono::DateTime::from_timestamp(t.secs, 0).expect("within DateTime64's range");
        write!(out, "\"{}", at.format("%Y-%m-%d %H:%M:%S")).expect("writing to a Vec");
        if p > 0 {
            write!(out, ".{:0width$}", t.nanos / 10u32.pow(9 - p), width = p as usize).expect("writing to a Vec");
        }
        out.push(b'"');
    }
}

impl Family for DateTime64 {
    fn want(&self) -> &'static str {
        "an RFC 3339 date-time string"
    }
    fn check(&self, v: Scalar<'_>) -> Result<(), Refusal> {
        match v {
            Scalar::Str(s) => parse_datetime64(s).and_then(|t| self.in_range(t, &format!("{s:?}"))).map(|_| ()).map_err(Refusal::Bad),
            _ => Err(Refusal::Wrong),
        }
    }
    fn verbatim(&self) -> bool {
        false
    }
    fn write(&self, raw: &RawValue, out: &mut Vec<u8>) -> Result<(), String> {
        let text = raw.get();
        let t = match string_of(raw) {
            Some(s) => parse_datetime64(&s)?,
            None => seconds(text).ok_or_else(|| format!("expected a date-time, got {text}"))?,
        };
        self.format(self.in_range(t, text)?, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(p: u32, json: &str) -> Result<String, String> {
        let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
        let mut out = Vec::new();
        DateTime64 { precision: p }.write(&raw, &mut out).map(|_| String::from_utf8(out).unwrap())
    }

    fn refusal(p: u32, s: &str) -> String {
        match (DateTime64 { precision: p }).check(Scalar::Str(s)) {
            Err(Refusal::Bad(m)) => m,
            Err(Refusal::Wrong) => "wrong".into(),
            Ok(()) => panic!("{s} was taken"),
        }
    }

    #[test]
    fn a_fraction_longer_than_the_precision_is_truncated() {
        assert!(DateTime64 { precision: 3 }.check(Scalar::Str("2026-11-25T10:00:00.123456Z")).is_ok());
        assert_eq!(row(3, r#""2026-11-25T10:00:00.123999Z""#).unwrap(), r#""2026-11-25 10:00:00.123""#);
        assert_eq!(row(6, r#""2026-11-25T10:00:00.123456789Z""#).unwrap(), r#""2026-11-25 10:00:00.123456""#);
        assert_eq!(row(0, r#""2026-11-25T10:00:00.999Z""#).unwrap(), r#""2026-11-25 10:00:00""#);
    }

    #[test]
    fn rows_carry_exactly_the_precisions_digits_in_utc() {
        assert_eq!(row(3, r#""2026-11-25T11:00:00+01:00""#).unwrap(), r#""2026-11-25 10:00:00.000""#);
        assert_eq!(row(9, r#""2026-11-25 10:00:00.5""#).unwrap(), r#""2026-11-25 10:00:00.500000000""#);
        assert_eq!(row(3, r#""2026-11-25t10:00:00.1-02:30""#).unwrap(), r#""2026-11-25 12:30:00.100""#);
        assert_eq!(row(2, r#""1969-12-31T23:59:59.999Z""#).unwrap(), r#""1969-12-31 23:59:59.99""#);
        assert_eq!(row(3, "1764064800.25").unwrap(), r#""2025-11-25 10:00:00.250""#);
        assert_eq!(row(3, "-0.5").unwrap(), r#""1969-12-31 23:59:59.500""#);
        assert_eq!(row(1, "1.5e0").unwrap(), r#""1970-01-01 00:00:01.5""#);
    }

    #[test]
    fn rfc3339_and_offsetless_text_are_taken_and_numbers_only_in_rows() {
        let t = DateTime64 { precision: 3 };
        for s in ["2026-11-25T10:00:00Z", "2026-11-25 10:00:00", "2026-11-25T10:00:00.1+05:45", "1900-01-01T00:00:00Z", "2299-12-31T23:59:59.999999999Z"] {
            assert!(t.check(Scalar::Str(s)).is_ok(), "{s}");
        }
        assert!(matches!(t.check(Scalar::Int(1)), Err(Refusal::Wrong)));
        assert_eq!(refusal(3, "2026-11-25"), r#""2026-11-25" is not a date-time (like 2026-11-25T10:00:00.123Z)"#);
        for s in ["2026-02-30T00:00:00Z", "2026-11-25T24:00:00Z", "2026-11-25T10:00:00.Z", "2026-11-25T10:00:00+1:00", "2026-11-25T10:00:00 UTC", "２026-11-25T10:00:00Z"] {
            assert!(refusal(3, s).contains("is not a date-time"), "{s}");
        }
        assert!(refusal(3, "2026-11-25T10:00:00.1234567890Z").ends_with("has 10 fraction digits; a date-time has at most 9"));
    }

    #[test]
    fn a_date_time_outside_1900_to_2299_is_refused() {
        let outside = "is outside what a ClickHouse DateTime64 holds (1900-01-01 to 2299-12-31)";
        assert_eq!(refusal(3, "1899-12-31T23:59:59.999Z"), format!(r#""1899-12-31T23:59:59.999Z" {outside}"#));
        assert_eq!(refusal(3, "2300-01-01T00:00:00Z"), format!(r#""2300-01-01T00:00:00Z" {outside}"#));
        assert_eq!(refusal(3, "1900-01-01T00:30:00+01:00"), format!(r#""1900-01-01T00:30:00+01:00" {outside}"#));
        assert_eq!(row(3, r#""2300-01-01 00:00:00""#).unwrap_err(), format!(r#""2300-01-01 00:00:00" {outside}"#));
        assert_eq!(row(3, "-2208988801").unwrap_err(), format!("-2208988801 {outside}"));
        assert_eq!(row(0, r#""1900-01-01 00:00:00""#).unwrap(), r#""1900-01-01 00:00:00""#);
        assert!(row(3, "true").unwrap_err().contains("expected a date-time"));
    }
}
