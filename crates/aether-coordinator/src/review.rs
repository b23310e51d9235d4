//! Review: annotations on paths, and approvals that gate commits and exports.
//!
//! **Annotations** live in a [`PagedMap`] in the content store (key: the zero-padded sequence
//! number, so key order is creation order), referenced by `SessionRecord::annotations_root`.
//! We keep them there rather than as one etcd record each so that `ForkSession` carries them
//! in O(1) (it copies one hash, inside the fork's single create transaction) however many
//! there are, and so that etcd keeps only small records (design §8). They are not versioned
//! with the files: a restore keeps the review notes.
//!
//! **Approvals** are a [`PagedMap`] in the content store too (key: the zero-padded sequence),
//! referenced by `SessionRecord::approvals_root` (design promise 10: etcd holds O(1) per
//! session); a request or decision stores the changed page and index, and the change's fenced
//! transaction publishes them with the record. Requests made before the move stay etcd keys
//! (`model::approval_key`) and read on; the map's copy wins once one is decided. Each
//! request is bound to the exact head (version and root) it was made at, and is stale as soon
//! as the head moves (computed on read, [`ApprovalRecord::effective`]). A commit or an export
//! needs approvals from `required` distinct principals holding the reviewer role, on approved
//! requests bound to the current head; it marks them used in its own fenced transaction, so an
//! approval admits exactly one commit or export (promise 2: all of it runs under the session's
//! lock and commits only if the record is unchanged).

use std::collections::BTreeSet;
use std::sync::Arc;

use aether_coord::Coordination;
use aether_proto as pb;
use aether_store::Blobs;

use crate::caller::Caller;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::model::{
    self, ApprovalActionRecord, ApprovalRecord, ApprovalStateRecord, DecisionRecord, SessionRecord,
};
use crate::paged_map::PagedMap;
use crate::sessions::{require_active, require_open, Effect, Mutation, Prepared, Sessions};

/// Longest annotation body, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Most annotations in one session (fork included: a fork inherits its parent's).
pub const MAX_ANNOTATIONS: u64 = 10_000;
/// Most approval requests over a session's life.
pub const MAX_APPROVALS: u64 = 10_000;
/// Longest approval or decision comment, in bytes.
pub const MAX_COMMENT_BYTES: usize = 4096;
/// Most reviewers named on one request.
pub const MAX_REVIEWERS: usize = 32;

/// One annotation, as stored.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AnnotationRecord {
    pub sequence: u64,
    pub path: String,
    /// First and last line, from 1; None for the whole path.
    pub lines: Option<(u32, u32)>,
    pub body: String,
    pub author: String,
    pub created_at_ms: i64,
    pub head_version: u64,
    pub resolved: bool,
    pub resolved_by: String,
    pub resolved_at_ms: i64,
}

impl AnnotationRecord {
    pub fn id(&self) -> String {
        format!("ann-{}", self.sequence)
    }
}

/// The key of annotation `sequence` in the map: creation order is key order.
pub fn annotation_key(sequence: u64) -> String {
    format!("{sequence:020}")
}

fn parse_id(id: &str, prefix: &str, what: &str) -> Result<u64> {
    id.strip_prefix(prefix)
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{what} id {:?} is malformed: ids look like \"{prefix}12\"",
                id.chars().take(80).collect::<String>()
            ))
        })
}

pub fn parse_annotation_id(id: &str) -> Result<u64> {
    parse_id(id, "ann-", "annotation")
}

pub fn parse_approval_id(id: &str) -> Result<u64> {
    parse_id(id, "apr-", "approval")
}

/// Annotations in the content store.
pub struct Annotations {
    pub map: PagedMap<AnnotationRecord>,
}

impl Annotations {
    pub fn new(blobs: Arc<dyn Blobs>) -> Self {
        Self {
            map: PagedMap::new(blobs, "aetherfs.annotations.v1"),
        }
    }
}

/// Approval requests in the content store (and, for older sessions, etcd keys).
pub struct Approvals {
    pub map: PagedMap<ApprovalRecord>,
}

impl Approvals {
    pub fn new(blobs: Arc<dyn Blobs>) -> Self {
        Self {
            map: PagedMap::new(blobs, "aetherfs.approvals.v1"),
        }
    }

