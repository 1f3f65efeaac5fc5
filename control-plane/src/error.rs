//! The control plane's errors, and their one mapping to gRPC status codes.

use crate::plan::PlanError;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid plan: {0}")]
    InvalidPlan(#[from] PlanError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// A dependency could not be reached; nothing was recorded.
    #[error("{what} is unreachable: {detail}. Nothing was recorded; retry once it is back")]
    Unavailable { what: &'static str, detail: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn unavailable(what: &'static str, detail: impl ToString) -> Self {
        Error::Unavailable { what, detail: detail.to_string() }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => {
                Error::unavailable("Postgres", e)
            }
            other => Error::Internal(format!("Postgres: {other}")),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::InvalidPlan(_) | Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unavailable { .. } => Code::Unavailable,
            Error::Internal(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}
