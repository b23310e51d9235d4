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

use crate::caller::Caller;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::model::{self, CheckpointRecord, SessionRecord};
use crate::paged_map::PagedMap;
use crate::sessions::{check_expected_version, Effect, Prepared, Sessions};

/// Bytes a checkpoint's description holds at most.
pub const MAX_DESCRIPTION_BYTES: usize = 4096;
/// Most checkpoints over a session's life (its checkpoint map's index grows with them).
pub const MAX_CHECKPOINTS: u32 = 100_000;

impl Sessions {
    /// Takes a checkpoint of the head (O(1): a name for the current roots), named `name` or,
    /// if empty, `ckpt-N`; a name is taken once per session.
    pub async fn create_checkpoint(
        &self,
        caller: &Caller,
        session_id: &str,
        name: &str,
        description: &str,
    ) -> Result<(Prepared, CheckpointRecord)> {
        if description.len() > MAX_DESCRIPTION_BYTES {
            return Err(Error::InvalidArgument(format!(
                "description exceeds {MAX_DESCRIPTION_BYTES} bytes"
            )));
        }
        let mut mutation = self.begin_open(caller, session_id).await?;
        if mutation.record.checkpoint_count >= MAX_CHECKPOINTS {
            return Err(Error::ResourceExhausted(format!(
                "session {} holds the most checkpoints allowed ({MAX_CHECKPOINTS}); fork a fresh \
                 session to keep checkpointing",
                mutation.record.id
            )));
        }
        let name = match name {
            "" => format!("ckpt-{}", mutation.record.checkpoint_count + 1),
            name => name.to_string(),
        };
        aether_core::names::validate_checkpoint_name(&name)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        // The name is checked against the record read here; the commit compares the record's
        // revision, so no concurrent change can take the name in between.
        let taken = self.checkpoints.get(&*self.coord, &mutation.record, &name);
        if taken.await?.is_some() {
            return Err(Error::AlreadyExists(format!(
                "checkpoint \"{name}\" already exists in session {}; choose another name",
                mutation.record.id
            )));
        }
        let checkpoint = CheckpointRecord {
            name: name.clone(),
            root: mutation.record.head_root.clone(),
            head_version: mutation.record.head_version,
            author: caller.name().to_string(),
            created_at_ms: model::now_ms(),
            description: description.to_string(),
            knowledge_root: mutation.record.knowledge_root.clone(),
        };
        mutation.record.checkpoint_count += 1;
        self.checkpoints
            .add(&mut mutation.record, checkpoint.clone())
            .await?;
        let effect = Effect::new(caller.name(), "history.checkpoint", name.clone()).event(
            Event::CheckpointCreated {
                name,
                root: checkpoint.root.clone(),
            },
        );
        Ok((Prepared::changed(mutation, effect), checkpoint))
    }

    /// Points the head at checkpoint `name`'s roots (files and knowledge) again, O(1); a
    /// restore is itself a change.
    pub async fn restore_checkpoint(
        &self,
        caller: &Caller,
        session_id: &str,
        expected_version: u64,
        name: &str,
    ) -> Result<Prepared> {
        let mut mutation = self.begin_active(caller, session_id).await?;
        check_expected_version(&mutation.record, expected_version)?;
        let checkpoint = self.load_checkpoint(&mutation.record, name).await?;
        mutation.record.head_root = checkpoint.root.clone();
        mutation.record.knowledge_root = checkpoint.knowledge_root;
        mutation.record.head_version += 1;
        let effect =
            Effect::new(caller.name(), "history.restore", name).event(Event::CheckpointRestored {
                name: name.to_string(),
                root: checkpoint.root,
            });
        Ok(Prepared::changed(mutation, effect))
    }

    /// Up to `size` checkpoints of `record`'s session in name order, after name `after`.
    pub async fn list_checkpoints(
        &self,
        record: &SessionRecord,
        after: Option<&str>,
        size: usize,
    ) -> Result<Vec<CheckpointRecord>> {
        if let Some(token) = after {
            aether_core::names::validate_checkpoint_name(token).map_err(|e| {
                Error::InvalidArgument(format!(
                    "page_token is not one this listing returned ({e}); pass the next_page_token of the previous page"
                ))
            })?;
        }
        self.checkpoints
            .list(&*self.coord, record, after, size)
            .await
    }
}

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
