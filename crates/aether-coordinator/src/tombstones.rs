//! What etcd keeps of a closed or expired session (promise 10): a tombstone under the
//! session's key, small and bounded, naming its whole record archived in the content store.
//!
//! Closing is the session's last change: the commit that closes it writes the final record to
//! the store and puts the tombstone in its place, in the same fenced transaction, so a reader
//! finds either the open record or the tombstone and its archive, never neither. The
//! tombstone keeps what a reader needs without going to the store: the state and labels that
//! ListSessions filters on, and the owner and policy that the bus checks access with. Every
//! other read ([`crate::sessions::Sessions::load`]) follows it to the archived record.

use std::collections::BTreeMap;

use aether_core::Hash;
use aether_store::Blobs;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{PolicyRecord, SessionRecord, State};

/// The largest archived record a reader accepts (a record is bounded by the limits on labels,
/// metadata and bindings: about 300 KiB at most).
pub const MAX_ARCHIVED_RECORD_BYTES: u64 = 1024 * 1024;

/// A closed or expired session, as etcd keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub id: String,
    pub state: State,
    pub owner: String,
    pub labels: BTreeMap<String, String>,
    pub policy: PolicyRecord,
    /// The final [`SessionRecord`] (JSON) in the content store, by hash.
    pub archived_record: String,
}

/// What a session's key holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    /// The record of a session that can still change (and of one closed by a version that
    /// kept whole records, until the expiry sweep archives it).
    Record(Box<SessionRecord>),
    /// A closed or expired session.
    Tombstone(Tombstone),
}

impl Stored {
    /// Reads a session key's value.
    pub fn decode(value: &[u8]) -> std::result::Result<Self, serde_json::Error> {
        match serde_json::from_slice::<SessionRecord>(value) {
            Ok(record) => Ok(Self::Record(Box::new(record))),
            // A tombstone lacks most of a record's fields, so a record never reads as one.
            Err(record_error) => serde_json::from_slice::<Tombstone>(value)
                .map(Self::Tombstone)
                .map_err(|_| record_error),
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Self::Record(r) => &r.id,
            Self::Tombstone(t) => &t.id,
        }
    }

    pub fn state(&self) -> State {
        match self {
            Self::Record(r) => r.state,
            Self::Tombstone(t) => t.state,
        }
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        match self {
            Self::Record(r) => &r.labels,
            Self::Tombstone(t) => &t.labels,
        }
    }

    /// Who owns the session and whom its policy binds (what access is decided from).
    pub fn access(&self) -> (&str, &PolicyRecord) {
        match self {
            Self::Record(r) => (&r.owner, &r.policy),
            Self::Tombstone(t) => (&t.owner, &t.policy),
        }
    }

    /// The whole record, from the store for a tombstone.
    pub async fn resolve(self, blobs: &dyn Blobs) -> Result<SessionRecord> {
        match self {
            Self::Record(record) => Ok(*record),
            Self::Tombstone(tombstone) => load_archived(blobs, &tombstone).await,
        }
    }
}

/// Archives `record` (closed or expired) in the store; returns the tombstone to put under its
/// key. The archive is written before the commit that publishes it; one left by a commit that
/// failed is garbage after the grace period.
pub async fn archive(blobs: &dyn Blobs, record: &SessionRecord) -> Result<Tombstone> {
    let json = crate::sessions::to_json(record);
    let hash = blobs.put(json.into()).await?;
    Ok(Tombstone {
        id: record.id.clone(),
        state: record.state,
        owner: record.owner.clone(),
        labels: record.labels.clone(),
        policy: record.policy.clone(),
        archived_record: hash.to_hex(),
    })
}

/// The hash of a tombstone's archived record.
pub fn archived_hash(tombstone: &Tombstone) -> Result<Hash> {
    Hash::from_hex(&tombstone.archived_record).map_err(|e| {
        Error::Internal(format!(
            "tombstone of session {} names no archived record: {e}",
            tombstone.id
        ))
    })
}

/// The record a tombstone names, checked to be that session's and closed.
pub async fn load_archived(blobs: &dyn Blobs, tombstone: &Tombstone) -> Result<SessionRecord> {
    let id = &tombstone.id;
    let hash = archived_hash(tombstone)?;
    let size = blobs.size(&hash).await.map_err(|e| lost(id, &hash, e))?;
    if size > MAX_ARCHIVED_RECORD_BYTES {
        return Err(Error::DataLoss(format!(
            "archived record {hash} of session {id} is {size} bytes, more than any record \
             ({MAX_ARCHIVED_RECORD_BYTES})"
        )));
    }
    let bytes = blobs.get(&hash).await.map_err(|e| lost(id, &hash, e))?;
    let record: SessionRecord = serde_json::from_slice(&bytes).map_err(|e| {
        Error::DataLoss(format!(
            "archived record {hash} of session {id} unreadable: {e}"
        ))
    })?;
    if record.id != *id || !matches!(record.state, State::Closed | State::Expired) {
        return Err(Error::DataLoss(format!(
            "archived record {hash} is not the closed record of session {id}"
        )));
    }
    Ok(record)
}

/// A missing archive is data loss; anything else (the store is down) is the store's error.
fn lost(id: &str, hash: &Hash, error: aether_store::StoreError) -> Error {
    match error {
        aether_store::StoreError::NotFound(_) => Error::DataLoss(format!(
            "archived record {hash} of closed session {id} is missing from the store"
        )),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::to_json;

    #[test]
    fn a_record_and_a_tombstone_read_as_what_they_are() {
        let mut record = crate::test_support::record("s1");
        record.labels.insert("team".into(), "a".into());
        let decoded = Stored::decode(&to_json(&record)).unwrap();
        assert_eq!(decoded, Stored::Record(Box::new(record.clone())));
        record.state = State::Closed;
        let tombstone = Tombstone {
            id: "s1".into(),
            state: State::Closed,
            owner: record.owner.clone(),
            labels: record.labels.clone(),
            policy: record.policy.clone(),
            archived_record: Hash::of(b"x").to_hex(),
        };
        let json = to_json(&tombstone);
        assert!(json.len() < 256, "{} bytes", json.len());
        let decoded = Stored::decode(&json).unwrap();
        assert_eq!(decoded.labels(), &record.labels);
        assert_eq!(decoded, Stored::Tombstone(tombstone));
        assert!(Stored::decode(b"{\"id\":\"s1\"}").is_err());
    }
}
