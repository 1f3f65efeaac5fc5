//! Fuzz tests of the ingest path (issue #22): body splitting, the record check and the record-to-row conversion,
//! fed arbitrary bytes, invalid UTF-8, deep nesting, huge numbers, wrong types and every type of the contract.
//! Each property never panics, and asserts what must hold of what it takes. `PROPTEST_CASES` sets the cases per
//! property (2,000 by default); `bench/fuzz.sh` runs the long form.

#[path = "fuzz_gen.rs"]
mod generators;

use crate::ingest::{split, IngestError};
use crate::rows::RowWriter;
use crate::schema::Schema;
use generators::{good_value, hostile, nested, record, run, stream_fields, Val};
use millrace_proto::v1::field_type::Kind;
use millrace_proto::v1::{Field, ScalarType};
use proptest::prelude::*;
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet};

/// Bytes that are mostly JSON's own, so that splitting meets brackets, quotes and newlines often.
fn body_bytes() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        3 => any::<u8>().prop_map(|b| vec![b]),
        3 => prop::sample::select(&b"[]{},:\"\\\n\r\t 0123456789-eE.tfnul"[..]).prop_map(|b| vec![b]),
        1 => hostile().prop_map(String::into_bytes),
        1 => Just(vec![0xC3]),
        1 => Just(vec![0xED, 0xA0, 0x80]),
    ];
    prop::collection::vec(token, 0..64).prop_map(|t| t.concat())
}

/// Whether `part` lies inside `whole` (records are slices of the body, never copies).
fn within(part: &[u8], whole: &[u8]) -> bool {
    let (p, w) = (part.as_ptr_range(), whole.as_ptr_range());
    w.start <= p.start && p.end <= w.end
}

#[test]
fn fuzz_split_takes_any_bytes() {
    run("fuzz_split_takes_any_bytes", (body_bytes(), any::<bool>()), |(body, ndjson)| {
        match split(&body, ndjson) {
            Ok(records) => {
                for r in &records {
                    prop_assert!(!r.is_empty() && within(r, &body), "a record is a non-empty slice of the body");
                    prop_assert_eq!(r.trim_ascii(), *r);
                    if ndjson {
                        prop_assert!(!r.contains(&b'\n'));
                    } else if body.trim_ascii().starts_with(b"[") {
                        prop_assert!(serde_json::from_slice::<&RawValue>(r).is_ok(), "an array's item is JSON");
                    } else {
                        prop_assert_eq!(&records, &vec![body.trim_ascii()], "anything else is one record");
                    }
                }
            }
            Err(e) => prop_assert!(matches!(e, IngestError::BadBody(_)), "{e}"),
        }
        Ok(())
    });
}

/// JSON values, good and hostile, that parse (an array body holds only those).
fn json_values() -> impl Strategy<Value = Vec<String>> {
    let v = prop_oneof![hostile(), good_value(&generators::ty(Kind::Scalar(ScalarType::String as i32))).prop_map(|v| v.0)];
    let json = v.prop_map(|v| if serde_json::from_str::<&RawValue>(&v).is_ok() { v } else { serde_json::to_string(&v).unwrap() });
    prop::collection::vec(json, 1..8)
}

#[test]
fn fuzz_split_finds_the_records_of_built_bodies() {
    let ws = || prop::sample::select(vec!["", " ", "\t", "\r\n", "\n\n", " \r\n "]);
    run("fuzz_split_finds_the_records_of_built_bodies", (json_values(), ws(), ws(), 0u8..3), |(items, a, b, form)| {
        let (body, want): (String, Vec<&str>) = match form {
            0 => (format!("{a}[{a}{}{b}]{b}", items.join(&format!("{b},{a}"))), items.iter().map(|i| i.trim_ascii()).collect()),
            1 => (format!("{a}{}{b}", items.join(&format!("{b}\n{a}"))), items.iter().map(|i| i.trim_ascii()).collect()),
            _ => (format!("{a}{{\"v\":{}}}{b}", items[0]), Vec::new()),
        };
        let got = split(body.as_bytes(), form == 1).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let got: Vec<&str> = got.iter().map(|r| std::str::from_utf8(r).unwrap()).collect();
        match form {
            2 => prop_assert_eq!(got, vec![body.trim_ascii()]),
            _ => prop_assert_eq!(got, want),
        }
        Ok(())
    });
}

