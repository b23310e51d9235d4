//! A bus subscription that keeps going: after a `Lagged` notice it subscribes again from the
//! offset the bus names, and after a dropped connection (UNAVAILABLE) from the offset after the
//! last message it delivered, so a caller sees every message once, in order.

use aether_proto as pb;
use tonic::Code;

use crate::client::{backoff, Idempotence};
use crate::error::Result;
use crate::session::SessionHandle;

/// Messages of one session's stream, in offset order. Back-pressure is the caller's pace: the
/// next message is read from the network only when [`Subscription::next`] is called.
pub struct Subscription {
    session: SessionHandle,
    start: pb::StartPosition,
    filter: String,
    stream: Option<tonic::Streaming<pb::SubscribeResponse>>,
    failures: u32,
}

fn at_offset(offset: u64) -> pb::StartPosition {
    pb::StartPosition {
        position: Some(pb::start_position::Position::Offset(offset)),
    }
}

impl Subscription {
    pub(crate) fn new(
        session: SessionHandle,
        start: pb::StartPosition,
        filter: String,
    ) -> Subscription {
        Subscription {
            session,
            start,
            filter,
            stream: None,
            failures: 0,
        }
    }

    async fn open(&self) -> Result<tonic::Streaming<pb::SubscribeResponse>> {
        let request = pb::SubscribeRequest {
            session_id: self.session.id().to_string(),
            start: Some(self.start),
            subject_filter: self.filter.clone(),
        };
        self.session
            .client
            .open_stream(Idempotence::Idempotent, request, |mut c, r| async move {
                c.bus.subscribe(r).await
            })
            .await
    }

    /// The next message; `None` when the bus ended the stream (it shuts down, or the session
    /// is gone).
    pub async fn next(&mut self) -> Result<Option<pb::BusMessage>> {
        loop {
            let stream = match &mut self.stream {
                Some(stream) => stream,
                None => self.stream.insert(self.open().await?),
            };
            match stream.message().await {
                Ok(Some(response)) => match response.event {
                    Some(pb::subscribe_response::Event::Message(message)) => {
                        self.start = at_offset(message.offset + 1);
                        self.failures = 0;
                        return Ok(Some(message));
                    }
                    Some(pb::subscribe_response::Event::Lagged(lagged)) => {
                        tracing::debug!(resume = lagged.resume_offset, "subscription lagged");
                        self.start = at_offset(lagged.resume_offset);
                        self.stream = None;
                    }
                    None => {}
                },
                Ok(None) => return Ok(None),
                Err(status)
                    if status.code() == Code::Unavailable
                        && self.failures < self.session.client.options.retries =>
                {
                    let wait = backoff(self.session.client.options.backoff, self.failures);
                    self.failures += 1;
                    self.stream = None;
                    tokio::time::sleep(wait).await;
                }
                Err(status) => return Err(status.into()),
            }
        }
    }
}
