//! The Rust SDK for AetherFS.
//!
//! [`Client::connect`] opens a connection with a bearer token, per-call deadlines and retries
//! with exponential backoff: reads on UNAVAILABLE and DEADLINE_EXCEEDED; changes with one
//! request id per call ([`REQUEST_ID_HEADER`]) for all attempts, so the coordinator applies a
//! change at most once and answers a retry with its first outcome.
//! [`Client::session`] gives a [`SessionHandle`] with a typed method for every session-scoped
//! RPC: sessions, workspace, history, review, knowledge and bus. Uploads
//! ([`SessionHandle::upload`]) cut files with the store's own FastCDC parameters, ask `HasBlobs`
//! first and send only the chunks the store lacks, then write the files by chunk reference in
//! batches of at most 10,000 changes. Errors ([`Error`]) keep the gRPC status code.
//!
//! ```no_run
//! # async fn demo() -> aether_client::Result<()> {
//! use aether_client::{Client, NewSession, Options, Rev};
//! let client = Client::connect("http://127.0.0.1:7600", Options::default()).await?;
//! let session = client.create_session(NewSession::default()).await?;
//! session.upload_bytes("notes/hello.txt", "hello".into(), 0o644).await?;
//! assert_eq!(session.read("notes/hello.txt", &Rev::Head).await?, b"hello");
//! session.checkpoint("first", "").await?;
//! # Ok(()) }
//! ```

mod client;
mod download;
mod error;
mod progress;
mod revision;
mod session;
mod subscription;
mod upload;

pub use aether_proto as proto;
/// TLS settings of [`Options::tls`].
pub use aether_tls::ClientTls;
pub use client::{
    Auth, AuthChannel, Client, NewSession, Options, SessionSource, OUTCOME_HEADER, REPLAYED_HEADER,
    REQUEST_ID_HEADER,
};
pub use download::DownloadReport;
pub use error::{code_name, Error, Result};
pub use progress::{NoProgress, Progress};
pub use revision::Rev;
pub use session::{DiffResult, SessionHandle};
pub use subscription::Subscription;
pub use upload::{
    content_hash, file_mode, mtime_ns, symlink_hash, UploadAttributes, UploadFile, UploadPlan,
    UploadReport, UploadSource, UploadSymlink, MAX_BATCH_BYTES, MAX_BATCH_CHANGES,
    MAX_INLINE_BYTES,
};

/// Most hashes in one HasBlobs call (the store's limit).
pub const MAX_HASHES_PER_CALL: usize = 10_000;
/// Size of the data messages the SDK streams.
pub const DATA_MESSAGE_BYTES: usize = 1024 * 1024;
