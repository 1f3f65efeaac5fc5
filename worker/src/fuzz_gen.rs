//! Generators for the fuzz tests (`fuzz_tests`): field types of every kind the contract has, shaped as the control
//! plane lets them through, and JSON text for their values, either good (the check must take it) or hostile (huge
//! numbers, deep nesting, wrong types, broken escapes: anything may happen but a panic).

use chrono::{DateTime, Utc};
use millrace_proto::v1::field_type::Kind;
use millrace_proto::v1::{
    DateTime64Type, DecimalType, EnumMember, EnumType, Field, FieldType, FixedStringType, JsonType, MapType, RecordType, ScalarType,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

/// Cases per property: proptest's own `PROPTEST_CASES`, else enough for a CI run of under a minute in debug.
pub fn config() -> Config {
    let mut c = Config { failure_persistence: None, max_shrink_iters: 4096, ..Config::default() };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 2_000;
        // The short run (CI) is the same every time; the long one (`bench/fuzz.sh`) draws new cases.
        if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
            c.rng_seed = proptest::test_runner::RngSeed::Fixed(0x6d69_6c6c);
        }
    }
    c
}

/// Runs one property; panics with the smallest failing input. With `FUZZ_TALLY` set, appends `name cases` to that
/// file, so that `bench/fuzz.sh` can count the cases every property ran.
pub fn run<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>) {
    let config = config();
    let cases = config.cases;
    match TestRunner::new(config).run(&strategy, test) {
        Ok(()) => {}
        Err(TestError::Fail(reason, input)) => panic!("{name}: {reason}\nminimal input: {input:?}"),
        Err(e) => panic!("{name}: {e}"),
    }
    if let Some(path) = std::env::var_os("FUZZ_TALLY") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("FUZZ_TALLY is writable");
        writeln!(f, "{name} {cases}").expect("FUZZ_TALLY is writable");
    }
}

