//! `BusService` over gRPC: a thin adapter from the wire to [`Bus`].
//!
//! Streams: Subscribe hands tonic the subscription itself, so the client going away drops it
//! and nothing keeps running. PublishStream runs one task per call that stops when the client
//! half-closes (after the last acknowledgement), cancels, or stops reading; at most
//! [`PUBLISH_STREAM_WINDOW`] batches wait for persistence at once, and while acknowledgements
//! are not read the task stops reading batches, so HTTP/2 flow control holds the client back.

use std::pin::Pin;
use std::sync::Arc;

use aether_proto::bus_service_server::BusService;
use aether_proto::transport::oversize_is_resource_exhausted;
use aether_proto::{
    start_position, subscribe_response, ArchiveStreamRequest, ArchiveStreamResponse, Durability,
    GetStreamInfoRequest, GetStreamInfoResponse, Lagged, PublishRequest, PublishResponse,
    PublishStreamRequest, PublishStreamResponse, SetRetentionRequest, SetRetentionResponse,
    SubscribeRequest, SubscribeResponse,
};
use futures::stream::{FuturesOrdered, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use aether_auth::Need;

use crate::{Bus, BusError, Delivery, Principal, Retention, Start};

/// Batches of one PublishStream that may wait for persistence at once. While the window is
/// full no batch is ordered, so delivery to subscribers waits on the object store too: 1024
/// lets a publisher of one-message batches at 10k msgs/s ride out 100 ms of store latency
/// (64 held delivery back at every write slower than 6.4 ms). Memory stays small: an entry is
/// an offset range, and the messages themselves are bounded by the stream's unpersisted limit.
pub const PUBLISH_STREAM_WINDOW: usize = 1024;

/// Per-session authorization of bus calls (promise 6): subscribing and reading stream info
/// need a role on the session ([`Need::Read`]), publishing [`Need::Write`], setting retention
/// [`Need::Own`]; archiving is for services (the coordinator). The bus keeps no
/// session records; the server supplies a checker that reads them from the coordination
/// store. Without one (a bus with no coordination store, or no auth source) calls are only
/// authenticated.
#[tonic::async_trait]
pub trait SessionAccess: Send + Sync {
    async fn check(
        &self,
        principal: &Principal,
        session_id: &str,
        need: Need,
    ) -> Result<(), Status>;

    /// Whether roles are checked (an authenticated deployment), not only that the session
    /// exists.
    fn enforces_roles(&self) -> bool {
        true
    }
}

/// The gRPC face of a [`Bus`].
#[derive(Clone)]
pub struct BusGrpc {
    bus: Bus,
    access: Option<Arc<dyn SessionAccess>>,
}

impl BusGrpc {
    pub fn new(bus: Bus) -> Self {
        Self { bus, access: None }
    }

    /// Checks every call against the session's policy with `access`.
    pub fn with_access(mut self, access: Arc<dyn SessionAccess>) -> Self {
        self.access = Some(access);
        self
    }
}

async fn check(
    access: &Option<Arc<dyn SessionAccess>>,
    principal: &Principal,
    session_id: &str,
    need: Need,
) -> Result<(), Status> {
    match access {
        Some(access) => access.check(principal, session_id, need).await,
        None => Ok(()),
    }
}

/// The caller's principal, as the auth layer left it in the request extensions.
fn principal<T>(request: &Request<T>) -> Principal {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .unwrap_or_else(Principal::anonymous)
}

fn retention_to_wire(retention: Retention) -> aether_proto::Retention {
    aether_proto::Retention {
        max_messages: retention.max_messages,
        max_age: retention
            .max_age
            .and_then(|age| prost_types::Duration::try_from(age).ok()),
    }
}

fn retention_from_wire(wire: Option<aether_proto::Retention>) -> Result<Retention, BusError> {
    let wire = wire.ok_or_else(|| {
        BusError::InvalidRetention("set retention (zero fields mean no limit)".into())
    })?;
    let max_age = match wire.max_age {
        None => None,
        Some(age) if age.seconds == 0 && age.nanos == 0 => None,
        Some(age) => Some(std::time::Duration::try_from(age).map_err(|_| {
            BusError::InvalidRetention("max_age must be a positive duration".into())
        })?),
    };
    Ok(Retention {
        max_messages: wire.max_messages,
        max_age,
    })
}

fn timestamp(time: Option<std::time::SystemTime>) -> Option<prost_types::Timestamp> {
    time.map(prost_types::Timestamp::from)
}

fn durability(value: i32) -> Result<Durability, BusError> {
    Durability::try_from(value).map_err(|_| BusError::InvalidDurability(value))
}

/// Orders one PublishStream batch; returns the future of its acknowledgement.
async fn accept_batch(
    bus: &Bus,
    session: &mut Option<String>,
    batch: PublishStreamRequest,
    publisher: &Principal,
    access: &Option<Arc<dyn SessionAccess>>,
) -> Result<impl std::future::Future<Output = Result<PublishStreamResponse, Status>>, Status> {
    match session {
        Some(expected) if *expected != batch.session_id => {
            return Err(BusError::SessionChanged {
                expected: expected.clone(),
                got: batch.session_id,
                batch_id: batch.batch_id,
            }
            .into())
        }
        Some(_) => {}
        None => {
            check(access, publisher, &batch.session_id, Need::Write).await?;
            *session = Some(batch.session_id.clone());
        }
    }
    let durability = durability(batch.durability)?;
    let appended = bus
        .append(&batch.session_id, batch.messages, &publisher.name)
        .await?;
    let batch_id = batch.batch_id;
    Ok(async move {
        if durability != Durability::Accepted {
            appended.persisted().await?;
        }
        Ok(PublishStreamResponse {
            batch_id,
            first_offset: appended.first,
            last_offset: appended.last,
        })
    })
}

#[tonic::async_trait]
impl BusService for BusGrpc {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let publisher = principal(&request);
        let request = request.into_inner();
        check(&self.access, &publisher, &request.session_id, Need::Write).await?;
        let durability = durability(request.durability)?;
        let (first_offset, last_offset) = self
            .bus
            .publish(
                &request.session_id,
                request.messages,
                &publisher.name,
                durability,
            )
            .await?;
        Ok(Response::new(PublishResponse {
            first_offset,
            last_offset,
        }))
    }

    type PublishStreamStream = ReceiverStream<Result<PublishStreamResponse, Status>>;

    async fn publish_stream(
        &self,
        request: Request<Streaming<PublishStreamRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let publisher = principal(&request);
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(PUBLISH_STREAM_WINDOW);
        let bus = self.bus.clone();
        let access = self.access.clone();
        tokio::spawn(async move {
            let mut session = None;
            let mut in_flight = FuturesOrdered::new();
            let mut reading = true;
            // A bad batch ends the call, after the acknowledgements of the batches before it.
            let mut failure: Option<Status> = None;
            while reading || !in_flight.is_empty() {
                tokio::select! {
                    biased;
                    _ = tx.closed() => return,
                    Some(acked) = in_flight.next(), if !in_flight.is_empty() => match acked {
                        Ok(ack) => {
                            if tx.send(Ok(ack)).await.is_err() {
                                return;
                            }
                        }
                        Err(status) => {
                            failure = Some(status);
                            break;
                        }
                    },
                    received = inbound.next(), if reading && in_flight.len() < PUBLISH_STREAM_WINDOW => {
                        match received {
                            Some(Ok(batch)) => {
                                match accept_batch(&bus, &mut session, batch, &publisher, &access).await {
                                    Ok(ack) => in_flight.push_back(ack),
                                    Err(status) => {
                                        failure = Some(status);
                                        reading = false;
                                    }
                                }
                            }
                            // Half-close: acknowledge what is in flight, then end.
                            None => reading = false,
                            // An undecodable or oversized batch ends the call too, with its
                            // status, once the batches before it are acknowledged.
                            Some(Err(status)) => {
                                tracing::debug!(%status, "PublishStream request stream failed");
                                // A stream that already answered ends with the status in its
                                // trailers, which the server's layer does not rewrite.
                                failure = Some(oversize_is_resource_exhausted(status, None));
                                reading = false;
                            }
                        }
                    }
                }
            }
            if let Some(status) = failure {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<SubscribeResponse, Status>> + Send>>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = principal(&request);
        let request = request.into_inner();
        check(&self.access, &caller, &request.session_id, Need::Read).await?;
        let start = match request.start.and_then(|start| start.position) {
            Some(start_position::Position::Earliest(_)) => Start::Earliest,
            Some(start_position::Position::Offset(offset)) => Start::Offset(offset),
            Some(start_position::Position::Latest(_)) | None => Start::Latest,
        };
        let subscription = self
            .bus
            .subscribe(&request.session_id, start, &request.subject_filter)
            .await?;
        let responses = subscription.into_stream().map(|delivery| {
            let event = match delivery? {
                Delivery::Message(message) => {
                    subscribe_response::Event::Message(Arc::unwrap_or_clone(message))
                }
                Delivery::Lagged { resume_offset } => {
                    subscribe_response::Event::Lagged(Lagged { resume_offset })
                }
            };
            Ok(SubscribeResponse { event: Some(event) })
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn get_stream_info(
        &self,
        request: Request<GetStreamInfoRequest>,
    ) -> Result<Response<GetStreamInfoResponse>, Status> {
        let caller = principal(&request);
        let session_id = request.into_inner().session_id;
        check(&self.access, &caller, &session_id, Need::Read).await?;
        let info = self.bus.stream_info(&session_id).await?;
        Ok(Response::new(GetStreamInfoResponse {
            first_offset: info.first_offset,
            last_offset: info.last_offset,
            retention: Some(retention_to_wire(info.retention)),
            own_retention: info.own_retention,
            archive_time: timestamp(info.archived_at),
        }))
    }

    async fn set_retention(
        &self,
        request: Request<SetRetentionRequest>,
    ) -> Result<Response<SetRetentionResponse>, Status> {
        let caller = principal(&request);
        let request = request.into_inner();
        check(&self.access, &caller, &request.session_id, Need::Own).await?;
        let retention = retention_from_wire(request.retention)?;
        let info = self
            .bus
            .set_retention(&request.session_id, retention)
            .await?;
        Ok(Response::new(SetRetentionResponse {
            first_offset: info.first_offset,
            last_offset: info.last_offset,
            retention: Some(retention_to_wire(info.retention)),
        }))
    }

    async fn archive_stream(
        &self,
        request: Request<ArchiveStreamRequest>,
    ) -> Result<Response<ArchiveStreamResponse>, Status> {
        let caller = principal(&request);
        let session_id = request.into_inner().session_id;
        // Archiving an open session's stream would silence its events: only the coordinator
        // (a service principal) archives, when the session closes.
        let enforced = self.access.as_ref().is_some_and(|a| a.enforces_roles());
        if enforced && !caller.is_service() {
            return Err(Status::permission_denied(format!(
                "{} may not archive the stream of session {session_id}: streams are archived by the coordinator when their session closes (close the session instead)",
                caller.name
            )));
        }
        let info = self.bus.archive(&session_id).await?;
        Ok(Response::new(ArchiveStreamResponse {
            first_offset: info.first_offset,
            last_offset: info.last_offset,
            archive_time: timestamp(info.archived_at),
        }))
    }
}
