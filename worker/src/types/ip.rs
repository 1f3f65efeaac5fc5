//! IPv4 and IPv6 (ClickHouse 19.3): an address as text. IPv4 takes the dotted quad `Ipv4Addr` parses ("10.0.0.1",
//! no leading zeros). IPv6 takes every standard form `Ipv6Addr` parses ("::1", "2001:DB8::7", "::ffff:10.0.0.1";
//! not a bare IPv4 address, nor a zone "%eth0"). Rows get the parsed address as `Ipv4Addr`/`Ipv6Addr` display it
//! (IPv6 in its canonical RFC 5952 form), never the text as written: ClickHouse parses an address without decoding
//! JSON escapes (`"10.0.0.\u0031"` is CANNOT_PARSE_IPV4 on current servers), and every server since 19.3 reads these.

use super::{string_of, Family, Refusal, Scalar};
use serde_json::value::RawValue;
use std::fmt::Display;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq)]
pub struct Ipv4;

#[derive(Debug, Clone, PartialEq)]
pub struct Ipv6;

/// The row text of an address: parsed from the string's decoded content, written as its type displays it.
fn write_addr<A: FromStr + Display>(raw: &RawValue, want: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let s = string_of(raw).ok_or_else(|| format!("expected {want}, got {}", raw.get()))?;
    let addr: A = s.parse().map_err(|_| format!("{s:?} is not {want}"))?;
    out.push(b'"');
    out.extend_from_slice(addr.to_string().as_bytes());
    out.push(b'"');
    Ok(())
}

impl Family for Ipv4 {
    fn want(&self) -> &'static str {
        "an IPv4 address string"
    }
    fn check(&self, v: Scalar<'_>) -> Result<(), Refusal> {
        match v {
            Scalar::Str(s) if s.parse::<Ipv4Addr>().is_ok() => Ok(()),
            Scalar::Str(s) => Err(Refusal::Bad(format!("{s:?} is not an IPv4 address (like 10.0.0.1)"))),
            _ => Err(Refusal::Wrong),
        }
    }
    fn verbatim(&self) -> bool {
        false
    }
    fn write(&self, raw: &RawValue, out: &mut Vec<u8>) -> Result<(), String> {
        write_addr::<Ipv4Addr>(raw, "an IPv4 address", out)
    }
}

impl Family for Ipv6 {
    fn want(&self) -> &'static str {
        "an IPv6 address string"
    }
    fn check(&self, v: Scalar<'_>) -> Result<(), Refusal> {
        match v {
            Scalar::Str(s) if s.parse::<Ipv6Addr>().is_ok() => Ok(()),
            Scalar::Str(s) => Err(Refusal::Bad(format!("{s:?} is not an IPv6 address (like 2001:db8::7 or ::ffff:10.0.0.1)"))),
            _ => Err(Refusal::Wrong),
        }
    }
    fn verbatim(&self) -> bool {
        false
    }
    fn write(&self, raw: &RawValue, out: &mut Vec<u8>) -> Result<(), String> {
        write_addr::<Ipv6Addr>(raw, "an IPv6 address", out)
    }
}
