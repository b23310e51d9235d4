//! The embedded backend for the single-node default: one process, state in memory, every
//! committed transaction appended to a log file and fsynced before it is acknowledged
//! (promise 1). Lease-bound keys are ephemeral, as in etcd after a restart longer than the TTL:
//! they are not logged and are gone when the process restarts.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{Compare, CoordError, Coordination, KeyValue, LeaseId, Op, Result, TxnOutcome};

/// Rewrite the log as a snapshot after this many appended transactions.
const COMPACT_AFTER: usize = 50_000;

/// Coordination for one process, optionally persisted to a file.
#[derive(Clone)]
pub struct EmbeddedCoordination {
    state: Arc<Mutex<State>>,
}

struct State {
    kv: BTreeMap<String, KeyValue>,
    revision: i64,
    leases: HashMap<LeaseId, Lease>,
    next_lease: LeaseId,
    log: Option<Log>,
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
}

struct Log {
    path: PathBuf,
    file: File,
    appended: usize,
}

/// One line of the log file.
#[derive(Serialize, Deserialize)]
enum LogRecord {
    Snapshot {
        revision: i64,
        entries: Vec<(String, Vec<u8>, i64, i64)>,
    },
    Txn {
        revision: i64,
        puts: Vec<(String, Vec<u8>)>,
        deletes: Vec<String>,
    },
}

fn storage(error: impl std::fmt::Display) -> CoordError {
    CoordError::Storage(error.to_string())
}

impl EmbeddedCoordination {
    /// A store that lives only in memory (for tests).
    pub fn in_memory() -> Self {
        Self::with_state(BTreeMap::new(), 0, None)
    }

    /// Opens (or creates) the store persisted at `path`, replaying its log.
    pub fn open(path: &Path) -> Result<Self> {
        let mut kv = BTreeMap::new();
        let mut revision = 0;
        if path.exists() {
            let reader = BufReader::new(File::open(path).map_err(storage)?);
            for (number, line) in reader.lines().enumerate() {
                let line = line.map_err(storage)?;
                let record: LogRecord = match serde_json::from_str(&line) {
                    Ok(record) => record,
                    // A torn last line is a transaction that was never acknowledged.
                    Err(_) => {
                        tracing::warn!(path = %path.display(), line = number + 1, "ignoring torn log record");
                        break;
                    }
                };
                replay(&mut kv, &mut revision, record);
            }
        }
        let log = write_snapshot(path, &kv, revision)?;
        Ok(Self::with_state(kv, revision, Some(log)))
    }

    fn with_state(kv: BTreeMap<String, KeyValue>, revision: i64, log: Option<Log>) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                kv,
                revision,
                leases: HashMap::new(),
                next_lease: 1,
                log,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-updated (updates are applied
        // after validation, without fallible steps), so a poisoned lock is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn replay(kv: &mut BTreeMap<String, KeyValue>, revision: &mut i64, record: LogRecord) {
    match record {
        LogRecord::Snapshot {
            revision: rev,
            entries,
        } => {
            kv.clear();
            for (key, value, create_revision, mod_revision) in entries {
                kv.insert(
                    key.clone(),
                    KeyValue {
                        key,
                        value,
                        create_revision,
                        mod_revision,
                        lease: 0,
                    },
                );
            }
            *revision = rev;
        }
        LogRecord::Txn {
            revision: rev,
            puts,
            deletes,
        } => {
            for key in deletes {
                kv.remove(&key);
            }
            for (key, value) in puts {
                let create_revision = kv.get(&key).map(|e| e.create_revision).unwrap_or(rev);
                kv.insert(
                    key.clone(),
                    KeyValue {
                        key,
                        value,
                        create_revision,
                        mod_revision: rev,
                        lease: 0,
                    },
                );
            }
            *revision = rev;
        }
    }
}

/// Writes the durable keys as one snapshot record, atomically replacing the log.
fn write_snapshot(path: &Path, kv: &BTreeMap<String, KeyValue>, revision: i64) -> Result<Log> {
    let entries = kv
        .values()
        .filter(|e| e.lease == 0)
        .map(|e| {
            (
                e.key.clone(),
                e.value.clone(),
                e.create_revision,
                e.mod_revision,
            )
        })
        .collect();
    let record = LogRecord::Snapshot { revision, entries };
    let tmp = path.with_extension("tmp");
    {
        let mut file = File::create(&tmp).map_err(storage)?;
        let mut line = serde_json::to_vec(&record).map_err(storage)?;
        line.push(b'\n');
        file.write_all(&line).map_err(storage)?;
        file.sync_all().map_err(storage)?;
    }
    std::fs::rename(&tmp, path).map_err(storage)?;
    if let Some(dir) = path.parent() {
        // Make the rename itself durable.
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    let file = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(storage)?;
    Ok(Log {
        path: path.to_path_buf(),
        file,
        appended: 0,
    })
}

impl State {
    /// Deletes the keys of every lease past its deadline, as etcd does on expiry.
    fn expire_leases(&mut self, now: Instant) {
        let expired: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, lease)| lease.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.drop_lease(id);
        }
    }

    fn drop_lease(&mut self, id: LeaseId) {
        self.leases.remove(&id);
        let before = self.kv.len();
        self.kv.retain(|_, e| e.lease != id);
        if self.kv.len() != before {
            self.revision += 1;
        }
    }

