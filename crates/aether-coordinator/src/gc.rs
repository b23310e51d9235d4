//! The mark half of garbage collection (design promise 7): every blob that any live state can
//! reach. What is reachable:
//!
//! - of open (active or finalized) sessions: the head and base trees, knowledge and annotation
//!   maps, and every checkpoint's tree and knowledge;
//! - of every session, closed ones included: the commit history (commit objects and their
//!   trees) and archives exported at close;
//! - of closed and expired sessions: the final record their tombstone names
//!   ([`crate::tombstones`]);
//! - trees reach their subtrees and file blobs (a multi-chunk file is named by its manifest;
//!   the store's sweep keeps a live manifest's chunks);
//! - the recorded answers of recent requests kept in the content store ([`crate::requests`]),
//!   and of the request that closed a session.
//!
//! Uploads in flight and changes not yet committed are protected by the sweep's grace period,
//! not by this walk. Shared subtrees are walked once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aether_coord::Coordination;
use aether_core::{EntryKind, Hash};
use aether_store::Blobs;
use futures::future::BoxFuture;
use futures::FutureExt;

use crate::error::{Error, Result};
use crate::model::{self, SessionRecord, State};
use crate::requests::{Generation, StoredReply};
use crate::revisions::load_commit;
use crate::sessions::Sessions;
use crate::tombstones::{self, Stored};
use crate::trees::Trees;

/// What a collection reads: session records from coordination, trees and commits from the
/// content store. A standalone collector (`aetherd gc`) needs nothing else: it holds no
/// session, registers no node and serves nothing.
#[derive(Clone)]
pub struct Collector {
    coord: Arc<dyn Coordination>,
    trees: Trees,
}

impl Collector {
    pub fn new(coord: Arc<dyn Coordination>, blobs: Arc<dyn Blobs>) -> Self {
        Self {
            coord,
            trees: Trees::new(blobs),
        }
    }

    /// A collector reading through a coordinator's own state (and caches).
    pub fn of(sessions: &Sessions) -> Self {
        Self {
            coord: sessions.coord.clone(),
            trees: sessions.trees.clone(),
        }
    }
}

/// The blob names reachable from every session, as of now.
pub async fn mark(sessions: &Sessions) -> Result<HashSet<Hash>> {
    mark_with(&Collector::of(sessions)).await
}

/// [`mark`], reading through `sessions`.
pub async fn mark_with(sessions: &Collector) -> Result<HashSet<Hash>> {
    let knowledge = crate::knowledge::Knowledge::new(sessions.trees.blobs().clone());
    let annotations = crate::review::Annotations::new(sessions.trees.blobs().clone());
    let audit = crate::audit::AuditLog::new(sessions.trees.blobs().clone());
    let checkpoints = crate::checkpoints::Checkpoints::new(sessions.trees.blobs().clone());
    let approvals = crate::review::Approvals::new(sessions.trees.blobs().clone());
    let mut live = HashSet::new();
    let mut after: Option<String> = None;
    let prefix = model::sessions_prefix();
    loop {
        let batch = sessions.coord.range(&prefix, after.as_deref(), 500).await?;
        let Some(last) = batch.last() else { break };
        after = Some(last.key.clone());
        for kv in batch {
            let stored = Stored::decode(&kv.value).map_err(|e| {
                // Never sweep on a partial view: an unreadable record stops the collection.
                Error::Internal(format!(
                    "session record {} unreadable, GC stopped: {e}",
                    kv.key
                ))
            })?;
            if let Stored::Tombstone(tombstone) = &stored {
                live.insert(tombstones::archived_hash(tombstone)?);
            }
            let record = stored.resolve(sessions.trees.blobs().as_ref()).await?;
            if let Some(StoredReply::Blob(hash)) = record.closing_request.as_ref().map(|r| &r.reply)
            {
                live.insert(parse(hash)?);
            }
            let mut commit = record.head_commit.clone();
            while let Some(id) = commit {
                let hash = parse(&id)?;
                if !live.insert(hash) {
                    break; // the rest of this history is already marked
                }
                let object = load_commit(&**sessions.trees.blobs(), &id).await?;
                walk(sessions, parse(&object.root)?, &mut live).await?;
                commit = object.parents.first().cloned();
            }
            for archive in archives(sessions, &audit, &record).await? {
                live.insert(archive);
            }
            // Every session's trail, approvals, annotations and list of checkpoints, closed
            // ones too: they are its metadata and outlive the workspace (listings keep
            // working after close).
            live.extend(audit.objects(&record).await?);
            live.extend(approvals.map.objects(&record.approvals_root).await?);
            live.extend(annotations.map.objects(&record.annotations_root).await?);
            let (taken, objects) = checkpoints.all(&*sessions.coord, &record).await?;
            live.extend(objects);
            // The workspace: files, knowledge and what the checkpoints point at.
            if !matches!(record.state, State::Active | State::Finalized) {
                continue;
            }
            walk(sessions, parse(&record.head_root)?, &mut live).await?;
            walk(sessions, parse(&record.base_root)?, &mut live).await?;
            live.extend(knowledge.objects(&record.knowledge_root).await?);
            for checkpoint in taken {
                walk(sessions, parse(&checkpoint.root)?, &mut live).await?;
                live.extend(knowledge.objects(&checkpoint.knowledge_root).await?);
            }
        }
    }
    live.extend(recorded_answers(sessions).await?);
    Ok(live)
}

