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
    /// A call that proves it comes from someone else than the one it names (a worker session).
    #[error("{0}")]
    PermissionDenied(String),
    /// A dependency could not be reached; nothing was recorded.
    #[error("{what} is unreachable: {detail}. Nothing was recorded; retry once it is back")]
    Unavailable { what: &'static str, detail: String },
    /// Another apply holds the apply lock for longer than an apply waits for it; nothing was recorded.
    #[error("{0}")]
    Busy(String),
    /// This control plane does not lead (or no longer does), and the leader could not be asked: says who leads,
    /// if anyone.
    #[error("{0}: try again in a few seconds (a control plane takes office within its leader lease)")]
    NotLeader(String),
    /// An apply that began (its intent recorded) and was not recorded, or one begun earlier that blocks the next:
    /// the leading control plane finishes it.
    #[error("{0}")]
    Unfinished(String),
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
        // statement_timeout (query_canceled) and lock_timeout (lock_not_available): Postgres answered too slowly.
        let timed_out = matches!(&e, sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("57014") | Some("55P03")));
        match e {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => {
                Error::unavailable("Postgres", e)
            }
            _ if timed_out => Error::Busy(format!("Postgres did not finish in time (a lock or statement timeout: {e}); nothing was recorded: try again")),
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
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Unavailable { .. } | Error::NotLeader(_) => Code::Unavailable,
            Error::Busy(_) | Error::Unfinished(_) => Code::Aborted,
            Error::Internal(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}
