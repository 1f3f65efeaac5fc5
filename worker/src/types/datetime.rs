//! DateTime and Date. Ingest takes an RFC 3339 date-time and a YYYY-MM-DD date, each within what ClickHouse holds
//! (outside it ClickHouse would store it wrongly without an error); rows get date-times as `YYYY-MM-DD hh:mm:ss` in
//! UTC (what ClickHouse 18.16 and later alike read) and dates decoded (ClickHouse parses them without decoding JSON
//! escapes), refused again outside the range (a function's output is not checked at ingest).

use super::{string_of, Family, Refusal, Scalar};
use serde_json::value::RawValue;
use std::io::Write;

#[derive(Debug, Clone, PartialEq)]
pub struct DateTime;

#[derive(Debug, Clone, PartialEq)]
pub struct Date;

/// RFC 3339, as the ingest API requires.
pub fn check_datetime(s: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

pub fn check_date(s: &str) -> bool {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() && s.len() == 10
}

/// The days a ClickHouse `Date` holds (18.16's: two bytes of days since 1970, read and written only up to 2105).
const DATE_MIN: &str = "1970-01-01";
const DATE_MAX: &str = "2105-12-31";

/// The seconds a ClickHouse `DateTime` holds: 1970-01-01 00:00:00 to 2105-12-31 23:59:59 UTC.
const DATETIME_SECS: std::ops::RangeInclusive<i64> = 0..=4_291_747_199;

fn datetime_outside(shown: &str) -> String {
    format!("{shown} is outside what a ClickHouse DateTime holds (1970 to 2105)")
}

fn date_outside(day: &str) -> String {
    format!("{day} is outside what a ClickHouse Date holds ({DATE_MIN} to {DATE_MAX})")
}

/// Seconds since the epoch of a date-time given as RFC 3339, as a date and time without offset (taken as UTC, with
/// `T` or a space, any fraction), or as a number of seconds.
pub fn datetime_seconds(raw: &RawValue) -> Result<i64, String> {
    let text = raw.get();
    let secs = if let Some(s) = string_of(raw) {
        let s = s.as_ref();
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
            t.timestamp()
        } else {
            let naive = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f"))
                .map_err(|_| format!("{s:?} is not a date-time"))?;
            naive.and_utc().timestamp()
        }
    } else {
        text.parse::<f64>().map_err(|_| format!("expected a date-time, got {text}"))? as i64
    };
    // Outside its range a value would wrap silently.
    if !DATETIME_SECS.contains(&secs) {
        return Err(datetime_outside(text));
    }
    Ok(secs)
}

impl Family for DateTime {
    fn want(&self) -> &'static str {
        "an RFC 3339 date-time string"
    }
    fn check(&self, v: Scalar<'_>) -> Result<(), Refusal> {
        match v {
            Scalar::Str(s) => match chrono::DateTime::parse_from_rfc3339(s) {
                Ok(t) if DATETIME_SECS.contains(&t.timestamp()) => Ok(()),
                Ok(_) => Err(Refusal::Bad(datetime_outside(&format!("{s:?}")))),
                Err(_) => Err(Refusal::Bad(format!("{s:?} is not an RFC 3339 date-time (like 2026-11-25T10:00:00Z)"))),
            },
            _ => Err(Refusal::Wrong),
        }
    }
    fn verbatim(&self) -> bool {
        false
    }
    fn write(&self, raw: &RawValue, out: &mut Vec<u8>) -> Result<(), String> {
        let secs = datetime_seconds(raw)?;
        let t = chrono::DateTime::from_timestamp(secs, 0).ok_or("out of range")?;
        write!(out, "\"{}\"", t.format("%Y-%m-%d %H:%M:%S")).expect("writing to a Vec");
        Ok(())
    }
}

impl Family for Date {
    fn want(&self) -> &'static str {
        "a YYYY-MM-DD date string"
    }
    fn check(&self, v: Scalar<'_>) -> Result<(), Refusal> {
        match v {
            Scalar::Str(s) => check_day(s).map_err(Refusal::Bad),
            _ => Err(Refusal::Wrong),
        }
    }
    fn verbatim(&self) -> bool {
        false
    }
    fn write(&self, raw: &RawValue, out: &mut Vec<u8>) -> Result<(), String> {
        let day = string_of(raw).ok_or_else(|| format!("expected a YYYY-MM-DD date, got {}", raw.get()))?;
        check_day(&day)?;
        out.push(b'"');
        out.extend_from_slice(day.as_bytes());
        out.push(b'"');
        Ok(())
    }
}

/// A YYYY-MM-DD date within what ClickHouse's Date holds: 18.16 stores any other day as 0000-00-00, without an
/// error. Valid dates of this form order as their text.
fn check_day(day: &str) -> Result<(), String> {
    if !check_date(day) {
        return Err(format!("{day:?} is not a YYYY-MM-DD date"));
    }
    if !(DATE_MIN..=DATE_MAX).contains(&day) {
        return Err(date_outside(day));
    }
    Ok(())
}
