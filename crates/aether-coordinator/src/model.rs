//! The records the coordinator keeps in the coordination store, and their key layout.
//!
//! Records are small JSON documents (etcd requests are limited to 1.5 MiB); everything large or
//! immutable (trees, file content, commits) lives in the content store and is referenced here
//! by hash.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Key prefix of everything the coordinator stores.
pub const ROOT: &str = "/aether/v1";

pub fn session_key(id: &str) -> String {
    format!("{ROOT}/sessions/{id}")
}
pub fn sessions_prefix() -> String {
    format!("{ROOT}/sessions/")
}
pub fn holder_key(id: &str) -> String {
    format!("{ROOT}/holders/{id}")
}
pub fn checkpoint_key(id: &str, name: &str) -> String {
    format!("{ROOT}/checkpoints/{id}/{name}")
}
pub fn checkpoints_prefix(id: &str) -> String {
    format!("{ROOT}/checkpoints/{id}/")
}
pub fn audit_key(id: &str, sequence: u64) -> String {
    format!("{ROOT}/audit/{id}/{sequence:020}")
}
pub fn audit_prefix(id: &str) -> String {
    format!("{ROOT}/audit/{id}/")
}
pub fn approval_key(id: &str, sequence: u64) -> String {
    format!("{ROOT}/approvals/{id}/{sequence:020}")
}
pub fn approvals_prefix(id: &str) -> String {
    format!("{ROOT}/approvals/{id}/")
}
/// One generation of a session's recent request outcomes (see [`crate::requests`]).
pub fn requests_key(id: &str, generation: u64) -> String {
    format!("{ROOT}/requests/{id}/{generation:02}")
}
pub fn requests_prefix(id: &str) -> String {
    format!("{ROOT}/requests/{id}/")
}
/// Every session's request outcomes (the garbage collector reads the answers kept by hash).
pub fn all_requests_prefix() -> String {
    format!("{ROOT}/requests/")
}
/// The label index: one empty key per (label, session), so ListSessions with a "k=v" term
/// reads only the sessions carrying that label, in id order, instead of every session.
/// Written in the same transaction as the record whose labels it mirrors.
pub fn label_index_prefix(key: &str, value: &str) -> String {
    format!(
        "{ROOT}/labels/{}={}/",
        escape_label(key),
        escape_label(value)
    )
}
pub fn label_index_key(key: &str, value: &str, id: &str) -> String {
    format!("{}{id}", label_index_prefix(key, value))
}
/// Set once every session written before the index existed has been indexed: until then
/// ListSessions scans the records.
pub fn label_index_ready_key() -> String {
    format!("{ROOT}/labels-ready")
}

/// Keeps "/" and "=" (and "%") out of a label's part of an index key, so one label's prefix
/// is never another's.
fn escape_label(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for c in part.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            '=' => out.push_str("%3D"),
            c => out.push(c),
        }
    }
    out
}

/// The index keys to add for a session whose labels go from `old` to `new`: written in the
/// record's own transaction, so a session is always found under every label it has.
pub fn label_index_ops(
    id: &str,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Vec<aether_coord::Op> {
    new.iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, v)| aether_coord::Op::put(label_index_key(k, v, id), Vec::new()))
        .collect()
}

/// The index keys to remove once such a change committed. Removed after the transaction
/// (which then holds at most one put per label: 64 labels replaced stay within etcd's 128
/// operations per transaction); a key left by a failed removal only costs a read, since
/// ListSessions checks every candidate's labels in its record.
pub fn label_index_removals(
    id: &str,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Vec<aether_coord::Op> {
    old.iter()
        .filter(|(k, v)| new.get(*k) != Some(*v))
        .map(|(k, v)| aether_coord::Op::delete(label_index_key(k, v, id)))
        .collect()
}

pub fn node_key(node_id: &str) -> String {
    format!("{ROOT}/nodes/coordinator/{node_id}")
}

/// Lifecycle state, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    Active,
    Finalized,
    Closed,
    Expired,
}

/// Where a session came from, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceRecord {
    Empty,
    Session {
        session_id: String,
    },
    Checkpoint {
        session_id: String,
        name: String,
    },
    Commit {
        session_id: String,
        commit_id: String,
    },
    Archive {
        blob_hash: String,
    },
}

/// A role binding, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub subject: String,
    pub role: i32,
}

/// A session's policy, as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub bindings: Vec<Binding>,
    pub required_commit_approvals: u32,
    pub required_export_approvals: u32,
}

