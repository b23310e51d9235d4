//! Conversions between stored records and API messages.

use aether_core::{EntryKind, TreeEntry, WorkspacePath};
use aether_proto as pb;
use prost_types::{Duration, Timestamp};

use crate::error::{Error, Result};
use crate::model::{
    AuditRecord, Binding, CheckpointRecord, PolicyRecord, SessionRecord, SourceRecord, State,
};
use crate::revisions::Revision;

pub fn timestamp(ms: i64) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    })
}

/// The longest idle TTL a session may have: ten years (0 means none at all).
pub const MAX_TTL_SECS: i64 = 10 * 365 * 24 * 3600;

/// A session TTL in milliseconds: 0 to [`MAX_TTL_SECS`], so that expiry times never overflow.
pub fn ttl_ms(duration: &Option<Duration>) -> Result<u64, String> {
    match duration {
        None => Ok(0),
        Some(d) if d.seconds < 0 || d.nanos < 0 => {
            Err("ttl must not be negative; use 0 for no expiry".into())
        }
        Some(d) if d.seconds > MAX_TTL_SECS || d.nanos >= 1_000_000_000 => Err(format!(
            "ttl of {} s is beyond the limit of {MAX_TTL_SECS} s (ten years); use 0 for no expiry",
            d.seconds
        )),
        Some(d) => Ok(d.seconds as u64 * 1000 + d.nanos as u64 / 1_000_000),
    }
}

/// The revision a request names (none: the head).
pub fn revision(revision: &Option<pb::Revision>) -> Result<Revision> {
    let Some(r) = revision else {
        return Ok(Revision::Head);
    };
    let kind = pb::RevisionKind::try_from(r.kind).map_err(|_| {
        Error::InvalidArgument(format!(
            "unknown revision kind {}; use HEAD, BASE, CHECKPOINT or COMMIT",
            r.kind
        ))
    })?;
    Ok(match kind {
        pb::RevisionKind::Unspecified | pb::RevisionKind::Head => Revision::Head,
        pb::RevisionKind::Base => Revision::Base,
        pb::RevisionKind::Checkpoint => Revision::Checkpoint(r.name.clone()),
        pb::RevisionKind::Commit => Revision::Commit(r.name.clone()),
    })
}

pub fn kind(kind: EntryKind) -> pb::EntryKind {
    match kind {
        EntryKind::File => pb::EntryKind::File,
        EntryKind::Directory => pb::EntryKind::Directory,
        EntryKind::Symlink => pb::EntryKind::Symlink,
    }
}

pub fn entry(path: &WorkspacePath, entry: &TreeEntry) -> pb::Entry {
    pb::Entry {
        path: path.to_string(),
        kind: kind(entry.kind) as i32,
        size: entry.size,
        mode: entry.mode,
        hash: entry.hash.to_hex(),
        mtime_ns: entry.mtime_ns,
        symlink_target: String::new(),
    }
}

pub fn state(state: State) -> pb::SessionState {
    match state {
        State::Active => pb::SessionState::Active,
        State::Finalized => pb::SessionState::Finalized,
        State::Closed => pb::SessionState::Closed,
        State::Expired => pb::SessionState::Expired,
    }
}

/// A session state a request names (ListSessions' filter).
/// The distinct states a filter names (each checked), so a filter repeating one state a
/// million times costs one comparison per record, not a million.
pub fn distinct_states<T: PartialEq>(
    states: &[i32],
    state_from: impl Fn(i32) -> Result<T>,
) -> Result<Vec<T>> {
    let mut distinct = Vec::new();
    for state in states {
        let state = state_from(*state)?;
        if !distinct.contains(&state) {
            distinct.push(state);
        }
    }
    Ok(distinct)
}

pub fn state_from(state: i32) -> Result<State> {
    match pb::SessionState::try_from(state) {
        Ok(pb::SessionState::Active) => Ok(State::Active),
        Ok(pb::SessionState::Finalized) => Ok(State::Finalized),
        Ok(pb::SessionState::Closed) => Ok(State::Closed),
        Ok(pb::SessionState::Expired) => Ok(State::Expired),
        _ => Err(Error::InvalidArgument(format!(
            "states: {state} is not a session state: use SESSION_STATE_ACTIVE, _FINALIZED, _CLOSED or _EXPIRED"
        ))),
    }
}

