//! A session's audit trail in the content store (issue 15: etcd holds O(1) per session).
//!
//! Events are a [`PagedMap`] keyed by the zero-padded sequence, whose root the session record
//! holds (`audit_root`): appending one stores a page and the index first, then the record that
//! names them is written in the mutation's own fenced transaction, so an acknowledged change's
//! event is never lost and a fenced-out holder's never appears. The record lives on after
//! close, so the trail does too. Sessions written before the move keep their earlier events in
//! etcd (`model::audit_key`); `audit_store_from` says where the store takes over.

use std::ops::Bound;
use std::sync::Arc;

use aether_coord::Coordination;
use aether_core::Hash;
use aether_store::Blobs;

use crate::error::{Error, Result};
use crate::model::{self, AuditRecord, SessionRecord};
use crate::paged_map::PagedMap;

/// Audit trails in the content store.
pub struct AuditLog {
    map: PagedMap<AuditRecord>,
}

fn key(sequence: u64) -> String {
    format!("{sequence:020}")
}

impl AuditLog {
    pub fn new(blobs: Arc<dyn Blobs>) -> Self {
        Self {
            map: PagedMap::new(blobs, "aetherfs.audit.v1"),
        }
    }

    /// Stores `event` as the next of `record`'s trail and points the record at the new root;
    /// nothing references it until the caller's transaction writes the record.
    pub async fn append(&self, record: &mut SessionRecord, event: AuditRecord) -> Result<()> {
        if record.audit_store_from == 0 {
            record.audit_store_from = event.sequence;
        }
        let (root, _) = self
            .map
            .insert(&record.audit_root, key(event.sequence), event)
            .await?;
        record.audit_root = root;
        Ok(())
    }

    /// At most `limit` events after sequence `after`, oldest first: those kept in etcd
    /// (written before the trail moved), then those in the store.
    pub async fn page(
        &self,
        coord: &dyn Coordination,
        record: &SessionRecord,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>> {
        let mut events = Vec::new();
        let mut etcd_exhausted = true;
        let in_etcd_until = match record.audit_store_from {
            0 => u64::MAX,
            from => from,
        };
        if after.map_or(0, |a| a + 1) < in_etcd_until {
            let prefix = model::audit_prefix(&record.id);
            let start = after.map(|a| model::audit_key(&record.id, a));
            let batch = coord
                .range(&prefix, start.as_deref(), limit)
                .await
                .map_err(Error::from)?;
            // The store part follows only once etcd's part is read to its end (an unreadable
            // event there is skipped, not taken for the end).
            etcd_exhausted = batch.len() < limit;
            events.extend(
                batch
                    .iter()
                    .filter_map(|kv| serde_json::from_slice::<AuditRecord>(&kv.value).ok())
                    .filter(|e| e.sequence < in_etcd_until),
            );
            if events
                .last()
                .is_some_and(|e| e.sequence + 1 >= in_etcd_until)
            {
                etcd_exhausted = true;
            }
        }
        if etcd_exhausted && events.len() < limit && !record.audit_root.is_empty() {
            let from = events.last().map(|e| e.sequence).or(after);
            let start_key = from.map(key);
            let start = match &start_key {
                Some(k) => Bound::Excluded(k.as_str()),
                None => Bound::Unbounded,
            };
            self.map
                .scan(&record.audit_root, start, |_, event| {
                    if events.len() >= limit {
                        return false;
                    }
                    events.push(event.clone());
                    true
                })
                .await?;
        }
        Ok(events)
    }

    /// The last event of the trail (a closed session's names its archive).
    pub async fn last(
        &self,
        coord: &dyn Coordination,
        record: &SessionRecord,
    ) -> Result<Option<AuditRecord>> {
        if record.audit_store_from == 0 || record.audit_sequence < record.audit_store_from {
            let key = model::audit_key(&record.id, record.audit_sequence);
            return Ok(coord
                .get(&key)
                .await?
                .and_then(|kv| serde_json::from_slice(&kv.value).ok()));
        }
        self.map
            .get(&record.audit_root, &key(record.audit_sequence))
            .await
    }

    /// The store objects of a trail (for the garbage collector's mark).
    pub async fn objects(&self, root: &str) -> Result<Vec<Hash>> {
        self.map.objects(root).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aether_coord::{EmbeddedCoordination, Op};
    use aether_store::backend::BackendArgs;
    use aether_store::{BlobStore, Limits};

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
        let json = r#"{"id":"s1","labels":{},"metadata":{},"owner":"alice",
            "policy":{"bindings":[],"required_commit_approvals":0,"required_export_approvals":0},
            "state":"Active","source":"Empty","base_root":"r","head_root":"r","head_version":3,
            "head_commit":null,"created_at_ms":1,"updated_at_ms":2,"ttl_ms":0,
            "checkpoint_count":0,"commit_count":0,"audit_sequence":0}"#;
        serde_json::from_str(json).unwrap()
    }

    /// A session written before the move (events 1 to 5 in etcd) goes on in the store (6 to
    /// 700, several pages); paging reads across the boundary in order, and the last event is
    /// found on either side.
    #[tokio::test]
    async fn pages_join_the_etcd_part_and_the_store_part_of_a_trail() {
        let dir = tempfile::tempdir().unwrap();
        let coord = EmbeddedCoordination::open(&dir.path().join("coord.log")).unwrap();
        let store = BlobStore::new(
            BackendArgs::local(dir.path().to_path_buf())
                .build("objects")
                .unwrap(),
            Limits::default(),
        );
        let log = AuditLog::new(Arc::new(store));
        let mut record = record();
        let legacy: Vec<Op> = (1..=5)
            .map(|s| {
                Op::put(
                    model::audit_key("s1", s),
                    serde_json::to_vec(&event(s)).unwrap(),
                )
            })
            .collect();
        coord.txn(vec![], legacy).await.unwrap();
        record.audit_sequence = 5;
        assert_eq!(log.last(&coord, &record).await.unwrap(), Some(event(5)));
        for s in 6..=700 {
            record.audit_sequence = s;
            log.append(&mut record, event(s)).await.unwrap();
        }
        assert_eq!(record.audit_store_from, 6);
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = log.page(&coord, &record, after, 64).await.unwrap();
            assert!(page.len() <= 64);
            let Some(last) = page.last() else { break };
            after = Some(last.sequence);
            seen.extend(page.iter().map(|e| e.sequence));
        }
        assert_eq!(seen, (1..=700).collect::<Vec<_>>());
        assert_eq!(log.last(&coord, &record).await.unwrap(), Some(event(700)));

        // A new session's trail is all in the store.
        let mut fresh = record.clone();
        fresh.id = "s2".into();
        fresh.audit_root = String::new();
        fresh.audit_store_from = 0;
        fresh.audit_sequence = 1;
        log.append(&mut fresh, event(1)).await.unwrap();
        assert_eq!(fresh.audit_store_from, 1);
        let page = log.page(&coord, &fresh, None, 10).await.unwrap();
        assert_eq!(page, [event(1)]);
    }
}