    /// Refuses a transaction that puts a key under a lease that does not exist.
    fn check_leases(&self, ops: &[Op]) -> Result<()> {
        for op in ops {
            if let Op::Put {
                lease: Some(lease), ..
            } = op
            {
                if !self.leases.contains_key(lease) {
                    return Err(CoordError::LeaseNotFound(*lease));
                }
            }
        }
        Ok(())
    }

    /// Appends the transaction at `revision` to the log and syncs it (lease-bound puts are
    /// logged as deletes: they do not survive a restart). Returns whether the log is due for
    /// compaction. Without a log, does nothing.
    fn log_txn(&mut self, revision: i64, ops: &[Op]) -> Result<bool> {
        let mut puts = Vec::new();
        let mut deletes = Vec::new();
        for op in ops.iter() {
            match op {
                Op::Put {
                    key,
                    value,
                    lease: None,
                } => puts.push((key.clone(), value.clone())),
                Op::Put { key, .. } | Op::Delete { key } => deletes.push(key.clone()),
            }
        }
        let Some(log) = self.log.as_mut() else {
            return Ok(false);
        };
        let record = LogRecord::Txn {
            revision,
            puts,
            deletes,
        };
        let mut line = serde_json::to_vec(&record).map_err(storage)?;
        line.push(b'\n');
        log.file.write_all(&line).map_err(storage)?;
        log.file.sync_data().map_err(storage)?;
        log.appended += 1;
        Ok(log.appended >= COMPACT_AFTER)
    }

    /// Applies logged operations to the in-memory keys at `revision`.
    fn apply(&mut self, revision: i64, ops: Vec<Op>) {
        for op in ops {
            match op {
                Op::Put { key, value, lease } => {
                    let create_revision = self
                        .kv
                        .get(&key)
                        .map(|e| e.create_revision)
                        .unwrap_or(revision);
                    self.kv.insert(
                        key.clone(),
                        KeyValue {
                            key,
                            value,
                            create_revision,
                            mod_revision: revision,
                            lease: lease.unwrap_or(0),
                        },
                    );
                }
                Op::Delete { key } => {
                    self.kv.remove(&key);
                }
            }
        }
    }

    /// Rewrites the log as a snapshot of the keys at `revision`.
    fn compact(&mut self, revision: i64) -> Result<()> {
        let path = self.log.as_ref().map(|l| l.path.clone());
        if let Some(path) = path {
            let log = write_snapshot(&path, &self.kv, revision)?;
            self.log = Some(log);
        }
        Ok(())
    }

    fn holds(&self, compare: &Compare) -> bool {
        match compare {
            Compare::Missing(key) => !self.kv.contains_key(key),
            Compare::CreateRevision(key, rev) => {
                self.kv.get(key).map(|e| e.create_revision) == Some(*rev)
            }
            Compare::ModRevision(key, rev) => {
                self.kv.get(key).map(|e| e.mod_revision) == Some(*rev)
            }
        }
    }
}

#[async_trait]
impl Coordination for EmbeddedCoordination {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let mut state = self.lock();
        state.expire_leases(Instant::now());
        Ok(state.kv.get(key).cloned())
    }

    async fn range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyValue>> {
        let mut state = self.lock();
        state.expire_leases(Instant::now());
        let iter = state.kv.range(prefix.to_string()..);
        Ok(iter
            .take_while(|(key, _)| key.starts_with(prefix))
            .filter(|(key, _)| start_after.is_none_or(|after| key.as_str() > after))
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnOutcome> {
        let mut state = self.lock();
        state.expire_leases(Instant::now());
        if !compares.iter().all(|c| state.holds(c)) {
            return Ok(TxnOutcome {
                succeeded: false,
                revision: state.revision,
            });
        }
        state.check_leases(&ops)?;
        let revision = state.revision + 1;
        // Log first: a transaction is visible only once it is durable.
        let compact = state.log_txn(revision, &ops)?;
        state.apply(revision, ops);
        state.revision = revision;
        if compact {
            // The transaction is durable in the log already: a failed rewrite leaves that log
            // in place (the snapshot replaces it atomically) and is tried again later.
            if let Err(e) = state.compact(revision) {
                tracing::warn!(error = %e, "compacting the coordination log failed; it keeps growing until a compaction succeeds");
            }
        }
        Ok(TxnOutcome {
            succeeded: true,
            revision,
        })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let mut state = self.lock();
        let id = state.next_lease;
        state.next_lease += 1;
        let ttl = ttl.max(Duration::from_secs(1));
        state.leases.insert(
            id,
            Lease {
                ttl,
                deadline: Instant::now() + ttl,
            },
        );
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let mut state = self.lock();
        let now = Instant::now();
        state.expire_leases(now);
        match state.leases.get_mut(&lease) {
            Some(entry) => {
                entry.deadline = now + entry.ttl;
                Ok(())
            }
            None => Err(CoordError::LeaseNotFound(lease)),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        let mut state = self.lock();
        state.expire_leases(Instant::now());
        if !state.leases.contains_key(&lease) {
            return Err(CoordError::LeaseNotFound(lease));
        }
        state.drop_lease(lease);
        Ok(())
    }
}
