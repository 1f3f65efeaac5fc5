//! Names users choose, checked before they reach a topic name or a SQL statement, and quoted when they do.

/// `[A-Za-z_][A-Za-z0-9_]{0,127}`: field and column names, databases, runtimes and namespaces.
pub fn is_valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    s.len() <= 128 && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `[A-Za-z_][A-Za-z0-9_-]{0,127}`: names of streams, tables, queues, APIs, transforms and consumers, which moose
/// lets users write as `raw-events`. They become topic names (Kafka takes `-`) and quoted ClickHouse identifiers.
pub fn is_valid_resource_name(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    s.len() <= 128 && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `[0-9A-Za-z_.]{1,32}`: versions ("" = unversioned is checked by the caller).
pub fn is_valid_version(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// Function and runtime names come from user code (Python qualified names, Rust paths): a little wider.
pub fn is_valid_function_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
}

/// The physical (topic or table) name of a versioned resource: `events` + `1.2` -> `events_1_2`.
pub fn physical_name(name: &str, version: &str) -> String {
    if version.is_empty() {
        name.to_string()
    } else {
        format!("{name}_{}", version.replace('.', "_"))
    }
}

/// A ClickHouse identifier in backquotes. Names are validated first; quoting is the second line of defence.
pub fn quote_ch(ident: &str) -> String {
    quoted(ident, '`')
}

/// A ClickHouse string literal in single quotes.
pub fn quote_str(s: &str) -> String {
    quoted(s, '\'')
}

/// `s` between `q`s, with `q` and backslashes escaped.
fn quoted(s: &str, q: char) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push(q);
    for c in s.chars() {
        if c == q || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push(q);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_identifiers_and_refuses_everything_else() {
        for ok in ["a", "_", "A_1", "raw_data", &"x".repeat(128)] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in ["", "1a", "a b", "a\"b", "a`b", "a-b", "a.b", "é", &"x".repeat(129), "a;drop"] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn resource_names_may_hold_hyphens_as_moose_allows() {
        for ok in ["raw-events", "a-1", "_x-", "raw_data"] {
            assert!(is_valid_resource_name(ok), "{ok}");
        }
        for bad in ["-a", "", "1a", "a b", "a.b", "a`b", "a/b", &"x".repeat(129)] {
            assert!(!is_valid_resource_name(bad), "{bad}");
        }
    }

    #[test]
    fn versions_become_underscored_suffixes() {
        assert!(is_valid_version("1.2.0"));
        assert!(!is_valid_version("1 2"));
        assert!(!is_valid_version(""));
        assert_eq!(physical_name("events", "1.2.0"), "events_1_2_0");
        assert_eq!(physical_name("events", ""), "events");
    }

    #[test]
    fn quoting_escapes_backquotes() {
        assert_eq!(quote_ch("a"), "`a`");
        assert_eq!(quote_ch("a`b\\"), "`a\\`b\\\\`");
    }
}
