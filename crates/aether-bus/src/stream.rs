//! One session's stream in memory: offset assignment, the tail, the flusher, recovery,
//! retention and eviction.
//!
//! Offsets are assigned under the stream's lock, and each message is handed to the live feed
//! under that same lock, so the live feed carries exactly the offset order and a subscriber
//! that joins under the lock knows the first offset the feed will bring it.
//!
//! The tail holds the newest messages, always including every message not yet persisted. A
//! per-stream flusher task writes pending messages as one segment at most every
//! `flush_interval` (group commit) while someone waits for persistence, every
//! `accepted_flush_interval` while nobody does, at once when a full segment is pending: a stream
//! of accepted messages makes few, full segments, not hundreds of objects a second. A failed
//! write is retried with backoff, with the same bytes under the same name, so offsets are never
//! reused or skipped; waiting publishers get `UNAVAILABLE` after `persist_timeout` but their
//! messages stay queued and are written when the store returns. Only the flusher advances the
//! persisted watermark, so segments are written strictly in offset order and a persisted
//! acknowledgement implies every earlier offset is persisted too.
//!
//! Recovery: the first request for a stream in a process lists its segments and reads the
//! newest one to learn the last offset, so numbering continues at last + 1 after any crash.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use aether_proto::{BusMessage, OutgoingMessage};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};
use prost::Message;
use tokio::sync::{broadcast, watch, Notify, OnceCell};
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::segment::{self, parse_segment_name, segment_path, stream_prefix};
use crate::settings::{self, Archived, StreamSettings};
use crate::{BusConfig, BusError, Retention};

/// A segment is cut once its messages reach this many encoded bytes, so one segment read stays
/// small whatever the message sizes.
const SEGMENT_TARGET_BYTES: usize = 8 * 1024 * 1024;
/// Backoff between attempts to write a segment.
const INITIAL_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections never leave the state half-changed, so a panic elsewhere does not make
    // the state unusable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What every stream of one bus shares.
pub(crate) struct Shared {
    pub(crate) objects: Arc<dyn ObjectStore>,
    pub(crate) config: BusConfig,
    streams: Mutex<HashMap<String, Arc<OnceCell<Arc<Stream>>>>>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
    /// Counts streams dropped from memory for idleness.
    pub(crate) evictions: watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn new(objects: Arc<dyn ObjectStore>, config: BusConfig) -> Self {
        Self {
            objects,
            config: config.sanitized(),
            streams: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            evictions: watch::Sender::new(0),
        }
    }

    /// The session's stream, loaded from the object store on first use. Concurrent first uses
    /// share one load.
    pub(crate) async fn stream(
        self: &Arc<Self>,
        session_id: &str,
    ) -> Result<Arc<Stream>, BusError> {
        loop {
            if self.shutdown.is_cancelled() {
                return Err(BusError::ShuttingDown);
            }
            let cell = lock(&self.streams)
                .entry(session_id.to_string())
                .or_default()
                .clone();
            match cell
                .get_or_try_init(|| Stream::load(self.clone(), session_id))
                .await
            {
                Ok(stream) if !stream.is_closed() => return Ok(stream.clone()),
                // Evicted or reset between lookup and use: load afresh.
                Ok(_) => self.forget(session_id, &cell),
                Err(error) => {
                    self.forget(session_id, &cell);
                    return Err(error);
                }
            }
        }
    }

    /// Drops a loaded stream from memory so its next use reloads it from the object store:
    /// for a node that takes a stream over from another, whose in-memory view is stale.
    pub(crate) fn reload(&self, session_id: &str) {
        let loaded = lock(&self.streams)
            .get(session_id)
            .and_then(|cell| cell.get().cloned());
        if let Some(stream) = loaded {
            stream.reset(self);
        }
    }

    fn forget(&self, session_id: &str, cell: &Arc<OnceCell<Arc<Stream>>>) {
        let mut streams = lock(&self.streams);
        if streams
            .get(session_id)
            .is_some_and(|current| Arc::ptr_eq(current, cell))
        {
            streams.remove(session_id);
        }
    }

    /// Removes `stream` from the map if it is still the loaded one. Takes the map lock, so it
    /// must be called before locking the stream's state.
    fn unmap(streams: &mut HashMap<String, Arc<OnceCell<Arc<Stream>>>>, stream: &Arc<Stream>) {
        let same = streams
            .get(&stream.session_id)
            .and_then(|cell| cell.get())
            .is_some_and(|loaded| Arc::ptr_eq(loaded, stream));
        if same {
            streams.remove(&stream.session_id);
        }
    }
}

