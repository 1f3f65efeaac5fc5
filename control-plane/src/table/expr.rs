//! ClickHouse expressions users write (ORDER BY, PARTITION BY, TTL, index expressions, ...) reach DDL as text.
//! They are not parsed: the user may already create any table, so the check is not about what an expression
//! computes but that it stays one expression in its own clause. It refuses what could end the statement or the
//! clause (`;`, comments, an unbalanced quote or bracket, a heredoc, control characters) and, where the expression is not
//! wrapped in parentheses (TTL), words that would start another clause. ClickHouse then judges the rest.

/// Longest expression accepted: real ones are a few dozen characters.
pub const MAX_EXPRESSION: usize = 4096;

/// Words that start a clause of CREATE TABLE after the engine; refused at the top level of an unwrapped
/// expression, so that it cannot add a clause the plan does not show.
const CLAUSE_WORDS: [&str; 8] = ["ENGINE", "ORDER", "PARTITION", "PRIMARY", "SAMPLE", "SETTINGS", "FORMAT", "TTL"];

/// Checks one expression; the error says what to fix. `wrapped`: it is rendered inside parentheses.
pub fn check(text: &str, wrapped: bool) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("is empty".into());
    }
    if text.len() > MAX_EXPRESSION {
        return Err(format!("is longer than {MAX_EXPRESSION} characters"));
    }
    if let Some(c) = text.chars().find(|c| c.is_control() && !matches!(c, ' ' | '\t' | '\n' | '\r')) {
        return Err(format!("holds the control character {c:?}"));
    }
    let bytes = text.as_bytes();
    let mut open: Vec<u8> = Vec::new();
    let mut top_words: Vec<String> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\'' | b'`' | b'"' => i = skip_quoted(bytes, i).ok_or_else(|| format!("has an unclosed {} quote", b as char))?,
            b';' => return Err("holds `;`: one expression, not statements".into()),
            // Newer servers read `$$...$$` and `$tag$...$tag$` as strings (heredocs), which would hide quotes and
            // brackets from this check.
            b'$' => return Err("holds `$` outside quotes (a heredoc string on newer servers): quote it".into()),
            b'#' => return Err("holds `#` (a comment in ClickHouse) outside quotes".into()),
            b'-' if bytes.get(i + 1) == Some(&b'-') => return Err("holds `--` (a comment) outside quotes".into()),
            b'/' if bytes.get(i + 1) == Some(&b'*') => return Err("holds `/*` (a comment) outside quotes".into()),
            b'(' | b'[' | b'{' => open.push(b),
            b')' | b']' | b'}' => {
                let want = match b {
                    b')' => b'(',
                    b']' => b'[',
                    _ => b'{',
                };
                if open.pop() != Some(want) {
                    return Err(format!("has an unbalanced `{}`", b as char));
                }
            }
            _ if b.is_ascii_alphabetic() || b == b'_' => {
                let start = i;
                while i + 1 < bytes.len() && (bytes[i + 1].is_ascii_alphanumeric() || bytes[i + 1] == b'_') {
                    i += 1;
                }
                if open.is_empty() {
                    top_words.push(text[start..=i].to_ascii_uppercase());
                }
            }
            _ => {}
        }
        i += 1;
    }
    if let Some(b) = open.last() {
        return Err(format!("has an unclosed `{}`", *b as char));
    }
    if !wrapped {
        if let Some(w) = top_words.iter().find(|w| CLAUSE_WORDS.contains(&w.as_str())) {
            return Err(format!("holds `{w}`, which would start another clause of the table"));
        }
    }
    Ok(())
}

/// The index of the closing quote of the quoted string or identifier that starts at `start`, if it closes.
/// ClickHouse escapes a quote inside by a backslash or by doubling it.
fn skip_quoted(bytes: &[u8], start: usize) -> Option<usize> {
    let q = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            c if c == q => {
                if bytes.get(i + 1) == Some(&q) {
                    i += 2;
                } else {
                    return Some(i);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// A literal for an index type's argument: a number, or a single-quoted string that is one closed literal.
pub fn is_literal(text: &str) -> bool {
    let t = text.trim();
    if t.parse::<f64>().is_ok() && !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')) {
        return true;
    }
    t.len() >= 2 && t.starts_with('\'') && skip_quoted(t.as_bytes(), 0) == Some(t.len() - 1) && !t.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_users_write_are_accepted() {
        for ok in [
            "toYYYYMM(ts)",
            "(id, toDate(ts))",
            "tuple()",
            "cityHash64(id)",
            "if(name = 'a;b', 1, 2)",
            "concat('it''s', `odd name`, \"x\")",
            "arr[1]",
            "'--not a comment'",
            "concat('$', x)",
        ] {
            check(ok, true).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        check("ts + INTERVAL 30 DAY", false).unwrap();
        check("ts + toIntervalDay(1) DELETE WHERE x = 1", false).unwrap();
    }

    #[test]
    fn what_could_leave_its_clause_is_refused_with_the_reason() {
        for (bad, why) in [
            ("id; DROP TABLE x", ";"),
            ("id); DROP TABLE x", "unbalanced"),
            ("id) ENGINE = Log", "unbalanced"),
            ("(id", "unclosed `(`"),
            ("'abc", "unclosed '"),
            ("id -- rest", "--"),
            ("id /* x */", "/*"),
            ("id # x", "#"),
            ("a\u{0}b", "control"),
            ("  ", "empty"),
            ("[1)", "unbalanced"),
            ("$$'$$), DROP COLUMN `b`, MODIFY COLUMN `a` String DEFAULT ($$'$$", "heredoc"),
            ("$x$ ) $x$", "heredoc"),
        ] {
            let e = check(bad, true).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(check("ts + INTERVAL 1 DAY SETTINGS x = 1", false).unwrap_err().contains("SETTINGS"));
        assert!(check(&"a".repeat(MAX_EXPRESSION + 1), true).is_err());
    }

    #[test]
    fn index_arguments_are_literals() {
        for ok in ["0.01", "3", "256", "'abc'", "'it''s'", "-1", "1e-3"] {
            assert!(is_literal(ok), "{ok}");
        }
        for bad in ["x", "1)", "'a' || 'b'", "'a", "", "f(1)"] {
            assert!(!is_literal(bad), "{bad}");
        }
    }
}
