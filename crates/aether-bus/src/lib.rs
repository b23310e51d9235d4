//! The bus: one ordered, durable, replayable stream of messages per session.
//!
//! - [`config`] holds the knobs ([`BusConfig`], [`Retention`]) and their flags ([`BusArgs`]).
//! - [`bus`] is the bus itself: [`Bus`] publishes, subscribes and describes streams.
//! - `stream` (private) owns one session's stream: offset assignment, the in-memory tail, the
//!   group-committing flusher, recovery from the object store, retention and eviction.
//! - `segment` (private) is the on-store format: `streams/<session>/<first offset>.seg`.
//! - [`subscription`] replays history and then follows the live feed, gap-free.
//! - [`service`] is the `BusService` gRPC adapter; [`error`] maps every failure to one status.
//!
//! Promises kept here (design §4): 1 — a `DURABILITY_PERSISTED` publish is acknowledged only
//! after its segment is in the object store, so a bus that crashes loses nothing it acknowledged
//! as persisted; 6 — session ids, subjects, filters, batch and payload sizes are bounded and bad
//! input gets `INVALID_ARGUMENT` with a message that says what to fix; the bus never buffers
//! without bound (slow subscribers are told `Lagged`, a publisher facing a store that cannot
//! keep up is held back, then refused).

pub mod bus;
pub mod config;
pub mod error;
pub mod holders;
mod segment;
pub mod service;
mod settings;
mod stream;
pub mod subscription;

pub use bus::{Bus, StreamInfo};
pub use config::{BusArgs, BusConfig, Retention};
pub use error::BusError;
pub use service::BusGrpc;
pub use subscription::{Delivery, Start, Subscription};

/// The authenticated caller of an RPC, put in the request extensions by the auth layer
/// ([`aether_auth::AuthLayer`]). Messages published without one are attributed to
/// `"anonymous"`.
pub use aether_auth::Principal;
pub use service::SessionAccess;

/// The most messages one publish may carry.
pub const MAX_BATCH_MESSAGES: usize = 1000;
/// The largest payload of one message, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// The most headers one message may carry.
pub const MAX_HEADERS: usize = 32;
/// The largest publish, in encoded bytes of its messages: what fits in one gRPC message, so an
/// in-process publish is held to the same bound as a remote one.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// The longest session id, in bytes (the rule every service shares).
pub use aether_core::names::MAX_SESSION_ID_BYTES;
/// gRPC message size limit of the service: a full batch plus framing slack.
pub const MAX_GRPC_MESSAGE_BYTES: usize = MAX_BATCH_BYTES + 64 * 1024;
