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
use super::state::Op;

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
        let mut state = self.lock();
        state.requested += 1;
        let mine = state.requested;
        self.wake.notify_all();
        while state.completed < mine && !state.stop {
            state = self.done.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        match state.failed {
            Some((at, errno)) if at >= mine => Err(errno),
            _ if state.completed < mine => Err(Errno::EIO),
            _ => Ok(()),
        }
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
    // The journal names the batch, so a mount that recovers the segment sends it as the same
    // request.
    let id = segment
        .and_then(|segment| fs.state().journal.as_ref().map(|j| j.batch_id(segment)))
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let batch = Batch {
        changes,
        generation,
        id,
        segment,
    };
    flush_batch(fs, batch, retry)
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
                let described = describe(&change);
                let id = format!("{}-single-{index}", batch.id);
                if let Err(error) = apply(fs, &id, vec![change]) {
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
/// segment as the request its mount sent or would have sent (so none applies twice), before
/// this mount serves anything. Returns the changes sent; on an error the journals stay for
/// the next mount.
pub fn recover(fs: &AetherFs, cache: &std::path::Path, session: &str) -> Result<usize, String> {
    let orphans = super::journal::orphans(cache, session)
        .map_err(|e| format!("cannot read the journals under {}: {e}", cache.display()))?;
    let mut sent = 0;
    for orphan in orphans {
        for (number, path) in &orphan.segments {
            let changes = recovered_changes(fs, path)?;
            if changes.is_empty() {
                continue;
            }
            sent += changes.len();
            let batch = Batch {
                changes,
                generation: 0,
                id: orphan.batch_id(*number),
                segment: None,
            };
            let mut retry = None;
            if flush_batch(fs, batch, &mut retry).is_err() && retry.is_some() {
                return Err(format!(
                    "the session did not take the changes a killed mount left in {}; they stay for the next mount",
                    path.display()
                ));
            }
        }
        orphan.remove();
    }
    Ok(sent)
}

/// The changes of one journal segment, large content uploaded to the store as chunks.
fn recovered_changes(fs: &AetherFs, segment: &std::path::Path) -> Result<Vec<pb::Change>, String> {
    use super::journal::Entry;
    let entries = super::journal::read_segment(segment)
        .map_err(|e| format!("cannot read the journal {}: {e}", segment.display()))?;
    let mut changes = Vec::with_capacity(entries.len());
    for entry in entries {
        let change = match entry {
            Entry::Change(change) => change,
            Entry::LargeWrite { mut write, content } => {
                write.chunks = fs
                    .runtime
                    .block_on(fs.session.store_chunks(UploadSource::File(content)))
                    .map_err(|e| format!("cannot upload journaled content: {e}"))?;
                pb::Change {
                    op: Some(pb::change::Op::Write(write)),
                    precondition: None,
                }
            }
        };
        changes.push(change);
    }
    Ok(changes)
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
    let mut part: Vec<pb::Change> = Vec::new();
    let (mut bytes, mut sent, mut index) = (0, 0, 0);
    for change in &batch.changes {
        let size = change.encoded_len() + 8;
        if !part.is_empty() && (part.len() >= MAX_BATCH_CHANGES || bytes + size > MAX_BATCH_BYTES) {
            let count = part.len();
            apply(
                fs,
                &format!("{}-{index}", batch.id),
                std::mem::take(&mut part),
            )
            .map_err(|e| (e, sent))?;
            sent += count;
            index += 1;
            bytes = 0;
        }
        bytes += size;
        part.push(change.clone());
    }
    if !part.is_empty() {
        apply(fs, &format!("{}-{index}", batch.id), part).map_err(|e| (e, sent))?;
    }
    Ok(())
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