/// One session: its identity, state and the roots of its versioned content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
    pub owner: String,
    pub policy: PolicyRecord,
    pub state: State,
    pub source: SourceRecord,
    /// Root tree of the state the session was created from.
    pub base_root: String,
    /// Root tree of the head.
    pub head_root: String,
    pub head_version: u64,
    /// Latest commit id, if any (commit history is a parent chain in the content store).
    pub head_commit: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Idle TTL in milliseconds; 0 = never expires.
    pub ttl_ms: u64,
    pub checkpoint_count: u32,
    pub commit_count: u32,
    /// Sequence number of the last audit event.
    pub audit_sequence: u64,
    /// Audit events from `audit_store_from` on: root of a [`crate::paged_map`] in the content
    /// store (see [`crate::audit`]); "" when there are none there.
    #[serde(default)]
    pub audit_root: String,
    /// The first audit sequence kept in `audit_root`; 0 while every event is in etcd (a
    /// session written before the trail moved, until its next change).
    #[serde(default)]
    pub audit_store_from: u64,
    /// Audit events from `audit_log_from` to `audit_log_through`: root of a
    /// [`crate::append_log`] in the content store ("" when empty). The events after
    /// `audit_log_through` (at most [`crate::audit::TAIL_EVENTS`]) are etcd keys, written in
    /// the transaction of the change they describe (see [`crate::audit`]).
    #[serde(default)]
    pub audit_log: String,
    /// The first audit sequence of the log and its etcd tail; 0 for a trail written before
    /// them (until its next change).
    #[serde(default)]
    pub audit_log_from: u64,
    /// The last audit sequence in `audit_log` (0 when it is empty).
    #[serde(default)]
    pub audit_log_through: u64,
    /// Approval requests by sequence: root of a [`crate::paged_map`] in the content store (""
    /// when there are none, and for requests made before they moved, which are etcd keys).
    #[serde(default)]
    pub approvals_root: String,
    /// Checkpoints by name: root of a [`crate::paged_map`] in the content store ("" when there
    /// are none, and for checkpoints taken before they moved, which are etcd keys).
    #[serde(default)]
    pub checkpoints_root: String,
    /// Knowledge entries at head: root of a [`crate::paged_map`] in the content store ("" when
    /// there are none). Versioned with the files: checkpoints keep it, restore and fork copy it.
    #[serde(default)]
    pub knowledge_root: String,
    /// Annotations: root of a [`crate::paged_map`] in the content store ("" when there are
    /// none). Not versioned with the files (a restore keeps the review notes); fork copies it.
    #[serde(default)]
    pub annotations_root: String,
    /// Sequence number of the last annotation (ids are `ann-N`).
    #[serde(default)]
    pub annotation_sequence: u64,
    /// Sequence number of the last approval request (ids are `apr-N`).
    #[serde(default)]
    pub approval_sequence: u64,
    /// How many changes named by a client request id were recorded (the next one's sequence in
    /// [`crate::requests`]); changed only with the request outcomes, in the same transaction.
    #[serde(default)]
    pub request_count: u64,
    /// The recorded request that closed the session, the one a closed session keeps (its
    /// requests keys are deleted when it closes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closing_request: Option<crate::requests::RequestRecord>,
}

impl SessionRecord {
    pub fn expires_at_ms(&self) -> Option<i64> {
        (self.ttl_ms > 0).then(|| self.updated_at_ms + self.ttl_ms as i64)
    }
}

/// A named pointer to a root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    pub name: String,
    pub root: String,
    pub head_version: u64,
    pub author: String,
    pub created_at_ms: i64,
    pub description: String,
    /// The knowledge entries at the checkpoint ("" for none, and for checkpoints taken before
    /// knowledge existed, which is what they held).
    #[serde(default)]
    pub knowledge_root: String,
}

/// What an approval gates, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApprovalActionRecord {
    Commit,
    Export,
}

/// Where an approval request stands, as stored. `Stale` is never stored: it is computed on
/// read by comparing the request's head with the session's (see [`ApprovalRecord::effective`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApprovalStateRecord {
    Pending,
    Approved,
    Rejected,
    Stale,
    Used,
}

/// One reviewer's decision, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub reviewer: String,
    pub approve: bool,
    pub comment: String,
    pub time_ms: i64,
}

/// A request for approval of one exact head (version and root), as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    pub sequence: u64,
    pub action: ApprovalActionRecord,
    pub requester: String,
    pub reviewers: Vec<String>,
    pub state: ApprovalStateRecord,
    pub head_version: u64,
    pub head_root: String,
    pub decisions: Vec<DecisionRecord>,
    pub comment: String,
    pub created_at_ms: i64,
    /// What consumed it ("commit:ID" or "export"), once `Used`.
    #[serde(default)]
    pub used_by: String,
}

impl ApprovalRecord {
    pub fn id(&self) -> String {
        format!("apr-{}", self.sequence)
    }

