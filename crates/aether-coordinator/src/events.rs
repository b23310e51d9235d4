//! Publishes the session's own events on the bus, after the change they describe is durable.
//!
//! Events go through one bounded queue and one worker, so they reach the bus in the order the
//! changes were committed. Every bus call has a deadline ([`BUS_CALL_TIMEOUT`]): a hung bus
//! (stopped, partitioned) is retried with backoff like an unreachable one. A hung or slow bus
//! never blocks file mutations: when the queue is full an event is dropped, logged and counted
//! (`aether.events.dropped`) and the mutation completes; the change itself is durable, only its
//! notification is lost, and subscribers that must not miss changes compare head versions (the
//! mount does). When a session closes or expires, its stream is archived through the same
//! queue, after its last event; an archive request waits for room rather than being dropped.
//!
//! Each queued item keeps the trace context of the call that queued it, so the worker's bus
//! call joins that call's trace although it runs in another task.

use std::time::Duration;

use aether_auth::AttachToken;
use aether_proto::bus_service_client::BusServiceClient;
use aether_proto::{self as pb, ArchiveStreamRequest, Durability, OutgoingMessage, PublishRequest};
use opentelemetry::trace::FutureExt;
use prost::Message;
use tokio::sync::mpsc;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;

/// Events held while the bus is slow or away, by default; past it events are dropped (and
/// counted). `--event-queue-depth`.
pub const DEFAULT_QUEUE: usize = 10_000;
/// Deadline of each publish or archive call to the bus.
pub const BUS_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What happened to a session, as the domain says it; [`Event::wire`] turns it into the bus's
/// `SessionEvent`, so the wire type stays at this edge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Files changed by `operation` ("write", "delete", "batch", "import", …).
    FilesChanged {
        paths: Vec<String>,
        operation: String,
    },
    CheckpointCreated {
        name: String,
        root: String,
    },
    CheckpointRestored {
        name: String,
        root: String,
    },
    CommitCreated {
        id: String,
        message: String,
    },
    /// An annotation was "added" or "resolved".
    Annotation {
        id: String,
        what: &'static str,
    },
    ApprovalRequested {
        id: String,
        action: &'static str,
    },
    /// An approval was decided: `outcome` is "approved" or "rejected".
    ApprovalDecided {
        id: String,
        outcome: &'static str,
    },
    Transferred {
        new_owner: String,
        comment: String,
    },
    Finalized,
    /// Closed by its owner (with the archive's blob hash, if one was written).
    Closed {
        archive: String,
    },
    /// Closed because its expiry passed.
    Expired,
}

impl Event {
    /// The bus subject subscribers filter on.
    pub fn subject(&self) -> &'static str {
        match self {
            Event::FilesChanged { .. } => "session.files.changed",
            Event::CheckpointCreated { .. } => "session.checkpoint.created",
            Event::CheckpointRestored { .. } => "session.checkpoint.restored",
            Event::CommitCreated { .. } => "session.commit.created",
            Event::Annotation { .. } => "session.annotation",
            Event::ApprovalRequested { .. } => "session.approval.requested",
            Event::ApprovalDecided { .. } => "session.approval.decided",
            Event::Transferred { .. } => "session.transferred",
            Event::Finalized => "session.finalized",
            Event::Closed { .. } | Event::Expired => "session.closed",
        }
    }

    /// The `SessionEvent` published on the bus, once the change is committed at `head_version`.
    pub fn wire(self, head_version: u64, principal: String) -> pb::SessionEvent {
        use pb::session_event::Event as Wire;
        let named = |name: String, detail: String| pb::NamedEvent { name, detail };
        let event = match self {
            Event::FilesChanged { paths, operation } => {
                Wire::FilesChanged(pb::FilesChanged { paths, operation })
            }
            Event::CheckpointCreated { name, root } => Wire::CheckpointCreated(named(name, root)),
            Event::CheckpointRestored { name, root } => Wire::CheckpointRestored(named(name, root)),
            Event::CommitCreated { id, message } => Wire::CommitCreated(named(id, message)),
            Event::Annotation { id, what } => Wire::Annotation(named(id, what.into())),
            Event::ApprovalRequested { id, action } => {
                Wire::ApprovalRequested(named(id, action.into()))
            }
            Event::ApprovalDecided { id, outcome } => {
                Wire::ApprovalDecided(named(id, outcome.into()))
            }
            Event::Transferred { new_owner, comment } => {
                Wire::Transferred(named(new_owner, comment))
            }
            Event::Finalized => Wire::Finalized(pb::NamedEvent::default()),
            Event::Closed { archive } => Wire::Closed(named(archive, String::new())),
            Event::Expired => Wire::Closed(named(String::new(), "expired".into())),
        };
        pb::SessionEvent {
            head_version,
            principal,
            event: Some(event),
        }
    }
}

enum Pending {
    Event {
        session_id: String,
        subject: &'static str,
        event: pb::SessionEvent,
    },
    /// Seal the session's stream: it closed.
    Archive { session_id: String },
}

/// Where the coordinator sends session events.
#[derive(Clone)]
pub struct EventSink {
    queue: Option<mpsc::Sender<(Pending, opentelemetry::Context)>>,
    dropped: opentelemetry::metrics::Counter<u64>,
}

