//! A session's life: created (from nothing, a session, a checkpoint, a commit or an archive),
//! forked, updated, handed to another owner, finalized and closed.
//!
//! Creations return the new record for [`Sessions::create`] (one transaction takes its hold
//! and writes it); the other changes return a [`Prepared`] change for [`Sessions::finish`].

use std::collections::BTreeMap;

use aether_core::{excerpt, validate_labels, validate_metadata};

use crate::caller::Caller;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::model::{self, ApprovalActionRecord, Binding, PolicyRecord, SessionRecord};
use crate::model::{SourceRecord, State};
use crate::sessions::{require_open, validate_session_id, Effect, Prepared, Sessions};

/// Bytes of a principal name a session can be handed to.
pub const MAX_OWNER_BYTES: usize = 256;

/// A new session, as asked for.
pub struct NewSession {
    pub source: SourceRecord,
    /// Empty: the caller.
    pub owner: String,
    pub labels: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
    pub policy: PolicyRecord,
    /// 0: never expires.
    pub ttl_ms: u64,
}

/// What a fork sets for itself; the rest comes from its parent.
pub struct ForkOptions {
    pub labels: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
    /// 0: the parent's.
    pub ttl_ms: u64,
}

/// One field an update sets.
pub enum SessionUpdate {
    Labels(BTreeMap<String, String>),
    Metadata(BTreeMap<String, String>),
    Ttl(u64),
    Policy(PolicyRecord),
}

impl SessionUpdate {
    fn field(&self) -> &'static str {
        match self {
            SessionUpdate::Labels(_) => "labels",
            SessionUpdate::Metadata(_) => "metadata",
            SessionUpdate::Ttl(_) => "ttl",
            SessionUpdate::Policy(_) => "policy",
        }
    }
}

/// Checks a session's labels.
pub fn checked_labels(labels: BTreeMap<String, String>) -> Result<BTreeMap<String, String>> {
    validate_labels(&labels).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    Ok(labels)
}

/// Checks a session's metadata.
pub fn checked_metadata(metadata: BTreeMap<String, String>) -> Result<BTreeMap<String, String>> {
    validate_metadata(&metadata).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    Ok(metadata)
}

/// Role bindings a session's policy may hold (the owner needs none).
pub const MAX_BINDINGS: usize = 64;

/// Checks a session's policy: a bounded number of bindings, each of a `user:NAME` or
/// `group:NAME` subject to a role that grants something.
pub fn checked_policy(policy: PolicyRecord) -> Result<PolicyRecord> {
    if policy.bindings.len() > MAX_BINDINGS {
        return Err(Error::InvalidArgument(format!(
            "{} role bindings given: at most {MAX_BINDINGS} are allowed (bind a group instead)",
            policy.bindings.len()
        )));
    }
    for binding in &policy.bindings {
        let name = binding
            .subject
            .strip_prefix("user:")
            .or_else(|| binding.subject.strip_prefix("group:"));
        if name.is_none_or(|n| checked_principal(n).is_err()) {
            return Err(Error::InvalidArgument(format!(
                "role binding subject \"{}\" is malformed: use \"user:NAME\" or \"group:NAME\" \
                 with a name of 1 to {MAX_OWNER_BYTES} visible characters",
                excerpt(&binding.subject, 64)
            )));
        }
        if !(1..=4).contains(&binding.role) {
            return Err(Error::InvalidArgument(format!(
                "role binding for \"{}\" has role {}: use VIEWER (1), EDITOR (2), REVIEWER (3) or \
                 OWNER (4)",
                excerpt(&binding.subject, 64),
                binding.role
            )));
        }
    }
    Ok(policy)
}

/// Checks a principal name given as an owner or in a binding.
fn checked_principal(name: &str) -> Result<&str> {
    if name.is_empty()
        || name.len() > MAX_OWNER_BYTES
        || name.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(Error::InvalidArgument(format!(
            "principal name \"{}\" is malformed: 1 to {MAX_OWNER_BYTES} bytes, no spaces or \
             control characters",
            excerpt(name, 64)
        )));
    }
    Ok(name)
}

/// A record with nothing in it yet but what every new session shares.
fn fresh_record(id: String, now: i64) -> SessionRecord {
    SessionRecord {
        id,
        labels: BTreeMap::new(),
        metadata: BTreeMap::new(),
        owner: String::new(),
        policy: PolicyRecord::default(),
        state: State::Active,
        source: SourceRecord::Empty,
        base_root: String::new(),
        head_root: String::new(),
        head_version: 1,
        head_commit: None,
        created_at_ms: now,
        updated_at_ms: now,
        ttl_ms: 0,
        checkpoint_count: 0,
        commit_count: 0,
        audit_sequence: 0,
        audit_root: String::new(),
        audit_store_from: 0,
        audit_log: String::new(),
        audit_log_from: 0,
        audit_log_through: 0,
        checkpoints_root: String::new(),
        approvals_root: String::new(),
        knowledge_root: String::new(),
        annotations_root: String::new(),
        annotation_sequence: 0,
        approval_sequence: 0,
        request_count: 0,
        closing_request: None,
    }
}

