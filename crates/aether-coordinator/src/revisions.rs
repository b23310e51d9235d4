//! Naming file states: head, base, checkpoints and commits, resolved to root hashes; and
//! commit objects, which live in the content store as JSON, named by their hash.

use aether_core::{Hash, TreeEntry, WorkspacePath};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::caller::Caller;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::model::{ApprovalActionRecord, CheckpointRecord, SessionRecord};
use crate::sessions::{check_expected_version, Effect, Prepared, Sessions};

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

/// Bytes of a commit message at most.
pub const MAX_COMMIT_MESSAGE_BYTES: usize = 64 * 1024;

impl Sessions {
    /// Commits the head: a commit object naming its root and parent, admitted and used up by
    /// the approvals the policy requires of this exact head. Returns the change, the commit's
    /// id and the commit.
    pub async fn create_commit(
        &self,
        caller: &Caller,
        session_id: &str,
        expected_version: u64,
        message: &str,
    ) -> Result<(Prepared, String, CommitObject)> {
        if message.trim().is_empty() {
            return Err(Error::InvalidArgument("a commit needs a message".into()));
        }
        if message.len() > MAX_COMMIT_MESSAGE_BYTES {
            return Err(Error::InvalidArgument(format!(
                "commit message exceeds {MAX_COMMIT_MESSAGE_BYTES} bytes"
            )));
        }
        let mut mutation = self.begin_active(caller, session_id).await?;
        check_expected_version(&mutation.record, expected_version)?;
        let required = mutation.record.policy.required_commit_approvals;
        let admission = self
            .admit(&mutation.record, ApprovalActionRecord::Commit, required)
            .await?;
        let approvals = admission.ids();
        let commit = CommitObject {
            root: mutation.record.head_root.clone(),
            parents: mutation.record.head_commit.iter().cloned().collect(),
            author: caller.name().to_string(),
            message: message.to_string(),
            time_ms: crate::model::now_ms(),
            approvals: approvals.clone(),
        };
        let id = self.store_commit(&commit).await?.to_hex();
        admission
            .consume(self, &mut mutation, &format!("commit:{id}"))
            .await?;
        mutation.record.head_commit = Some(id.clone());
        mutation.record.commit_count = mutation.record.commit_count.saturating_add(1);
        let effect = Effect::new(caller.name(), "history.commit", id.clone())
            .detail("approvals", approvals.join(","))
            .event(Event::CommitCreated {
                id: id.clone(),
                message: message.to_string(),
            });
        Ok((Prepared::changed(mutation, effect), id, commit))
    }

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
        crate::sessions::require_open(record)?;
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
