//! Naming file states: head, base, checkpoints and commits, resolved to root hashes; and
//! commit objects, which live in the content store as JSON, named by their hash.

use aether_core::{Hash, TreeEntry, WorkspacePath};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{CheckpointRecord, SessionRecord};
use crate::sessions::Sessions;

/// A state of a session's files a read can name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revision {
    /// The current files (what a request that names no revision reads).
    Head,
    /// The files the session was created from.
    Base,
    Checkpoint(String),
    /// A commit in the session's history, by id.
    Commit(String),
}

/// A commit, as stored in the content store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitObject {
    pub root: String,
    pub parents: Vec<String>,
    pub author: String,
    pub message: String,
    pub time_ms: i64,
    pub approvals: Vec<String>,
}

impl Sessions {
    pub async fn load_checkpoint(
        &self,
        record: &SessionRecord,
        name: &str,
    ) -> Result<CheckpointRecord> {
        aether_core::names::validate_checkpoint_name(name)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        self.checkpoints
            .get(&*self.coord, record, name)
            .await?
            .ok_or_else(|| Error::CheckpointNotFound {
                session: record.id.clone(),
                name: name.to_string(),
            })
    }

    pub async fn store_commit(&self, commit: &CommitObject) -> Result<Hash> {
        let bytes = serde_json::to_vec(commit).expect("commit serializes");
        Ok(self.trees.blobs().put(Bytes::from(bytes)).await?)
    }

    pub async fn load_commit(&self, id: &str) -> Result<CommitObject> {
        load_commit(&**self.trees.blobs(), id).await
    }

    /// Whether `commit_id` is in the history of `record` (commits are only readable through a
    /// session whose history holds them).
    pub async fn commit_in_history(&self, record: &SessionRecord, commit_id: &str) -> Result<bool> {
        let mut next = record.head_commit.clone();
        let mut steps = 0;
        while let Some(id) = next {
            if id == commit_id {
                return Ok(true);
            }
            steps += 1;
            if steps > 100_000 {
                break;
            }
            next = self.load_commit(&id).await?.parents.first().cloned();
        }
        Ok(false)
    }

    /// The entry at `path` in the files `revision` names.
    pub async fn entry_at(
        &self,
        record: &SessionRecord,
        revision: &Revision,
        path: &WorkspacePath,
    ) -> Result<TreeEntry> {
        let root = self.resolve(record, revision).await?;
        self.trees
            .lookup(&root, path)
            .await?
            .ok_or_else(|| Error::PathNotFound {
                path: path.to_string(),
            })
    }

    /// The root a revision names in a session.
    pub async fn resolve(&self, record: &SessionRecord, revision: &Revision) -> Result<Hash> {
        let root = match revision {
            Revision::Head => record.head_root.clone(),
            Revision::Base => record.base_root.clone(),
            Revision::Checkpoint(name) => self.load_checkpoint(record, name).await?.root,
            Revision::Commit(id) => {
                if !self.commit_in_history(record, id).await? {
                    return Err(Error::CommitNotInHistory {
                        session: record.id.clone(),
                        commit: id.clone(),
                    });
                }
                self.load_commit(id).await?.root
            }
        };
        Sessions::root(&root)
    }
}

/// Reads commit object `id` from the content store.
pub(crate) async fn load_commit(blobs: &dyn aether_store::Blobs, id: &str) -> Result<CommitObject> {
    let hash = Hash::from_hex(id).map_err(|e| Error::InvalidArgument(format!("commit id: {e}")))?;
    let bytes = match blobs.get(&hash).await {
        Ok(bytes) => bytes,
        Err(aether_store::StoreError::NotFound(_)) => {
            return Err(Error::NotFound(format!("commit {id} not found")))
        }
        Err(e) => return Err(e.into()),
    };
    serde_json::from_slice(&bytes).map_err(|_| Error::NotFound(format!("{id} is not a commit")))
}
