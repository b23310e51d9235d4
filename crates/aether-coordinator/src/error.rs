//! What can go wrong in the coordinator: one variant per cause, with a message that tells
//! the caller what to fix. The gRPC status each becomes is decided in one place,
//! [`crate::grpc::status`].

use aether_coord::CoordError;
use aether_store::StoreError;

/// Coordinator errors; messages tell the caller what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    /// No such session, or the caller has no role in it (the two answer alike).
    #[error("session {session} not found")]
    SessionNotFound { session: String },
    /// Nothing at this path.
    #[error("\"{path}\" does not exist")]
    PathNotFound { path: String },
    /// A directory the request walks through or writes into is missing; `role` says which
    /// ("directory", "destination directory").
    #[error("{role} \"{path}\" does not exist")]
    DirectoryNotFound { path: String, role: &'static str },
    #[error("checkpoint \"{name}\" not found in session {session}")]
    CheckpointNotFound { session: String, name: String },
    /// A commit id that is not in this session's history (commits are read through one).
    #[error("commit {commit} is not in the history of session {session}")]
    CommitNotInHistory { session: String, commit: String },
    #[error("{0}")]
    AlreadyExists(String),
    /// The session is in the wrong state for the request (one not named below).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The session is finalized (read-only) and the request changes it.
    #[error("session {session} is finalized (read-only); fork it to keep working")]
    Finalized { session: String },
    /// The session is closed or expired: its workspace is gone.
    #[error("session {session} is closed; its workspace is gone (commits and audit remain)")]
    Closed { session: String },
    /// A commit or export lacks the approvals the session's policy requires.
    #[error("session {session} requires {needed} approval(s) for {action} of the current head (version {head_version}) from distinct reviewers; it has {have}, {} missing{}: request approval (ReviewService.RequestApproval, action {action}) and have a reviewer approve it", needed - have, stale_note(*stale))]
    ApprovalMissing {
        session: String,
        action: &'static str,
        head_version: u64,
        needed: u32,
        have: u32,
        /// Approvals that went stale when the head moved after them.
        stale: u32,
    },
    /// An approval can no longer be decided or used: it went stale, was rejected or was used.
    #[error("{id} {why}")]
    ApprovalClosed { id: String, why: String },
    /// A reviewer decides an approval a second time.
    #[error("{reviewer} already decided {id}")]
    AlreadyDecided { reviewer: String, id: String },
    /// A path names a directory (or symlink) where the request needs a file.
    #[error("\"{path}\" is a directory; {hint}")]
    NotAFile { path: String, hint: &'static str },
    /// Something is already at a path the change would create; `hint` says how to go on.
    #[error("\"{path}\" already exists{hint}")]
    PathExists { path: String, hint: &'static str },
    /// A change would replace a directory (or put one in place of a file), which it never does
    /// implicitly.
    #[error("\"{path}\" {what}; delete it first{purpose}")]
    DirectoryInTheWay {
        path: String,
        what: &'static str,
        purpose: String,
    },
    /// A directory to delete holds entries and the delete is not recursive.
    #[error("directory \"{path}\" is not empty; set recursive to delete it with its contents")]
    DirectoryNotEmpty { path: String },
    /// A write names chunks the content store does not have.
    #[error("{count} chunk(s) are not in the content store (first: {first}); upload them with PutBlob first")]
    ChunksMissing { count: usize, first: String },
    /// A path names a file or symlink where the request needs a directory.
    #[error("\"{path}\" is {what}, not a directory")]
    NotADirectory { path: String, what: &'static str },
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
    /// The caller's deadline passed while the request waited on another service.
    #[error("{0}: the call's deadline passed")]
    DeadlineExceeded(String),
    /// The commit of a change was sent to the coordination store, which did not confirm it:
    /// it may have been applied. A retry with the same request id finds out.
    #[error("{0}; the change may or may not have been applied: retry with the same request id to get its outcome")]
    OutcomeUnknown(String),
    /// A retry of a change already applied: the request layer answers with the recorded
    /// response instead ([`crate::caller::Caller::replay`]); never sent as an error.
    #[error("request {0} was applied earlier")]
    Replayed(String),
    #[error("{0}")]
    DataLoss(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn stale_note(stale: u32) -> String {
    if stale == 0 {
        return String::new();
    }
    format!("; {stale} earlier approval(s) went stale when the head changed after they were given")
}

/// Whether the deadline of the call this task serves has passed.
fn past_deadline() -> bool {
    aether_auth::deadline::current().is_some_and(|deadline| std::time::Instant::now() >= deadline)
}

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
            // A store call cut short by the caller's own deadline (which calls to the store
            // carry) failed because the caller gave up, not because the store is away.
            StoreError::Unavailable(m) if past_deadline() => Error::DeadlineExceeded(m),
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
