//! The label index (keys in [`model::label_index_key`]): ListSessions with a "k=v" term reads
//! the sessions that carry that label, one page at a time, instead of every session record.
//!
//! Every record write keeps it in step in the same transaction ([`model::label_index_ops`]).
//! Sessions written before the index existed are indexed once by [`ensure`] (each write
//! compares the record's revision, so a concurrent change is re-read, never overwritten); the
//! ready key it sets last tells ListSessions it may trust the index.

use aether_coord::{Compare, Coordination, Op};

use crate::error::Result;
use crate::model;
use crate::tombstones::Stored;

/// Records read per range call.
const BATCH: usize = 500;

/// Whether every session is in the index.
pub async fn ready(coord: &dyn Coordination) -> Result<bool> {
    Ok(coord.get(&model::label_index_ready_key()).await?.is_some())
}

/// Indexes the labels of every session, unless that was done already.
pub async fn ensure(coord: &dyn Coordination) -> Result<()> {
    if ready(coord).await? {
        return Ok(());
    }
    let prefix = model::sessions_prefix();
    let mut after: Option<String> = None;
    let mut indexed = 0u64;
    loop {
        let batch = coord.range(&prefix, after.as_deref(), BATCH).await?;
        let Some(last) = batch.last() else {
            break;
        };
        after = Some(last.key.clone());
        for kv in batch {
            indexed += u64::from(index_one(coord, kv).await?);
        }
    }
    coord
        .txn(
            vec![],
            vec![Op::put(model::label_index_ready_key(), Vec::new())],
        )
        .await?;
    tracing::info!(sessions = indexed, "label index built");
    Ok(())
}

/// Writes the index keys of one record, as of the revision read (re-reading it when it
/// changed meanwhile). Whether it had labels to index.
async fn index_one(coord: &dyn Coordination, mut kv: aether_coord::KeyValue) -> Result<bool> {
    loop {
        let Ok(stored) = Stored::decode(&kv.value) else {
            return Ok(false);
        };
        if stored.labels().is_empty() {
            return Ok(false);
        }
        let ops = model::label_index_ops(stored.id(), &Default::default(), stored.labels());
        let outcome = coord
            .txn(
                vec![Compare::ModRevision(kv.key.clone(), kv.mod_revision)],
                ops,
            )
            .await?;
        if outcome.succeeded {
            return Ok(true);
        }
        match coord.get(&kv.key).await? {
            Some(again) => kv = again,
            None => return Ok(false),
        }
    }
}

/// Up to `limit` sessions carrying label `key=value`, in id order, after session `after`.
/// An index key whose record is gone is skipped.
pub async fn sessions_with(
    coord: &dyn Coordination,
    (key, value): (&str, &str),
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<Stored>, Option<String>)> {
    let prefix = model::label_index_prefix(key, value);
    let start = after.map(|id| format!("{prefix}{id}"));
    let keys = coord.range(&prefix, start.as_deref(), limit).await?;
    let last = keys
        .last()
        .and_then(|kv| kv.key.strip_prefix(&prefix))
        .map(str::to_owned);
    let mut records = Vec::with_capacity(keys.len());
    for kv in keys {
        let Some(id) = kv.key.strip_prefix(&prefix) else {
            continue;
        };
        let Some(found) = coord.get(&model::session_key(id)).await? else {
            continue;
        };
        if let Ok(stored) = Stored::decode(&found.value) {
            records.push(stored);
        }
    }
    Ok((records, last))
}