/// Where a written segment sits in the stream.
#[derive(Clone, Copy, Debug)]
struct SegmentMeta {
    last: u64,
    written: SystemTime,
}

/// The mutable state of a stream, behind its lock.
struct State {
    /// The offset the next message gets.
    next_offset: u64,
    /// The first offset subscribers may start from.
    first_retained: u64,
    /// Every offset up to this one is in a segment.
    persisted_through: u64,
    /// Segments in the object store, by first offset.
    segments: BTreeMap<u64, SegmentMeta>,
    /// The newest messages, consecutive, ending at `next_offset - 1`, holding at least every
    /// offset after `persisted_through`.
    tail: VecDeque<Arc<BusMessage>>,
    /// Encoded bytes of the unpersisted messages.
    unpersisted_bytes: usize,
    /// Why the last segment write failed, while writes fail.
    store_error: Option<String>,
    last_activity: Instant,
    /// Dropped from memory (evicted, reset or stopped): no more appends or subscribers.
    closed: bool,
    /// What `stream.json` holds.
    settings: StreamSettings,
    /// The retention in effect: the stream's own, else the bus default.
    retention: Retention,
    /// An archive is being written: appends wait for its outcome.
    archiving: bool,
}

impl State {
    /// The state of a stream with no segments: numbering starts at 1.
    fn empty(config: &BusConfig, settings: StreamSettings) -> State {
        State {
            next_offset: 1,
            first_retained: 1,
            persisted_through: 0,
            segments: BTreeMap::new(),
            tail: VecDeque::new(),
            unpersisted_bytes: 0,
            store_error: None,
            last_activity: Instant::now(),
            closed: false,
            retention: settings.retention.map_or(config.retention, Retention::from),
            settings,
            archiving: false,
        }
    }

    /// Takes up the stream where its segments end: `found` lists them by first offset and
    /// written time, oldest first, and `newest` holds the messages of the last one.
    fn recover(
        &mut self,
        found: &[(u64, SystemTime)],
        newest: Vec<BusMessage>,
        max_buffered_messages: usize,
    ) {
        let Some(&(newest_first, _)) = found.last() else {
            return;
        };
        let last = newest_first + newest.len() as u64 - 1;
        for (i, &(first, written)) in found.iter().enumerate() {
            let segment_last = found.get(i + 1).map_or(last, |(next, _)| next - 1);
            self.segments.insert(
                first,
                SegmentMeta {
                    last: segment_last,
                    written,
                },
            );
        }
        self.next_offset = last + 1;
        self.persisted_through = last;
        self.first_retained = found[0].0;
        // The newest segment seeds the tail: fresh subscribers near the end read no store.
        self.tail = newest.into_iter().map(Arc::new).collect();
        self.trim_tail(max_buffered_messages);
    }

    fn tail_front(&self) -> u64 {
        self.tail.front().map_or(self.next_offset, |m| m.offset)
    }

    fn unpersisted(&self) -> u64 {
        self.next_offset - 1 - self.persisted_through
    }

    fn trim_tail(&mut self, max: usize) {
        while self.tail.len() > max
            && self
                .tail
                .front()
                .is_some_and(|m| m.offset <= self.persisted_through)
        {
            self.tail.pop_front();
        }
    }

    /// Applies the retention in effect.
    fn retain(&mut self, now: SystemTime) {
        let retention = self.retention;
        self.apply_retention(&retention, now);
    }

    /// Moves `first_retained` past what `retention` no longer keeps.
    fn apply_retention(&mut self, retention: &Retention, now: SystemTime) {
        let last = self.next_offset - 1;
        if retention.max_messages > 0 && last >= retention.max_messages {
            self.first_retained = self.first_retained.max(last - retention.max_messages + 1);
        }
        if let Some(max_age) = retention.max_age {
            for meta in self.segments.values() {
                let expired = meta
                    .written
                    .checked_add(max_age)
                    .is_some_and(|expiry| expiry <= now);
                if !expired {
                    break;
                }
                self.first_retained = self.first_retained.max(meta.last + 1);
            }
        }
    }

    /// Segments holding no retained message, oldest first. The newest segment is kept even
    /// then: it records where offsets continue after a restart.
    fn doomed_segments(&self) -> Vec<u64> {
        let newest = self.segments.keys().next_back().copied();
        self.segments
            .iter()
            .filter(|(first, meta)| meta.last < self.first_retained && Some(**first) != newest)
            .map(|(first, _)| *first)
            .collect()
    }
}

