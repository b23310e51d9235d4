//! Sending the mount's changes to the session in batches, and hearing about everyone else's.
//!
//! The flusher wakes every commit interval (or when asked by fsync, or when much content is
//! staged), takes every queued change and sends them as one ApplyChanges (more only past
//! the coordinator's limits), so a `cp -r` of thousands of files costs a handful of RPCs.
//! Each batch is atomic, so a `kill -9` of the mount leaves the session at a batch boundary,
//! never half a batch.
//!
//! A batch the session refuses outright (a path changed behind our back, say) is applied
//! again one change at a time, so one conflict does not lose the others; what still fails is
//! logged and the view is refreshed from the session. A batch that fails for a transient
//! reason (UNAVAILABLE, a deadline) is retried; fsync waiting on it gets EIO meanwhile.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use aether_client::proto as pb;
// The SDK's batch limits: content inline up to MAX_INLINE_BYTES (larger goes to the store as
// chunks first), batches cut at MAX_BATCH_CHANGES changes or MAX_BATCH_BYTES encoded.
use aether_client::{UploadSource, MAX_BATCH_BYTES, MAX_BATCH_CHANGES, MAX_INLINE_BYTES};
use fuser::Errno;
use prost::Message;

use super::fs::{AetherFs, Changed};
use super::state::{file_write, Op};

/// Tries to send what is queued when the mount ends, a second apart.
const STOP_ATTEMPTS: usize = 5;
/// How often the session's head version is compared with what the mount knows.
const HEAD_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Staged bytes that start a flush before the interval ends.
pub const EARLY_FLUSH_BYTES: u64 = 64 * 1024 * 1024;

/// Requests and completions of flushes, for fsync.
#[derive(Default)]
pub struct FlushState {
    requested: u64,
    completed: u64,
    /// The last flush that could not send everything, and why.
    failed: Option<(u64, Errno)>,
    /// Whether the last flush left changes unsent (the session is away or refusing).
    behind: bool,
    pub stop: bool,
}

/// The flusher's synchronisation.
#[derive(Default)]
pub struct Flusher {
    state: Mutex<FlushState>,
    wake: Condvar,
    done: Condvar,
}

impl Flusher {
    fn lock(&self) -> std::sync::MutexGuard<'_, FlushState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks for a flush without waiting.
    pub fn nudge(&self) {
        let mut state = self.lock();
        state.requested += 1;
        self.wake.notify_all();
    }

    /// Asks for a flush of everything changed so far and waits for it.
    pub fn flush_and_wait(&self) -> Result<(), Errno> {
        self.flush_and_wait_at_most(None)
    }

    /// [`Self::flush_and_wait`], giving up waiting (ETIMEDOUT; the flush goes on) after
    /// `limit` if one is given.
    pub fn flush_and_wait_at_most(&self, limit: Option<Duration>) -> Result<(), Errno> {
        let deadline = limit.map(|limit| Instant::now() + limit);
        let mut state = self.lock();
        state.requested += 1;
        let mine = state.requested;
        self.wake.notify_all();
        while state.completed < mine && !state.stop {
            state = match deadline {
                None => self.done.wait(state).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Errno::ETIMEDOUT);
                    }
                    let waited = self.done.wait_timeout(state, left);
                    waited.unwrap_or_else(|e| e.into_inner()).0
                }
            };
        }
        match state.failed {
            Some((at, errno)) if at >= mine => Err(errno),
            _ if state.completed < mine => Err(Errno::EIO),
            _ => Ok(()),
        }
    }

    /// Whether the last flush left changes unsent: waiting for another would likely wait
    /// for the session's timeouts.
    pub fn is_behind(&self) -> bool {
        self.lock().behind
    }

    pub fn stop(&self) {
        self.lock().stop = true;
        self.wake.notify_all();
        self.done.notify_all();
    }
}