/// A stream's fields, whether it allows extra fields, and one of its records.
fn stream_and_record(mess: u32) -> impl Strategy<Value = (Vec<Field>, bool, Val)> {
    (stream_fields(), any::<bool>()).prop_flat_map(move |(fields, extra)| {
        let r = record(&fields, extra, mess);
        (Just(fields), Just(extra), r)
    })
}

/// What must hold of a record the check took: its row is one line of a JSON object of the table's columns (or
/// nothing and an error), string and integer values copied as the record has them.
fn check_row(fields: &[Field], record: &str, row_must_work: bool) -> Result<(), TestCaseError> {
    let w = RowWriter::new(fields);
    let mut out = b"before\n".to_vec();
    let row = match w.write(record.as_bytes(), &mut out) {
        Ok(()) => &out[7..],
        Err(e) => {
            prop_assert_eq!(&out[..], b"before\n", "a refused row appends nothing");
            prop_assert!(!row_must_work, "a record the check took is refused by rows: {}", e);
            return Ok(());
        }
    };
    prop_assert!(row.ends_with(b"}\n") && row.iter().filter(|b| **b == b'\n').count() == 1, "one line");
    // Values are parsed as raw text: a row may hold values nested deeper than serde_json's limit for trees.
    let row: HashMap<String, &RawValue> =
        serde_json::from_slice(row).map_err(|e| TestCaseError::fail(format!("the row is not a JSON object: {e}: {}", String::from_utf8_lossy(row))))?;
    let columns: HashSet<&str> = w.column_names().collect();
    prop_assert!(row.keys().all(|k| columns.contains(k.as_str())), "the row's keys are columns: {:?}", row.keys());
    let given: HashMap<String, &RawValue> = serde_json::from_str(record).map_err(|e| TestCaseError::fail(e.to_string()))?;
    for f in fields.iter().filter(|f| f.materialized.is_empty() && !f.nullable && f.default_expression.is_empty()) {
        let copied = matches!(f.r#type.as_ref().and_then(|t| t.kind.as_ref()), Some(Kind::Scalar(s)) if matches!(ScalarType::try_from(*s), Ok(ScalarType::String | ScalarType::Int8 | ScalarType::Int64 | ScalarType::Uint64)));
        if let (true, Some(v)) = (copied, given.get(&f.name)) {
            prop_assert_eq!(row.get(&f.name).map(|r| r.get()), Some(v.get()), "{} is copied as written", &f.name);
        }
    }
    Ok(())
}

#[test]
fn fuzz_every_good_record_is_taken_and_becomes_a_row() {
    run("fuzz_every_good_record_is_taken_and_becomes_a_row", stream_and_record(0), |(fields, extra, (record, good))| {
        let schema = Schema::new(&fields, extra);
        let checked = schema.check(record.as_bytes());
        if !good {
            return Ok(());
        }
        let key = checked.map_err(|e| TestCaseError::fail(format!("a good record is refused: {e:?}\n{record}")))?;
        let keys: Vec<&Field> = fields.iter().filter(|f| f.key).collect();
        prop_assert_eq!(key.is_some(), !keys.is_empty());
        // One string key: the key is the string's content, escapes decoded.
        if let ([k], Some(key)) = (&keys[..], &key) {
            if matches!(k.r#type.as_ref().and_then(|t| t.kind.as_ref()), Some(Kind::Scalar(s)) if *s == ScalarType::String as i32) {
                let given: HashMap<String, String> = serde_json::from_str::<HashMap<String, serde_json::Value>>(&record)
                    .unwrap()
                    .into_iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string())))
                    .collect();
                prop_assert_eq!(&key[..], given[&k.name].as_bytes());
            }
        }
        prop_assert!(schema.strip_extra(record.as_bytes()).is_none(), "a record without extra fields is sent as it is");
        check_row(&fields, &record, true)
    });
}