/// The result of trying to append.
pub(crate) enum AppendOutcome {
    Appended {
        first: u64,
        last: u64,
    },
    /// The stream was dropped from memory; load it again.
    Closed,
    /// Too much is waiting to be persisted: wait for the watermark to move.
    Backlogged {
        pending: u64,
        persisted: watch::Receiver<u64>,
        detail: Option<String>,
    },
}

/// What a subscriber reads next.
pub(crate) enum History {
    /// Messages from the tail, starting at the asked offset.
    Messages(Vec<Arc<BusMessage>>),
    /// The asked offset is in the segment starting at this offset.
    Segment(u64),
    /// The asked offset was removed by retention.
    Expired { first_retained: u64 },
}

/// One session's stream.
pub(crate) struct Stream {
    pub(crate) session_id: String,
    state: Mutex<State>,
    /// The live feed, in offset order.
    live: broadcast::Sender<Arc<BusMessage>>,
    /// The persisted watermark: every offset up to it is in the object store.
    persisted: watch::Sender<u64>,
    /// Wakes the flusher: messages are pending.
    wake: Notify,
    /// Cancelled when the stream is dropped from memory.
    pub(crate) closed: CancellationToken,
    /// Cancelled once the stream is archived: live subscribers end after the last message.
    pub(crate) sealed: CancellationToken,
    /// Serialises writes of `stream.json`.
    settings_write: tokio::sync::Mutex<()>,
}

