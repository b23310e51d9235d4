//! A session's audit trail: O(1) in etcd per session, the rest in the content store.
//!
//! An event is an etcd key (`model::audit_key`) written in the fenced transaction of the
//! change it describes, so an acknowledged change's event is never lost and a fenced-out
//! holder's never appears. The keys after `audit_log_through` are the trail's *tail*; once it
//! holds [`TAIL_EVENTS`] events (or the session closes), the next change moves them into one
//! immutable segment of an [`AppendLog`] in the store, and its transaction publishes the new
//! log root in the record; the moved keys are deleted just after (a key left behind by a crash
//! is below `audit_log_through` and never read, and the next move deletes it). A change thus
//! costs one small etcd key, and one segment plus one node per log level every
//! [`TAIL_EVENTS`] changes, whatever the trail's length.
//!
//! Trails written by earlier versions read on: their first events may be etcd keys below
//! `audit_store_from` (or `audit_log_from`), then a [`PagedMap`] (`audit_root`) up to
//! `audit_log_from`.

use std::ops::Bound;
use std::sync::Arc;

use aether_coord::{Coordination, Op};
use aether_core::Hash;
use aether_store::Blobs;

use crate::append_log::{AppendLog, Numbered};
use crate::error::{Error, Result};
use crate::model::{self, AuditRecord, SessionRecord, State};
use crate::paged_map::PagedMap;
use crate::sessions::Sessions;

impl Sessions {
    /// At most `limit` audit events of `record`'s session after sequence `after`, oldest
    /// first; a closed session's trail reads on.
    pub async fn audit_page(
        &self,
        record: &SessionRecord,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>> {
        self.audit.page(&*self.coord, record, after, limit).await
    }
}

/// Events kept as etcd keys before they move to the store together.
pub const TAIL_EVENTS: u64 = 32;
/// Keys left behind by an interrupted move that one move deletes at most (etcd takes 128
/// operations per transaction).
const STALE_KEYS: usize = 64;

impl Numbered for AuditRecord {
    fn number(&self) -> u64 {
        self.sequence
    }
}

/// Audit trails.
pub struct AuditLog {
    log: AppendLog<AuditRecord>,
    /// Trails of the previous version (read only).
    map: PagedMap<AuditRecord>,
}

fn key(sequence: u64) -> String {
    format!("{sequence:020}")
}

/// What appending an event adds to the change's transaction, and what to delete after it.
pub struct Appended {
    pub ops: Vec<Op>,
    pub cleanup: Vec<Op>,
}

/// Where each part of a trail is, by sequence.
struct Parts {
    /// Before this, events are etcd keys of the first version.
    legacy_until: u64,
    /// `[store_from, paged_until)` is in the paged map of the second version.
    store_from: u64,
    paged_until: u64,
    /// `[log_from, log_through]` is in the append log; after it, the etcd tail.
    log_from: u64,
    log_through: u64,
}

impl Parts {
    fn of(record: &SessionRecord) -> Parts {
        let never = u64::MAX;
        let log_from = if record.audit_log_from == 0 {
            never
        } else {
            record.audit_log_from
        };
        let store_from = if record.audit_store_from == 0 || record.audit_root.is_empty() {
            never
        } else {
            record.audit_store_from
        };
        Parts {
            legacy_until: store_from.min(log_from),
            store_from,
            paged_until: log_from,
            log_from,
            log_through: record.audit_log_through,
        }
    }

    /// The first sequence of the etcd tail.
    fn tail_from(&self) -> u64 {
        self.log_from.max(self.log_through + 1)
    }
}

impl AuditLog {
    pub fn new(blobs: Arc<dyn Blobs>) -> Self {
        Self {
            log: AppendLog::new(blobs.clone(), "aetherfs.audit.v2"),
            map: PagedMap::new(blobs, "aetherfs.audit.v1"),
        }
    }

