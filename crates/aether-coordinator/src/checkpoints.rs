//! A session's checkpoints by name, in the content store (design promise 10: etcd holds O(1)
//! per live session, however many checkpoints it took).
//!
//! They are a [`PagedMap`] keyed by name whose root the session record holds
//! (`checkpoints_root`): creating one stores a page and the index, then the change's fenced
//! transaction writes the record that names them, so a name is taken exactly once (the
//! record's revision is compared) and an acknowledged checkpoint is never lost. Checkpoints
//! taken before the move stay etcd keys (`model::checkpoint_key`) and read on, merged in name
//! order.

use std::ops::Bound;
use std::sync::Arc;

use aether_coord::Coordination;
use aether_core::Hash;
use aether_store::Blobs;

use crate::error::{Error, Result};
use crate::model::{self, CheckpointRecord, SessionRecord};
use crate::paged_map::PagedMap;

/// Checkpoints of every session.
pub struct Checkpoints {
    map: PagedMap<CheckpointRecord>,
}

impl Checkpoints {
    pub fn new(blobs: Arc<dyn Blobs>) -> Self {
        Self {
            map: PagedMap::new(blobs, "aetherfs.checkpoints.v1"),
        }
    }

    /// The checkpoint `name` of `record`'s session, if there is one.
    pub async fn get(
        &self,
        coord: &dyn Coordination,
        record: &SessionRecord,
        name: &str,
    ) -> Result<Option<CheckpointRecord>> {
        if let Some(found) = self.map.get(&record.checkpoints_root, name).await? {
            return Ok(Some(found));
        }
        let Some(kv) = coord.get(&model::checkpoint_key(&record.id, name)).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&kv.value)
            .map(Some)
            .map_err(|e| Error::Internal(format!("checkpoint record unreadable: {e}")))
    }

    /// Adds `checkpoint` (whose name the caller checked is free) and points the record at the
    /// new root; nothing references it until the caller's transaction writes the record.
    pub async fn add(
        &self,
        record: &mut SessionRecord,
        checkpoint: CheckpointRecord,
    ) -> Result<()> {
        let name = checkpoint.name.clone();
        let (root, _) = self
            .map
            .insert(&record.checkpoints_root, name, checkpoint)
            .await?;
        record.checkpoints_root = root;
        Ok(())
    }

    /// At most `limit` checkpoints named after `after`, in name order.
    pub async fn list(
        &self,
        coord: &dyn Coordination,
        record: &SessionRecord,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<CheckpointRecord>> {
        let prefix = model::checkpoints_prefix(&record.id);
        let start = after.map(|name| format!("{prefix}{name}"));
        let mut found: Vec<CheckpointRecord> = coord
            .range(&prefix, start.as_deref(), limit)
            .await
            .map_err(Error::from)?
            .iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect();
        let from = match after {
            Some(name) => Bound::Excluded(name),
            None => Bound::Unbounded,
        };
        self.map
            .scan(&record.checkpoints_root, from, |_, checkpoint| {
                found.push(checkpoint.clone());
                found.len() < 2 * limit
            })
            .await?;
        found.sort_by(|a, b| a.name.cmp(&b.name));
        found.dedup_by(|a, b| a.name == b.name);
        found.truncate(limit);
        Ok(found)
    }

    /// Every checkpoint of the session (for the garbage collector), and the map's objects.
    pub async fn all(
        &self,
        coord: &dyn Coordination,
        record: &SessionRecord,
    ) -> Result<(Vec<CheckpointRecord>, Vec<Hash>)> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.list(coord, record, after.as_deref(), 500).await?;
            let Some(last) = page.last() else {
                break;
            };
            after = Some(last.name.clone());
            all.extend(page);
        }
        Ok((all, self.map.objects(&record.checkpoints_root).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support;
    use aether_coord::Op;

    fn checkpoint(name: &str) -> CheckpointRecord {
        CheckpointRecord {
            name: name.into(),
            root: "r".into(),
            head_version: 1,
            author: "alice".into(),
            created_at_ms: 1,
            description: String::new(),
            knowledge_root: String::new(),
        }
    }

    /// Checkpoints taken before the move (etcd keys) and after it (the map) are found by
    /// name and listed together in name order, in pages.
    #[tokio::test]
    async fn old_and_new_checkpoints_list_together_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let coord = test_support::coordination(dir.path());
        let checkpoints = Checkpoints::new(test_support::local_blobs(dir.path()));
        let mut record = test_support::record("s1");
        let old: Vec<Op> = ["b", "d", "f"]
            .iter()
            .map(|n| {
                Op::put(
                    model::checkpoint_key("s1", n),
                    serde_json::to_vec(&checkpoint(n)).unwrap(),
                )
            })
            .collect();
        coord.txn(vec![], old).await.unwrap();
        for name in ["a", "c", "e", "g"] {
            checkpoints
                .add(&mut record, checkpoint(name))
                .await
                .unwrap();
        }
        for name in ["a", "b", "g"] {
            let found = checkpoints.get(&coord, &record, name).await.unwrap();
            assert_eq!(found.map(|c| c.name), Some(name.to_string()));
        }
        assert!(checkpoints
            .get(&coord, &record, "z")
            .await
            .unwrap()
            .is_none());
        let mut names = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = checkpoints
                .list(&coord, &record, after.as_deref(), 2)
                .await
                .unwrap();
            assert!(page.len() <= 2);
            let Some(last) = page.last() else { break };
            after = Some(last.name.clone());
            names.extend(page.into_iter().map(|c| c.name));
        }
        assert_eq!(names, ["a", "b", "c", "d", "e", "f", "g"]);
        let (all, objects) = checkpoints.all(&coord, &record).await.unwrap();
        assert_eq!(all.len(), 7);
        assert!(!objects.is_empty());
    }
}