impl Stream {
    /// Loads a stream's state from its segments and starts its flusher.
    async fn load(shared: Arc<Shared>, session_id: &str) -> Result<Arc<Stream>, BusError> {
        let prefix = stream_prefix(session_id);
        let listed: Vec<object_store::ObjectMeta> = shared
            .objects
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| BusError::from_object_store(e, prefix.as_ref()))?;
        let stream_settings = settings::read(&*shared.objects, session_id).await?;
        let found = listed_segments(&listed);
        let mut state = State::empty(&shared.config, stream_settings);
        if let Some(&(newest, _)) = found.last() {
            let messages = read_segment(&*shared.objects, session_id, newest)
                .await?
                .ok_or_else(|| {
                    BusError::Unavailable(format!(
                        "{}: listed but gone; retry",
                        segment_path(session_id, newest)
                    ))
                })?;
            state.recover(&found, messages, shared.config.max_buffered_messages);
        }
        if let Some(archived) = &mut state.settings.archived {
            // An archive write that failed after landing, followed by more publishes: the
            // segments are the truth.
            archived.last_offset = archived.last_offset.max(state.next_offset - 1);
        }
        state.retain(SystemTime::now());
        tracing::debug!(
            session_id,
            first_retained = state.first_retained,
            next_offset = state.next_offset,
            segments = state.segments.len(),
            "loaded bus stream"
        );
        Ok(Stream::start(shared, session_id, state))
    }

    /// Wraps loaded state in a stream and spawns its flusher.
    fn start(shared: Arc<Shared>, session_id: &str, state: State) -> Arc<Stream> {
        let persisted = watch::Sender::new(state.persisted_through);
        let sealed = CancellationToken::new();
        if state.settings.archived.is_some() {
            sealed.cancel();
        }
        let stream = Arc::new(Stream {
            session_id: session_id.to_string(),
            state: Mutex::new(state),
            live: broadcast::Sender::new(shared.config.subscriber_buffer),
            persisted,
            wake: Notify::new(),
            closed: CancellationToken::new(),
            sealed,
            settings_write: tokio::sync::Mutex::new(()),
        });
        shared
            .tasks
            .spawn(run_flusher(shared.clone(), stream.clone()));
        stream
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Orders `messages` at the end of the stream and hands them to live subscribers; drains
    /// `messages` only when it succeeds.
    pub(crate) fn try_append(
        &self,
        shared: &Shared,
        messages: &mut Vec<OutgoingMessage>,
        publisher: &str,
    ) -> Result<AppendOutcome, BusError> {
        let mut state = self.lock();
        if state.closed {
            return Ok(AppendOutcome::Closed);
        }
        if shared.shutdown.is_cancelled() {
            return Err(BusError::ShuttingDown);
        }
        if let Some(archived) = state.settings.archived {
            return Err(BusError::Archived {
                session_id: self.session_id.clone(),
                last_offset: archived.last_offset,
            });
        }
        if state.archiving {
            return Err(BusError::Archiving {
                session_id: self.session_id.clone(),
            });
        }
        let count = messages.len() as u64;
        let pending = state.unpersisted();
        // An empty backlog always takes a batch, so any valid batch can make progress.
        if pending > 0 && pending + count > shared.config.max_unpersisted() {
            return Ok(AppendOutcome::Backlogged {
                pending,
                persisted: self.persisted.subscribe(),
                detail: state.store_error.clone(),
            });
        }
        let publish_time = Some(prost_types::Timestamp::from(SystemTime::now()));
        let first = state.next_offset;
        for (offset, message) in (first..).zip(messages.drain(..)) {
            let message = Arc::new(BusMessage {
                offset,
                subject: message.subject,
                payload: message.payload,
                headers: message.headers,
                publish_time,
                publisher: publisher.to_string(),
            });
            state.unpersisted_bytes += message.encoded_len();
            state.tail.push_back(message.clone());
            // No receiver is fine: then nobody is live.
            let _ = self.live.send(message);
        }
        state.next_offset += count;
        state.last_activity = Instant::now();
        state.retain(SystemTime::now());
        state.trim_tail(shared.config.max_buffered_messages);
        let full = segment_full(&shared.config, pending + count, state.unpersisted_bytes);
        drop(state);
        // The flusher waits for a first pending message, then for its window to end or a full
        // segment: only those wake it, not every publish inside the window (at 10k one-message
        // publishes a second, waking it for each cost more than the writes).
        if pending == 0 || full {
            self.wake.notify_one();
        }
        Ok(AppendOutcome::Appended {
            first,
            last: first + count - 1,
        })
    }

    /// Waits until offset `last` is persisted, the stream is dropped, or `timeout` passes.
    pub(crate) async fn wait_persisted(
        &self,
        first: u64,
        last: u64,
        timeout: Duration,
    ) -> Result<(), BusError> {
        let mut watermark = self.persisted.subscribe();
        // The flusher may be in the long window of accepted-only traffic: shorten it.
        self.wake.notify_one();
        tokio::select! {
            biased;
            _ = watermark.wait_for(|through| *through >= last) => return Ok(()),
            _ = self.closed.cancelled() => {}
            _ = tokio::time::sleep(timeout) => {}
        }
        if *self.persisted.borrow() >= last {
            return Ok(());
        }
        let detail = if self.closed.is_cancelled() {
            "the bus dropped the stream before they were written (it is stopping, or another bus instance wrote the stream): they may be lost, publish them again".to_string()
        } else {
            let cause = self
                .lock()
                .store_error
                .clone()
                .unwrap_or_else(|| format!("the write took longer than {timeout:?}"));
            format!("{cause}; they stay queued and will be written when the object store recovers, so check the stream before publishing them again")
        };
        Err(BusError::NotPersisted {
            session_id: self.session_id.clone(),
            first,
            last,
            detail,
        })
    }

    /// Joins the live feed; returns it with the first retained and the next offset, under the
    /// lock so the feed brings exactly the offsets from `next` on. None when closed.
    pub(crate) fn attach(&self) -> Option<(broadcast::Receiver<Arc<BusMessage>>, u64, u64)> {
        let mut state = self.lock();
        if state.closed {
            return None;
        }
        state.last_activity = Instant::now();
        Some((
            self.live.subscribe(),
            state.first_retained,
            state.next_offset,
        ))
    }

    /// The first retained and the last assigned offset.
    pub(crate) fn info(&self) -> (u64, u64) {
        let state = self.lock();
        (state.first_retained, state.next_offset - 1)
    }

    /// The retention in effect, whether it is the stream's own, and the archive record.
    pub(crate) fn settings(&self) -> (Retention, bool, Option<Archived>) {
        let state = self.lock();
        (
            state.retention,
            state.settings.retention.is_some(),
            state.settings.archived,
        )
    }

    /// The last offset an archived stream will ever have; None while it is open.
    pub(crate) fn end(&self) -> Option<u64> {
        self.lock().settings.archived.map(|a| a.last_offset)
    }

    /// Gives the stream its own retention, persisted in `stream.json`, and applies it at once.
    /// None when the stream was dropped from memory (load it again).
    pub(crate) async fn set_retention(
        &self,
        shared: &Shared,
        retention: Retention,
    ) -> Result<Option<()>, BusError> {
        let _writing = self.settings_write.lock().await;
        let mut updated = {
            let state = self.lock();
            if state.closed {
                return Ok(None);
            }
            state.settings.clone()
        };
        updated.retention = Some(retention.into());
        settings::write(&*shared.objects, &self.session_id, &updated).await?;
        {
            let mut state = self.lock();
            state.settings.retention = updated.retention;
            state.retention = retention;
            state.retain(SystemTime::now());
        }
        self.enforce_retention(shared).await;
        // The flusher re-reads the retention to time its age checks.
        self.wake.notify_one();
        Ok(Some(()))
    }

    /// Archives the stream: refuses further appends, waits until everything accepted is
    /// persisted, then records the archive in `stream.json`. Archiving an archived stream
    /// returns its record. None when the stream was dropped from memory (load it again).
    pub(crate) async fn archive(&self, shared: &Shared) -> Result<Option<Archived>, BusError> {
        let _writing = self.settings_write.lock().await;
        let (first_unpersisted, last) = {
            let mut state = self.lock();
            if state.closed {
                return Ok(None);
            }
            if let Some(archived) = state.settings.archived {
                return Ok(Some(archived));
            }
            state.archiving = true;
            (state.persisted_through + 1, state.next_offset - 1)
        };
        let written = async {
            if last >= first_unpersisted {
                self.wait_persisted(first_unpersisted, last, shared.config.persist_timeout)
                    .await?;
            }
            let mut updated = self.lock().settings.clone();
            let archived = Archived {
                at_ms: settings::now_ms(),
                last_offset: last,
            };
            updated.archived = Some(archived);
            settings::write(&*shared.objects, &self.session_id, &updated).await?;
            Ok(archived)
        }
        .await;
        let mut state = self.lock();
        state.archiving = false;
        let archived = written?;
        state.settings.archived = Some(archived);
        drop(state);
        self.sealed.cancel();
        tracing::info!(session_id = %self.session_id, last_offset = last, "archived bus stream");
        Ok(Some(archived))
    }

    /// Where to read offsets `from..until` (at most `max` of them) from.
    pub(crate) fn history(&self, from: u64, until: u64, max: usize) -> History {
        let state = self.lock();
        let front = state.tail_front();
        if from >= front {
            let start = (from - front) as usize;
            let count = ((until.min(state.next_offset) - from) as usize).min(max);
            return History::Messages(state.tail.range(start..start + count).cloned().collect());
        }
        match state.segments.range(..=from).next_back() {
            Some((first, meta)) if meta.last >= from => History::Segment(*first),
            _ => History::Expired {
                first_retained: state.first_retained,
            },
        }
    }

    /// Marks the stream closed if nothing is pending (the flusher's last act on shutdown).
    fn close_if_drained(&self) -> bool {
        let mut state = self.lock();
        if state.unpersisted() > 0 {
            return false;
        }
        state.closed = true;
        drop(state);
        self.closed.cancel();
        true
    }

    /// Drops the stream from memory if it is idle: nothing pending, no subscriber, no activity
    /// for `stream_idle_timeout`. Publishers and subscribers that still hold it see it closed
    /// and load it again.
    fn try_evict(self: &Arc<Self>, shared: &Shared) -> bool {
        let mut streams = lock(&shared.streams);
        let mut state = self.lock();
        if state.closed {
            return true;
        }
        if state.unpersisted() > 0
            || state.last_activity.elapsed() < shared.config.stream_idle_timeout
        {
            return false;
        }
        if self.live.receiver_count() > 0 {
            // Subscribers count as activity; look again after another idle period.
            state.last_activity = Instant::now();
            return false;
        }
        state.closed = true;
        Shared::unmap(&mut streams, self);
        drop(state);
        drop(streams);
        self.closed.cancel();
        shared.evictions.send_modify(|count| *count += 1);
        tracing::debug!(session_id = %self.session_id, "evicted idle bus stream");
        true
    }

    /// Drops the stream from memory because its pending messages cannot be written: waiters
    /// and subscribers are told, the next request reloads from the object store.
    fn reset(self: &Arc<Self>, shared: &Shared) {
        let mut streams = lock(&shared.streams);
        let mut state = self.lock();
        state.closed = true;
        Shared::unmap(&mut streams, self);
        drop(state);
        drop(streams);
        self.closed.cancel();
    }

    /// Writes the oldest pending messages as one segment, retrying until it lands. Returns
    /// false when the stream had to be dropped instead.
    async fn flush_once(self: &Arc<Self>, shared: &Shared) -> bool {
        let batch = self.next_segment(&shared.config);
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return true;
        };
        let (first, last) = (first.offset, last.offset);
        let data = segment::encode(&batch);
        let path = segment_path(&self.session_id, first);
        if !self.write_until_landed(shared, &path, data).await {
            return false;
        }
        let bytes: usize = batch.iter().map(|m| m.encoded_len()).sum();
        self.mark_persisted(&shared.config, first, last, bytes);
        true
    }

    /// The oldest pending messages that make one segment: at most `max_segment_messages`,
    /// cut once they reach [`SEGMENT_TARGET_BYTES`].
    fn next_segment(&self, config: &BusConfig) -> Vec<Arc<BusMessage>> {
        let state = self.lock();
        let start = (state.persisted_through + 1 - state.tail_front()) as usize;
        let mut bytes = 0;
        state
            .tail
            .range(start..)
            .take(config.max_segment_messages)
            .take_while(|m| {
                let fits = bytes < SEGMENT_TARGET_BYTES;
                bytes += m.encoded_len();
                fits
            })
            .cloned()
            .collect()
    }

    /// Writes a segment, retrying with backoff until it lands. Returns false when the stream
    /// had to be dropped instead: another writer holds it, or the bus is stopping and the
    /// store still fails after `persist_timeout`.
    async fn write_until_landed(
        self: &Arc<Self>,
        shared: &Shared,
        path: &Path,
        data: Bytes,
    ) -> bool {
        let mut backoff = INITIAL_BACKOFF;
        // Retry several times within a publisher's deadline, so a store that comes back is
        // noticed before waiting publishes give up.
        let max_backoff = MAX_BACKOFF
            .min(shared.config.persist_timeout / 4)
            .max(Duration::from_millis(1));
        let mut give_up_at = None;
        loop {
            match write_segment(&*shared.objects, path, data.clone()).await {
                Ok(()) => return true,
                Err(WriteError::Conflict) => {
                    tracing::error!(
                        object = %path,
                        "another writer created this segment with other content: another bus instance holds the stream; dropping it from memory"
                    );
                    self.reset(shared);
                    return false;
                }
                Err(WriteError::Store(error)) => {
                    tracing::warn!(object = %path, %error, "writing a bus segment failed; retrying");
                    self.lock().store_error = Some(format!("writing {path} failed: {error}"));
                    let stopping = shared.shutdown.is_cancelled();
                    if stopping && self.give_up(shared, &mut give_up_at) {
                        return false;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shared.shutdown.cancelled(), if !stopping => {}
                    }
                    backoff = (backoff * 2).min(max_backoff);
                }
            }
        }
    }

    /// While stopping, whether to stop retrying a failing write: once `persist_timeout` has
    /// passed since the first failure seen while stopping, the pending messages are given up
    /// and the stream is dropped.
    fn give_up(self: &Arc<Self>, shared: &Shared, give_up_at: &mut Option<Instant>) -> bool {
        let deadline =
            *give_up_at.get_or_insert_with(|| Instant::now() + shared.config.persist_timeout);
        if Instant::now() < deadline {
            return false;
        }
        let lost = self.lock().unpersisted();
        tracing::error!(
            session_id = %self.session_id,
            lost,
            "the bus is stopping and the object store still fails: accepted messages that were not persisted are lost"
        );
        self.reset(shared);
        true
    }

    /// Records that the segment `first..=last` (`bytes` encoded) landed and moves the
    /// persisted watermark.
    fn mark_persisted(&self, config: &BusConfig, first: u64, last: u64, bytes: usize) {
        {
            let mut state = self.lock();
            state.persisted_through = last;
            state.unpersisted_bytes = state.unpersisted_bytes.saturating_sub(bytes);
            state.segments.insert(
                first,
                SegmentMeta {
                    last,
                    written: SystemTime::now(),
                },
            );
            state.store_error = None;
            state.trim_tail(config.max_buffered_messages);
            state.retain(SystemTime::now());
        }
        self.persisted.send_replace(last);
    }

    /// Deletes the segments retention no longer keeps, oldest first, stopping at the first
    /// failure so the remaining segments stay consecutive.
    async fn enforce_retention(&self, shared: &Shared) {
        let doomed = {
            let mut state = self.lock();
            state.retain(SystemTime::now());
            state.doomed_segments()
        };
        for first in doomed {
            let path = segment_path(&self.session_id, first);
            match shared.objects.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                    self.lock().segments.remove(&first);
                }
                Err(error) => {
                    tracing::warn!(object = %path, %error, "deleting an expired bus segment failed; will retry");
                    break;
                }
            }
        }
    }
}

