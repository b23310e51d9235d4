//! The bus: publish, subscribe and describe the streams of sessions, in-process.
//!
//! [`Bus`] validates input (promise 6) and drives the session's stream; the gRPC adapter in
//! [`crate::service`] and in-process callers (the coordinator of `aetherd dev`) both use it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aether_core::names::validate_subject;
use aether_proto::bus_service_server::BusServiceServer;
use aether_proto::{Durability, OutgoingMessage};
use object_store::ObjectStore;
use prost::Message;

use crate::stream::{AppendOutcome, Shared, Stream};
use crate::subscription::{Start, Subscription};
use crate::{BusConfig, BusError, BusGrpc};

/// The bus over one object store. Cheap to clone: clones share the streams.
///
/// Dropping the last clone stops the flushers after they write what is pending, like
/// [`Bus::shutdown`] but without waiting.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<BusInner>,
}

struct BusInner {
    shared: Arc<Shared>,
}

impl Drop for BusInner {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

/// What GetStreamInfo reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamInfo {
    /// The first retained offset; `last_offset + 1` when nothing is retained.
    pub first_offset: u64,
    /// The last assigned offset; 0 when nothing was ever published.
    pub last_offset: u64,
    /// The retention in effect.
    pub retention: crate::Retention,
    /// Whether `retention` is the stream's own rather than the bus default.
    pub own_retention: bool,
    /// When the stream was archived; None while open.
    pub archived_at: Option<SystemTime>,
}

impl StreamInfo {
    fn of(stream: &Stream) -> StreamInfo {
        let (first_offset, last_offset) = stream.info();
        let (retention, own_retention, archived) = stream.settings();
        StreamInfo {
            first_offset,
            last_offset,
            retention,
            own_retention,
            archived_at: archived.map(|a| a.time()),
        }
    }
}

/// Messages ordered in a stream, maybe not persisted yet.
pub(crate) struct Appended {
    stream: Arc<Stream>,
    pub(crate) first: u64,
    pub(crate) last: u64,
    timeout: Duration,
}

impl Appended {
    /// Waits until the messages are in the object store.
    pub(crate) async fn persisted(&self) -> Result<(), BusError> {
        self.stream
            .wait_persisted(self.first, self.last, self.timeout)
            .await
    }
}

