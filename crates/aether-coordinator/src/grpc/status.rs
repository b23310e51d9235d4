//! The gRPC status of every coordinator error, in one exhaustive match.
//!
//! Every failed call says whether the change it failed was applied (promise 9), in the
//! [`OUTCOME_HEADER`] metadata entry: `not-applied` (nothing changed: safe to retry, with or
//! without the same request id) or `unknown` (the change may have been applied: retry only with
//! the same request id, which then answers with the first outcome). A failure is `not-applied`
//! until its request committed something (the request layer, [`super::caller`], sets that),
//! except [`Error::OutcomeUnknown`]: a commit the coordination store did not confirm.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::error::Error;

/// The metadata entry of every coordinator error saying whether the change was applied.
pub const OUTCOME_HEADER: &str = "x-aether-outcome";

/// Whether a failed request changed anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was applied; retrying is safe.
    NotApplied,
    /// It may have been applied; retry only with the same request id.
    Unknown,
}

impl Outcome {
    /// The value of [`OUTCOME_HEADER`].
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::NotApplied => "not-applied",
            Outcome::Unknown => "unknown",
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        let code = match &error {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_)
            | Error::SessionNotFound { .. }
            | Error::PathNotFound { .. }
            | Error::DirectoryNotFound { .. }
            | Error::CheckpointNotFound { .. }
            | Error::CommitNotInHistory { .. } => Code::NotFound,
            Error::AlreadyExists(_) | Error::PathExists { .. } => Code::AlreadyExists,
            Error::FailedPrecondition(_)
            | Error::Finalized { .. }
            | Error::Closed { .. }
            | Error::ApprovalMissing { .. }
            | Error::NotAFile { .. }
            | Error::ApprovalClosed { .. }
            | Error::AlreadyDecided { .. }
            | Error::DirectoryInTheWay { .. }
            | Error::DirectoryNotEmpty { .. }
            | Error::ChunksMissing { .. }
            | Error::NotADirectory { .. } => Code::FailedPrecondition,
            Error::Aborted(_) => Code::Aborted,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Fenced(_) | Error::Unavailable(_) => Code::Unavailable,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::OutcomeUnknown(_) => Code::Unavailable,
            Error::Replayed(_) => Code::AlreadyExists,
            Error::DataLoss(_) => Code::DataLoss,
            Error::Internal(_) => Code::Internal,
        };
        // Any other failure's outcome depends on whether its request committed a change so
        // far, which the request layer knows and sets ([`super::caller`]).
        let outcome = match &error {
            Error::OutcomeUnknown(_) | Error::Replayed(_) => Some(Outcome::Unknown),
            _ => None,
        };
        status(code, error.to_string(), outcome)
    }
}

/// The longest status message sent: it travels in a header, and a message that repeats a
/// hostile value (a path, a hash, a token) must not outgrow what clients accept.
pub const MAX_MESSAGE_BYTES: usize = 2048;

/// A status with its [`OUTCOME_HEADER`], when known.
pub fn status(code: Code, message: impl Into<String>, outcome: Option<Outcome>) -> Status {
    let mut message: String = message.into();
    if message.len() > MAX_MESSAGE_BYTES {
        let mut cut = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("… (cut)");
    }
    let mut status = Status::new(code, message);
    if let Some(outcome) = outcome {
        status
            .metadata_mut()
            .insert(OUTCOME_HEADER, MetadataValue::from_static(outcome.as_str()));
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_repeating_a_huge_value_is_cut_at_a_character() {
        let huge = format!("path \"{}\" is wrong", "é".repeat(1 << 20));
        let status = status(Code::InvalidArgument, huge, None);
        assert!(status.message().len() <= MAX_MESSAGE_BYTES + 10);
        assert!(status.message().starts_with("path \"éé"));
        assert!(status.message().ends_with("… (cut)"));
    }
}