/// Where a new session comes from (none: empty).
pub fn source_from(source: &Option<pb::Source>) -> SourceRecord {
    use pb::source::Kind;
    match source.as_ref().and_then(|s| s.kind.as_ref()) {
        None | Some(Kind::Empty(_)) => SourceRecord::Empty,
        Some(Kind::Session(s)) => SourceRecord::Session {
            session_id: s.session_id.clone(),
        },
        Some(Kind::Checkpoint(c)) => SourceRecord::Checkpoint {
            session_id: c.session_id.clone(),
            name: c.name.clone(),
        },
        Some(Kind::Commit(c)) => SourceRecord::Commit {
            session_id: c.session_id.clone(),
            commit_id: c.commit_id.clone(),
        },
        Some(Kind::Archive(a)) => SourceRecord::Archive {
            blob_hash: a.blob_hash.clone(),
        },
    }
}

pub fn policy_from(policy: &Option<pb::Policy>) -> PolicyRecord {
    let Some(policy) = policy else {
        return PolicyRecord::default();
    };
    PolicyRecord {
        bindings: policy
            .bindings
            .iter()
            .map(|b| Binding {
                subject: b.subject.clone(),
                role: b.role,
            })
            .collect(),
        required_commit_approvals: policy.required_commit_approvals,
        required_export_approvals: policy.required_export_approvals,
    }
}

pub fn policy(policy: &PolicyRecord) -> pb::Policy {
    pb::Policy {
        bindings: policy
            .bindings
            .iter()
            .map(|b| pb::RoleBinding {
                subject: b.subject.clone(),
                role: b.role,
            })
            .collect(),
        required_commit_approvals: policy.required_commit_approvals,
        required_export_approvals: policy.required_export_approvals,
    }
}

pub fn source(source: &SourceRecord) -> pb::Source {
    use pb::source::Kind;
    let kind = match source {
        SourceRecord::Empty => Kind::Empty(pb::EmptySource {}),
        SourceRecord::Session { session_id } => Kind::Session(pb::SessionSource {
            session_id: session_id.clone(),
        }),
        SourceRecord::Checkpoint { session_id, name } => Kind::Checkpoint(pb::CheckpointSource {
            session_id: session_id.clone(),
            name: name.clone(),
        }),
        SourceRecord::Commit {
            session_id,
            commit_id,
        } => Kind::Commit(pb::CommitSource {
            session_id: session_id.clone(),
            commit_id: commit_id.clone(),
        }),
        SourceRecord::Archive { blob_hash } => Kind::Archive(pb::ArchiveSource {
            blob_hash: blob_hash.clone(),
        }),
    };
    pb::Source { kind: Some(kind) }
}

pub fn session(record: &SessionRecord, counts: pb::SessionCounts) -> pb::Session {
    pb::Session {
        id: record.id.clone(),
        labels: record.labels.clone().into_iter().collect(),
        metadata: record.metadata.clone().into_iter().collect(),
        owner: record.owner.clone(),
        policy: Some(policy(&record.policy)),
        state: state(record.state) as i32,
        source: Some(source(&record.source)),
        base_root: record.base_root.clone(),
        head_root: record.head_root.clone(),
        head_version: record.head_version,
        created_at: timestamp(record.created_at_ms),
        updated_at: timestamp(record.updated_at_ms),
        expires_at: record.expires_at_ms().and_then(timestamp),
        ttl: Some(Duration {
            seconds: (record.ttl_ms / 1000) as i64,
            nanos: ((record.ttl_ms % 1000) * 1_000_000) as i32,
        }),
        counts: Some(counts),
    }
}

pub fn checkpoint(record: &CheckpointRecord) -> pb::Checkpoint {
    pb::Checkpoint {
        name: record.name.clone(),
        root: record.root.clone(),
        head_version: record.head_version,
        author: record.author.clone(),
        created_at: timestamp(record.created_at_ms),
        description: record.description.clone(),
    }
}

pub fn audit(record: &AuditRecord) -> pb::AuditEvent {
    pb::AuditEvent {
        sequence: record.sequence,
        principal: record.principal.clone(),
        action: record.action.clone(),
        target: record.target.clone(),
        time: timestamp(record.time_ms),
        outcome: record.outcome.clone(),
        details: record.details.clone().into_iter().collect(),
    }
}