pub fn ty(kind: Kind) -> FieldType {
    FieldType { kind: Some(kind) }
}
fn scalar(s: ScalarType) -> FieldType {
    ty(Kind::Scalar(s as i32))
}
pub fn field(name: &str, t: FieldType) -> Field {
    Field { name: name.into(), r#type: Some(t), ..Default::default() }
}

const SCALARS: [ScalarType; 17] = {
    use ScalarType::*;
    [Unspecified, String, Int8, Int16, Int32, Int64, Uint8, Uint16, Uint32, Uint64, Float32, Float64, Bool, Datetime, Date, Uuid, Ipv4]
};

/// Enum labels as hostile as validation lets through (quotes, backslashes, unicode, NUL-free).
fn enum_type() -> impl Strategy<Value = FieldType> {
    let label = prop_oneof![Just("RED".to_string()), Just("it's \"x\" \\".to_string()), Just("ü😀".to_string()), "[a-zA-Z '`\"\\\\é]{1,12}"];
    (prop::collection::vec(label, 1..6), any::<bool>(), any::<bool>(), any::<i16>()).prop_map(|(labels, numbers, labels_too, base)| {
        let mut seen = std::collections::HashSet::new();
        let members = labels
            .into_iter()
            .filter(|l| seen.insert(l.clone()) && l.trim().parse::<i64>().is_err())
            .enumerate()
            .map(|(i, label)| EnumMember { label, number: (base as i32 + i as i32 * 301).clamp(-32768, 32767), aliases: vec![] })
            .collect::<Vec<_>>();
        let mut numbers_seen = std::collections::HashSet::new();
        let members = members.into_iter().filter(|m| numbers_seen.insert(m.number)).collect();
        ty(Kind::Enumeration(EnumType { members, numbers, labels_too }))
    })
}

/// Scalars, decimals, date-time64s, fixed strings and enums: what may be a key, a map value or a typed JSON path.
pub fn leaf_type() -> BoxedStrategy<FieldType> {
    prop_oneof![
        6 => prop::sample::select(&SCALARS[1..]).prop_map(scalar),
        1 => Just(scalar(ScalarType::Ipv6)),
        2 => (1u32..=38).prop_flat_map(|p| (Just(p), 0..=p)).prop_map(|(precision, scale)| ty(Kind::Decimal(DecimalType { precision, scale }))),
        1 => (0u32..=9).prop_map(|precision| ty(Kind::Datetime64(DateTime64Type { precision }))),
        1 => (1u32..=40).prop_map(|size| ty(Kind::FixedString(FixedStringType { size }))),
        1 => enum_type(),
    ]
    .boxed()
}

fn map_key_type() -> BoxedStrategy<FieldType> {
    use ScalarType::*;
    prop_oneof![
        prop::sample::select(&[String, Int8, Uint16, Int64, Uint64, Date, Datetime, Uuid][..]).prop_map(scalar),
        (1u32..=8).prop_map(|size| ty(Kind::FixedString(FixedStringType { size }))),
        enum_type(),
    ]
    .boxed()
}

fn map_of(value: BoxedStrategy<FieldType>) -> BoxedStrategy<FieldType> {
    (map_key_type(), value).prop_map(|(k, v)| ty(Kind::Map(Box::new(MapType { key: Some(Box::new(k)), value: Some(Box::new(v)) })))).boxed()
}

/// Types of a record's fields and of list items: no JSON, and records only where a Nested column cannot hold them.
fn inner_type() -> BoxedStrategy<FieldType> {
    let leaf = leaf_type();
    prop_oneof![
        4 => leaf.clone(),
        1 => leaf.clone().prop_map(|t| ty(Kind::Array(Box::new(t)))),
        1 => leaf.clone().prop_map(|t| ty(Kind::Optional(Box::new(t)))),
        1 => map_of(prop_oneof![leaf.clone(), leaf.prop_map(|t| ty(Kind::Array(Box::new(t))))].boxed()),
    ]
    .boxed()
}

fn fields_of(t: BoxedStrategy<FieldType>, n: std::ops::Range<usize>) -> impl Strategy<Value = Vec<Field>> {
    prop::collection::vec((t, any::<bool>()), n).prop_map(|ts| {
        ts.into_iter().enumerate().map(|(i, (t, nullable))| Field { nullable: nullable && !is_optional(&t), ..field(&format!("f{i}"), t) }).collect()
    })
}

fn is_optional(t: &FieldType) -> bool {
    matches!(t.kind, Some(Kind::Optional(_)))
}

fn record_type(n: std::ops::Range<usize>) -> BoxedStrategy<FieldType> {
    fields_of(inner_type(), n).prop_map(|fields| ty(Kind::Record(RecordType { fields }))).boxed()
}

/// A top-level field's type: every kind of the contract, JSON objects with typed paths and Nested columns included.
pub fn top_type() -> BoxedStrategy<FieldType> {
    let typed_paths = prop::collection::vec((leaf_type(), any::<bool>()), 0..3).prop_map(|ts| {
        let names = ["t0", "t1.x", "t2.y.z"];
        ts.into_iter().zip(names).map(|((t, nullable), n)| Field { nullable, ..field(n, t) }).collect()
    });
    prop_oneof![
        6 => inner_type(),
        1 => typed_paths.prop_map(|typed_paths| ty(Kind::Json(JsonType { typed_paths, ..Default::default() }))),
        1 => record_type(1..4).prop_map(|r| ty(Kind::Array(Box::new(r)))),
        1 => record_type(1..4).prop_map(|r| ty(Kind::Optional(Box::new(r)))),
        1 => record_type(1..4),
        1 => inner_type().prop_map(|t| ty(Kind::Array(Box::new(ty(Kind::Array(Box::new(t))))))),
    ]
    .boxed()
}

/// A stream's fields: 1 to 5 of any type, some nullable, some keys, some with a DEFAULT or MATERIALIZED expression.
pub fn stream_fields() -> impl Strategy<Value = Vec<Field>> {
    prop::collection::vec((top_type(), 0u8..10, 0u8..10), 1..6).prop_map(|ts| {
        ts.into_iter()
            .enumerate()
            .map(|(i, (t, flags, attr))| {
                let sortable = matches!(t.kind, Some(Kind::Scalar(_) | Kind::Decimal(_) | Kind::Enumeration(_) | Kind::Datetime64(_) | Kind::FixedString(_)));
                let key = sortable && flags < 3;
                let nullable = !key && !is_optional(&t) && flags >= 7;
                let mut f = Field { nullable, key, ..field(&["id", "v", "a_b", "x", "n"][i], t) };
                match attr {
                    0 if !key => f.default_expression = "1".into(),
                    1 if !key => f.materialized = "now()".into(),
                    _ => {}
                }
                f
            })
            .collect()
    })
}

/// JSON text of one value, and whether it is good for its type.
pub type Val = (String, bool);

fn good(s: BoxedStrategy<String>) -> BoxedStrategy<Val> {
    s.prop_map(|s| (s, true)).boxed()
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string")
}

/// A string as JSON, sometimes with every character \u-escaped (JSON allows it; rows must decode it).
fn json_string(s: String, escape: bool) -> String {
    match escape {
        false => quoted(&s),
        true => {
            let units: String = s.encode_utf16().map(|u| format!("\\u{u:04x}")).collect();
            format!("\"{units}\"")
        }
    }
}

fn timestamp(range: std::ops::RangeInclusive<i64>) -> impl Strategy<Value = DateTime<Utc>> {
    (range, 0u32..1_000_000_000).prop_map(|(s, n)| DateTime::from_timestamp(s, n).expect("in range"))
}

/// A value of `t` that the ingest check must take.
pub fn good_value(t: &FieldType) -> BoxedStrategy<Val> {
    use ScalarType as S;
    let int = |lo: i128, hi: i128| good(prop_oneof![Just(lo), Just(hi), lo..=hi].prop_map(|n| n.to_string()).boxed());
    let Some(kind) = &t.kind else { return good(".*".prop_map(|s| quoted(&s)).boxed()) };
    match kind {
        Kind::Scalar(s) => match ScalarType::try_from(*s).unwrap_or(S::String) {
            S::String | S::Unspecified => good((any::<std::string::String>(), any::<bool>()).prop_map(|(s, e)| json_string(s, e)).boxed()),
            S::Int8 => int(-128, 127),
            S::Int16 => int(-32768, 32767),
            S::Int32 => int(i32::MIN.into(), i32::MAX.into()),
            S::Int64 => int(i64::MIN.into(), i64::MAX.into()),
            S::Uint8 => int(0, 255),
            S::Uint16 => int(0, 65535),
            S::Uint32 => int(0, u32::MAX.into()),
            S::Uint64 => int(0, u64::MAX.into()),
            // Mapped, not filtered: a filter's rejections end a long run. JSON has no NaN or infinity.
            S::Float32 => good(any::<f32>().prop_map(|v| serde_json::to_string(&(if v.is_finite() { v } else { f32::MAX } as f64)).unwrap()).boxed()),
            S::Float64 => good(any::<f64>().prop_map(|v| serde_json::to_string(&if v.is_finite() { v } else { f64::MIN }).unwrap()).boxed()),
            S::Bool => good(any::<bool>().prop_map(|b| b.to_string()).boxed()),
            S::Datetime => good(
                (timestamp(0..=4_291_747_199 - 50_000), -50_000i32..50_000)
                    .prop_map(|(t, off)| {
                        let off = chrono::FixedOffset::east_opt(off / 60 * 60).unwrap();
                        quoted(&t.with_timezone(&off).to_rfc3339())
                    })
                    .boxed(),
            ),
            S::Date => good((0i64..=49_672).prop_map(|d| quoted(&(chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap() + chrono::Days::new(d as u64)).to_string())).boxed()),
            S::Uuid => good((any::<u128>(), any::<bool>()).prop_map(|(u, upper)| {
                let h = format!("{u:032x}");
                let s = format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]);
                quoted(&if upper { s.to_uppercase() } else { s })
            }).boxed()),
            S::Ipv4 => good(any::<u32>().prop_map(|a| quoted(&std::net::Ipv4Addr::from(a).to_string())).boxed()),
            S::Ipv6 => good(any::<u128>().prop_map(|a| quoted(&std::net::Ipv6Addr::from(a).to_string())).boxed()),
        },
        Kind::Decimal(d) => {
            let (p, s) = (d.precision as usize, d.scale as usize);
            let digits = move |n: usize| prop::collection::vec(0u8..10, 0..=n).prop_map(|v| v.iter().map(|d| char::from(b'0' + d)).collect::<String>());
            good((any::<bool>(), digits(p - s), digits(s), 0u8..3).prop_map(|(neg, int, frac, form)| {
                let int = match int.trim_start_matches('0') {
                    "" => "0".to_string(),
                    t => t.to_string(),
                };
                let text = format!("{}{int}{}{frac}", if neg { "-" } else { "" }, if frac.is_empty() { "" } else { "." });
                // A float keeps 15 significant digits: longer ones go as strings.
                match form {
                    0 if int.len() + frac.len() <= 15 => text,
                    1 => format!("\"{text}e0\""),
                    _ => quoted(&text),
                }
            }).boxed())
        }
        Kind::Datetime64(d) => {
            let max = if d.precision == 9 { 9_223_372_035 } else { 10_413_791_999 };
            good((timestamp(-2_208_988_800..=max), 1usize..=9, any::<bool>()).prop_map(|(t, digits, space)| {
                let frac = format!("{:09}", t.timestamp_subsec_nanos());
                let sep = if space { " " } else { "T" };
                quoted(&format!("{}{sep}{}.{}{}", t.format("%Y-%m-%d"), t.format("%H:%M:%S"), &frac[..digits], if space { "" } else { "Z" }))
            }).boxed())
        }
        Kind::FixedString(f) => {
            let size = f.size as usize;
            good(".{0,12}".prop_map(move |s: String| {
                let mut end = s.len().min(size);
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                quoted(&s[..end])
            }).boxed())
        }
        Kind::Enumeration(e) => {
            let forms: Vec<String> = e
                .members
                .iter()
                .flat_map(|m| {
                    let label = (!e.numbers || e.labels_too).then(|| quoted(&m.label));
                    let number = e.numbers.then(|| m.number.to_string());
                    label.into_iter().chain(number)
                })
                .collect();
            match forms.is_empty() {
                true => Just(("\"none\"".to_string(), false)).boxed(),
                false => good(prop::sample::select(forms).boxed()),
            }
        }
        Kind::Array(inner) => {
            prop::collection::vec(good_value(inner), 0..4).prop_map(|items| (format!("[{}]", join(&items)), items.iter().all(|v| v.1))).boxed()
        }
        Kind::Optional(inner) => prop_oneof![1 => Just(("null".to_string(), true)), 3 => good_value(inner)].boxed(),
        Kind::Record(r) => record(&r.fields, false, 0).boxed(),
        Kind::Map(m) => {
            let (k, v) = (m.key.as_deref().cloned().unwrap_or_default(), m.value.as_deref().cloned().unwrap_or_default());
            prop::collection::vec((map_key(&k), good_value(&v)), 0..4)
                .prop_map(|entries| {
                    let mut keys = std::collections::HashSet::new();
                    let entries: Vec<_> = entries.into_iter().filter(|((k, _), _)| keys.insert(k.clone())).collect();
                    let text = entries.iter().map(|((k, _), v)| format!("{}:{}", quoted(k), v.0)).collect::<Vec<_>>().join(",");
                    (format!("{{{text}}}"), entries.iter().all(|((_, k_ok), v)| *k_ok && v.1))
                })
                .boxed()
        }
        Kind::Json(j) => {
            let typed: Vec<BoxedStrategy<(String, Val)>> = j
                .typed_paths
                .iter()
                .map(|f| {
                    let t = if f.nullable { ty(Kind::Optional(Box::new(f.r#type.clone().unwrap()))) } else { f.r#type.clone().unwrap() };
                    good_value(&t).prop_map({
                        let name = f.name.clone();
                        move |v| (name.clone(), v)
                    }).boxed()
                })
                .collect();
            let free = prop::collection::vec(("k[a-z0-9_]{0,3}", hostile()), 0..3);
            (typed, free)
                .prop_map(|(typed, free)| {
                    let mut seen = std::collections::HashSet::new();
                    let parts: Vec<String> = free
                        .iter()
                        .map(|(k, v)| (k.as_str(), (v.clone(), true)))
                        .filter(|(k, (v, _))| serde_json::from_str::<serde_json::Value>(v).is_ok_and(|v| depth(&v) < 60) && seen.insert(k.to_string()))
                        .chain(typed.iter().map(|(k, v)| (k.as_str(), v.clone())))
                        .map(|(k, (v, _))| format!("{}:{v}", quoted(k)))
                        .collect();
                    (format!("{{{}}}", parts.join(",")), typed.iter().all(|(_, v)| v.1))
                })
                .boxed()
        }
    }
}

/// A map key's content (before quoting), and whether the key type takes it: a string key's value, an integer's
/// decimal text; an enum of numbers only takes no key at all.
fn map_key(k: &FieldType) -> BoxedStrategy<(String, bool)> {
    match &k.kind {
        Some(Kind::Scalar(s)) if matches!(ScalarType::try_from(*s), Ok(ScalarType::String)) => ".{0,6}".prop_map(|s| (s, true)).boxed(),
        // Keys are strings: an enum's key is a label, which an enum of numbers alone never takes.
        Some(Kind::Enumeration(e)) => match e.members.is_empty() {
            true => Just((String::new(), false)).boxed(),
            false => prop::sample::select(e.members.iter().map(|m| m.label.clone()).collect::<Vec<_>>()).prop_map({
                let ok = !e.numbers || e.labels_too;
                move |l| (l, ok)
            }).boxed(),
        },
        _ => good_value(k)
            .prop_map(|(text, ok)| match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(serde_json::Value::String(s)) => (s, ok),
                Ok(other) => (other.to_string(), ok),
                Err(_) => (text, false),
            })
            .boxed(),
    }
}

/// How deeply arrays and objects nest in a value.
fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn join(items: &[Val]) -> String {
    items.iter().map(|v| v.0.as_str()).collect::<Vec<_>>().join(",")
}

/// Values no type should be trusted with: huge and odd numbers, deep nesting, broken or odd escapes, wrong kinds.
pub fn hostile() -> BoxedStrategy<String> {
    let fixed = prop::sample::select(vec![
        "1e400", "-1e400", "1E-400", "-0", "-0.0", "0e0", "18446744073709551615", "18446744073709551616", "18446744073709551617",
        "-9223372036854775808", "-9223372036854775809", "340282356779733661637539395458142568448", "3.4028236e38", "1e2147483648",
        "1e-2147483649", "4291747199", "4291747200", "-2208988801", "1e15", "1099511627776.5", "-0.5", "1.5e0", "NaN", "Infinity",
        "true", "false", "null", "[]", "{}", "[1,\"a\",null]", "{\"a\":{}}", "\"\"", "\"\\ud800\"", "\"\\udc00\\ud800\"", "\"\\u0000\"",
        "\"\\uZZZZ\"", "\"\\", "\"2026-02-30\"", "\"2105-12-31\"", "\"2106-01-01\"", "\"9999-12-31T23:59:59Z\"", "\"0000-01-01T00:00:00Z\"",
        "\"2262-04-11T23:47:16.854775808Z\"", "\"1900-01-01T00:00:00.0000000001Z\"", "\"2026-11-25T10:00:00+24:00\"", "\"1e-8\"", "\"1E+99999999\"",
        "\"1.5.5\"", "\"::ffff:1.2.3.4\"", "\"01.2.3.4\"", "\"0F8FAD5B-D9CB-469F-A165-70867728950E\"", "\"é\"", "\"\\u00e9\\u00e9\\u00e9\"",
        "\"a\\\"b\"", "\"`; DROP TABLE x; --\"", "'single'", "[1,]", "{\"a\":1,}", "{\"a\" 1}", "01", "1.", ".5", "+1", "- 1",
    ])
    .prop_map(str::to_string);
    prop_oneof![
        4 => fixed,
        1 => (1usize..5_000, any::<bool>()).prop_map(|(n, neg)| format!("{}{}", if neg { "-" } else { "" }, "9".repeat(n))),
        1 => (1usize..2_000).prop_map(|n| format!("0.{}1", "0".repeat(n))),
        1 => (1usize..3_000, 0u8..4).prop_map(|(n, shape)| nested(n, shape)),
        1 => any::<String>().prop_map(|s| quoted(&s)),
        1 => "[ -~]{0,12}",
    ]
    .boxed()
}

/// `n` levels of arrays or objects, closed or not.
pub fn nested(n: usize, shape: u8) -> String {
    match shape {
        0 => format!("{}{}", "[".repeat(n), "]".repeat(n)),
        1 => format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n)),
        2 => "[{\"a\":".repeat(n),
        _ => "[".repeat(n),
    }
}