impl Sessions {
    /// The record (and audit effect) of a new session, its roots read from its source.
    pub async fn prepare_creation(
        &self,
        caller: &Caller,
        new: NewSession,
    ) -> Result<(SessionRecord, Effect)> {
        let labels = checked_labels(new.labels)?;
        let metadata = checked_metadata(new.metadata)?;
        let policy = checked_policy(new.policy)?;
        if !new.owner.is_empty() {
            checked_principal(&new.owner)?;
        }
        let id = self.new_session_id(caller).await?;
        let (root, knowledge_root) = self.source_roots(caller, &new.source).await?;
        let owner = match new.owner.as_str() {
            "" => caller.name().to_string(),
            owner => owner.to_string(),
        };
        let record = SessionRecord {
            labels,
            metadata,
            owner,
            policy,
            source: new.source,
            base_root: root.clone(),
            head_root: root,
            ttl_ms: new.ttl_ms,
            knowledge_root,
            ..fresh_record(id, model::now_ms())
        };
        let effect = Effect::new(caller.name(), "session.create", record.id.clone());
        Ok((record, effect))
    }

    /// The roots a new session starts from, checked against its source: (files root,
    /// knowledge root). Knowledge comes along from a session's head and from a checkpoint (it
    /// is versioned with their files); commits and archives hold files only.
    async fn source_roots(
        &self,
        caller: &Caller,
        source: &SourceRecord,
    ) -> Result<(String, String)> {
        Ok(match source {
            SourceRecord::Empty => (self.trees.ensure_empty().await?.to_hex(), String::new()),
            SourceRecord::Session { session_id } => {
                let (record, _) = self.load(caller, session_id).await?;
                require_open(&record)?;
                (record.head_root, record.knowledge_root)
            }
            SourceRecord::Checkpoint { session_id, name } => {
                validate_session_id(session_id)?;
                // Reading the source session's record also checks the principal may read it.
                let (record, _) = self.load(caller, session_id).await?;
                // A closed session's checkpoints are listed still, but their files went with
                // its workspace.
                require_open(&record)?;
                let checkpoint = self.load_checkpoint(&record, name).await?;
                (checkpoint.root, checkpoint.knowledge_root)
            }
            SourceRecord::Commit {
                session_id,
                commit_id,
            } => {
                let (record, _) = self.load(caller, session_id).await?;
                if !self.commit_in_history(&record, commit_id).await? {
                    return Err(Error::CommitNotInHistory {
                        session: session_id.clone(),
                        commit: commit_id.clone(),
                    });
                }
                (self.load_commit(commit_id).await?.root, String::new())
            }
            SourceRecord::Archive { blob_hash } => {
                let root = crate::archive::import_blob(self, blob_hash).await?;
                (root.to_hex(), String::new())
            }
        })
    }

    /// The record (and audit effect) of a fork of session `parent_id`, owned by the caller.
    /// O(1): the fork points at the parent's head root, knowledge and annotations (each one
    /// hash); content is shared. Approvals stay with the parent: they approved its head.
    pub async fn prepare_fork(
        &self,
        caller: &Caller,
        parent_id: &str,
        options: ForkOptions,
    ) -> Result<(SessionRecord, Effect)> {
        let id = self.new_session_id(caller).await?;
        let (parent, _) = self.load(caller, parent_id).await?;
        require_open(&parent)?;
        let record = SessionRecord {
            labels: checked_labels(options.labels)?,
            metadata: checked_metadata(options.metadata)?,
            owner: caller.name().to_string(),
            policy: parent.policy.clone(),
            source: SourceRecord::Session {
                session_id: parent.id.clone(),
            },
            base_root: parent.head_root.clone(),
            head_root: parent.head_root.clone(),
            head_commit: parent.head_commit.clone(),
            ttl_ms: match options.ttl_ms {
                0 => parent.ttl_ms,
                ttl => ttl,
            },
            knowledge_root: parent.knowledge_root.clone(),
            annotations_root: parent.annotations_root.clone(),
            annotation_sequence: parent.annotation_sequence,
            ..fresh_record(id, model::now_ms())
        };
        let effect = Effect::new(caller.name(), "session.fork", record.id.clone())
            .detail("parent", parent.id);
        Ok((record, effect))
    }