    /// Request `sequence` of `record`'s session, if any.
    pub async fn get(
        &self,
        coord: &dyn Coordination,
        record: &SessionRecord,
        sequence: u64,
    ) -> Result<Option<ApprovalRecord>> {
        if let Some(found) = self
            .map
            .get(&record.approvals_root, &annotation_key(sequence))
            .await?
        {
            return Ok(Some(found));
        }
        let Some(kv) = coord
            .get(&model::approval_key(&record.id, sequence))
            .await?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&kv.value)
            .map(Some)
            .map_err(|e| Error::Internal(format!("approval record unreadable: {e}")))
    }

    /// Stores `approval` (new or changed) and points the record at the new root; nothing
    /// references it until the caller's transaction writes the record.
    pub async fn put(&self, record: &mut SessionRecord, approval: ApprovalRecord) -> Result<()> {
        let key = annotation_key(approval.sequence);
        let (root, _) = self
            .map
            .insert(&record.approvals_root, key, approval)
            .await?;
        record.approvals_root = root;
        Ok(())
    }

    /// Every request of the session, oldest first (at most [`MAX_APPROVALS`]).
    pub async fn all(
        &self,
        coord: &dyn Coordination,
        record: &SessionRecord,
    ) -> Result<Vec<ApprovalRecord>> {
        let mut all = std::collections::BTreeMap::new();
        let prefix = model::approvals_prefix(&record.id);
        let mut after: Option<String> = None;
        loop {
            let batch = coord.range(&prefix, after.as_deref(), 500).await?;
            let Some(last) = batch.last() else {
                break;
            };
            after = Some(last.key.clone());
            for kv in &batch {
                let approval: ApprovalRecord = serde_json::from_slice(&kv.value).map_err(|e| {
                    Error::Internal(format!("approval record {} unreadable: {e}", kv.key))
                })?;
                all.insert(approval.sequence, approval);
            }
        }
        self.map
            .scan(
                &record.approvals_root,
                std::ops::Bound::Unbounded,
                |_, approval| {
                    all.insert(approval.sequence, approval.clone());
                    true
                },
            )
            .await?;
        Ok(all.into_values().collect())
    }
}

/// Whether `principal` may review in `record`'s session: its owner, or a principal bound as
/// `user:NAME` to the reviewer or owner role. Group bindings do not count here: approvals are
/// given and counted by principal name, and a name does not tell its groups.
pub fn is_reviewer(record: &SessionRecord, principal: &str) -> bool {
    principal == record.owner
        || record.policy.bindings.iter().any(|b| {
            b.subject.strip_prefix("user:") == Some(principal)
                && (b.role == pb::Role::Reviewer as i32 || b.role == pb::Role::Owner as i32)
        })
}

/// Records `principal`'s decision on `approval`, a request of `record`'s session: the
/// approval rules, checked in this order. Only the session's reviewers decide ([`is_reviewer`]);
/// nobody approves their own request; a request naming reviewers is decided by them only; a
/// request that went stale (the head moved), was rejected or was used takes no decision; each
/// reviewer decides once. One rejection ends the request; approvals accumulate, each distinct
/// reviewer counting once.
pub fn decide(
    record: &SessionRecord,
    approval: &mut ApprovalRecord,
    principal: &str,
    approve: bool,
    comment: &str,
    now_ms: i64,
) -> Result<()> {
    let id = approval.id();
    if !is_reviewer(record, principal) {
        return Err(Error::PermissionDenied(format!(
            "{principal} does not hold the reviewer role in the policy of session {}; only its owner and principals bound as \"user:NAME\" to ROLE_REVIEWER or ROLE_OWNER decide approvals",
            record.id
        )));
    }
    if approve && principal == approval.requester {
        return Err(Error::PermissionDenied(format!(
            "{principal} requested {id} and cannot approve their own request; another reviewer must"
        )));
    }
    if !approval.reviewers.is_empty() && !approval.reviewers.iter().any(|r| r == principal) {
        return Err(Error::PermissionDenied(format!(
            "{id} asks {} to decide, not {principal}",
            approval.reviewers.join(", ")
        )));
    }
    match approval.effective(record) {
        ApprovalStateRecord::Pending | ApprovalStateRecord::Approved => {}
        ApprovalStateRecord::Stale => {
            return Err(Error::ApprovalClosed {
                id,
                why: format!(
                    "was made at head version {} and the head is now at {}: it no longer applies; request approval again",
                    approval.head_version, record.head_version
                ),
            })
        }
        ApprovalStateRecord::Rejected => {
            return Err(Error::ApprovalClosed {
                id,
                why: "was rejected; request approval again".into(),
            })
        }
        ApprovalStateRecord::Used => {
            return Err(Error::ApprovalClosed {
                id,
                why: format!("was already used by {}", approval.used_by),
            })
        }
    }
    if approval.decisions.iter().any(|d| d.reviewer == principal) {
        return Err(Error::AlreadyDecided {
            reviewer: principal.to_string(),
            id,
        });
    }
    approval.decisions.push(DecisionRecord {
        reviewer: principal.to_string(),
        approve,
        comment: comment.to_string(),
        time_ms: now_ms,
    });
    approval.state = if approve {
        ApprovalStateRecord::Approved
    } else {
        ApprovalStateRecord::Rejected
    };
    Ok(())
}

