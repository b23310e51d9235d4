//! Publishes the session's own events on the bus, after the change they describe is durable.
//!
//! Events go through one bounded queue and one worker, so each session's events reach the bus
//! in the order its changes were committed. The worker takes everything queued at once and
//! publishes each session's events in that take as one batch (one bus write), up to
//! [`CONCURRENT_SESSIONS`] sessions at a time: under load the bus gets fewer, larger
//! publishes instead of falling behind one event at a time. Every bus call has a deadline ([`BUS_CALL_TIMEOUT`]): a hung bus
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
use futures::StreamExt;
use opentelemetry::trace::FutureExt;
use prost::Message;
use tokio::sync::mpsc;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;

/// Events held while the bus is slow or away, by default; past it events are dropped (and
/// counted). `--event-queue-depth`.
pub const DEFAULT_QUEUE: usize = 10_000;
/// Paths one FilesChanged event lists at most, and bytes of them: a batch or an import that
/// changes more says so (`truncated`), so its event stays within the bus's 1 MiB payload.
pub const MAX_EVENT_PATHS: usize = 1000;
pub const MAX_EVENT_PATH_BYTES: usize = 256 * 1024;

/// The paths an event lists (the first ones, within the bounds), and whether some were left
/// out.
fn listed_paths(mut paths: Vec<String>) -> (Vec<String>, bool) {
    let mut bytes = 0;
    let fit = paths
        .iter()
        .take(MAX_EVENT_PATHS)
        .take_while(|p| {
            bytes += p.len() + 2;
            bytes <= MAX_EVENT_PATH_BYTES
        })
        .count();
    let truncated = fit < paths.len();
    paths.truncate(fit);
    (paths, truncated)
}

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
                let (paths, truncated) = listed_paths(paths);
                Wire::FilesChanged(pb::FilesChanged {
                    paths,
                    operation,
                    truncated,
                })
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