/// A value of `t`: mostly good, sometimes hostile.
pub fn value(t: &FieldType) -> BoxedStrategy<Val> {
    prop_oneof![6 => good_value(t), 1 => hostile().prop_map(|h| (h, false))].boxed()
}

/// A record of `fields` as JSON text, and whether it is good. `mess` > 0: fields may be hostile, left out, given
/// twice, or joined by extra ones.
pub fn record(fields: &[Field], allow_extra: bool, mess: u32) -> impl Strategy<Value = Val> {
    let parts: Vec<BoxedStrategy<(String, Option<String>, bool)>> = fields
        .iter()
        .map(|f| {
            let t = f.r#type.clone().unwrap_or_default();
            let filled = !f.default_expression.is_empty() || !f.materialized.is_empty();
            let t = if (f.nullable || filled) && !is_optional(&t) { ty(Kind::Optional(Box::new(t))) } else { t };
            let required = !is_optional(&t);
            let name = f.name.clone();
            let v = if mess > 0 { value(&t) } else { good_value(&t) };
            (v, 0..20u32)
                .prop_map(move |((text, ok), roll)| match roll {
                    0 if mess > 0 => (name.clone(), None, !required),
                    1 if mess > 0 => (name.clone(), Some(format!("{text},{}:{text}", quoted(&name))), false),
                    _ => (name.clone(), Some(text), ok),
                })
                .boxed()
        })
        .collect();
    let extra = prop::option::weighted(0.2, ("[a-z\"`\\\\ é]{0,6}", hostile())).prop_map(move |e| e.filter(|_| mess > 0));
    (parts, extra, any::<bool>()).prop_map(move |(parts, extra, reversed)| {
        let mut good = parts.iter().all(|p| p.2);
        let mut members: Vec<String> = parts.iter().filter_map(|(n, v, _)| v.as_ref().map(|v| format!("{}:{v}", quoted(n)))).collect();
        if let Some((name, v)) = extra {
            // Inside the record it is one level deeper, against serde_json's limit of 128.
            good &= allow_extra && serde_json::from_str::<serde::de::IgnoredAny>(&format!("{{\"a\":{v}}}")).is_ok();
            members.push(format!("{}:{v}", quoted(&format!("extra_{name}"))));
        }
        if reversed {
            members.reverse();
        }
        (format!("{{{}}}", members.join(", ")), good)
    })
}