/// Reads and decodes one segment; None when it is gone.
pub(crate) async fn read_segment(
    objects: &dyn ObjectStore,
    session_id: &str,
    first: u64,
) -> Result<Option<Vec<BusMessage>>, BusError> {
    let path = segment_path(session_id, first);
    let data = match objects.get(&path).await {
        Ok(result) => result.bytes().await,
        Err(error) => Err(error),
    };
    match data {
        Ok(data) => segment::decode(data, first, &path).map(Some),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(error) => Err(BusError::from_object_store(error, path.as_ref())),
    }
}

enum WriteError {
    /// The segment exists with other content.
    Conflict,
    Store(object_store::Error),
}

impl From<object_store::Error> for WriteError {
    fn from(error: object_store::Error) -> Self {
        WriteError::Store(error)
    }
}

/// Creates a segment. An existing segment with the same bytes is success: an earlier attempt
/// landed although it reported failure.
async fn write_segment(
    objects: &dyn ObjectStore,
    path: &Path,
    data: Bytes,
) -> Result<(), WriteError> {
    match objects
        .put_opts(path, PutPayload::from(data.clone()), PutMode::Create.into())
        .await
    {
        Ok(_) => Ok(()),
        Err(object_store::Error::AlreadyExists { .. }) => {
            let existing = objects.get(path).await?.bytes().await?;
            if existing == data {
                Ok(())
            } else {
                Err(WriteError::Conflict)
            }
        }
        Err(error) => Err(WriteError::Store(error)),
    }
}