/// The flusher thread: runs until [`Flusher::stop`], then sends what is left.
pub fn run(fs: Arc<AetherFs>, interval: Duration) {
    let flusher = fs.flusher.clone();
    let mut next = Instant::now() + interval;
    let mut retry = None;
    loop {
        let (target, stopping) = {
            let mut state = flusher.lock();
            loop {
                if state.stop || state.requested > state.completed {
                    break;
                }
                let now = Instant::now();
                if now >= next {
                    break;
                }
                state = flusher
                    .wake
                    .wait_timeout(state, next - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            (state.requested, state.stop)
        };
        next = Instant::now() + interval;
        let mut result = flush_once(&fs, &mut retry);
        // Unmounting: what is queued goes now; a session that is away gets a few tries.
        for _ in 0..STOP_ATTEMPTS {
            if !stopping || (result.is_ok() && retry.is_none()) {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
            result = flush_once(&fs, &mut retry);
        }
        if stopping {
            let journal = fs.state().journal.take();
            match journal {
                // Everything reached the session: the journal has nothing left to give.
                Some(journal) if result.is_ok() && retry.is_none() => journal.close(),
                Some(_) => eprintln!(
                    "aether mount: the session could not take the last changes; they are kept in the journal under the cache directory and the next `aether mount` of this session sends them"
                ),
                None if result.is_err() || retry.is_some() => eprintln!(
                    "aether mount: the session could not take the last changes; they are lost"
                ),
                None => {}
            }
        }
        let mut state = flusher.lock();
        state.behind = result.is_err() || retry.is_some();
        if let Err(errno) = result {
            state.failed = Some((target, errno));
        }
        state.completed = state.completed.max(target);
        flusher.done.notify_all();
        if stopping {
            return;
        }
    }
}

/// A batch built and (maybe) sent: kept whole, with its request id, until the session has
/// it. Sent again after a transient failure exactly as it was, so a batch whose first attempt
/// did apply (its answer was lost) is recognised by the coordinator and applied once.
pub struct Batch {
    changes: Vec<pb::Change>,
    generation: u64,
    /// Each part of the batch (cut at the coordinator's limits) is `{id}-{index}`.
    id: String,
    /// The journal segment that holds its changes, forgotten once the session has them.
    segment: Option<u64>,
}

/// What a flush could not finish; the next flush does it first, so batches keep their order.
pub enum Retry {
    /// A batch that failed for a transient reason: sent again as it was.
    Send(Batch),
    /// Queued changes whose staged content could not be read: built again, as the same batch.
    Build {
        ops: Vec<Op>,
        generation: u64,
        segment: Option<u64>,
    },
}

/// Finishes what the last flush could not, then takes the queue and sends it.
fn flush_once(fs: &AetherFs, retry: &mut Option<Retry>) -> Result<(), Errno> {
    match retry.take() {
        Some(Retry::Send(batch)) => flush_batch(fs, batch, retry)?,
        Some(Retry::Build {
            ops,
            generation,
            segment,
        }) => build_and_send(fs, ops, generation, segment, retry)?,
        None => {}
    }
    let (ops, generation, segment) = fs.state().take_ops();
    if ops.is_empty() {
        acknowledge(fs, generation, segment);
        return Ok(());
    }
    build_and_send(fs, ops, generation, segment, retry)
}

/// Builds the batch of `ops` (reading staged content now) and sends it.
fn build_and_send(
    fs: &AetherFs,
    ops: Vec<Op>,
    generation: u64,
    segment: Option<u64>,
    retry: &mut Option<Retry>,
) -> Result<(), Errno> {
    let changes = match build_changes(fs, &ops) {
        Ok(changes) => changes,
        Err(error) => {
            eprintln!("aether mount: cannot read staged content, will retry: {error}");
            *retry = Some(Retry::Build {
                ops,
                generation,
                segment,
            });
            return Err(Errno::EIO);
        }
    };
    let batch = Batch {
        id: journaled_id(fs, segment, &changes),
        changes,
        generation,
        segment,
    };
    flush_batch(fs, batch, retry)
}

/// The request id of the batch of journal segment `segment`, once the batch is in that
/// segment as built (its sent block), so a mount that recovers the segment sends the very same
/// requests; a random id without a journal.
fn journaled_id(fs: &AetherFs, segment: Option<u64>, changes: &[pb::Change]) -> String {
    let named = {
        let state = fs.state();
        let journal = state.journal.as_ref();
        segment.and_then(|s| journal.map(|j| (j.batch_id(s), j.segment_path(s))))
    };
    let Some((id, path)) = named else {
        return uuid::Uuid::new_v4().simple().to_string();
    };
    // Written outside the state lock: the taken segment is the flusher's alone.
    match super::journal::write_sent(&path, changes) {
        Ok(()) => id,
        Err(error) => {
            // Recovered without it, the segment would be sent under this id as something else.
            fs.state().stop_journal(&error);
            uuid::Uuid::new_v4().simple().to_string()
        }
    }
}

/// The session has every change up to `generation` (those of journal segment `segment`).
fn acknowledge(fs: &AetherFs, generation: u64, segment: Option<u64>) {
    let mut state = fs.state();
    state.acknowledged = state.acknowledged.max(generation);
    if let (Some(segment), Some(journal)) = (segment, state.journal.as_mut()) {
        journal.remove_through(segment);
    }
}

/// Sends one batch; keeps it in `retry` after a transient failure.
fn flush_batch(fs: &AetherFs, batch: Batch, retry: &mut Option<Retry>) -> Result<(), Errno> {
    match send(fs, &batch) {
        Ok(()) => {
            acknowledge(fs, batch.generation, batch.segment);
            Ok(())
        }
        Err((error, _)) if is_transient(&error) => {
            eprintln!("aether mount: commit failed, will send the same batch again: {error}");
            *retry = Some(Retry::Send(batch));
            Err(Errno::EIO)
        }
        Err((error, applied)) => {
            eprintln!("aether mount: the session refused a batch ({error}); applying its changes one by one");
            let mut failed = false;
            for (index, change) in batch.changes.into_iter().enumerate().skip(applied) {
                if let Err((error, described)) = apply_single(fs, &batch.id, index, change) {
                    eprintln!("aether mount: could not apply {described}: {error}");
                    failed = true;
                }
            }
            // What could be applied is; the rest is reported, not kept.
            acknowledge(fs, batch.generation, batch.segment);
            // Our view may now differ from the session: list everything again.
            fs.mark_all_stale();
            if failed {
                Err(Errno::EIO)
            } else {
                Ok(())
            }
        }
    }
}

/// Sends what killed mounts of this session left in their journals under `cache`, each
/// segment as the requests its mount sent or would have sent (so none applies twice), before
/// this mount serves anything. Returns the changes sent. A journal that cannot be read back
/// is set aside (renamed) and reported; when the session does not take the changes, the
/// journals stay for the next mount and this one does not start.
pub fn recover(fs: &AetherFs, cache: &std::path::Path, session: &str) -> Result<usize, String> {
    let orphans = super::journal::orphans(cache, session)
        .map_err(|e| format!("cannot read the journals under {}: {e}", cache.display()))?;
    let mut sent = 0;
    for orphan in orphans {
        let last = orphan.segments.len().saturating_sub(1);
        for (at, (number, path)) in orphan.segments.iter().enumerate() {
            match recover_segment(fs, path, &orphan.batch_id(*number)) {
                // A kill mid-append leaves a torn last record: expected at the very end.
                Ok((count, whole)) if whole || at == last => sent += count,
                Ok((count, _)) => {
                    // Damage before the end: what follows it cannot be trusted.
                    sent += count;
                    eprintln!(
                        "aether: the journal {} is damaged after {count} change(s); the changes after the damage are not sent",
                        path.display()
                    );
                    break;
                }
                Err(Recovery::Session(error)) => {
                    return Err(format!(
                        "the session did not take the changes a killed mount left in {} ({error}); they stay for the next mount",
                        path.display()
                    ))
                }
                Err(Recovery::Journal(error)) => {
                    let aside = orphan.set_aside();
                    eprintln!(
                        "aether: cannot read the journal {} ({error}); its changes are not sent, the journal is kept in {}",
                        path.display(),
                        aside.display()
                    );
                    break;
                }
            }
        }
        orphan.remove();
    }
    Ok(sent)
}

/// Why a journal segment could not be sent.
enum Recovery {
    /// The session refused or could not be reached: try again later.
    Session(aether_client::Error),
    /// The journal itself is unreadable.
    Journal(String),
}

/// Sends one segment as request `id`, streamed part by part: the batch as it was built when
/// the segment has a whole sent block, else the changes as they were queued. Returns the
/// changes sent and whether the segment read back whole.
fn recover_segment(
    fs: &AetherFs,
    segment: &std::path::Path,
    id: &str,
) -> Result<(usize, bool), Recovery> {
    use super::journal::{has_sent_block, Entry, SegmentReader};
    let unreadable = |e: std::io::Error| Recovery::Journal(format!("{}: {e}", segment.display()));
    let sent_block = has_sent_block(segment).map_err(unreadable)?;
    let mut reader = SegmentReader::open(segment).map_err(unreadable)?;
    let mut sender = PartSender::new(fs, id);
    while let Some(entry) = reader.next_entry().map_err(unreadable)? {
        let change = match entry {
            Entry::Sent(change) if sent_block => change,
            Entry::Change(change) if !sent_block => change,
            Entry::LargeWrite { mut write, content } if !sent_block => {
                write.chunks = fs
                    .runtime
                    .block_on(fs.session.store_chunks(UploadSource::File(content)))
                    .map_err(|e| match e {
                        aether_client::Error::Io { .. } => Recovery::Journal(e.to_string()),
                        other => Recovery::Session(other),
                    })?;
                file_write(write)
            }
            _ => continue,
        };
        sender.push(change)?;
    }
    let count = sender.finish()?;
    Ok((count, reader.whole() || sent_block))
}

/// Sends changes of one recovered batch as its parts fill, as the live flusher did: a part
/// the session refuses is applied one change at a time, as are the changes after it.
struct PartSender<'a> {
    fs: &'a AetherFs,
    parts: Parts<'a>,
    /// A part was refused: the rest goes one change at a time.
    singly: bool,
    count: usize,
}

impl<'a> PartSender<'a> {
    fn new(fs: &'a AetherFs, id: &'a str) -> Self {
        PartSender {
            fs,
            parts: Parts::new(id),
            singly: false,
            count: 0,
        }
    }

    fn push(&mut self, change: pb::Change) -> Result<(), Recovery> {
        if self.singly {
            return self.send_single(change);
        }
        match self.parts.push(change) {
            Some(part) => self.send_part(part),
            None => Ok(()),
        }
    }

    fn finish(mut self) -> Result<usize, Recovery> {
        if let Some(part) = self.parts.finish() {
            self.send_part(part)?;
        }
        Ok(self.count)
    }

    fn send_part(
        &mut self,
        (id, part, _): (String, Vec<pb::Change>, usize),
    ) -> Result<(), Recovery> {
        let count = part.len();
        match apply(self.fs, &id, part.clone()) {
            Ok(()) => {
                self.count += count;
                Ok(())
            }
            Err(error) if is_transient(&error) => Err(Recovery::Session(error)),
            Err(error) => {
                eprintln!("aether: the session refused recovered changes ({error}); applying them one by one");
                self.singly = true;
                part.into_iter()
                    .try_for_each(|change| self.send_single(change))
            }
        }
    }

    /// One change alone, under the id the live fallback gives it.
    fn send_single(&mut self, change: pb::Change) -> Result<(), Recovery> {
        match apply_single(self.fs, self.parts.id, self.count, change) {
            Err((error, _)) if is_transient(&error) => return Err(Recovery::Session(error)),
            Err((error, described)) => {
                eprintln!("aether: could not apply recovered {described}: {error}")
            }
            Ok(()) => {}
        }
        self.count += 1;
        self.fs.mark_all_stale();
        Ok(())
    }
}

/// Applies change number `index` of batch `batch_id` alone, as `{batch_id}-single-{index}`
/// (the id whoever sends it again, live or recovering, uses); on failure also says what the
/// change was.
fn apply_single(
    fs: &AetherFs,
    batch_id: &str,
    index: usize,
    change: pb::Change,
) -> Result<(), (aether_client::Error, String)> {
    let described = describe(&change);
    let id = format!("{batch_id}-single-{index}");
    apply(fs, &id, vec![change]).map_err(|error| (error, described))
}

fn is_transient(error: &aether_client::Error) -> bool {
    use tonic::Code;
    matches!(
        error.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Internal | Code::Aborted
    ) || matches!(error, aether_client::Error::Io { .. })
}

/// Sends a batch in as few ApplyChanges as the coordinator's limits allow, in order; on
/// failure also says how many changes the parts before the failing one applied.
fn send(fs: &AetherFs, batch: &Batch) -> Result<(), (aether_client::Error, usize)> {
    let mut parts = Parts::new(&batch.id);
    for change in &batch.changes {
        if let Some((id, part, before)) = parts.push(change.clone()) {
            apply(fs, &id, part).map_err(|e| (e, before))?;
        }
    }
    if let Some((id, part, before)) = parts.finish() {
        apply(fs, &id, part).map_err(|e| (e, before))?;
    }
    Ok(())
}

/// Cuts a batch into parts at the coordinator's limits, each sent as `{id}-{index}`: the same
/// cut for the same changes, live or recovered from the journal.
struct Parts<'a> {
    id: &'a str,
    part: Vec<pb::Change>,
    bytes: usize,
    index: usize,
    /// Changes in the parts handed out so far.
    before: usize,
}

impl<'a> Parts<'a> {
    fn new(id: &'a str) -> Self {
        Parts {
            id,
            part: Vec::new(),
            bytes: 0,
            index: 0,
            before: 0,
        }
    }

    /// Adds a change; the part it closed, if any: (request id, changes, changes before it).
    fn push(&mut self, change: pb::Change) -> Option<(String, Vec<pb::Change>, usize)> {
        let size = change.encoded_len() + 8;
        let full = !self.part.is_empty()
            && (self.part.len() >= MAX_BATCH_CHANGES || self.bytes + size > MAX_BATCH_BYTES);
        let closed = if full { self.take() } else { None };
        self.bytes += size;
        self.part.push(change);
        closed
    }

    /// The last part, if any.
    fn finish(&mut self) -> Option<(String, Vec<pb::Change>, usize)> {
        self.take()
    }

    fn take(&mut self) -> Option<(String, Vec<pb::Change>, usize)> {
        if self.part.is_empty() {
            return None;
        }
        let part = std::mem::take(&mut self.part);
        let taken = (format!("{}-{}", self.id, self.index), part, self.before);
        self.before += taken.1.len();
        self.index += 1;
        self.bytes = 0;
        Some(taken)
    }
}

fn apply(fs: &AetherFs, id: &str, changes: Vec<pb::Change>) -> aether_client::Result<()> {
    fs.batch_in_flight(true);
    let result = fs
        .runtime
        .block_on(fs.session.apply_changes_as(id, changes, 0));
    if let Ok(response) = &result {
        fs.note_own_version(response.head_version);
    }
    fs.batch_in_flight(false);
    result.map(|_| ())
}

/// The changes for a batch: namespace changes as queued, file contents read now. A file's
/// content goes with its first Create or Write in the batch (later ones would repeat it:
/// moves carry it along); a file still being written goes as it was at its last close, i.e.
/// a new one is created empty and its content follows once it is closed or fsynced.
fn build_changes(fs: &AetherFs, ops: &[Op]) -> aether_client::Result<Vec<pb::Change>> {
    let mut changes = Vec::with_capacity(ops.len());
    let mut sent = std::collections::HashSet::new();
    for op in ops {
        use pb::change::Op as C;
        let change = match op {
            Op::Create { ino, path } => {
                if fs.state().written.contains(ino) || !sent.insert(*ino) {
                    C::Write(create_op(fs, *ino, path))
                } else {
                    C::Write(write_op(fs, *ino, path)?)
                }
            }
            Op::Write { ino, path } => {
                if fs.state().written.contains(ino) || !sent.insert(*ino) {
                    continue;
                }
                C::Write(write_op(fs, *ino, path)?)
            }
            other => {
                changes.extend(fs.state().namespace_change(other));
                continue;
            }
        };
        changes.push(pb::Change {
            op: Some(change),
            precondition: None,
        });
    }
    let mut state = fs.state();
    for op in ops {
        if let Op::Write { ino, .. } = op {
            state.content_unsent.remove(ino);
        }
    }
    Ok(changes)
}

/// A new file, empty: its content comes in a later write, once closed or fsynced.
fn create_op(fs: &AetherFs, ino: u64, path: &str) -> pb::WriteOp {
    let state = fs.state();
    let (mode, mtime_ns) = state
        .node(ino)
        .map(|n| (n.mode, n.mtime_ns))
        .unwrap_or((0o644, 0));
    pb::WriteOp {
        path: path.to_string(),
        mode,
        mtime_ns,
        ..Default::default()
    }
}

/// A file's write: its current staged content, mode and time. A file unlinked since is
/// written empty, so the changes queued after it (its delete) still apply.
fn write_op(fs: &AetherFs, ino: u64, path: &str) -> aether_client::Result<pb::WriteOp> {
    let (staged, size, mode, mtime_ns) = {
        let state = fs.state();
        match state.node(ino) {
            Some(node) => (node.staged, node.size, node.mode, node.mtime_ns),
            None => (false, 0, 0o644, 0),
        }
    };
    let mut write = pb::WriteOp {
        path: path.to_string(),
        mode,
        mtime_ns,
        ..Default::default()
    };
    if !staged || size == 0 {
        return Ok(write);
    }
    if size <= MAX_INLINE_BYTES {
        let data = fs
            .staging
            .read_all(ino, size)
            .map_err(|e| aether_client::Error::io(format!("staged inode {ino}"), e))?;
        write.content = data.into();
    } else {
        let staging = fs
            .staging
            .file_path(ino)
            .map_err(|e| aether_client::Error::io(format!("staged inode {ino}"), e))?;
        write.chunks = fs
            .runtime
            .block_on(fs.session.store_chunks(UploadSource::File(staging)))?;
    }
    Ok(write)
}

fn describe(change: &pb::Change) -> String {
    use pb::change::Op as C;
    match &change.op {
        Some(C::Write(w)) => format!("write of \"{}\"", w.path),
        Some(C::Delete(d)) => format!("delete of \"{}\"", d.path),
        Some(C::MakeDirectory(m)) => format!("mkdir of \"{}\"", m.path),
        Some(C::Move(m)) => format!("move of \"{}\" to \"{}\"", m.from, m.to),
        Some(C::Copy(c)) => format!("copy of \"{}\"", c.from),
        Some(C::Symlink(l)) => format!("symlink \"{}\"", l.path),
        Some(C::SetAttributes(a)) => format!("attributes of \"{}\"", a.path),
        None => "an empty change".to_string(),
    }
}

/// Follows the session's events and marks what others changed, so it is listed again.
pub async fn follow_events(fs: Arc<AetherFs>) {
    let mut subscription = fs.session.subscribe(
        pb::StartPosition {
            position: Some(pb::start_position::Position::Latest(true)),
        },
        "",
    );
    let mut last_error = String::new();
    // A safety net under the events: the bus drops events it cannot keep up with, so the head
    // version is compared now and then, and an unexplained change refreshes everything.
    let mut check = tokio::time::interval(HEAD_CHECK_INTERVAL);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if let Ok(info) = fs.session.info().await {
        fs.note_known_version(info.head_version);
    }
    loop {
        let next = tokio::select! {
            next = subscription.next() => next,
            _ = check.tick() => {
                if let Ok(info) = fs.session.info().await {
                    if info.head_version > fs.known_version() && !fs.batch_is_in_flight() {
                        fs.note_known_version(info.head_version);
                        fs.mark_all_stale();
                    }
                }
                continue;
            }
        };
        let message = match next {
            Ok(Some(message)) => message,
            Ok(None) => return,
            Err(error) => {
                // Without events, poll: everything is listed again after a second, so changes
                // made elsewhere still show within about a second (at one ListTree per
                // directory in use per second). Said once per distinct error.
                let text = error.to_string();
                if text != last_error {
                    eprintln!(
                        "aether mount: session events unavailable ({text}); listing again every second instead"
                    );
                    last_error = text;
                }
                fs.mark_all_stale();
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        last_error.clear();
        let Ok(event) = pb::SessionEvent::decode(message.payload.as_ref()) else {
            continue;
        };
        use pb::session_event::Event;
        let changed = match event.event {
            Some(Event::FilesChanged(changed)) if changed.truncated => Changed::Everything,
            Some(Event::FilesChanged(changed)) => Changed::Paths(changed.paths),
            Some(Event::CheckpointRestored(_)) => Changed::Everything,
            // Checkpoints, commits, reviews: the files are as they were.
            _ => {
                fs.note_known_version(event.head_version);
                continue;
            }
        };
        fs.on_event(event.head_version, changed);
    }
}
