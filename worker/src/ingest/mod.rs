//! The ingest API: `POST /ingest/<name>[/<version>]` on the worker's HTTP listener. Every record of a request is
//! checked against its stream's fields; a request is written whole or not at all, and answered 200 only once the
//! broker acknowledged every record. Invalid records (and only they) go to the API's dead letter queue.

pub mod catalog;

use crate::metrics::Metrics;
use crate::output::{DeadLetter, OriginalRecord};
use crate::schema::FieldError;
use crate::unit::produce::{self, BatchAcks, Producer};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use catalog::{Catalog, Endpoint, Found};
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Errors listed in a 400 answer, at most; the count says how many there were.
const MAX_LISTED: usize = 1000;
/// Invalid records of one request sent to the dead letter queue, at most; the answer says how many went. A body
/// of millions of invalid records would otherwise queue millions of letters for one refused request.
const MAX_DEAD_LETTERS: usize = 10_000;
/// Errors of one invalid record its dead letter names, at most.
const DEAD_LETTER_ERRORS: usize = 10;
/// Room a record needs in a broker message beside its value (key, headers, framing).
const RECORD_OVERHEAD: usize = 512;
/// The metrics label of requests that name no known ingest API: one series, whatever the paths.
const UNKNOWN_API: &str = "-";

pub struct Settings {
    pub max_body_bytes: usize,
    pub timeout: Duration,
    pub max_message_bytes: usize,
    pub linger_ms: u64,
}

pub struct Ingest {
    catalog: Arc<Catalog>,
    producer: Producer,
    settings: Settings,
    metrics: Metrics,
}

/// Why a request is refused; mapped to its HTTP answer in one place (`into_response`).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("no ingest API {0}: {1}")]
    NotFound(String, String),
    #[error("the body is {0} bytes, over the limit of {1}: send fewer records per request (or raise --ingest-max-body-bytes)")]
    TooLarge(String, usize),
    #[error("content type {0:?} is not accepted: send application/json (an object or an array) or application/x-ndjson")]
    UnsupportedType(String),
    #[error("{0}")]
    BadBody(String),
    #[error("{invalid} of {total} records are invalid; nothing was written{dlq}")]
    Invalid { invalid: usize, total: usize, dlq: String, dead_lettered: usize, errors: Vec<RecordError> },
    #[error("{0}; nothing is lost: retry the request")]
    Unavailable(String),
}

#[derive(Debug, serde::Serialize)]
pub struct RecordError {
    pub record: usize,
    pub field: String,
    pub reason: String,
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = self.to_string();
        let body = match self {
            IngestError::Invalid { invalid, errors, dead_lettered, .. } => {
                serde_json::json!({ "error": message, "invalid": invalid, "dead_lettered": dead_lettered, "errors": errors })
            }
            _ => serde_json::json!({ "error": message }),
        };
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // The request may be sent again: nothing of it was answered as written.
            return (status, [(header::RETRY_AFTER, "1")], axum::Json(body)).into_response();
        }
        (status, axum::Json(body)).into_response()
    }
}

impl Ingest {
    pub fn new(catalog: Arc<Catalog>, brokers: &str, settings: Settings, metrics: Metrics) -> anyhow::Result<Arc<Self>> {
        let producer = produce::producer(brokers, settings.timeout, 256 << 10, settings.max_message_bytes, settings.linger_ms)
            .map_err(|e| anyhow::anyhow!("creating the ingest producer: {e}"))?;
        Ok(Arc::new(Self { catalog, producer, settings, metrics }))
    }

    pub fn routes(self: Arc<Self>) -> axum::Router {
        use axum::routing::post;
        let limit = self.settings.max_body_bytes;
        axum::Router::new()
            // `<name>`, `<name>/<version>`, or an API's own path.
            .route(
                "/ingest/{*path}",
                post(|s: State<Arc<Ingest>>, Path(path): Path<String>, h: HeaderMap, b: Result<Bytes, BytesRejection>| async move {
                    s.0.handle(&path, &h, b).await
                }),
            )
            // Bodies are read up to the limit; the handler answers 413 with the reason.
            .layer(DefaultBodyLimit::max(limit))
            .with_state(self)
    }

    async fn handle(&self, path: &str, headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
        let started = Instant::now();
        // Labelled by the API found, never by the path asked for: paths are the client's, and each distinct label
        // is a series kept forever.
        let (api, result) = match self.find(path).await {
            Ok(api) => {
                let r = self.ingest(&api, headers, body).await;
                (Some(api), r)
            }
            Err(e) => (None, Err(e)),
        };
        let label = api.as_ref().map(|a| a.label.as_str()).unwrap_or(UNKNOWN_API);
        let code = match &result {
            Ok(_) => StatusCode::OK,
            Err(e) => e.status(),
        };
        self.metrics.ingest_requests.with_label_values(&[label, code.as_str()]).inc();
        self.metrics.ingest_latency.with_label_values(&[label]).observe(started.elapsed().as_secs_f64());
        match result {
            Ok(written) => axum::Json(serde_json::json!({ "written": written })).into_response(),
            Err(e) => e.into_response(),
        }
    }

