//! Inserts into ClickHouse over its HTTP interface: the statement and the rows (JSONEachRow) in one POST body.
//! Failures are told apart: ClickHouse refusing the data (a row is at fault: find it), refusing for another reason
//! (the table, the user: nothing a row did), or not answering (retry).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    /// The data: some row cannot be parsed or stored.
    #[error("ClickHouse refused the rows: {0}")]
    Rows(String),
    /// Anything else ClickHouse refused (missing table, permissions, ...): retried, it may be fixed.
    #[error("ClickHouse refused the insert: {0}")]
    Refused(String),
    #[error("ClickHouse at {0} cannot be reached: {1}")]
    Unreachable(String, String),
}

/// Exception codes of ClickHouse that mean the input data is at fault (parse and conversion errors).
const DATA_ERRORS: &[u32] = &[
    6, 25, 26, 27, 32, 33, 38, 41, 53, 69, 70, 72, 73, 117, 130, 131, 349, 377, 395, 417, 441, 457, 1001,
];

#[derive(Clone)]
pub struct ClickHouse {
    client: Client<HttpConnector, Full<Bytes>>,
    url: String,
    auth: String,
    timeout: Duration,
}

impl ClickHouse {
    pub fn new(url: &str, user: &str, password: &str, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        let auth = format!("user={}&password={}", encode(user), encode(password));
        Self { client, url: url.trim_end_matches('/').to_string(), auth, timeout }
    }

    /// `INSERT INTO <table> (<columns>) FORMAT JSONEachRow` with `rows` (one JSON object per line).
    pub async fn insert(&self, statement: &str, rows: &[u8]) -> Result<(), InsertError> {
        let mut body = Vec::with_capacity(statement.len() + 1 + rows.len());
        body.extend_from_slice(statement.as_bytes());
        body.push(b'\n');
        body.extend_from_slice(rows);
        let uri = format!("{}/?{}", self.url, self.auth);
        let req = hyper::Request::post(&uri)
            .header(hyper::header::CONTENT_TYPE, "text/plain")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| InsertError::Unreachable(self.url.clone(), e.to_string()))?;
        let unreachable = |d: String| InsertError::Unreachable(self.url.clone(), d);
        let call = async {
            let resp = self.client.request(req).await.map_err(|e| unreachable(e.to_string()))?;
            let status = resp.status();
            let text = resp.into_body().collect().await.map_err(|e| unreachable(e.to_string()))?.to_bytes();
            Ok::<_, InsertError>((status, text))
        };
        let (status, text) = tokio::time::timeout(self.timeout, call).await.map_err(|_| unreachable(format!("no answer within {:?}", self.timeout)))??;
        if status.is_success() {
            return Ok(());
        }
        let message = String::from_utf8_lossy(&text).trim().chars().take(2000).collect::<String>();
        match exception_code(&message) {
            Some(code) if DATA_ERRORS.contains(&code) => Err(InsertError::Rows(message)),
            Some(_) => Err(InsertError::Refused(message)),
            // No exception: a proxy or a server shutting down, not the data.
            None => Err(unreachable(format!("HTTP {status}: {message}"))),
        }
    }
}

/// The number after `Code: ` in a ClickHouse exception.
fn exception_code(message: &str) -> Option<u32> {
    let rest = &message[message.find("Code: ")? + 6..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Percent-encodes a query parameter value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exception_codes_are_read() {
        assert_eq!(exception_code("Code: 27, e.displayText() = DB::Exception: Cannot parse input"), Some(27));
        assert_eq!(exception_code("Code: 60. DB::Exception: Table db.t doesn't exist"), Some(60));
        assert_eq!(exception_code("Bad Gateway"), None);
        assert_eq!(encode("a b&c"), "a%20b%26c");
    }
}