pub fn action_name(action: ApprovalActionRecord) -> &'static str {
    match action {
        ApprovalActionRecord::Commit => "commit",
        ApprovalActionRecord::Export => "export",
    }
}

/// Approved requests that admit one commit or export, to be marked used with it.
#[must_use = "an admission does nothing until consumed in the mutation it admits"]
pub struct Admission {
    approvals: Vec<ApprovalRecord>,
}

impl Admission {
    pub fn ids(&self) -> Vec<String> {
        self.approvals.iter().map(ApprovalRecord::id).collect()
    }

    /// Marks the approvals used by `used_by`, published by the mutation's transaction.
    pub async fn consume(
        self,
        sessions: &Sessions,
        mutation: &mut Mutation,
        used_by: &str,
    ) -> Result<()> {
        for mut approval in self.approvals {
            approval.state = ApprovalStateRecord::Used;
            approval.used_by = used_by.to_string();
            sessions
                .approvals
                .put(&mut mutation.record, approval)
                .await?;
        }
        Ok(())
    }
}

/// An annotation as asked for: a path, optionally lines of it (from 1), a note.
pub struct NewAnnotation {
    pub path: aether_core::WorkspacePath,
    pub lines: Option<(u32, u32)>,
    pub body: String,
}

impl Sessions {
    /// Adds an annotation at the current head (annotations are never deleted: at most
    /// [`MAX_ANNOTATIONS`] per session).
    pub async fn add_annotation(
        &self,
        caller: &Caller,
        session_id: &str,
        new: NewAnnotation,
    ) -> Result<(Prepared, AnnotationRecord)> {
        let mut mutation = self.begin_open(caller, session_id).await?;
        // Annotations are never deleted, so the sequence is the count.
        if mutation.record.annotation_sequence >= MAX_ANNOTATIONS {
            return Err(Error::ResourceExhausted(format!(
                "session {} holds the most annotations allowed ({MAX_ANNOTATIONS}); fork a fresh session to keep reviewing",
                mutation.record.id
            )));
        }
        let sequence = mutation.record.annotation_sequence + 1;
        let annotation = AnnotationRecord {
            sequence,
            path: new.path.to_string(),
            lines: new.lines,
            body: new.body,
            author: caller.name().to_string(),
            created_at_ms: model::now_ms(),
            head_version: mutation.record.head_version,
            resolved: false,
            resolved_by: String::new(),
            resolved_at_ms: 0,
        };
        let record = &mut mutation.record;
        let key = annotation_key(sequence);
        let inserted =
            self.annotations
                .map
                .insert(&record.annotations_root, key, annotation.clone());
        record.annotations_root = inserted.await?.0;
        record.annotation_sequence = sequence;
        let id = annotation.id();
        let effect = Effect::new(caller.name(), "review.annotation.add", id.clone())
            .detail("path", annotation.path.clone())
            .event(Event::Annotation { id, what: "added" });
        Ok((Prepared::changed(mutation, effect), annotation))
    }