/// The segments among a stream's listed objects, by first offset and written time, oldest
/// first; `stream.json` is skipped and any other foreign object is logged and skipped.
fn listed_segments(listed: &[object_store::ObjectMeta]) -> Vec<(u64, SystemTime)> {
    let mut found: Vec<(u64, SystemTime)> = listed
        .iter()
        .filter(|meta| meta.location.filename() != Some(settings::FILE_NAME))
        .filter_map(|meta| {
            let first = meta.location.filename().and_then(parse_segment_name);
            if first.is_none() {
                tracing::warn!(object = %meta.location, "ignoring a foreign object among bus segments");
            }
            Some((first?, meta.last_modified.into()))
        })
        .collect();
    found.sort_by_key(|(first, _)| *first);
    found
}

/// Whether this many unpersisted messages make a full segment, to be written without waiting
/// for the group commit window.
fn segment_full(config: &BusConfig, pending: u64, pending_bytes: usize) -> bool {
    pending >= config.max_segment_messages as u64 || pending_bytes >= SEGMENT_TARGET_BYTES
}

/// The flusher of one stream: group-commits pending messages, applies retention, evicts the
/// stream when idle, and on shutdown writes everything pending before it stops.
async fn run_flusher(shared: Arc<Shared>, stream: Arc<Stream>) {
    let config = &shared.config;
    // Retention runs once at load, then on every flush and, with an age limit, on a timer.
    let mut next_retention = Instant::now();
    let mut last_flush: Option<Instant> = None;
    loop {
        let retention_tick = stream.retention_timer(&shared, &mut next_retention).await;
        let Some((pending, pending_bytes, idle_at)) = stream.backlog(config) else {
            return;
        };
        let stopping = shared.shutdown.is_cancelled();
        if pending == 0 {
            let stop = if stopping {
                stream.close_if_drained()
            } else {
                let retention_at = retention_tick.map(|_| next_retention);
                stream.wait_idle(&shared, idle_at, retention_at).await
            };
            if stop {
                return;
            }
            continue;
        }
        let full = segment_full(config, pending, pending_bytes);
        if !full && !stopping && !stream.wait_window(&shared, last_flush).await {
            // A full segment or a waiter arrived: look again.
            continue;
        }
        last_flush = Some(Instant::now());
        if !stream.flush_once(&shared).await {
            return;
        }
        let has_doomed = !stream.lock().doomed_segments().is_empty();
        if has_doomed {
            stream.enforce_retention(&shared).await;
        }
    }
}

