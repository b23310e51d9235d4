//! What can go wrong in the coordinator, and the gRPC status each becomes (one place).

use aether_coord::CoordError;
use aether_store::StoreError;
use tonic::{Code, Status};

/// Coordinator errors; messages tell the caller what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The session is in the wrong state for the request (finalized, closed, approval missing).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A lost race: an expected head version or content hash no longer holds.
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// This node no longer holds the session (its lease ended); the client may retry.
    #[error("this coordinator lost ownership of session {0}; retry the request")]
    Fenced(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    DataLoss(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<CoordError> for Error {
    fn from(error: CoordError) -> Error {
        match error {
            CoordError::Rejected(message) => Error::ResourceExhausted(message),
            other => Error::Unavailable(other.to_string()),
        }
    }
}

impl From<StoreError> for Error {
    fn from(error: StoreError) -> Error {
        match error {
            StoreError::NotFound(what) => Error::DataLoss(format!(
                "content {what} referenced by the session is missing"
            )),
            StoreError::Corrupt { .. } => Error::DataLoss(error.to_string()),
            StoreError::InvalidArgument(m) => Error::InvalidArgument(m),
            StoreError::TooLarge(m) => Error::ResourceExhausted(m),
            StoreError::OutOfRange { .. } => Error::OutOfRange(error.to_string()),
            StoreError::Unavailable(m) => Error::Unavailable(m),
            StoreError::Internal(m) => Error::Internal(m),
        }
    }
}

impl From<aether_core::PathError> for Error {
    fn from(error: aether_core::PathError) -> Error {
        Error::InvalidArgument(error.to_string())
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        let code = match &error {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Aborted(_) => Code::Aborted,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Fenced(_) | Error::Unavailable(_) => Code::Unavailable,
            Error::DataLoss(_) => Code::DataLoss,
            Error::Internal(_) => Code::Internal,
        };
        Status::new(code, error.to_string())
    }
}