#[test]
fn fuzz_messy_records_are_checked_and_written_without_panics() {
    run("fuzz_messy_records_are_checked_and_written_without_panics", stream_and_record(1), |(fields, extra, (record, good))| {
        let schema = Schema::new(&fields, extra);
        let checked = schema.check(record.as_bytes());
        if good {
            prop_assert!(checked.is_ok(), "a good record is refused: {:?}\n{}", checked, record);
        }
        if let Err(errors) = &checked {
            prop_assert!(!errors.is_empty() && errors.iter().all(|e| !e.reason.is_empty()), "a refusal says why");
            prop_assert!(errors.len() <= crate::types::value::MAX_ERRORS + 1, "errors are bounded");
            return check_row(&fields, &record, false);
        }
        let record = match extra.then(|| schema.strip_extra(record.as_bytes())).flatten() {
            Some(stripped) => {
                let stripped = String::from_utf8(stripped).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(schema.check(stripped.as_bytes()).is_ok(), "stripped of its extra fields, a record stays valid: {}", stripped);
                stripped
            }
            None => record,
        };
        check_row(&fields, &record, true)
    });
}

/// A good record with bytes that are not UTF-8 put in somewhere (inside a string, most often).
fn broken_utf8() -> impl Strategy<Value = (Vec<Field>, bool, Vec<u8>)> {
    let bad = prop::sample::select(vec![&b"\xFF"[..], b"\xC3", b"\xC3\x28", b"\xED\xA0\x80", b"\xF4\x90\x80\x80", b"\xE2\x82", b"\x80"]);
    (stream_and_record(1), bad, any::<prop::sample::Index>()).prop_map(|((fields, extra, (record, _)), bad, at)| {
        let mut bytes = record.into_bytes();
        let strings: Vec<usize> = bytes.iter().enumerate().filter(|(_, b)| **b == b'"').map(|(i, _)| i + 1).collect();
        let i = if strings.is_empty() { at.index(bytes.len()) } else { *at.get(&strings) };
        bytes.splice(i..i, bad.iter().copied());
        (fields, extra, bytes)
    })
}

#[test]
fn fuzz_invalid_utf8_is_never_taken() {
    run("fuzz_invalid_utf8_is_never_taken", broken_utf8(), |(fields, extra, bytes)| {
        let checked = Schema::new(&fields, extra).check(&bytes);
        prop_assert!(checked.is_err(), "a record that is not UTF-8 is taken: {}", String::from_utf8_lossy(&bytes));
        let _ = RowWriter::new(&fields).write(&bytes, &mut Vec::new());
        Ok(())
    });
}

/// Arbitrary bytes, and good records with bytes flipped, cut or repeated.
fn mangled() -> impl Strategy<Value = (Vec<Field>, bool, Vec<u8>)> {
    let arbitrary = (stream_fields(), any::<bool>(), body_bytes());
    let edited = (stream_and_record(1), prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4)).prop_map(|((f, e, (r, _)), edits)| {
        let mut bytes = r.into_bytes();
        for (at, b, op) in edits {
            let i = at.index(bytes.len() + 1);
            match op {
                0 if i < bytes.len() => bytes[i] = b,
                1 => bytes.truncate(i),
                _ => bytes.insert(i.min(bytes.len()), b),
            }
        }
        (f, e, bytes)
    });
    prop_oneof![arbitrary, edited]
}

#[test]
fn fuzz_arbitrary_bytes_are_checked_and_written_without_panics() {
    run("fuzz_arbitrary_bytes_are_checked_and_written_without_panics", mangled(), |(fields, extra, bytes)| {
        let schema = Schema::new(&fields, extra);
        if schema.check(&bytes).is_ok() {
            prop_assert!(std::str::from_utf8(&bytes).is_ok(), "a record the check takes is UTF-8");
            prop_assert!(serde_json::from_slice::<&RawValue>(&bytes).is_ok(), "a record the check takes is JSON");
            let _ = schema.strip_extra(&bytes);
        }
        let mut out = Vec::new();
        if RowWriter::new(&fields).write(&bytes, &mut out).is_ok() {
            prop_assert!(serde_json::from_slice::<&RawValue>(&out).is_ok(), "a row is JSON");
        }
        Ok(())
    });
}