    /// Marks annotation number `sequence` resolved; resolving it again changes nothing.
    pub async fn resolve_annotation(
        &self,
        caller: &Caller,
        session_id: &str,
        sequence: u64,
    ) -> Result<(Prepared, AnnotationRecord)> {
        let mut mutation = self.begin_open(caller, session_id).await?;
        let key = annotation_key(sequence);
        let found = self
            .annotations
            .map
            .get(&mutation.record.annotations_root, &key);
        let Some(mut annotation) = found.await? else {
            return Err(Error::NotFound(format!(
                "annotation ann-{sequence} not found in session {}",
                mutation.record.id
            )));
        };
        if annotation.resolved {
            return Ok((Prepared::unchanged(mutation), annotation));
        }
        annotation.resolved = true;
        annotation.resolved_by = caller.name().to_string();
        annotation.resolved_at_ms = model::now_ms();
        let record = &mut mutation.record;
        let inserted =
            self.annotations
                .map
                .insert(&record.annotations_root, key, annotation.clone());
        record.annotations_root = inserted.await?.0;
        let id = annotation.id();
        let effect = Effect::new(caller.name(), "review.annotation.resolve", id.clone()).event(
            Event::Annotation {
                id,
                what: "resolved",
            },
        );
        Ok((Prepared::changed(mutation, effect), annotation))
    }

    /// Up to `size` annotations under `prefix` after annotation key `after`, oldest first,
    /// resolved ones only if asked; and whether more follow.
    pub async fn list_annotations(
        &self,
        record: &SessionRecord,
        prefix: &aether_core::WorkspacePath,
        include_resolved: bool,
        after: Option<String>,
        size: usize,
    ) -> Result<(Vec<AnnotationRecord>, bool)> {
        let start = match &after {
            Some(key) => std::ops::Bound::Excluded(key.as_str()),
            None => std::ops::Bound::Unbounded,
        };
        let mut annotations = Vec::new();
        let mut more = false;
        self.annotations
            .map
            .scan(&record.annotations_root, start, |_, annotation| {
                if annotation.resolved && !include_resolved {
                    return true;
                }
                let under = aether_core::WorkspacePath::parse(&annotation.path)
                    .map(|p| p.starts_with(prefix))
                    .unwrap_or(false);
                if !under {
                    return true;
                }
                if annotations.len() == size {
                    more = true;
                    return false;
                }
                annotations.push(annotation.clone());
                true
            })
            .await?;
        Ok((annotations, more))
    }

    /// Asks for approval of `action` at the current head, by `reviewers` (none: any of the
    /// session's reviewers).
    pub async fn request_approval(
        &self,
        caller: &Caller,
        session_id: &str,
        action: ApprovalActionRecord,
        reviewers: Vec<String>,
        comment: String,
    ) -> Result<(Prepared, ApprovalRecord)> {
        let mut mutation = self.begin(caller, session_id).await?;
        match action {
            ApprovalActionRecord::Commit => require_active(&mutation.record)?,
            ApprovalActionRecord::Export => require_open(&mutation.record)?,
        }
        check_new_approval(&mutation.record, &reviewers)?;
        let sequence = mutation.record.approval_sequence + 1;
        let approval = ApprovalRecord {
            sequence,
            action,
            requester: caller.name().to_string(),
            reviewers,
            state: ApprovalStateRecord::Pending,
            head_version: mutation.record.head_version,
            head_root: mutation.record.head_root.clone(),
            decisions: Vec::new(),
            comment,
            created_at_ms: model::now_ms(),
            used_by: String::new(),
        };
        mutation.record.approval_sequence = sequence;
        let id = approval.id();
        self.approvals
            .put(&mut mutation.record, approval.clone())
            .await?;
        let effect = Effect::new(caller.name(), "review.approval.request", id.clone())
            .detail("action", action_name(action))
            .detail("reviewers", approval.reviewers.join(","))
            .detail("head_version", approval.head_version.to_string())
            .event(Event::ApprovalRequested {
                id,
                action: action_name(action),
            });
        Ok((Prepared::changed(mutation, effect), approval))
    }