    /// Adds `event` (the record's next) to the trail: returns the ops for the caller's
    /// transaction (which also writes `record`, changed here) and those to run after it.
    pub async fn append(
        &self,
        coord: &dyn Coordination,
        record: &mut SessionRecord,
        event: AuditRecord,
    ) -> Result<Appended> {
        if record.audit_log_from == 0 {
            record.audit_log_from = event.sequence;
        }
        let parts = Parts::of(record);
        let tail_from = parts.tail_from();
        let waiting = event.sequence.saturating_sub(tail_from);
        let closing = matches!(record.state, State::Closed | State::Expired);
        let event_key = model::audit_key(&record.id, event.sequence);
        if waiting < TAIL_EVENTS && !closing {
            return Ok(Appended {
                ops: vec![Op::put(event_key, to_json(&event))],
                cleanup: Vec::new(),
            });
        }
        // Move the tail (and, when closing, this last event) into a store segment. Keys from
        // the log's start are read so that any left behind by an interrupted move go too.
        let prefix = model::audit_prefix(&record.id);
        let start = model::audit_key(&record.id, parts.log_from.saturating_sub(1));
        let read_from = if parts.log_from == 0 {
            None
        } else {
            Some(start.as_str())
        };
        let keys = coord
            .range(&prefix, read_from, waiting as usize + STALE_KEYS)
            .await
            .map_err(Error::from)?;
        let mut segment = Vec::new();
        let mut cleanup = Vec::new();
        for kv in &keys {
            let Ok(stored) = serde_json::from_slice::<AuditRecord>(&kv.value) else {
                continue;
            };
            if stored.sequence >= event.sequence || stored.sequence < parts.log_from {
                continue;
            }
            cleanup.push(Op::delete(kv.key.clone()));
            if stored.sequence >= tail_from {
                segment.push(stored);
            }
        }
        segment.sort_by_key(|e| e.sequence);
        segment.dedup_by_key(|e| e.sequence);
        let mut ops = Vec::new();
        let through;
        if closing {
            through = event.sequence;
            segment.push(event);
        } else {
            through = event.sequence - 1;
            ops.push(Op::put(event_key, to_json(&event)));
        }
        record.audit_log = self.log.append(&record.audit_log, segment).await?;
        record.audit_log_through = through;
        Ok(Appended { ops, cleanup })
    }

