//! Holders: exactly one node holds a session (or a bus stream) at a time, and every write it
//! makes is fenced on the create revision of its holder key (design promise 2).
//!
//! A holder key is bound to the holder node's lease. If the node pauses or is partitioned past
//! its TTL, etcd deletes the key and another node creates it anew with a higher create
//! revision; the old holder's fenced writes then fail instead of corrupting the session.

use serde::{Deserialize, Serialize};

use crate::{Compare, Coordination, KeyValue, LeaseId, Op, Result};

/// Who holds a key: stored as the holder key's value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderRecord {
    /// The node's unique id.
    pub node_id: String,
    /// Where other nodes forward requests ("http://host:port").
    pub address: String,
}

/// Proof of holding: the holder key and the revision that created it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub key: String,
    pub create_revision: i64,
}

impl Fence {
    /// The compare that every write of this holder must include.
    pub fn compare(&self) -> Compare {
        Compare::CreateRevision(self.key.clone(), self.create_revision)
    }
}

/// What came of an attempt to take a holder key.
#[derive(Clone, Debug)]
pub enum Acquire {
    /// We hold it now.
    Held(Fence),
    /// Someone else does.
    HeldBy(HolderRecord),
}

/// Takes `key` for `record` under `lease` if nobody holds it; else says who does.
pub async fn acquire(
    coord: &dyn Coordination,
    key: &str,
    record: &HolderRecord,
    lease: LeaseId,
) -> Result<Acquire> {
    let value = serde_json::to_vec(record).expect("holder record serializes");
    loop {
        let outcome = coord
            .txn(
                vec![Compare::Missing(key.to_string())],
                vec![Op::Put {
                    key: key.to_string(),
                    value: value.clone(),
                    lease: Some(lease),
                }],
            )
            .await?;
        if outcome.succeeded {
            return Ok(Acquire::Held(Fence {
                key: key.to_string(),
                create_revision: outcome.revision,
            }));
        }
        match coord.get(key).await? {
            Some(existing) => return Ok(Acquire::HeldBy(parse_holder(&existing))),
            // Released between our two calls: try again.
            None => continue,
        }
    }
}

/// Reads who holds `key`, if anyone.
pub async fn current(coord: &dyn Coordination, key: &str) -> Result<Option<(HolderRecord, i64)>> {
    Ok(coord
        .get(key)
        .await?
        .map(|kv| (parse_holder(&kv), kv.create_revision)))
}

fn parse_holder(kv: &KeyValue) -> HolderRecord {
    serde_json::from_slice(&kv.value).unwrap_or(HolderRecord {
        node_id: String::from_utf8_lossy(&kv.value).into_owned(),
        address: String::new(),
    })
}

/// Gives up a hold; a no-op if it was already lost.
pub async fn release(coord: &dyn Coordination, fence: &Fence) -> Result<()> {
    coord
        .txn(vec![fence.compare()], vec![Op::delete(fence.key.clone())])
        .await?;
    Ok(())
}

/// Outcome of a fenced transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FencedOutcome {
    /// Applied at this revision.
    Applied(i64),
    /// The fence held but another compare failed (a concurrent change).
    Conflict,
    /// We no longer hold the key: nothing was applied and nothing may be.
    Fenced,
}

/// Applies `ops` only while `fence` holds and every compare holds.
pub async fn fenced_txn(
    coord: &dyn Coordination,
    fence: &Fence,
    mut compares: Vec<Compare>,
    ops: Vec<Op>,
) -> Result<FencedOutcome> {
    compares.push(fence.compare());
    let outcome = coord.txn(compares, ops).await?;
    if outcome.succeeded {
        return Ok(FencedOutcome::Applied(outcome.revision));
    }
    let still_held = coord
        .get(&fence.key)
        .await?
        .is_some_and(|kv| kv.create_revision == fence.create_revision);
    Ok(if still_held {
        FencedOutcome::Conflict
    } else {
        FencedOutcome::Fenced
    })
}
