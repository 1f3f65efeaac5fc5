//! IPv4 and IPv6 (ClickHouse 19.3): an address as text. IPv4 takes the dotted quad `Ipv4Addr` parses ("10.0.0.1",
//! no leading zeros), copied into rows as written. IPv6 takes every standard form `Ipv6Addr` parses ("::1",
//! "2001:DB8::7", "::ffff:10.0.0.1"; not a bare IPv4 address, nor a zone "%eth0"), written in its canonical RFC 5952
//! form (`Ipv6Addr`'s Display): current servers read every form, and the canonical one is what every server since
//! 19.3 reads too.

use super::{Family, Refusal, Scalar};
use serde_json::value::RawValue;
use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, PartialEq)]
pub struct Ipv4;

#[derive(Debug, Clone, PartialEq)]
pub struct Ipv6;

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
        let text = raw.get();
        let s = serde_json::from_str::<&str>(text).map_err(|_| format!("expected an IPv6 address string, got {text}"))?;
        let addr: Ipv6Addr = s.parse().map_err(|_| format!("{s:?} is not an IPv6 address"))?;
        out.push(b'"');
        out.extend_from_slice(addr.to_string().as_bytes());
        out.push(b'"');
        Ok(())
    }
}
