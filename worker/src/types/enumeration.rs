//! Enum (ClickHouse Enum8/Enum16): a member's label (a string Enum), or its number (an IntEnum; its label too with
//! moose's StringToEnumMixin). Rows always carry the label, which every ClickHouse version parses in JSONEachRow.

use super::{Family, Refusal, Scalar};
use millrace_proto::v1::EnumType;
use serde_json::value::RawValue;
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Enum {
    labels: HashMap<String, i32>,
    by_number: HashMap<i32, String>,
    numbers: bool,
    labels_too: bool,
}

impl Enum {
    pub fn new(e: &EnumType) -> Self {
        Enum {
            // Aliases are looked up as labels are, and written as their member's label.
            labels: e
                .members
                .iter()
                .flat_map(|m| std::iter::once(&m.label).chain(&m.aliases).map(move |l| (l.clone(), m.number)))
                .collect(),
            by_number: e.members.iter().map(|m| (m.number, m.label.clone())).collect(),
            numbers: e.numbers,
            labels_too: e.labels_too,
        }
    }

    /// The member as a key's text: an IntEnum's key is its number, whichever way a record spelled it (a label,
    /// with StringToEnumMixin), so one member's records share a partition.
    /// A string Enum's key is its label, whichever alias a record used.
    pub fn key_form<'a>(&self, text: std::borrow::Cow<'a, str>) -> std::borrow::Cow<'a, str> {
        match self.labels.get(text.as_ref()) {
            Some(n) if self.numbers => std::borrow::Cow::Owned(n.to_string()),
            Some(n) => match self.by_number.get(n) {
                Some(label) if *label != text => std::borrow::Cow::Owned(label.clone()),
                _ => text,
            },
            None => text,
        }
    }

    fn takes_labels(&self) -> bool {
        !self.numbers || self.labels_too
    }

    fn shown(&self) -> String {
        let mut l: Vec<(&i32, &String)> = self.by_number.iter().collect();
        l.sort();
        let items: Vec<String> = l.iter().take(20).map(|(n, s)| if self.numbers { format!("{n} ({s})") } else { format!("{s:?}") }).collect();
        let more = if l.len() > 20 { format!(" and {} more", l.len() - 20) } else { String::new() };
        format!("{}{more}", items.join(", "))
    }
}

impl Family for Enum {
    fn want(&self) -> &'static str {
        match (self.numbers, self.labels_too) {
            (false, _) => "one of the enum's labels (a string)",
            (true, false) => "one of the enum's numbers",
            (true, true) => "one of the enum's numbers or labels",
        }
    }

    fn check(&self, v: Scalar<'_>) -> Result<(), Refusal> {
        match v {
            Scalar::Str(s) if self.takes_labels() => match self.labels.contains_key(s) {
                true => Ok(()),
                false => Err(Refusal::Bad(format!("{s:?} is not a member of the enum ({})", self.shown()))),
            },
            Scalar::Int(i) if self.numbers => match i32::try_from(i).ok().filter(|n| self.by_number.contains_key(n)) {
                Some(_) => Ok(()),
                None => Err(Refusal::Bad(format!("{i} is not a member of the enum ({})", self.shown()))),
            },
            _ => Err(Refusal::Wrong),
        }
    }

    /// Never: a value that is not a member (a transform's output, a record older than the enum) must become its
    /// record's dead letter here, not fail the whole insert.
    fn verbatim(&self) -> bool {
        false
    }

    fn write(&self, raw: &RawValue, out: &mut Vec<u8>) -> Result<(), String> {
        let text = raw.get();
        let label = match text.parse::<i32>() {
            Ok(n) => self.by_number.get(&n).ok_or_else(|| format!("{n} is not a member of the enum ({})", self.shown()))?,
            Err(_) => {
                let s: String = serde_json::from_str(text).map_err(|_| format!("{text} is not a member of the enum"))?;
                self.labels
                    .get(&s)
                    .and_then(|n| self.by_number.get(n))
                    .ok_or_else(|| format!("{s:?} is not a member of the enum ({})", self.shown()))?
            }
        };
        serde_json::to_writer(&mut *out, label).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_proto::v1::EnumMember;

    fn e(numbers: bool, labels_too: bool) -> Enum {
        let m = |label: &str, number| EnumMember { label: label.into(), number, aliases: vec![] };
        Enum::new(&EnumType { members: vec![m("RED", 1), m("GREEN", 2)], numbers, labels_too })
    }

    fn row(t: &Enum, json: &str) -> Result<String, String> {
        let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
        let mut out = Vec::new();
        assert!(!t.verbatim(), "every row value is checked");
        t.write(&raw, &mut out).map(|_| String::from_utf8(out).unwrap())
    }

    #[test]
    fn an_enum_takes_its_members_as_records_carry_them_and_rows_carry_labels() {
        let labels = e(false, false);
        assert!(labels.check(Scalar::Str("RED")).is_ok());
        assert!(matches!(labels.check(Scalar::Str("BLUE")), Err(Refusal::Bad(m)) if m.contains("not a member")));
        assert!(matches!(labels.check(Scalar::Int(1)), Err(Refusal::Wrong)));
        let numbers = e(true, false);
        assert!(numbers.check(Scalar::Int(2)).is_ok());
        assert!(matches!(numbers.check(Scalar::Int(3)), Err(Refusal::Bad(_))));
        assert!(matches!(numbers.check(Scalar::Str("RED")), Err(Refusal::Wrong)), "a plain IntEnum takes numbers only");
        assert_eq!(row(&numbers, "2").unwrap(), "\"GREEN\"");
        let mixin = e(true, true);
        assert!(mixin.check(Scalar::Str("RED")).is_ok() && mixin.check(Scalar::Int(1)).is_ok());
        assert_eq!(row(&mixin, "\"RED\"").unwrap(), "\"RED\"");
        assert!(row(&mixin, "7").is_err());
        assert_eq!(row(&labels, "\"RED\"").unwrap(), "\"RED\"");
        assert!(row(&labels, "\"BLUE\"").unwrap_err().contains("not a member"), "a non-member is its record's error, not the insert's");
    }

    #[test]
    fn a_string_enums_member_name_is_an_alias_written_and_keyed_as_its_label() {
        let m = |label: &str, number, alias: &str| EnumMember { label: label.into(), number, aliases: vec![alias.into()] };
        let colours = Enum::new(&EnumType { members: vec![m("red", 1, "RED"), m("it's green", 2, "GREEN")], numbers: false, labels_too: false });
        assert!(colours.check(Scalar::Str("GREEN")).is_ok() && colours.check(Scalar::Str("it's green")).is_ok());
        assert_eq!(row(&colours, "\"GREEN\"").unwrap(), "\"it's green\"");
        assert_eq!(colours.key_form("GREEN".into()), "it's green");
        assert_eq!(colours.key_form("red".into()), "red");
    }
}