#[test]
fn fuzz_deep_nesting_is_refused_without_recursing() {
    let place = 0u8..6;
    run("fuzz_deep_nesting_is_refused_without_recursing", (stream_fields(), 1usize..20_000, 0u8..4, place), |(fields, n, shape, place)| {
        let deep = nested(n, shape);
        let name = &fields[0].name;
        let record = match place {
            0 => deep.clone(),
            1 => format!("{{\"{name}\":{deep}}}"),
            2 => format!("{{\"{name}\":{{\"t0\":{deep}}}}}"),
            3 => format!("{{\"extra\":{deep}}}"),
            4 => format!("{{\"{name}\":[{{\"f0\":{deep}}}]}}"),
            _ => format!("[{deep}]"),
        };
        // serde_json refuses 128 levels and more: so must the check, but for an extra field a stream allows, which
        // is skipped without recursion and stripped before the record is sent.
        for extra in [false, true] {
            let schema = Schema::new(&fields, extra);
            let checked = schema.check(record.as_bytes());
            if extra && (place == 3 || place == 0 && shape == 1) {
                prop_assert!(checked.is_err() || schema.strip_extra(record.as_bytes()).is_some_and(|s| s.len() < 100), "an extra field is stripped");
            } else {
                prop_assert!(n < 127 || checked.is_err(), "{} levels are taken: {:?}", n, fields);
            }
        }
        let _ = RowWriter::new(&fields).write(record.as_bytes(), &mut Vec::new());
        // An array body is parsed (its items skipped without recursion), an object body is one record.
        let unclosed = record.starts_with('[') && shape >= 2;
        prop_assert_eq!(split(record.as_bytes(), false).is_ok(), !unclosed);
        Ok(())
    });
}

/// 100 MB of nesting (ten times the default body limit, which an operator may raise): refused with an error,
/// with memory in proportion to the body and no stack overflow.
#[test]
fn fuzz_a_100_mb_nested_body_is_refused() {
    let fields = [generators::field("v", generators::ty(Kind::Scalar(ScalarType::String as i32)))];
    let schema = Schema::new(&fields, true);
    for unit in ["[", "{\"v\":", "{\"a\":", "[{\"a\":"] {
        let mut body = unit.repeat((100 << 20) / unit.len() + 1).into_bytes();
        body.truncate(100 << 20);
        assert_eq!(split(&body, false).is_err(), unit.starts_with('['), "{unit}");
        assert!(schema.check(&body).is_err(), "{unit}");
        assert!(RowWriter::new(&fields).write(&body, &mut Vec::new()).is_err(), "{unit}");
    }
}



/// Found by `fuzz_invalid_utf8_is_never_taken`: an extra field (of a stream that allows them) was skipped without
/// checking its text was UTF-8, so a record that is not UTF-8 was taken, and sent on as it was (`strip_extra` could
/// not parse it either).
#[test]
fn an_extra_field_that_is_not_utf8_is_refused() {
    let mut id = generators::field("id", generators::ty(Kind::Scalar(ScalarType::String as i32)));
    id.nullable = true;
    let schema = Schema::new(&[id], true);
    for record in [&b"{\"extra\":\"\xFF\"}"[..], b"{\"extra\":[\"\xFF\"]}", b"{\"id\":\"a\",\"extra\":\"\xED\xA0\x80\"}"] {
        let errors = schema.check(record).expect_err(&String::from_utf8_lossy(record));
        assert!(errors[0].reason.starts_with("not valid JSON"), "{errors:?}");
    }
    assert!(schema.check(b"{\"id\":\"a\",\"extra\":[\"\xC3\xA9\"]}").is_ok(), "UTF-8 in an extra field is taken");
}