    /// The API a request names (its token was checked by the listener's layer).
    async fn find(&self, path: &str) -> Result<Arc<Endpoint>, IngestError> {
        match self.catalog.lookup(path).await {
            Found::Api(api) => Ok(api),
            Found::Unknown { known } => {
                let shown = if known.is_empty() { "none is declared".to_string() } else { format!("declared: {}", known.join(", ")) };
                // Cut: the path is the client's, and it is echoed back.
                let asked: String = path.chars().take(200).collect();
                Err(IngestError::NotFound(format!("`{asked}`"), shown))
            }
            Found::NotLoaded => Err(IngestError::Unavailable("this worker has not yet learned the ingest APIs from the control plane".into())),
        }
    }

    async fn ingest(&self, api: &Arc<Endpoint>, headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<usize, IngestError> {
        let limit = self.settings.max_body_bytes;
        let body = match body {
            Ok(b) if b.len() > limit => return Err(IngestError::TooLarge(b.len().to_string(), limit)),
            Ok(b) => b,
            Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                let size = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).unwrap_or("more than that");
                return Err(IngestError::TooLarge(size.to_string(), limit));
            }
            Err(r) => return Err(IngestError::BadBody(format!("the body could not be read: {r}"))),
        };
        let ndjson = content_type(headers)?;
        let records = split(&body, ndjson)?;
        let mut keys = Vec::with_capacity(records.len());
        let mut errors = Vec::new();
        // Kept for the first invalid records only: a hostile body may hold millions.
        let mut invalid = Vec::new();
        let mut invalid_count = 0;
        let max_value = self.settings.max_message_bytes.saturating_sub(RECORD_OVERHEAD);
        for (i, r) in records.iter().enumerate() {
            // A record the broker can never take is the client's error, found before anything is queued.
            let too_large = |size: usize| {
                let reason = format!("the record (with its key) is {size} bytes, over the broker's limit of {max_value} bytes per record: send it smaller");
                Err(vec![FieldError { field: String::new(), reason }])
            };
            let checked = match r.len() > max_value {
                true => too_large(r.len()),
                false => match api.schema.check(r) {
                    Ok(k) if r.len() + k.as_ref().map_or(0, |k| k.len()) > max_value => too_large(r.len() + k.map_or(0, |k| k.len())),
                    other => other,
                },
            };
            match checked {
                Ok(k) => {
                    if invalid_count == 0 {
                        keys.push(k);
                    }
                }
                Err(mut errs) => {
                    invalid_count += 1;
                    keys = Vec::new();
                    if errors.len() < MAX_LISTED {
                        let room = MAX_LISTED - errors.len();
                        errors.extend(errs.iter().take(room).map(|FieldError { field, reason }| RecordError { record: i, field: field.clone(), reason: reason.clone() }));
                    }
                    // Kept for a dead letter only where one goes, with its first few errors: 10,000 records of 100
                    // errors each would hold a hundred megabytes for one request.
                    if api.dead_letter_topic.is_some() && invalid.len() < MAX_DEAD_LETTERS {
                        errs.truncate(DEAD_LETTER_ERRORS);
                        invalid.push((i, errs));
                    }
                }
            }
        }
        let label = api.label.as_str();
        if invalid_count > 0 {
            self.metrics.ingest_records.with_label_values(&[label, "invalid"]).inc_by(invalid_count as u64);
            let (dlq, dead_lettered) = match &api.dead_letter_topic {
                Some(topic) => {
                    self.dead_letters(api, topic, &records, &invalid).await?;
                    let n = invalid.len();
                    let which = if n == invalid_count { "the invalid records".to_string() } else { format!("the first {n} invalid records") };
                    (format!("; {which} went to the dead letter queue"), n)
                }
                None => (String::new(), 0),
            };
            errors.truncate(MAX_LISTED);
            return Err(IngestError::Invalid { invalid: invalid_count, total: records.len(), dlq, dead_lettered, errors });
        }
        let acks = BatchAcks::new();
        let deadline = Instant::now() + self.settings.timeout;
        for (r, k) in records.iter().zip(&keys) {
            // A stream that allows extra fields gets the record without them.
            let stripped = if api.schema.allow_extra { api.schema.strip_extra(r) } else { None };
            self.send(&acks, &api.topic, k.as_deref(), stripped.as_deref().unwrap_or(r), deadline).await?;
        }
        self.await_acks(&acks, deadline, &api.topic).await?;
        self.metrics.ingest_records.with_label_values(&[label, "written"]).inc_by(records.len() as u64);
        Ok(records.len())
    }

    async fn dead_letters(&self, api: &Endpoint, topic: &str, records: &[&[u8]], invalid: &[(usize, Vec<FieldError>)]) -> Result<(), IngestError> {
        let acks = BatchAcks::new();
        let deadline = Instant::now() + self.settings.timeout;
        let failed_at = chrono::Utc::now().to_rfc3339();
        let function = format!("ingest:{}", api.name);
        for (i, errs) in invalid {
            let message: Vec<String> = errs.iter().map(|e| if e.field.is_empty() { e.reason.clone() } else { format!("{}: {}", e.field, e.reason) }).collect();
            let message = message.join("; ");
            let letter = DeadLetter {
                original_record: OriginalRecord::of(records[*i]),
                error_message: &message,
                error_type: "ValidationError",
                failed_at: failed_at.clone(),
                source: "api",
                function: &function,
                topic: &api.topic,
                partition: -1,
                offset: -1,
                original_record_truncated: None,
                original_bytes: None,
            };
            let bytes = letter.to_bytes(records[*i], self.settings.max_message_bytes.saturating_sub(512));
            self.send(&acks, topic, None, &bytes, deadline).await?;
        }
        self.await_acks(&acks, deadline, topic).await
    }

    async fn send(&self, acks: &Arc<BatchAcks>, topic: &str, key: Option<&[u8]>, value: &[u8], deadline: Instant) -> Result<(), IngestError> {
        loop {
            match produce::hand_over(&self.producer, acks, None, topic, key, value) {
                Ok(()) => return Ok(()),
                Err(e) if produce::queue_full(&e) && Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(2)).await,
                Err(e) => return Err(IngestError::Unavailable(format!("the broker does not take records for `{topic}`: {e}"))),
            }
        }
    }

    async fn await_acks(&self, acks: &BatchAcks, deadline: Instant, topic: &str) -> Result<(), IngestError> {
        // librdkafka gives up on each record at the same timeout; the margin lets its verdict arrive first.
        match tokio::time::timeout_at(deadline + Duration::from_secs(1), acks.wait()).await {
            Err(_) => Err(IngestError::Unavailable(format!("the broker did not acknowledge the records for `{topic}` in time"))),
            Ok(Err(e)) => Err(IngestError::Unavailable(format!("the broker did not take the records for `{topic}`: {e}"))),
            Ok(Ok(())) => Ok(()),
        }
    }
}

