//! Coordination: the small, strongly consistent records AetherFS keeps outside the object
//! store (session records, holders, leases), behind one trait with two backends:
//!
//! - [`EtcdCoordination`] for clusters, and
//! - [`EmbeddedCoordination`], a single-process store persisted to one file, for `aetherd dev`.
//!
//! Both give the same guarantees, checked by one [`conformance`] suite: linearizable
//! transactions with compare-on-revision, and leases whose expiry deletes the keys bound to them.
//! Promise 2 (one writer per session, fenced) is built from these in [`holder`]: a holder's
//! every write compares the create revision of its holder key, so a holder that lost its lease
//! cannot change anything. [`forward`] sends requests to whichever node holds their session.

pub mod conformance;
mod embedded;
mod etcd;
pub mod forward;
pub mod holder;
mod lease;

use std::time::Duration;

use async_trait::async_trait;

pub use embedded::EmbeddedCoordination;
pub use etcd::EtcdCoordination;
pub use holder::{Fence, HolderRecord};
pub use lease::LeaseKeeper;

/// A lease id, as granted by the backend.
pub type LeaseId = i64;

/// One stored key with the revisions that fence and version it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the transaction that created the key (changes if it is deleted and put again).
    pub create_revision: i64,
    /// Revision of the last transaction that changed the key.
    pub mod_revision: i64,
    /// Lease the key is bound to, 0 for none.
    pub lease: LeaseId,
}

/// A condition of a transaction.
#[derive(Clone, Debug)]
pub enum Compare {
    /// The key does not exist.
    Missing(String),
    /// The key exists and was created at this revision.
    CreateRevision(String, i64),
    /// The key exists and was last changed at this revision.
    ModRevision(String, i64),
}

/// A write of a transaction.
#[derive(Clone, Debug)]
pub enum Op {
    /// Create or replace a key, optionally bound to a lease.
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    /// Delete a key (no error if absent).
    Delete { key: String },
}

impl Op {
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }

    pub fn delete(key: impl Into<String>) -> Op {
        Op::Delete { key: key.into() }
    }
}

/// Outcome of a transaction that reached the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnOutcome {
    /// Whether every compare held (and so every op was applied).
    pub succeeded: bool,
    /// The store revision after the transaction.
    pub revision: i64,
}

/// Errors of the coordination backends.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// The backend cannot be reached or has no quorum; retrying later may succeed.
    #[error("coordination store unavailable: {0}")]
    Unavailable(String),
    /// The lease expired or was revoked.
    #[error("lease {0} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    /// A request the backend refused, such as one over its size limit.
    #[error("coordination store rejected the request: {0}")]
    Rejected(String),
    /// Local storage of the embedded backend failed.
    #[error("embedded coordination storage failed: {0}")]
    Storage(String),
}

pub type Result<T, E = CoordError> = std::result::Result<T, E>;

/// The operations AetherFS needs from a coordination store.
#[async_trait]
pub trait Coordination: Send + Sync + 'static {
    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Reads up to `limit` keys under `prefix`, in key order, strictly after `start_after`.
    async fn range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyValue>>;

    /// Applies `ops` atomically if every compare holds.
    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnOutcome>;

    /// Grants a lease that expires `ttl` after its last keep-alive.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId>;

    /// Renews a lease; `LeaseNotFound` if it already expired.
    async fn keep_alive(&self, lease: LeaseId) -> Result<()>;

    /// Ends a lease now, deleting every key bound to it.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()>;
}

/// The first key after every key starting with `prefix` (etcd's range end for a prefix).
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