impl Stream {
    /// Applies retention if `next_retention` has come, then schedules the next run; returns
    /// the timer's period, None when the retention has no age limit.
    async fn retention_timer(
        &self,
        shared: &Shared,
        next_retention: &mut Instant,
    ) -> Option<Duration> {
        // Read each time round: SetRetention may change it.
        let retention_tick = self
            .lock()
            .retention
            .max_age
            .map(|age| (age / 4).clamp(Duration::from_millis(10), Duration::from_secs(60)));
        if let Some(tick) = retention_tick {
            *next_retention = (*next_retention).min(Instant::now() + tick);
        }
        if Instant::now() >= *next_retention {
            self.enforce_retention(shared).await;
            *next_retention =
                Instant::now() + retention_tick.unwrap_or(Duration::from_secs(86_400 * 365));
        }
        retention_tick
    }

    /// The unpersisted messages and bytes, and when the stream counts as idle; None once the
    /// stream is closed.
    fn backlog(&self, config: &BusConfig) -> Option<(u64, usize, Instant)> {
        let state = self.lock();
        if state.closed {
            return None;
        }
        Some((
            state.unpersisted(),
            state.unpersisted_bytes,
            state.last_activity + config.stream_idle_timeout,
        ))
    }

    /// With nothing pending, waits for a publish, shutdown, idleness (then tries to evict) or
    /// the retention timer at `retention_at`. Returns true when the stream was evicted.
    async fn wait_idle(
        self: &Arc<Self>,
        shared: &Shared,
        idle_at: Instant,
        retention_at: Option<Instant>,
    ) -> bool {
        let next_retention = retention_at.unwrap_or(idle_at);
        tokio::select! {
            _ = self.wake.notified() => {}
            _ = shared.shutdown.cancelled() => {}
            _ = sleep_until(idle_at.into()) => {
                if self.try_evict(shared) {
                    return true;
                }
            }
            _ = sleep_until(next_retention.into()), if retention_at.is_some() => {}
        }
        false
    }