/// Answers of recorded requests too large to keep inline, of every session.
async fn recorded_answers(sessions: &Collector) -> Result<Vec<Hash>> {
    let prefix = model::all_requests_prefix();
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let batch = sessions.coord.range(&prefix, after.as_deref(), 100).await?;
        let Some(last) = batch.last() else {
            return Ok(out);
        };
        after = Some(last.key.clone());
        for kv in batch {
            let generation: Generation = serde_json::from_slice(&kv.value)
                .map_err(|e| Error::Internal(format!("{} unreadable, GC stopped: {e}", kv.key)))?;
            for entry in generation.entries {
                if let StoredReply::Blob(hash) = entry.reply {
                    out.push(parse(&hash)?);
                }
            }
        }
    }
}

fn parse(value: &str) -> Result<Hash> {
    Hash::from_hex(value)
        .map_err(|e| Error::Internal(format!("stored hash unreadable, GC stopped: {e}")))
}

fn walk<'a>(
    sessions: &'a Collector,
    tree: Hash,
    live: &'a mut HashSet<Hash>,
) -> BoxFuture<'a, Result<()>> {
    async move {
        if !live.insert(tree) {
            return Ok(());
        }
        let loaded = sessions.trees.load(&tree).await?;
        for entry in loaded.entries() {
            match entry.kind {
                // A symlink's target is content like a file's.
                EntryKind::File | EntryKind::Symlink => {
                    live.insert(entry.hash);
                }
                EntryKind::Directory => walk(sessions, entry.hash, live).await?,
            }
        }
        Ok(())
    }
    .boxed()
}

/// Archives written when the session was closed (recorded in its audit trail).
async fn archives(
    sessions: &Collector,
    audit: &crate::audit::AuditLog,
    record: &SessionRecord,
) -> Result<Vec<Hash>> {
    if record.state != State::Closed {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    if let Some(event) = audit.last(&*sessions.coord, record).await? {
        if let Some(hash) = event.details.get("archive").filter(|h| !h.is_empty()) {
            found.push(parse(hash)?);
        }
    }
    Ok(found)
}

/// One collection: mark, then sweep objects older than `grace`.
///
/// Safety against a writer that reuses an old unreferenced object while the collection runs:
/// the store renews such an object's age when it is reused
/// ([`aether_store::gc::REFRESH_AFTER`]), so the sweep cannot delete it as long as the whole
/// collection plus the writer's request take less than `grace - REFRESH_AFTER`. Hence a grace
/// of at least [`MIN_GRACE`], and a collection that stops without deleting when it ran longer
/// than a quarter of the grace. A zero grace is for tests with no concurrent writers.
pub async fn collect(
    sessions: &Sessions,
    store: &aether_store::BlobStore,
    grace: Duration,
) -> Result<aether_store::gc::SweepReport> {
    collect_with(&Collector::of(sessions), store, grace).await
}

/// [`collect`], reading through `sessions`.
pub async fn collect_with(
    sessions: &Collector,
    store: &aether_store::BlobStore,
    grace: Duration,
) -> Result<aether_store::gc::SweepReport> {
    if !grace.is_zero() && grace < MIN_GRACE {
        return Err(Error::InvalidArgument(format!(
            "GC grace period {grace:?} is below the minimum {MIN_GRACE:?}"
        )));
    }
    let started = Instant::now();
    let live = mark_with(sessions).await?;
    if !grace.is_zero() && started.elapsed() > grace / 4 {
        return Err(Error::Unavailable(format!(
            "marking took {:?}, more than a quarter of the grace period {grace:?}; sweep skipped",
            started.elapsed()
        )));
    }
    Ok(store.sweep(&live, grace).await?)
}

/// The shortest grace period a collection accepts (four times the store's refresh age).
pub const MIN_GRACE: Duration = Duration::from_secs(4 * aether_store::gc::REFRESH_AFTER.as_secs());