fn dropped_counter() -> opentelemetry::metrics::Counter<u64> {
    opentelemetry::global::meter("aetherd")
        .u64_counter("aether.events.dropped")
        .with_description("session events dropped because the bus queue was full")
        .build()
}

impl EventSink {
    /// Events are dropped: for a coordinator configured without a bus.
    pub fn disabled() -> Self {
        Self {
            queue: None,
            dropped: dropped_counter(),
        }
    }

    /// Publishes to a bus process over gRPC.
    pub fn bus(channel: Channel) -> Self {
        Self::bus_with_token(channel, AttachToken::none(), DEFAULT_QUEUE)
    }

    /// Publishes to a bus process over gRPC, authenticating with `token`, holding at most
    /// `depth` events while the bus is slow.
    pub fn bus_with_token(channel: Channel, token: AttachToken, depth: usize) -> Self {
        let (tx, rx) = mpsc::channel(depth.max(1));
        tokio::spawn(deliver(
            BusServiceClient::with_interceptor(channel, token),
            rx,
        ));
        Self {
            queue: Some(tx),
            dropped: dropped_counter(),
        }
    }

    /// Queues `event`, committed at `head_version` by `principal`, for the session's stream.
    pub async fn publish(
        &self,
        session_id: &str,
        head_version: u64,
        principal: String,
        event: Event,
    ) {
        self.enqueue(Pending::Event {
            session_id: session_id.to_string(),
            subject: event.subject(),
            event: event.wire(head_version, principal),
        })
        .await;
    }

    /// Archives the session's stream after every event queued before.
    pub async fn archive(&self, session_id: &str) {
        self.enqueue(Pending::Archive {
            session_id: session_id.to_string(),
        })
        .await;
    }

    async fn enqueue(&self, pending: Pending) {
        let Some(queue) = &self.queue else {
            return;
        };
        let trace = opentelemetry::Context::current();
        if matches!(pending, Pending::Archive { .. }) {
            // Rare (one per session close) and must follow the last event: wait for room.
            if queue.send((pending, trace)).await.is_err() {
                tracing::error!("event worker stopped; stream archive request dropped");
            }
            return;
        }
        match queue.try_send((pending, trace)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full((
                Pending::Event {
                    session_id,
                    subject,
                    ..
                },
                _,
            ))) => {
                self.dropped.add(1, &[]);
                tracing::error!(
                    session = %session_id,
                    subject,
                    "the bus is not keeping up (its event queue is full); this session event is dropped, the change itself is committed"
                );
            }
            Err(_) => tracing::error!("event worker stopped; session event dropped"),
        }
    }
}

async fn deliver(
    client: BusServiceClient<InterceptedService<Channel, AttachToken>>,
    mut rx: mpsc::Receiver<(Pending, opentelemetry::Context)>,
) {
    while let Some((pending, trace)) = rx.recv().await {
        match pending {
            Pending::Event {
                session_id,
                subject,
                event,
            } => {
                let request = PublishRequest {
                    session_id: session_id.clone(),
                    messages: vec![OutgoingMessage {
                        subject: subject.to_string(),
                        payload: event.encode_to_vec().into(),
                        headers: [(
                            "content-type".to_string(),
                            "application/x-protobuf; type=aetherfs.v1.SessionEvent".to_string(),
                        )]
                        .into(),
                    }],
                    durability: Durability::Persisted as i32,
                };
                with_retries(&session_id, &trace, "publishing a session event", || {
                    let mut client = client.clone();
                    // The bus learns the deadline, so it stops working on a call given up here.
                    let request =
                        aether_auth::deadline::request_within(request.clone(), BUS_CALL_TIMEOUT);
                    async move { client.publish(request).await.map(|_| ()) }
                })
                .await;
            }
            Pending::Archive { session_id } => {
                let request = ArchiveStreamRequest {
                    session_id: session_id.clone(),
                };
                with_retries(&session_id, &trace, "archiving the bus stream", || {
                    let mut client = client.clone();
                    // The bus learns the deadline, so it stops working on a call given up here.
                    let request =
                        aether_auth::deadline::request_within(request.clone(), BUS_CALL_TIMEOUT);
                    async move { client.archive_stream(request).await.map(|_| ()) }
                })
                .await;
            }
        }
    }
}

/// Runs `call` until it succeeds, with backoff while the bus is unreachable or busy. A
/// refusal that retrying cannot change (an archived stream, a denied call) is logged and
/// dropped, so one bad event never stalls the queue.
async fn with_retries<F, Fut>(
    session_id: &str,
    trace: &opentelemetry::Context,
    what: &str,
    mut call: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let mut backoff = Duration::from_millis(50);
    loop {
        let result = tokio::time::timeout(BUS_CALL_TIMEOUT, call().with_context(trace.clone()))
            .await
            .unwrap_or_else(|_| {
                Err(tonic::Status::deadline_exceeded(format!(
                    "the bus did not answer within {BUS_CALL_TIMEOUT:?}"
                )))
            });
        let Err(status) = result else {
            return;
        };
        let retryable = matches!(
            status.code(),
            Code::Unavailable
                | Code::Unknown
                | Code::DeadlineExceeded
                | Code::ResourceExhausted
                | Code::Aborted
                | Code::Internal
                | Code::Cancelled
        );
        if !retryable {
            tracing::error!(session = %session_id, %status, "{what} was refused; dropping it");
            return;
        }
        tracing::warn!(session = %session_id, %status, "{what} failed; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
