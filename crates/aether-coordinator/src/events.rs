//! Publishes the session's own events on the bus, after the change they describe is durable.
//!
//! Events go through one bounded queue and one worker, so they reach the bus in the order the
//! changes were committed. When the bus is unreachable the worker retries with backoff; a full
//! queue makes mutations wait (back-pressure) rather than drop events.

use std::time::Duration;

use aether_auth::AttachToken;
use aether_proto::bus_service_client::BusServiceClient;
use aether_proto::{Durability, OutgoingMessage, PublishRequest, SessionEvent};
use prost::Message;
use tokio::sync::mpsc;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Queue depth before mutations wait for the bus.
const QUEUE: usize = 10_000;

struct Pending {
    session_id: String,
    subject: &'static str,
    event: SessionEvent,
}

/// Where the coordinator sends session events.
#[derive(Clone)]
pub struct EventSink {
    queue: Option<mpsc::Sender<Pending>>,
}

impl EventSink {
    /// Events are dropped: for a coordinator configured without a bus.
    pub fn disabled() -> Self {
        Self { queue: None }
    }

    /// Publishes to a bus process over gRPC.
    pub fn bus(channel: Channel) -> Self {
        Self::bus_with_token(channel, AttachToken::none())
    }

    /// Publishes to a bus process over gRPC, authenticating with `token`.
    pub fn bus_with_token(channel: Channel, token: AttachToken) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(deliver(
            BusServiceClient::with_interceptor(channel, token),
            rx,
        ));
        Self { queue: Some(tx) }
    }

    pub async fn publish(&self, session_id: &str, subject: &'static str, event: SessionEvent) {
        if let Some(queue) = &self.queue {
            let pending = Pending {
                session_id: session_id.to_string(),
                subject,
                event,
            };
            if queue.send(pending).await.is_err() {
                tracing::error!("event worker stopped; session event dropped");
            }
        }
    }
}

async fn deliver(
    mut client: BusServiceClient<InterceptedService<Channel, AttachToken>>,
    mut rx: mpsc::Receiver<Pending>,
) {
    while let Some(pending) = rx.recv().await {
        let request = PublishRequest {
            session_id: pending.session_id.clone(),
            messages: vec![OutgoingMessage {
                subject: pending.subject.to_string(),
                payload: pending.event.encode_to_vec().into(),
                headers: [(
                    "content-type".to_string(),
                    "application/x-protobuf; type=aetherfs.v1.SessionEvent".to_string(),
                )]
                .into(),
            }],
            durability: Durability::Persisted as i32,
        };
        let mut backoff = Duration::from_millis(50);
        loop {
            match client.publish(request.clone()).await {
                Ok(_) => break,
                Err(status) => {
                    tracing::warn!(session = %pending.session_id, %status, "publishing session event failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