    /// At most `limit` events after sequence `after`, oldest first.
    pub async fn page(
        &self,
        coord: &dyn Coordination,
        record: &SessionRecord,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>> {
        let parts = Parts::of(record);
        let mut events: Vec<AuditRecord> = Vec::new();
        // From where the next part is read: after the last event found, or `after`.
        let from = |events: &Vec<AuditRecord>| events.last().map(|e| e.sequence).or(after);
        let room = |events: &Vec<AuditRecord>| limit.saturating_sub(events.len());
        if from(&events).map_or(0, |a| a + 1) < parts.legacy_until && room(&events) > 0 {
            let (found, exhausted) = self
                .etcd_events(
                    coord,
                    record,
                    from(&events),
                    parts.legacy_until,
                    room(&events),
                )
                .await?;
            events.extend(found);
            if !exhausted {
                return Ok(events);
            }
        }
        let next = from(&events).map_or(0, |a| a + 1);
        if next < parts.paged_until && parts.store_from != u64::MAX && room(&events) > 0 {
            let start_key = from(&events).map(key);
            let start = match &start_key {
                Some(k) => Bound::Excluded(k.as_str()),
                None => Bound::Unbounded,
            };
            let (until, want) = (parts.paged_until, room(&events));
            let mut found = Vec::new();
            self.map
                .scan(&record.audit_root, start, |_, event| {
                    if found.len() >= want || event.sequence >= until {
                        return false;
                    }
                    found.push(event.clone());
                    true
                })
                .await?;
            events.extend(found);
        }
        if parts.log_from == u64::MAX || room(&events) == 0 {
            return Ok(events);
        }
        if from(&events).map_or(0, |a| a + 1) <= parts.log_through {
            let after_here = from(&events).map(|a| a.max(parts.log_from.saturating_sub(1)));
            let found = self
                .log
                .read(&record.audit_log, after_here, room(&events))
                .await?;
            events.extend(found);
        }
        if room(&events) > 0 {
            let first = parts.tail_from() - 1;
            let start = from(&events).map_or(first, |a| a.max(first));
            let (found, _) = self
                .etcd_events(coord, record, Some(start), u64::MAX, room(&events))
                .await?;
            events.extend(found);
        }
        Ok(events)
    }

    /// Events kept as etcd keys after `after` and before `until`, and whether there are no
    /// more before `until` (an unreadable key is skipped, not taken for the end).
    async fn etcd_events(
        &self,
        coord: &dyn Coordination,
        record: &SessionRecord,
        after: Option<u64>,
        until: u64,
        limit: usize,
    ) -> Result<(Vec<AuditRecord>, bool)> {
        let prefix = model::audit_prefix(&record.id);
        let start = after.map(|a| model::audit_key(&record.id, a));
        let batch = coord
            .range(&prefix, start.as_deref(), limit)
            .await
            .map_err(Error::from)?;
        let sequence_of = |key: &str| key.rsplit('/').next().and_then(|s| s.parse::<u64>().ok());
        let exhausted = batch.len() < limit
            || batch
                .last()
                .and_then(|kv| sequence_of(&kv.key))
                .is_some_and(|s| s >= until);
        let events = batch
            .iter()
            .filter(|kv| sequence_of(&kv.key).is_some_and(|s| s < until))
            .filter_map(|kv| serde_json::from_slice::<AuditRecord>(&kv.value).ok())
            .filter(|e| e.sequence < until && after.is_none_or(|a| e.sequence > a))
            .collect();
        Ok((events, exhausted))
    }

    /// The last event of the trail (a closed session's names its archive).
    pub async fn last(
        &self,
        coord: &dyn Coordination,
        record: &SessionRecord,
    ) -> Result<Option<AuditRecord>> {
        let parts = Parts::of(record);
        let sequence = record.audit_sequence;
        if sequence >= parts.log_from && sequence <= parts.log_through {
            return self.log.last(&record.audit_log).await;
        }
        if sequence >= parts.store_from && sequence < parts.paged_until {
            return self.map.get(&record.audit_root, &key(sequence)).await;
        }
        let key = model::audit_key(&record.id, sequence);
        Ok(coord
            .get(&key)
            .await?
            .and_then(|kv| serde_json::from_slice(&kv.value).ok()))
    }

    /// The store objects of a trail (for the garbage collector's mark).
    pub async fn objects(&self, record: &SessionRecord) -> Result<Vec<Hash>> {
        let mut objects = self.map.objects(&record.audit_root).await?;
        objects.extend(self.log.objects(&record.audit_log).await?);
        Ok(objects)
    }
}

fn to_json(event: &AuditRecord) -> Vec<u8> {
    serde_json::to_vec(event).expect("audit events serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support;
    use aether_coord::EmbeddedCoordination;

    fn event(sequence: u64) -> AuditRecord {
        AuditRecord {
            sequence,
            principal: "alice".into(),
            action: "write".into(),
            target: format!("f{sequence}"),
            time_ms: sequence as i64,
            outcome: "ok".into(),
            details: Default::default(),
        }
    }

    fn record() -> SessionRecord {
        test_support::record("s1")
    }

    /// Applies an append as a commit does: its ops with the record, then the cleanup.
    async fn commit(
        log: &AuditLog,
        coord: &EmbeddedCoordination,
        record: &mut SessionRecord,
        sequence: u64,
    ) {
        record.audit_sequence = sequence;
        let appended = log.append(coord, record, event(sequence)).await.unwrap();
        let mut ops = appended.ops;
        ops.push(Op::put(model::session_key(&record.id), b"{}".to_vec()));
        coord.txn(vec![], ops).await.unwrap();
        if !appended.cleanup.is_empty() {
            coord.txn(vec![], appended.cleanup).await.unwrap();
        }
    }

    async fn audit_keys(coord: &EmbeddedCoordination, id: &str) -> usize {
        coord
            .range(&model::audit_prefix(id), None, 10_000)
            .await
            .unwrap()
            .len()
    }

    async fn read_all(
        log: &AuditLog,
        coord: &EmbeddedCoordination,
        record: &SessionRecord,
        page: usize,
    ) -> Vec<u64> {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let got = log.page(coord, record, after, page).await.unwrap();
            assert!(got.len() <= page);
            let Some(last) = got.last() else { break };
            after = Some(last.sequence);
            seen.extend(got.iter().map(|e| e.sequence));
        }
        seen
    }

    /// A trail of all three versions: events 1 to 5 as etcd keys (first version), 6 to 50 in
    /// a paged map (second), then 51 to 700 through `append`. Paging reads across every
    /// boundary in order at any page size; etcd never holds more than the old keys and one
    /// tail; closing moves the tail to the store; the last event is found wherever it is.
    #[tokio::test]
    async fn a_trail_reads_across_versions_and_keeps_etcd_to_one_tail() {
        let dir = tempfile::tempdir().unwrap();
        let coord = test_support::coordination(dir.path());
        let blobs = test_support::local_blobs(dir.path());
        let log = AuditLog::new(blobs.clone());
        let mut record = record();
        let legacy: Vec<Op> = (1..=5)
            .map(|s| Op::put(model::audit_key("s1", s), to_json(&event(s))))
            .collect();
        coord.txn(vec![], legacy).await.unwrap();
        record.audit_sequence = 5;
        assert_eq!(log.last(&coord, &record).await.unwrap(), Some(event(5)));
        let paged = PagedMap::new(blobs, "aetherfs.audit.v1");
        for s in 6..=50 {
            record.audit_root = paged
                .insert(&record.audit_root, key(s), event(s))
                .await
                .unwrap()
                .0;
        }
        record.audit_store_from = 6;
        record.audit_sequence = 50;
        assert_eq!(log.last(&coord, &record).await.unwrap(), Some(event(50)));
        for s in 51..=700 {
            commit(&log, &coord, &mut record, s).await;
            assert!(audit_keys(&coord, "s1").await <= 5 + TAIL_EVENTS as usize + 1);
            if s % 97 == 0 {
                assert_eq!(log.last(&coord, &record).await.unwrap(), Some(event(s)));
            }
        }
        assert_eq!(record.audit_log_from, 51);
        for page in [1, 7, 64, 1000] {
            assert_eq!(
                read_all(&log, &coord, &record, page).await,
                (1..=700).collect::<Vec<_>>()
            );
        }
        let from_middle = log.page(&coord, &record, Some(40), 30).await.unwrap();
        assert_eq!(
            from_middle.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            (41..=70).collect::<Vec<_>>()
        );

        // Closing moves the tail, so a closed session keeps only the old keys in etcd.
        record.state = State::Closed;
        commit(&log, &coord, &mut record, 701).await;
        assert_eq!(audit_keys(&coord, "s1").await, 5);
        assert_eq!(record.audit_log_through, 701);
        assert_eq!(
            read_all(&log, &coord, &record, 50).await,
            (1..=701).collect::<Vec<_>>()
        );
        assert_eq!(log.last(&coord, &record).await.unwrap(), Some(event(701)));

        // A new session's trail starts in etcd and moves as it grows.
        let mut fresh = self::record();
        fresh.id = "s2".into();
        for s in 1..=40 {
            commit(&log, &coord, &mut fresh, s).await;
        }
        assert_eq!(fresh.audit_log_through, 32);
        assert_eq!(audit_keys(&coord, "s2").await, 8);
        assert_eq!(
            read_all(&log, &coord, &fresh, 9).await,
            (1..=40).collect::<Vec<_>>()
        );
    }
}