    /// Decides approval request number `sequence` by the rules of [`decide`].
    pub async fn decide_approval(
        &self,
        caller: &Caller,
        session_id: &str,
        sequence: u64,
        approve: bool,
        comment: &str,
    ) -> Result<(Prepared, ApprovalRecord)> {
        let mut mutation = self.begin_open(caller, session_id).await?;
        let mut approval = self.load_approval(&mutation.record, sequence).await?;
        let id = approval.id();
        let now = model::now_ms();
        decide(
            &mutation.record,
            &mut approval,
            caller.name(),
            approve,
            comment,
            now,
        )?;
        self.approvals
            .put(&mut mutation.record, approval.clone())
            .await?;
        let outcome = if approve { "approved" } else { "rejected" };
        let effect = Effect::new(caller.name(), "review.approval.decide", id.clone())
            .detail("decision", outcome)
            .detail("action", action_name(approval.action))
            .detail("requester", approval.requester.clone())
            .detail("head_version", approval.head_version.to_string())
            .detail("comment", comment)
            .event(Event::ApprovalDecided { id, outcome });
        Ok((Prepared::changed(mutation, effect), approval))
    }

    /// Every approval request of a session, oldest first.
    pub async fn load_approvals(&self, record: &SessionRecord) -> Result<Vec<ApprovalRecord>> {
        self.approvals.all(&*self.coord, record).await
    }

    pub async fn load_approval(
        &self,
        record: &SessionRecord,
        sequence: u64,
    ) -> Result<ApprovalRecord> {
        self.approvals
            .get(&*self.coord, record, sequence)
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "approval apr-{sequence} not found in session {}",
                    record.id
                ))
            })
    }

    /// The approvals that admit `action` at `record`'s head, or FAILED_PRECONDITION saying how
    /// many are missing. Every approved request bound to the head is included (and will be
    /// used), even past `required`; approvers must still hold the reviewer role.
    pub async fn admit(
        &self,
        record: &SessionRecord,
        action: ApprovalActionRecord,
        required: u32,
    ) -> Result<Admission> {
        let all = self.load_approvals(record).await?;
        let mut stale = 0;
        let mut usable = Vec::new();
        for approval in all.into_iter().filter(|a| a.action == action) {
            match approval.effective(record) {
                ApprovalStateRecord::Approved => usable.push(approval),
                ApprovalStateRecord::Stale if approval.state == ApprovalStateRecord::Approved => {
                    stale += 1
                }
                _ => {}
            }
        }
        let approvers: BTreeSet<&str> = usable
            .iter()
            .flat_map(ApprovalRecord::approvers)
            .filter(|who| is_reviewer(record, who))
            .collect();
        let have = approvers.len() as u32;
        if have < required {
            return Err(Error::ApprovalMissing {
                session: record.id.clone(),
                action: action_name(action),
                head_version: record.head_version,
                needed: required,
                have,
                stale,
            });
        }
        Ok(Admission { approvals: usable })
    }

    /// The export gate: with `required_export_approvals` in the policy, an export needs that
    /// many approvals of the head it exports, and uses them up (audited as `review.approval.use`).
    /// `seen` is the record the export read; `at` the revision it exports, which must be the
    /// approved head's state.
    pub async fn admit_export(
        &self,
        caller: &Caller,
        seen: &SessionRecord,
        at: &crate::revisions::Revision,
    ) -> Result<()> {
        let required = seen.policy.required_export_approvals;
        if required == 0 {
            return Ok(());
        }
        let mut mutation = self.begin_open(caller, &seen.id).await?;
        if mutation.record.head_version != seen.head_version
            || mutation.record.head_root != seen.head_root
        {
            return Err(Error::Aborted(format!(
                "session {} changed while the export started; retry",
                seen.id
            )));
        }
        let root = self.resolve(&mutation.record, at).await?;
        if root.to_hex() != mutation.record.head_root {
            return Err(Error::FailedPrecondition(format!(
                "session {} needs approval to export, and approvals cover the head only: this revision's content differs from the head; restore it (or export the head) and request approval",
                seen.id
            )));
        }
        let admission = self
            .admit(&mutation.record, ApprovalActionRecord::Export, required)
            .await?;
        let ids = admission.ids();
        admission.consume(self, &mut mutation, "export").await?;
        let effect = Effect::new(caller.name(), "review.approval.use", ids.join(","))
            .detail("used_by", "export")
            .detail("root", root.to_hex());
        self.commit(mutation, effect).await?;
        Ok(())
    }
}