impl IngestError {
    fn status(&self) -> StatusCode {
        match self {
            IngestError::NotFound(..) => StatusCode::NOT_FOUND,
            IngestError::TooLarge(..) => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::UnsupportedType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngestError::BadBody(_) | IngestError::Invalid { .. } => StatusCode::BAD_REQUEST,
            IngestError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// True for NDJSON, false for JSON (also when no content type is given).
fn content_type(headers: &HeaderMap) -> Result<bool, IngestError> {
    let Some(v) = headers.get(header::CONTENT_TYPE) else { return Ok(false) };
    let v = v.to_str().unwrap_or("").to_ascii_lowercase();
    let essence = v.split(';').next().unwrap_or("").trim();
    match essence {
        "application/json" | "text/json" => Ok(false),
        "application/x-ndjson" | "application/ndjson" | "application/jsonlines" | "application/x-jsonlines" => Ok(true),
        _ => Err(IngestError::UnsupportedType(v)),
    }
}

/// The records of a body: one JSON object, a JSON array of them, or one per line.
pub(crate) fn split(body: &[u8], ndjson: bool) -> Result<Vec<&[u8]>, IngestError> {
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() {
        return Err(IngestError::BadBody("the body is empty: send a JSON object, an array of them, or NDJSON".into()));
    }
    if ndjson {
        return Ok(trimmed.split(|b| *b == b'\n').map(|l| l.trim_ascii()).filter(|l| !l.is_empty()).collect());
    }
    if trimmed[0] == b'[' {
        let items: Vec<&RawValue> = serde_json::from_slice(trimmed)
            .map_err(|e| IngestError::BadBody(format!("the body is not a valid JSON array: {e}")))?;
        return Ok(items.into_iter().map(|r| r.get().as_bytes()).collect());
    }
    Ok(vec![trimmed])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_split_into_records() {
        assert_eq!(split(b" {\"a\":1} ", false).unwrap(), vec![&b"{\"a\":1}"[..]]);
        assert_eq!(split(b"[{\"a\":1}, {\"a\":2}]", false).unwrap().len(), 2);
        assert_eq!(split(b"{\"a\":1}\n\n{\"a\":2}\r\n", true).unwrap(), vec![&b"{\"a\":1}"[..], &b"{\"a\":2}"[..]]);
        assert!(split(b"[{\"a\":1},", false).is_err());
        assert!(split(b"  ", false).is_err());
    }

    #[test]
    fn content_types_are_json_or_ndjson() {
        let mut h = HeaderMap::new();
        assert!(!content_type(&h).unwrap());
        h.insert(header::CONTENT_TYPE, "application/json; charset=utf-8".parse().unwrap());
        assert!(!content_type(&h).unwrap());
        h.insert(header::CONTENT_TYPE, "application/x-ndjson".parse().unwrap());
        assert!(content_type(&h).unwrap());
        h.insert(header::CONTENT_TYPE, "text/csv".parse().unwrap());
        assert!(matches!(content_type(&h), Err(IngestError::UnsupportedType(_))));
    }
}
