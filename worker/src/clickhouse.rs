//! Inserts into ClickHouse over its HTTP interface, with the `clickhouse` crate's formatted insert: the rows are
//! already JSONEachRow (written by `rows`) and go as they are, the statement in the URL. ClickHouse's answers are
//! told apart by exception code: a row is at fault (find it by splitting), the insert needs more memory than
//! ClickHouse allows (split), or anything else (the table, the user, the network, a server shutting down: retry).

use bytes::Bytes;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    /// The data: some row cannot be parsed or stored.
    #[error("ClickHouse refused the rows: {0}")]
    Rows(String),
    /// The insert needs more memory than ClickHouse allows it: a smaller one may go in.
    #[error("ClickHouse ran out of memory for the insert: {0}")]
    Memory(String),
    /// Anything else ClickHouse refused (missing table, permissions, ...): retried, it may be fixed.
    #[error("ClickHouse refused the insert: {0}")]
    Refused(String),
    #[error("ClickHouse at {0} cannot be reached: {1}")]
    Unreachable(String, String),
}

/// What an exception code says about an insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A row cannot be parsed or stored: split the batch to find it.
    Rows,
    /// The insert is over a memory limit: split the batch (a single row is retried).
    Memory,
    /// Nothing a row did: retry as it is.
    Other,
}

/// Parse and conversion errors of the input data (CANNOT_PARSE_*, TYPE_MISMATCH, ARGUMENT_OUT_OF_BOUND,
/// CANNOT_CONVERT_TYPE, INCORRECT_DATA, TOO_LARGE_STRING_SIZE, CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN,
/// DECIMAL_OVERFLOW, CANNOT_PARSE_IPV4, CANNOT_PARSE_IPV6, ...). Not 32 and 33 (ATTEMPT_TO_READ_AFTER_EOF,
/// CANNOT_READ_ALL_DATA): the rows are whole JSON lines, so a body that ends early was cut in transit; nor 1001 (a
/// std::exception: anything at all).
const ROW_ERRORS: &[u32] = &[6, 25, 26, 27, 38, 41, 53, 69, 70, 72, 117, 130, 131, 349, 377, 395, 407, 441, 457, 675, 676];

/// MEMORY_LIMIT_EXCEEDED and CANNOT_ALLOCATE_MEMORY.
const MEMORY_ERRORS: &[u32] = &[241, 173];

pub fn cause(code: u32) -> Cause {
    if ROW_ERRORS.contains(&code) {
        Cause::Rows
    } else if MEMORY_ERRORS.contains(&code) {
        Cause::Memory
    } else {
        Cause::Other
    }
}

#[derive(Clone)]
pub struct ClickHouse {
    client: ::clickhouse::Client,
    url: String,
    timeout: Duration,
}

impl ClickHouse {
    /// `url` may carry ClickHouse settings in its query string (`http://host:8123/?max_memory_usage=...`): they
    /// apply to every insert.
    pub fn new(url: &str, user: &str, password: &str, timeout: Duration) -> Self {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        // Uncompressed, as before: the rows are sent once, on a near link, and compressing costs a core.
        let mut client = ::clickhouse::Client::default()
            .with_url(base.trim_end_matches('/'))
            .with_user(user)
            .with_password(password)
            .with_compression(::clickhouse::Compression::None);
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            client = client.with_setting(name, value);
        }
        Self { client, url: base.trim_end_matches('/').to_string(), timeout }
    }

    /// `INSERT INTO <table> (<columns>) FORMAT JSONEachRow` with `rows` (one JSON object per line), with ClickHouse
    /// `settings` for this insert only (sent in the URL, as the client's own are).
    pub async fn insert(&self, statement: &str, settings: &[(&str, &str)], rows: Bytes) -> Result<(), InsertError> {
        let call = async {
            let mut insert = self.client.insert_formatted_with(statement.to_string());
            for (name, value) in settings {
                insert = insert.with_setting(*name, *value);
            }
            insert.send(rows).await?;
            insert.end().await
        };
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(self.unreachable(format!("no answer within {:?}", self.timeout))),
            Ok(Ok(())) => Ok(()),
            Ok(Err(::clickhouse::error::Error::BadResponse(message))) => {
                let message = message.trim().chars().take(2000).collect::<String>();
                Err(match exception_code(&message).map(cause) {
                    Some(Cause::Rows) => InsertError::Rows(message),
                    Some(Cause::Memory) => InsertError::Memory(message),
                    Some(Cause::Other) => InsertError::Refused(message),
                    // No exception: a proxy or a server shutting down, not the data.
                    None => self.unreachable(message),
                })
            }
            Ok(Err(e)) => Err(self.unreachable(e.to_string())),
        }
    }

    fn unreachable(&self, detail: String) -> InsertError {
        InsertError::Unreachable(self.url.clone(), detail)
    }
}

/// The number after `Code: ` in a ClickHouse exception.
fn exception_code(message: &str) -> Option<u32> {
    let rest = &message[message.find("Code: ")? + 6..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exception_codes_are_read() {
        assert_eq!(exception_code("Code: 27, e.displayText() = DB::Exception: Cannot parse input"), Some(27));
        assert_eq!(exception_code("Code: 60. DB::Exception: Table db.t doesn't exist"), Some(60));
        assert_eq!(exception_code("Bad Gateway"), None);
    }

    #[test]
    fn rows_memory_and_transport_are_told_apart() {
        // Parse errors and out-of-range values are a row's; a memory limit splits; a body cut in transit, a
        // socket timeout, a missing table or a std::exception are retried as they are.
        for code in [6, 27, 38, 41, 53, 69, 72, 349, 407] {
            assert_eq!(cause(code), Cause::Rows, "code {code}");
        }
        assert_eq!(cause(241), Cause::Memory);
        assert_eq!(cause(173), Cause::Memory);
        for code in [32, 33, 60, 73, 159, 209, 210, 252, 394, 1000, 1001] {
            assert_eq!(cause(code), Cause::Other, "code {code}");
        }
    }
}
