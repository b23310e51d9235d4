//! A subscription: replays a stream's history from an offset, then follows it live, with no
//! gap and no duplicate.
//!
//! It joins the live feed first, noting the first offset the feed will bring (`live_from`),
//! then reads everything before that from the tail or from segments, then reads the feed.
//! Offsets delivered are strictly increasing.
//!
//! Back-pressure: the live feed keeps at most `subscriber_buffer` messages for a subscriber.
//! One that falls further behind gets [`Delivery::Lagged`] with the first offset it has not
//! received, and the subscription ends: publishers never wait for subscribers. On an archived
//! stream the subscription ends after the last message, since nothing more can come. Cancellation:
//! a subscription is a plain value with no task of its own; dropping it (the gRPC client going
//! away drops the response stream) stops it.

use std::collections::VecDeque;
use std::sync::Arc;

use aether_core::names::{subject_matches, validate_subject_filter};
use aether_proto::BusMessage;
use futures::Stream as FuturesStream;
use tokio::sync::broadcast;

use crate::stream::{read_segment, History, Shared, Stream};
use crate::BusError;

/// Most tail messages copied per lock.
const REPLAY_CHUNK: usize = 1024;

/// Where a subscription starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The first retained message.
    Earliest,
    /// Only messages published after subscribing.
    Latest,
    /// This offset, from the first retained to last + 1.
    Offset(u64),
}

/// What a subscription delivers.
#[derive(Clone, Debug, PartialEq)]
pub enum Delivery {
    /// The next matching message.
    Message(Arc<BusMessage>),
    /// The subscriber fell behind; subscribe again from `resume_offset`. Ends the subscription.
    Lagged { resume_offset: u64 },
}

/// A subscription to one stream.
pub struct Subscription {
    shared: Arc<Shared>,
    stream: Arc<Stream>,
    filter: String,
    /// The next offset to consider; every offset before it was delivered or filtered out.
    cursor: u64,
    /// The first offset the live feed brings; offsets before it come from history.
    live_from: u64,
    live: broadcast::Receiver<Arc<BusMessage>>,
    replay: VecDeque<Arc<BusMessage>>,
    done: bool,
}

impl Subscription {
    pub(crate) async fn open(
        shared: Arc<Shared>,
        session_id: &str,
        start: Start,
        filter: &str,
    ) -> Result<Subscription, BusError> {
        validate_subject_filter(filter).map_err(BusError::InvalidFilter)?;
        loop {
            let stream = shared.stream(session_id).await?;
            let Some((live, first, next)) = stream.attach() else {
                continue;
            };
            let cursor = match start {
                Start::Earliest => first,
                Start::Latest => next,
                Start::Offset(offset) if (first..=next).contains(&offset) => offset,
                Start::Offset(offset) => {
                    return Err(BusError::OutOfRange {
                        session_id: session_id.to_string(),
                        requested: offset,
                        first,
                        next,
                    })
                }
            };
            return Ok(Subscription {
                shared,
                stream,
                filter: filter.to_string(),
                cursor,
                live_from: next,
                live,
                replay: VecDeque::new(),
                done: false,
            });
        }
    }

    /// The next offset this subscription would deliver: where to resume it.
    pub fn position(&self) -> u64 {
        self.cursor
    }

    /// The next delivery; None once the subscription ended (after `Lagged`, an error, or the
    /// last message of an archived stream).
    pub async fn next(&mut self) -> Option<Result<Delivery, BusError>> {
        if self.done {
            return None;
        }
        let item = self.advance().await.transpose();
        if !matches!(item, Some(Ok(Delivery::Message(_)))) {
            self.done = true;
        }
        item
    }

    /// The subscription as a stream of deliveries.
    pub fn into_stream(
        self,
    ) -> impl FuturesStream<Item = Result<Delivery, BusError>> + Send + 'static {
        futures::stream::unfold(self, |mut subscription| async move {
            let item = subscription.next().await?;
            Some((item, subscription))
        })
    }

    fn matches(&self, message: &BusMessage) -> bool {
        subject_matches(&self.filter, &message.subject)
    }

    /// The next delivery; None at the end of an archived stream.
    async fn advance(&mut self) -> Result<Option<Delivery>, BusError> {
        loop {
            while let Some(message) = self.replay.pop_front() {
                self.cursor = message.offset + 1;
                if self.matches(&message) {
                    return Ok(Some(Delivery::Message(message)));
                }
            }
            if self.stream.end().is_some_and(|end| self.cursor > end) {
                return Ok(None);
            }
            if self.cursor < self.live_from {
                self.fetch_history().await?;
                continue;
            }
            tokio::select! {
                // Messages already in the feed go out before a reset or shutdown is noticed.
                biased;
                received = self.live.recv() => match received {
                    Ok(message) if message.offset < self.cursor => continue,
                    Ok(message) if message.offset == self.cursor => {
                        self.cursor += 1;
                        if self.matches(&message) {
                            return Ok(Some(Delivery::Message(message)));
                        }
                    }
                    // A hole in the feed cannot happen; if it did, resuming from history is safe.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        return Ok(Some(Delivery::Lagged { resume_offset: self.cursor }))
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(self.reset("the stream was dropped from memory"))
                    }
                },
                // Archived, and the feed (polled first) holds nothing more: the end, unless
                // messages are missing, which history can supply.
                _ = self.stream.sealed.cancelled() => {
                    if self.stream.end().is_some_and(|end| self.cursor > end) {
                        return Ok(None);
                    }
                    return Ok(Some(Delivery::Lagged { resume_offset: self.cursor }));
                }
                _ = self.stream.closed.cancelled() => {
                    return Err(self.reset("the stream was dropped from memory"))
                }
                _ = self.shared.shutdown.cancelled() => {
                    return Err(self.reset("the bus is shutting down"))
                }
            }
        }
    }

    fn reset(&self, reason: &'static str) -> BusError {
        BusError::StreamReset {
            session_id: self.stream.session_id.clone(),
            resume_offset: self.cursor,
            reason,
        }
    }

    fn expired(&self, first_retained: u64) -> BusError {
        BusError::Expired {
            session_id: self.stream.session_id.clone(),
            offset: self.cursor,
            first: first_retained,
        }
    }

    /// Fills `replay` with the next history, from the tail if it reaches back far enough, else
    /// from the segment holding the cursor.
    async fn fetch_history(&mut self) -> Result<(), BusError> {
        match self
            .stream
            .history(self.cursor, self.live_from, REPLAY_CHUNK)
        {
            History::Messages(messages) => self.replay.extend(messages),
            History::Expired { first_retained } => return Err(self.expired(first_retained)),
            History::Segment(first) => {
                let messages =
                    read_segment(&*self.shared.objects, &self.stream.session_id, first).await?;
                let Some(messages) = messages else {
                    // Retention deleted it while we were reading.
                    return Err(self.expired(self.stream.info().0));
                };
                self.replay.extend(
                    messages
                        .into_iter()
                        .filter(|m| (self.cursor..self.live_from).contains(&m.offset))
                        .map(Arc::new),
                );
            }
        }
        if self.replay.front().map(|m| m.offset) != Some(self.cursor) {
            return Err(BusError::Internal(format!(
                "history of session \"{}\" has no offset {}",
                self.stream.session_id, self.cursor
            )));
        }
        Ok(())
    }
}