    /// The state as of `record`'s head: a pending or approved request whose head is no longer
    /// the session's is stale.
    pub fn effective(&self, record: &SessionRecord) -> ApprovalStateRecord {
        match self.state {
            ApprovalStateRecord::Pending | ApprovalStateRecord::Approved
                if self.head_version != record.head_version
                    || self.head_root != record.head_root =>
            {
                ApprovalStateRecord::Stale
            }
            state => state,
        }
    }

    /// The distinct reviewers who approved it.
    pub fn approvers(&self) -> impl Iterator<Item = &str> {
        self.decisions
            .iter()
            .filter(|d| d.approve)
            .map(|d| d.reviewer.as_str())
    }
}

/// One audit event, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub sequence: u64,
    pub principal: String,
    pub action: String,
    pub target: String,
    pub time_ms: i64,
    pub outcome: String,
    pub details: BTreeMap<String, String>,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_written_before_review_and_knowledge_still_load() {
        let session = r#"{"id":"s1","labels":{},"metadata":{},"owner":"a",
            "policy":{"bindings":[],"required_commit_approvals":0,"required_export_approvals":0},
            "state":"Active","source":"Empty","base_root":"r","head_root":"r","head_version":3,
            "head_commit":null,"created_at_ms":1,"updated_at_ms":2,"ttl_ms":0,
            "checkpoint_count":1,"commit_count":0,"audit_sequence":4}"#;
        let record: SessionRecord = serde_json::from_str(session).unwrap();
        assert_eq!(record.knowledge_root, "");
        assert_eq!(record.annotations_root, "");
        assert_eq!(
            (record.annotation_sequence, record.approval_sequence),
            (0, 0)
        );
        let checkpoint = r#"{"name":"c","root":"r","head_version":3,"author":"a",
            "created_at_ms":1,"description":""}"#;
        let checkpoint: CheckpointRecord = serde_json::from_str(checkpoint).unwrap();
        assert_eq!(
            checkpoint.knowledge_root, "",
            "restoring it empties the knowledge"
        );
    }

    #[test]
    fn an_approval_is_stale_once_the_head_moves() {
        let session = r#"{"id":"s1","labels":{},"metadata":{},"owner":"a",
            "policy":{"bindings":[],"required_commit_approvals":0,"required_export_approvals":0},
            "state":"Active","source":"Empty","base_root":"r","head_root":"r1","head_version":3,
            "head_commit":null,"created_at_ms":1,"updated_at_ms":2,"ttl_ms":0,
            "checkpoint_count":1,"commit_count":0,"audit_sequence":4}"#;
        let mut record: SessionRecord = serde_json::from_str(session).unwrap();
        let mut approval = ApprovalRecord {
            sequence: 1,
            action: ApprovalActionRecord::Commit,
            requester: "agent".into(),
            reviewers: vec![],
            state: ApprovalStateRecord::Approved,
            head_version: 3,
            head_root: "r1".into(),
            decisions: vec![],
            comment: String::new(),
            created_at_ms: 1,
            used_by: String::new(),
        };
        assert_eq!(approval.effective(&record), ApprovalStateRecord::Approved);
        record.head_version = 4;
        assert_eq!(approval.effective(&record), ApprovalStateRecord::Stale);
        record.head_version = 3;
        record.head_root = "r2".into();
        assert_eq!(approval.effective(&record), ApprovalStateRecord::Stale);
        approval.state = ApprovalStateRecord::Used;
        assert_eq!(
            approval.effective(&record),
            ApprovalStateRecord::Used,
            "final states stay"
        );
    }

    #[test]
    fn label_index_keys_keep_labels_apart_and_ops_follow_changes() {
        assert_ne!(
            label_index_prefix("a", "b=c"),
            label_index_prefix("a=b", "c")
        );
        assert!(!label_index_key("a", "b/c", "s1").contains("b/c"));
        let old: BTreeMap<String, String> =
            [("team".into(), "a".into()), ("env".into(), "dev".into())].into();
        let new: BTreeMap<String, String> = [
            ("team".into(), "a".into()),
            ("env".into(), "prod".into()),
            ("x".into(), "1".into()),
        ]
        .into();
        let ops = label_index_ops("s1", &old, &new);
        let expected = [
            aether_coord::Op::put(label_index_key("env", "prod", "s1"), Vec::new()),
            aether_coord::Op::put(label_index_key("x", "1", "s1"), Vec::new()),
        ];
        assert_eq!(format!("{ops:?}"), format!("{expected:?}"));
        let removals = label_index_removals("s1", &old, &new);
        let expected = [aether_coord::Op::delete(label_index_key(
            "env", "dev", "s1",
        ))];
        assert_eq!(format!("{removals:?}"), format!("{expected:?}"));
        assert!(label_index_ops("s1", &new, &new).is_empty());
        assert!(label_index_removals("s1", &new, &new).is_empty());
    }
}