/// Found by `fuzz_messy_records_are_checked_and_written_without_panics`: a key field is read as raw text and then
/// checked, and the check dropped serde_json's error for a number it cannot read (beyond f64), so the record was
/// taken, keyed by the number's text, and its table sync refused its row later (or stored it in a string column).
#[test]
fn a_key_field_holding_a_number_beyond_f64_is_refused() {
    for t in [ScalarType::String, ScalarType::Bool, ScalarType::Int64, ScalarType::Float64] {
        let mut id = generators::field("id", generators::ty(Kind::Scalar(t as i32)));
        id.key = true;
        let schema = Schema::new(&[id], false);
        for record in ["{\"id\":1e400}".to_string(), "{\"id\":-1E+999}".to_string(), format!("{{\"id\":{}}}", "9".repeat(313))] {
            let errors = schema.check(record.as_bytes()).expect_err(&record);
            assert_eq!(errors[0].field, "id", "{errors:?}");
            assert!(errors[0].reason.contains("number out of range"), "{errors:?}");
        }
    }
}

/// Found by `fuzz_messy_records_are_checked_and_written_without_panics`: only a top-level decimal field was checked
/// on its digits; a nullable one, or one in a list, map, record or JSON path, was read as a float, which rounds
/// (0.1000000000000000001 to 0.1, 1e-400 to 0), so ingest took values that rows then refused (the table sync
/// dead-lettered records the ingest API had answered 200 for).
#[test]
fn a_decimal_anywhere_is_checked_on_its_digits() {
    let decimal = || generators::ty(Kind::Decimal(millrace_proto::v1::DecimalType { precision: 13, scale: 3 }));
    let mut nullable = generators::field("n", decimal());
    nullable.nullable = true;
    let fields = [nullable, generators::field("l", generators::ty(Kind::Array(Box::new(decimal()))))];
    let schema = Schema::new(&fields, false);
    let tiny = format!("0.{}1", "0".repeat(330));
    for (n, l) in [(tiny.as_str(), "[]"), ("0.1000000000000000001", "[]"), ("null", "[0.1000000000000000001]"), ("null", "[1e-400]")] {
        let record = format!("{{\"n\":{n},\"l\":{l}}}");
        let errors = schema.check(record.as_bytes()).expect_err(&record);
        assert!(errors[0].reason.contains("does not fit Decimal(13, 3)"), "{errors:?}");
        assert!(RowWriter::new(&fields).write(record.as_bytes(), &mut Vec::new()).is_err(), "rows refuse it too");
    }
    for record in [r#"{"n":null,"l":[1.5,"2.25",-0]}"#, r#"{"n":1234567890.123,"l":[]}"#, r#"{"l":[1e3]}"#] {
        assert!(schema.check(record.as_bytes()).is_ok(), "{record}");
        assert!(RowWriter::new(&fields).write(record.as_bytes(), &mut Vec::new()).is_ok(), "{record}");
    }
}

/// Found measuring memory: one 10 MiB record of five million wrong list items held as many errors, 800 MB (and
/// the ingest handler copied them for its answer and the dead letter). A record keeps its first 100 errors.
#[test]
fn a_record_with_a_million_errors_keeps_the_first_hundred() {
    let strings = generators::ty(Kind::Array(Box::new(generators::ty(Kind::Scalar(ScalarType::String as i32)))));
    let records = generators::ty(Kind::Array(Box::new(generators::ty(Kind::Record(millrace_proto::v1::RecordType { fields: vec![generators::field("x", strings.clone())] })))));
    let schema = Schema::new(&[generators::field("v", strings), generators::field("r", records)], false);
    let unknown: String = (0..1_000_000).map(|i| format!("\"u{i}\":1,")).collect();
    for record in [format!("{{\"v\":[{}1],\"r\":[]}}", "1,".repeat(1_000_000)), format!("{{\"v\":[],\"r\":[{}{{}}]}}", "1,{},".repeat(500_000)), format!("{{{unknown}\"v\":[],\"r\":[]}}")] {
        let errors = schema.check(record.as_bytes()).unwrap_err();
        assert_eq!(errors.len(), crate::types::value::MAX_ERRORS + 1);
        assert_eq!(errors[100].reason, "more than 100 errors: the rest are not listed");
    }
}
