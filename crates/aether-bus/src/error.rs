//! Errors of the bus and the gRPC status each becomes, in one place.
//!
//! An unknown session is never an error: it has an empty stream.

use aether_core::names::NameError;
use tonic::{Code, Status};

/// What can go wrong publishing, subscribing or describing a stream.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The session id breaks a rule.
    #[error("{0}")]
    InvalidSessionId(aether_core::names::NameError),
    /// A publish carries no messages or too many.
    #[error("a publish carries 1 to {max} messages, this one has {count}: split it or add one", max = crate::MAX_BATCH_MESSAGES)]
    BatchSize { count: usize },
    /// A publish is larger than one gRPC message may be.
    #[error("a publish is at most {max} bytes of messages, this one has {bytes}: split it into smaller batches", max = crate::MAX_BATCH_BYTES)]
    BatchTooLarge { bytes: usize },
    /// A message's subject is invalid.
    #[error("messages[{index}]: {source}")]
    InvalidSubject { index: usize, source: NameError },
    /// A message's payload is too large.
    #[error("messages[{index}]: the payload has {size} bytes, the limit is {max} bytes: store large data in the workspace and publish its path", max = crate::MAX_PAYLOAD_BYTES)]
    PayloadTooLarge { index: usize, size: usize },
    /// A message has too many headers.
    #[error("messages[{index}]: {count} headers, the limit is {max}", max = crate::MAX_HEADERS)]
    TooManyHeaders { index: usize, count: usize },
    /// The durability is not one of the enum's values.
    #[error("unknown durability {0}: use DURABILITY_ACCEPTED or DURABILITY_PERSISTED")]
    InvalidDurability(i32),
    /// The subject filter is invalid.
    #[error(transparent)]
    InvalidFilter(NameError),
    /// A PublishStream batch names another session than the stream's first batch.
    #[error("every batch of one PublishStream must name the same session: the stream is for \"{expected}\", batch {batch_id} names \"{got}\"; open another stream for it")]
    SessionChanged {
        expected: String,
        got: String,
        batch_id: u64,
    },
    /// A subscription start outside the retained range.
    #[error("offset {requested} is outside the stream of session \"{session_id}\": start at an offset from {first} (first retained) to {next} (last + 1)")]
    OutOfRange {
        session_id: String,
        requested: u64,
        first: u64,
        next: u64,
    },
    /// Retention removed messages a subscriber had not read yet.
    #[error("offsets from {offset} of session \"{session_id}\" were removed by retention before they were delivered; the first retained offset is {first}")]
    Expired {
        session_id: String,
        offset: u64,
        first: u64,
    },
    /// A persisted publish was ordered but its segment is not written yet.
    #[error("offsets {first}..={last} of session \"{session_id}\" were ordered but are not persisted yet ({detail}); they stay queued and will be written when the object store recovers, so check the stream before publishing them again")]
    NotPersisted {
        session_id: String,
        first: u64,
        last: u64,
        detail: String,
    },
    /// Too many of the stream's messages wait to be persisted; nothing was published.
    #[error("{pending} messages of session \"{session_id}\" are waiting to be persisted ({detail}); nothing was published, retry later")]
    Backlogged {
        session_id: String,
        pending: u64,
        detail: String,
    },
    /// The stream was archived (its session closed): it takes no more messages.
    #[error("the stream of session \"{session_id}\" was archived when the session closed (last offset {last_offset}); it takes no more messages, subscribe to read what it holds")]
    Archived {
        session_id: String,
        last_offset: u64,
    },
    /// The stream is being archived right now.
    #[error(
        "the stream of session \"{session_id}\" is being archived; retry to learn the outcome"
    )]
    Archiving { session_id: String },
    /// A retention setting is out of bounds.
    #[error("invalid retention: {0}")]
    InvalidRetention(String),
    /// The object store failed.
    #[error("object store unavailable: {0}")]
    Unavailable(String),
    /// A stored segment does not decode.
    #[error("segment {object} is corrupt: {detail}")]
    Corrupt { object: String, detail: String },
    /// The stream was dropped from memory under a subscriber or publisher (another bus wrote
    /// to it, or the bus is stopping).
    #[error("the stream of session \"{session_id}\" was reset ({reason}); subscribe again from offset {resume_offset}")]
    StreamReset {
        session_id: String,
        resume_offset: u64,
        reason: &'static str,
    },
    /// The bus is shutting down.
    #[error("the bus is shutting down; retry on another instance")]
    ShuttingDown,
    #[error("internal error: {0}")]
    Internal(String),
}

impl BusError {
    pub(crate) fn from_object_store(error: object_store::Error, object: &str) -> BusError {
        BusError::Unavailable(format!("{object}: {error}"))
    }
}

impl From<BusError> for Status {
    fn from(error: BusError) -> Status {
        let code = match &error {
            BusError::InvalidSessionId(_)
            | BusError::BatchSize { .. }
            | BusError::BatchTooLarge { .. }
            | BusError::InvalidSubject { .. }
            | BusError::PayloadTooLarge { .. }
            | BusError::TooManyHeaders { .. }
            | BusError::InvalidDurability(_)
            | BusError::InvalidFilter(_)
            | BusError::SessionChanged { .. }
            | BusError::InvalidRetention(_) => Code::InvalidArgument,
            BusError::Archived { .. } => Code::FailedPrecondition,
            BusError::OutOfRange { .. } | BusError::Expired { .. } => Code::OutOfRange,
            BusError::NotPersisted { .. }
            | BusError::Backlogged { .. }
            | BusError::Unavailable(_)
            | BusError::StreamReset { .. }
            | BusError::Archiving { .. }
            | BusError::ShuttingDown => Code::Unavailable,
            BusError::Corrupt { .. } => Code::DataLoss,
            BusError::Internal(_) => Code::Internal,
        };
        Status::new(code, error.to_string())
    }
}