impl Bus {
    /// A bus keeping its segments in `objects`. Streams load lazily, so this does no I/O.
    pub fn new(objects: Arc<dyn ObjectStore>, config: BusConfig) -> Bus {
        Bus {
            inner: Arc::new(BusInner {
                shared: Arc::new(Shared::new(objects, config)),
            }),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// The configuration in effect.
    pub fn config(&self) -> &BusConfig {
        &self.shared().config
    }

    /// Publishes `messages` in order on the session's stream as `publisher`; returns the first
    /// and last offsets they got. With `Durability::Accepted` it returns once they are ordered
    /// and visible to subscribers; otherwise once their segment is in the object store.
    pub async fn publish(
        &self,
        session_id: &str,
        messages: Vec<OutgoingMessage>,
        publisher: &str,
        durability: Durability,
    ) -> Result<(u64, u64), BusError> {
        let appended = self.append(session_id, messages, publisher).await?;
        if durability != Durability::Accepted {
            appended.persisted().await?;
        }
        Ok((appended.first, appended.last))
    }

    /// Validates and orders a batch, waiting (up to `persist_timeout`) for room when too much
    /// of the stream waits to be persisted.
    pub(crate) async fn append(
        &self,
        session_id: &str,
        mut messages: Vec<OutgoingMessage>,
        publisher: &str,
    ) -> Result<Appended, BusError> {
        validate_session_id(session_id)?;
        validate_batch(&messages)?;
        let shared = self.shared();
        let timeout = shared.config.persist_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            let stream = shared.stream(session_id).await?;
            match stream.try_append(shared, &mut messages, publisher)? {
                AppendOutcome::Appended { first, last } => {
                    return Ok(Appended {
                        stream,
                        first,
                        last,
                        timeout,
                    })
                }
                AppendOutcome::Closed => continue,
                AppendOutcome::Backlogged {
                    pending,
                    mut persisted,
                    detail,
                } => {
                    tokio::select! {
                        _ = persisted.changed() => {}
                        _ = stream.closed.cancelled() => {}
                        _ = tokio::time::sleep_until(deadline.into()) => {
                            return Err(BusError::Backlogged {
                                session_id: session_id.to_string(),
                                pending,
                                detail: detail.unwrap_or_else(|| {
                                    "the object store is slower than the publishers".into()
                                }),
                            });
                        }
                    }
                }
            }
        }
    }

    /// Subscribes to the session's stream from `start`, delivering the messages whose subject
    /// matches `subject_filter` (empty: all).
    pub async fn subscribe(
        &self,
        session_id: &str,
        start: Start,
        subject_filter: &str,
    ) -> Result<Subscription, BusError> {
        validate_session_id(session_id)?;
        Subscription::open(self.shared().clone(), session_id, start, subject_filter).await
    }

    /// The retained range of the session's stream. An unknown session has an empty stream.
    pub async fn stream_info(&self, session_id: &str) -> Result<StreamInfo, BusError> {
        validate_session_id(session_id)?;
        let stream = self.shared().stream(session_id).await?;
        Ok(StreamInfo::of(&stream))
    }

    /// Gives the session's stream its own retention (persisted with the stream) and applies it.
    pub async fn set_retention(
        &self,
        session_id: &str,
        retention: crate::Retention,
    ) -> Result<StreamInfo, BusError> {
        validate_session_id(session_id)?;
        validate_retention(&retention)?;
        loop {
            let stream = self.shared().stream(session_id).await?;
            if stream
                .set_retention(self.shared(), retention)
                .await?
                .is_some()
            {
                return Ok(StreamInfo::of(&stream));
            }
        }
    }

    /// Archives the session's stream (when its session closes): persists everything accepted,
    /// then seals it. Idempotent.
    pub async fn archive(&self, session_id: &str) -> Result<StreamInfo, BusError> {
        validate_session_id(session_id)?;
        loop {
            let stream = self.shared().stream(session_id).await?;
            if stream.archive(self.shared()).await?.is_some() {
                return Ok(StreamInfo::of(&stream));
            }
        }
    }

    /// Stops the bus: refuses new publishes, ends subscriptions, writes every pending batch
    /// (retrying a failing store for up to `persist_timeout`) and waits for the flushers.
    pub async fn shutdown(&self) {
        let shared = self.shared();
        shared.shutdown.cancel();
        shared.tasks.close();
        shared.tasks.wait().await;
    }

    /// The gRPC service over this bus, with message size limits for a full batch.
    pub fn grpc(&self) -> BusServiceServer<BusGrpc> {
        Self::serve(BusGrpc::new(self.clone()))
    }

    /// [`Bus::grpc`], checking every call against session policy with `access`.
    pub fn grpc_with_access(
        &self,
        access: std::sync::Arc<dyn crate::SessionAccess>,
    ) -> BusServiceServer<BusGrpc> {
        Self::serve(BusGrpc::new(self.clone()).with_access(access))
    }

    fn serve(grpc: BusGrpc) -> BusServiceServer<BusGrpc> {
        BusServiceServer::new(grpc)
            .max_decoding_message_size(crate::MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(crate::MAX_GRPC_MESSAGE_BYTES)
    }

    /// Forgets the in-memory state of a stream; its next use reloads it from the object store.
    /// Called when this node takes a stream over, since what it remembers may be stale.
    pub fn reload(&self, session_id: &str) {
        self.shared().reload(session_id);
    }

    /// Counts streams dropped from memory for idleness; for tests and metrics.
    pub fn evictions(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared().evictions.subscribe()
    }
}

/// Validates a session id (the rule every service shares, [`aether_core::names`]).
pub fn validate_session_id(session_id: &str) -> Result<(), BusError> {
    aether_core::names::validate_session_id(session_id).map_err(BusError::InvalidSessionId)
}

/// The longest age a retention may set: beyond it, "forever" (zero) says what is meant.
pub const MAX_RETENTION_AGE: Duration = Duration::from_secs(100 * 365 * 86_400);

fn validate_retention(retention: &crate::Retention) -> Result<(), BusError> {
    match retention.max_age {
        Some(age) if age > MAX_RETENTION_AGE => Err(BusError::InvalidRetention(format!(
            "max_age is at most {} days; use zero to keep messages forever",
            MAX_RETENTION_AGE.as_secs() / 86_400
        ))),
        Some(age) if age < Duration::from_secs(1) => Err(BusError::InvalidRetention(
            "max_age is at least one second; use zero to keep messages forever".into(),
        )),
        _ => Ok(()),
    }
}

/// Validates a batch as a whole, so a bad message publishes nothing.
fn validate_batch(messages: &[OutgoingMessage]) -> Result<(), BusError> {
    if messages.is_empty() || messages.len() > crate::MAX_BATCH_MESSAGES {
        return Err(BusError::BatchSize {
            count: messages.len(),
        });
    }
    let mut bytes = 0;
    for (index, message) in messages.iter().enumerate() {
        validate_subject(&message.subject)
            .map_err(|source| BusError::InvalidSubject { index, source })?;
        if message.payload.len() > crate::MAX_PAYLOAD_BYTES {
            return Err(BusError::PayloadTooLarge {
                index,
                size: message.payload.len(),
            });
        }
        if message.headers.len() > crate::MAX_HEADERS {
            return Err(BusError::TooManyHeaders {
                index,
                count: message.headers.len(),
            });
        }
        bytes += message.encoded_len();
    }
    if bytes > crate::MAX_BATCH_BYTES {
        return Err(BusError::BatchTooLarge { bytes });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids() {
        for ok in ["s", "sess-1_A", &"a".repeat(64)] {
            assert!(validate_session_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "a.b", "a b", "é", "a\0", &"a".repeat(65)] {
            assert!(
                matches!(validate_session_id(bad), Err(BusError::InvalidSessionId(_))),
                "{bad:?}"
            );
        }
        let message = validate_session_id("a\nb").unwrap_err().to_string();
        assert!(message.contains("a\\nb"), "{message}");
    }

    #[test]
    fn batches() {
        let message = |subject: &str, payload: usize, headers: usize| OutgoingMessage {
            subject: subject.into(),
            payload: vec![0; payload].into(),
            headers: (0..headers)
                .map(|i| (i.to_string(), String::new()))
                .collect(),
        };
        assert!(validate_batch(&[message("a.b", crate::MAX_PAYLOAD_BYTES, 32)]).is_ok());
        assert!(matches!(
            validate_batch(&[]),
            Err(BusError::BatchSize { count: 0 })
        ));
        assert!(matches!(
            validate_batch(&vec![message("a", 0, 0); 1001]),
            Err(BusError::BatchSize { count: 1001 })
        ));
        assert!(matches!(
            validate_batch(&[message("a", 0, 0), message("a.*", 0, 0)]),
            Err(BusError::InvalidSubject { index: 1, .. })
        ));
        assert!(matches!(
            validate_batch(&[message("a", crate::MAX_PAYLOAD_BYTES + 1, 0)]),
            Err(BusError::PayloadTooLarge { index: 0, .. })
        ));
        assert!(matches!(
            validate_batch(&[message("a", 0, 33)]),
            Err(BusError::TooManyHeaders {
                index: 0,
                count: 33
            })
        ));
        assert!(matches!(
            validate_batch(&vec![message("a", crate::MAX_PAYLOAD_BYTES, 0); 5]),
            Err(BusError::BatchTooLarge { .. })
        ));
    }
}