/// Whether `record` can take another approval request naming `reviewers`.
fn check_new_approval(record: &SessionRecord, reviewers: &[String]) -> Result<()> {
    if let Some(reviewer) = reviewers.iter().find(|r| !is_reviewer(record, r)) {
        return Err(Error::InvalidArgument(format!(
            "{reviewer} does not hold the reviewer role in the policy of session {}: name its owner or principals bound as \"user:NAME\" to ROLE_REVIEWER or ROLE_OWNER, or name none",
            record.id
        )));
    }
    if record.approval_sequence >= MAX_APPROVALS {
        return Err(Error::ResourceExhausted(format!(
            "session {} has had the most approval requests allowed ({MAX_APPROVALS})",
            record.id
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::model::Binding;

    /// alice owns the session; rev is bound as reviewer, ed as editor; mallory has no role.
    const PEOPLE: [&str; 4] = ["alice", "rev", "ed", "mallory"];

    fn session() -> SessionRecord {
        let mut record = crate::test_support::record("s1");
        record.policy.bindings = vec![
            Binding {
                subject: "user:rev".into(),
                role: pb::Role::Reviewer as i32,
            },
            Binding {
                subject: "user:ed".into(),
                role: pb::Role::Editor as i32,
            },
        ];
        record
    }

    fn request(record: &SessionRecord, requester: &str, named: Vec<String>) -> ApprovalRecord {
        ApprovalRecord {
            sequence: 1,
            action: ApprovalActionRecord::Commit,
            requester: requester.into(),
            reviewers: named,
            state: ApprovalStateRecord::Pending,
            head_version: record.head_version,
            head_root: record.head_root.clone(),
            decisions: Vec::new(),
            comment: String::new(),
            created_at_ms: 0,
            used_by: String::new(),
        }
    }

    proptest! {
        /// Any sequence of decisions by anyone, on a request by anyone naming any reviewers,
        /// with the head moving at any point: a decision is taken exactly when the rules
        /// allow it, a refused one changes nothing, and the request's state is what the
        /// decisions taken say (one rejection ends it).
        #[test]
        fn decisions_follow_the_approval_rules(
            requester in 0usize..4,
            named in proptest::collection::vec(0usize..4, 0..3),
            steps in proptest::collection::vec((0usize..4, any::<bool>(), 0u8..8), 1..10),
        ) {
            let mut record = session();
            let named: Vec<String> = named.iter().map(|i| PEOPLE[*i].to_string()).collect();
            let mut approval = request(&record, PEOPLE[requester], named.clone());
            let mut decided: Vec<&str> = Vec::new();
            let mut rejected = false;
            let mut stale = false;
            for (who, approve, moves) in steps {
                if moves == 0 {
                    record.head_version += 1; // a change after the request
                    stale = true;
                }
                let who = PEOPLE[who];
                let before = approval.clone();
                let allowed = matches!(who, "alice" | "rev")
                    && !(approve && who == PEOPLE[requester])
                    && (named.is_empty() || named.iter().any(|n| n == who))
                    && !stale
                    && !rejected
                    && !decided.contains(&who);
                let result = decide(&record, &mut approval, who, approve, "", 1);
                prop_assert_eq!(result.is_ok(), allowed, "{} {}: {:?}", who, approve, result);
                match result {
                    Ok(()) => {
                        decided.push(who);
                        rejected |= !approve;
                    }
                    Err(
                        Error::PermissionDenied(_)
                        | Error::ApprovalClosed { .. }
                        | Error::AlreadyDecided { .. },
                    ) => {
                        prop_assert_eq!(&approval, &before);
                    }
                    Err(other) => prop_assert!(false, "unexpected {:?}", other),
                }
                let expected = if rejected {
                    ApprovalStateRecord::Rejected
                } else if decided.is_empty() {
                    ApprovalStateRecord::Pending
                } else {
                    ApprovalStateRecord::Approved
                };
                prop_assert_eq!(approval.state, expected);
                prop_assert_eq!(approval.decisions.len(), decided.len());
            }
        }
    }
}
