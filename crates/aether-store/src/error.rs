//! Errors of the content store and the gRPC status each becomes.

use tonic::{Code, Status};

/// What can go wrong storing or reading a blob.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The blob (its hash) or object (its path) that is missing.
    #[error("blob {0} not found")]
    NotFound(String),
    /// Stored bytes do not match their name: corruption or truncation.
    #[error("object {object} is corrupt: {detail}")]
    Corrupt { object: String, detail: String },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("requested range {offset}+{length} is past the end of blob {hash} ({size} bytes)")]
    OutOfRange {
        hash: String,
        offset: u64,
        length: u64,
        size: u64,
    },
    /// The object store cannot be reached; retry later.
    #[error("object store unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl StoreError {
    pub(crate) fn from_object_store(error: object_store::Error, object: &str) -> StoreError {
        match error {
            object_store::Error::NotFound { .. } => StoreError::NotFound(object.to_string()),
            other => StoreError::Unavailable(format!("{object}: {other}")),
        }
    }
}

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Status {
        let code = match &error {
            StoreError::NotFound(_) => Code::NotFound,
            StoreError::Corrupt { .. } => Code::DataLoss,
            StoreError::InvalidArgument(_) => Code::InvalidArgument,
            StoreError::TooLarge(_) => Code::ResourceExhausted,
            StoreError::OutOfRange { .. } => Code::OutOfRange,
            StoreError::Unavailable(_) => Code::Unavailable,
            StoreError::Internal(_) => Code::Internal,
        };
        Status::new(code, error.to_string())
    }
}

/// Maps a status from a remote store back to the error it came from.
impl From<Status> for StoreError {
    fn from(status: Status) -> StoreError {
        let message = status.message().to_string();
        match status.code() {
            Code::NotFound => StoreError::NotFound(
                message
                    .strip_prefix("blob ")
                    .and_then(|m| m.strip_suffix(" not found"))
                    .unwrap_or(&message)
                    .to_string(),
            ),
            Code::DataLoss => StoreError::Corrupt {
                object: "remote".into(),
                detail: message,
            },
            Code::InvalidArgument => StoreError::InvalidArgument(message),
            Code::ResourceExhausted => StoreError::TooLarge(message),
            Code::OutOfRange => StoreError::InvalidArgument(message),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                StoreError::Unavailable(format!("content store: {message}"))
            }
            _ => StoreError::Internal(format!("content store: {message}")),
        }
    }
}