impl Pending {
    fn session_id(&self) -> &str {
        match self {
            Pending::Event { session_id, .. } | Pending::Archive { session_id } => session_id,
        }
    }
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

type BusClient = BusServiceClient<InterceptedService<Channel, AttachToken>>;
type Queued = (Pending, opentelemetry::Context);

/// Queued items the worker takes at once.
const TAKE: usize = 1000;
/// Sessions whose events are published at once.
pub const CONCURRENT_SESSIONS: usize = 16;
/// Events one publish carries at most, and bytes of them (the bus takes 1,000 and 4 MiB).
const PUBLISH_EVENTS: usize = 256;
const PUBLISH_BYTES: usize = 2 * 1024 * 1024;

async fn deliver(client: BusClient, mut rx: mpsc::Receiver<Queued>) {
    let mut taken = Vec::with_capacity(TAKE);
    while rx.recv_many(&mut taken, TAKE).await > 0 {
        // Every session's items of this take are delivered before the next take, so a
        // session's order holds across takes.
        futures::stream::iter(by_session(taken.drain(..)))
            .for_each_concurrent(CONCURRENT_SESSIONS, |items| {
                deliver_session(client.clone(), items)
            })
            .await;
    }
}

/// `queued` cut by session, each session's items in their order, sessions in the order of
/// their first item.
fn by_session(queued: impl Iterator<Item = Queued>) -> Vec<Vec<Queued>> {
    let mut groups: Vec<Vec<Queued>> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for item in queued {
        let session = item.0.session_id().to_string();
        let at = *index.entry(session).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[at].push(item);
    }
    groups
}

/// One session's items, in order: runs of events as batched publishes, then any archive.
async fn deliver_session(client: BusClient, items: Vec<Queued>) {
    let Some(session_id) = items.first().map(|(p, _)| p.session_id().to_string()) else {
        return;
    };
    let mut publish = Publish::default();
    for (pending, trace) in items {
        match pending {
            Pending::Event { subject, event, .. } => {
                let message = event_message(subject, &event);
                let size = message.encoded_len();
                if publish.is_full_with(size) {
                    publish.send(&client, &session_id).await;
                }
                publish.add(message, size, trace);
            }
            Pending::Archive { .. } => {
                publish.send(&client, &session_id).await;
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
    publish.send(&client, &session_id).await;
}

/// A session's events being gathered into one publish.
#[derive(Default)]
struct Publish {
    messages: Vec<OutgoingMessage>,
    bytes: usize,
    /// The trace of the first event's change.
    trace: Option<opentelemetry::Context>,
}

impl Publish {
    fn is_full_with(&self, size: usize) -> bool {
        !self.messages.is_empty()
            && (self.messages.len() >= PUBLISH_EVENTS || self.bytes + size > PUBLISH_BYTES)
    }

    fn add(&mut self, message: OutgoingMessage, size: usize, trace: opentelemetry::Context) {
        self.trace.get_or_insert(trace);
        self.bytes += size;
        self.messages.push(message);
    }

    /// Publishes what was gathered (nothing when empty), retrying while the bus is away.
    async fn send(&mut self, client: &BusClient, session_id: &str) {
        if self.messages.is_empty() {
            return;
        }
        let request = PublishRequest {
            session_id: session_id.to_string(),
            messages: std::mem::take(&mut self.messages),
            durability: Durability::Persisted as i32,
        };
        self.bytes = 0;
        let trace = self.trace.take().unwrap_or_default();
        with_retries(session_id, &trace, "publishing session events", || {
            let mut client = client.clone();
            // The bus learns the deadline, so it stops working on a call given up here.
            let request = aether_auth::deadline::request_within(request.clone(), BUS_CALL_TIMEOUT);
            async move { client.publish(request).await.map(|_| ()) }
        })
        .await;
    }
}

fn event_message(subject: &str, event: &pb::SessionEvent) -> OutgoingMessage {
    OutgoingMessage {
        subject: subject.to_string(),
        payload: event.encode_to_vec().into(),
        headers: [(
            "content-type".to_string(),
            "application/x-protobuf; type=aetherfs.v1.SessionEvent".to_string(),
        )]
        .into(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_lists_a_bounded_number_of_paths_and_says_when_it_left_some_out() {
        let few: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
        assert_eq!(listed_paths(few.clone()), (few, false));
        let many: Vec<String> = (0..5000).map(|i| format!("f{i}")).collect();
        let (listed, truncated) = listed_paths(many.clone());
        assert!(truncated);
        assert_eq!(listed, many[..MAX_EVENT_PATHS]);
        let long: Vec<String> = (0..200)
            .map(|i| format!("{i}{}", "x".repeat(4000)))
            .collect();
        let (listed, truncated) = listed_paths(long);
        assert!(truncated);
        assert!(listed.iter().map(|p| p.len() + 2).sum::<usize>() <= MAX_EVENT_PATH_BYTES);
        let wire = Event::FilesChanged {
            paths: (0..20_000).map(|i| format!("dir/{i:08}.txt")).collect(),
            operation: "import".into(),
        }
        .wire(7, "alice".into());
        assert!(
            wire.encoded_len() < 1024 * 1024,
            "within the bus's payload limit"
        );
    }

    #[test]
    fn queued_items_keep_each_sessions_order() {
        let event = |session: &str, version: u64| {
            (
                Pending::Event {
                    session_id: session.into(),
                    subject: "s",
                    event: Event::Finalized.wire(version, String::new()),
                },
                opentelemetry::Context::new(),
            )
        };
        let archive = |session: &str| {
            (
                Pending::Archive {
                    session_id: session.into(),
                },
                opentelemetry::Context::new(),
            )
        };
        let queued = vec![
            event("b", 1),
            event("a", 1),
            event("b", 2),
            archive("b"),
            event("a", 2),
        ];
        let described: Vec<Vec<String>> = by_session(queued.into_iter())
            .into_iter()
            .map(|items| {
                items
                    .iter()
                    .map(|(p, _)| match p {
                        Pending::Event {
                            session_id, event, ..
                        } => format!("{session_id}{}", event.head_version),
                        Pending::Archive { session_id } => format!("{session_id} archive"),
                    })
                    .collect()
            })
            .collect();
        assert_eq!(described, [vec!["b1", "b2", "b archive"], vec!["a1", "a2"]]);
    }
}