    /// Sets the fields `updates` names (at least one).
    pub async fn update(
        &self,
        caller: &Caller,
        id: &str,
        updates: Vec<SessionUpdate>,
    ) -> Result<Prepared> {
        if updates.is_empty() {
            return Err(Error::InvalidArgument(
                "update_mask is empty: name the fields to change (labels, metadata, ttl, policy)"
                    .into(),
            ));
        }
        let mut mutation = self.begin_open(caller, id).await?;
        let fields: Vec<&str> = updates.iter().map(SessionUpdate::field).collect();
        let effect =
            Effect::new(caller.name(), "session.update", id).detail("fields", fields.join(","));
        for update in updates {
            let record = &mut mutation.record;
            match update {
                SessionUpdate::Labels(labels) => record.labels = checked_labels(labels)?,
                SessionUpdate::Metadata(metadata) => record.metadata = checked_metadata(metadata)?,
                SessionUpdate::Ttl(ttl_ms) => record.ttl_ms = ttl_ms,
                SessionUpdate::Policy(policy) => record.policy = checked_policy(policy)?,
            }
        }
        Ok(Prepared::changed(mutation, effect))
    }

    /// Hands the session to `new_owner`; the previous owner keeps `previous_owner_role` (a
    /// role number of the policy) if one is given, else no role.
    pub async fn transfer(
        &self,
        caller: &Caller,
        id: &str,
        new_owner: &str,
        previous_owner_role: Option<i32>,
        comment: &str,
    ) -> Result<Prepared> {
        if comment.len() > crate::review::MAX_COMMENT_BYTES {
            return Err(Error::InvalidArgument(format!(
                "comment is {} bytes; at most {} are allowed",
                comment.len(),
                crate::review::MAX_COMMENT_BYTES
            )));
        }
        if new_owner.is_empty() {
            return Err(Error::InvalidArgument(
                "new_owner is required (a principal name)".into(),
            ));
        }
        checked_principal(new_owner)?;
        let mut mutation = self.begin_open(caller, id).await?;
        let previous = std::mem::replace(&mut mutation.record.owner, new_owner.to_string());
        let subject = format!("user:{previous}");
        let bindings = &mut mutation.record.policy.bindings;
        bindings.retain(|b| b.subject != subject);
        if let Some(role) = previous_owner_role {
            // Only the role is checked: the subject is the previous owner's name, from the
            // record, and a policy set before policies were checked must not stop a hand-over.
            if !(1..=4).contains(&role) {
                return Err(Error::InvalidArgument(format!(
                    "previous_owner_role {role} is not a role: use VIEWER (1), EDITOR (2), \
                     REVIEWER (3) or OWNER (4), or none"
                )));
            }
            bindings.push(Binding { subject, role });
        }
        let effect = Effect::new(caller.name(), "session.transfer", new_owner)
            .detail("previous_owner", previous)
            .detail("comment", comment)
            .event(Event::Transferred {
                new_owner: new_owner.to_string(),
                comment: comment.to_string(),
            });
        Ok(Prepared::changed(mutation, effect))
    }

    /// Makes the session read-only; forks of it keep working.
    pub async fn finalize(&self, caller: &Caller, id: &str) -> Result<Prepared> {
        let mut mutation = self.begin_active(caller, id).await?;
        mutation.record.state = State::Finalized;
        let effect = Effect::new(caller.name(), "session.finalize", id).event(Event::Finalized);
        Ok(Prepared::changed(mutation, effect))
    }

    /// Closes the session: its workspace goes, commits and audit stay. With `archive`, its
    /// head is first written to the store as a tar (an export: a policy that requires
    /// approvals to export requires them here too, used by this close); the archive's hash is
    /// returned.
    pub async fn close(
        &self,
        caller: &Caller,
        id: &str,
        archive: bool,
    ) -> Result<(Prepared, String)> {
        let mut mutation = self.begin_open(caller, id).await?;
        let mut archive_blob_hash = String::new();
        let mut approvals_used = Vec::new();
        if archive {
            let required = mutation.record.policy.required_export_approvals;
            if required > 0 {
                let admission = self
                    .admit(&mutation.record, ApprovalActionRecord::Export, required)
                    .await?;
                approvals_used = admission.ids();
                admission.consume(self, &mut mutation, "close").await?;
            }
            let root = Sessions::root(&mutation.record.head_root)?;
            // Streamed from the tree into the store: the archive is never held whole.
            let tar = crate::archive::tar_stream(&self.trees, &root).await?;
            let (hash, _) = self.trees.put_stream(tar).await?;
            archive_blob_hash = hash.to_hex();
        }
        mutation.record.state = State::Closed;
        let effect = Effect::new(caller.name(), "session.close", id)
            .detail("archive", archive_blob_hash.clone())
            .detail("approvals_used", approvals_used.join(","))
            .event(Event::Closed {
                archive: archive_blob_hash.clone(),
            });
        Ok((Prepared::changed(mutation, effect), archive_blob_hash))
    }
}