    /// Waits out the group-commit window that started at `last_flush`. Returns false when a
    /// full segment or a waiter arrived first.
    async fn wait_window(&self, shared: &Shared, last_flush: Option<Instant>) -> bool {
        let config = &shared.config;
        // Someone waiting for persistence (a persisted publish, or a publisher held back by
        // the backlog) gets the short window; accepted-only traffic the long one.
        let window = if self.persisted.receiver_count() > 0 {
            config.flush_interval
        } else {
            config.accepted_flush_interval.max(config.flush_interval)
        };
        if let Some(window_end) = last_flush.map(|at| at + window) {
            if Instant::now() < window_end {
                tokio::select! {
                    _ = sleep_until(window_end.into()) => {}
                    _ = self.wake.notified() => return false,
                    _ = shared.shutdown.cancelled() => {}
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with_segments(segments: &[(u64, u64, SystemTime)], next_offset: u64) -> State {
        State {
            next_offset,
            first_retained: segments.first().map_or(next_offset, |s| s.0),
            persisted_through: next_offset - 1,
            segments: segments
                .iter()
                .map(|&(first, last, written)| (first, SegmentMeta { last, written }))
                .collect(),
            tail: VecDeque::new(),
            unpersisted_bytes: 0,
            store_error: None,
            last_activity: Instant::now(),
            closed: false,
            settings: StreamSettings::default(),
            retention: Retention::default(),
            archiving: false,
        }
    }

    #[test]
    fn count_retention_keeps_partial_segments_and_the_newest() {
        let now = SystemTime::now();
        let mut state = state_with_segments(&[(1, 10, now), (11, 20, now), (21, 30, now)], 31);
        state.apply_retention(
            &Retention {
                max_messages: 15,
                max_age: None,
            },
            now,
        );
        assert_eq!(state.first_retained, 16);
        assert_eq!(state.doomed_segments(), vec![1]);

        state.apply_retention(
            &Retention {
                max_messages: 1,
                max_age: None,
            },
            now,
        );
        assert_eq!(state.first_retained, 30);
        assert_eq!(state.doomed_segments(), vec![1, 11]);
    }

    #[test]
    fn age_retention_judges_whole_segments_and_keeps_the_newest_object() {
        let now = SystemTime::now();
        let old = now - Duration::from_secs(120);
        let mut state = state_with_segments(&[(1, 10, old), (11, 20, old), (21, 30, now)], 31);
        let retention = Retention {
            max_messages: 0,
            max_age: Some(Duration::from_secs(60)),
        };
        state.apply_retention(&retention, now);
        assert_eq!(state.first_retained, 21);
        assert_eq!(state.doomed_segments(), vec![1, 11]);

        let mut all_old = state_with_segments(&[(1, 10, old), (11, 20, old)], 21);
        all_old.apply_retention(&retention, now);
        assert_eq!(all_old.first_retained, 21, "an expired stream is empty");
        assert_eq!(
            all_old.doomed_segments(),
            vec![1],
            "the newest object stays"
        );
    }
}
