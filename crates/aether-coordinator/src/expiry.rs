//! Retirement of idle sessions: a session whose TTL has passed since its last change becomes
//! EXPIRED, like a close (the workspace is no longer served; commits, exports and the audit
//! trail remain, and its objects become garbage once nothing else reaches them).
//!
//! Every coordinator sweeps; a session is expired by whichever node holds it (or takes it),
//! through the same fenced mutation as any change, so two sweepers cannot both expire it.
//! The sweep also archives the whole records of sessions closed by earlier versions, leaving
//! a tombstone in etcd ([`crate::tombstones`]).

use std::sync::Arc;
use std::time::Duration;

use aether_coord::{Compare, Op};

use crate::caller::Caller;
use crate::events::Event;
use crate::model::{self, SessionRecord, State};
use crate::requests::{Generation, RequestRecord};
use crate::sessions::{to_json, Effect, Sessions};
use crate::tombstones::{self, Stored};

/// How long expiring one session may take (its commit writes an audit page to the store).
const EXPIRY_COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

impl Sessions {
    /// Expires every session idle past its TTL; returns how many it expired.
    pub async fn expire_idle_sessions(&self) -> usize {
        let prefix = model::sessions_prefix();
        let mut after: Option<String> = None;
        let mut expired = 0;
        loop {
            let batch = match self.coord.range(&prefix, after.as_deref(), 500).await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(error = %e, "expiry sweep cannot list sessions");
                    return expired;
                }
            };
            let Some(last) = batch.last() else {
                return expired;
            };
            after = Some(last.key.clone());
            let now = model::now_ms();
            for kv in batch {
                let Ok(Stored::Record(record)) = Stored::decode(&kv.value) else {
                    continue;
                };
                if matches!(record.state, State::Closed | State::Expired) {
                    self.archive_closed_record(*record, kv.mod_revision).await;
                } else if due(&record, now) && self.expire(&record.id).await {
                    expired += 1;
                }
            }
        }
    }

    async fn expire(&self, id: &str) -> bool {
        // Held elsewhere, or unreachable: the holder's own sweep will expire it.
        let Ok(mut mutation) = self.begin(&Caller::system(), id).await else {
            return false;
        };
        if !due(&mutation.record, model::now_ms()) {
            return false;
        }
        mutation.record.state = State::Expired;
        let effect = Effect::new("system", "session.expire", id.to_string()).event(Event::Expired);
        // No caller sets a deadline here: the store calls of the commit (its audit page) get
        // one, so a stuck store fails this expiry instead of holding the session forever.
        let deadline = std::time::Instant::now() + EXPIRY_COMMIT_TIMEOUT;
        let committed =
            aether_auth::deadline::scope(Some(deadline), self.commit(mutation, effect)).await;
        match committed {
            Ok(_) => {
                tracing::info!(session = %id, "session expired after its idle TTL");
                true
            }
            Err(e) => {
                tracing::warn!(session = %id, error = %e, "expiring session failed");
                false
            }
        }
    }

    /// Replaces the whole record of a session closed by an earlier version (which kept it in
    /// etcd) with a tombstone, moving the one recorded request it kept (the close) into the
    /// archived record. Unless the record changed since it was read: then the next sweep
    /// looks again.
    async fn archive_closed_record(&self, mut record: SessionRecord, revision: i64) {
        let id = record.id.clone();
        let archived = async {
            let (closing, mut ops) = self.closing_request_kept_in_etcd(&id).await?;
            if closing.is_some() {
                record.closing_request = closing;
            }
            let tombstone = tombstones::archive(self.trees.blobs().as_ref(), &record).await?;
            let key = model::session_key(&id);
            let compare = vec![Compare::ModRevision(key.clone(), revision)];
            ops.push(Op::put(key, to_json(&tombstone)));
            Ok::<_, crate::Error>(self.coord.txn(compare, ops).await?.succeeded)
        };
        match archived.await {
            Ok(true) => tracing::info!(session = %id, "closed session's record archived"),
            Ok(false) => {}
            Err(e) => tracing::warn!(session = %id, error = %e, "archiving closed record failed"),
        }
    }

    /// The request an earlier version kept in etcd for a closed session (the one that closed
    /// it) and the deletes of its keys; nothing when the keys hold anything else.
    async fn closing_request_kept_in_etcd(
        &self,
        id: &str,
    ) -> crate::error::Result<(Option<RequestRecord>, Vec<Op>)> {
        let prefix = model::requests_prefix(id);
        let stored = self.coord.range(&prefix, None, 2).await?;
        let [kv] = stored.as_slice() else {
            return Ok((None, Vec::new()));
        };
        let Ok(mut generation) = serde_json::from_slice::<Generation>(&kv.value) else {
            return Ok((None, Vec::new()));
        };
        match (generation.entries.pop(), generation.entries.is_empty()) {
            (Some(entry), true) => Ok((Some(entry), vec![Op::delete(kv.key.clone())])),
            _ => Ok((None, Vec::new())),
        }
    }

    /// Sweeps every `interval` until the process stops.
    pub fn expire_periodically(self: &Arc<Self>, interval: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(sessions) = weak.upgrade() else {
                    return;
                };
                if sessions.is_stopped() {
                    return;
                }
                sessions.expire_idle_sessions().await;
            }
        });
    }
}

fn due(record: &SessionRecord, now: i64) -> bool {
    matches!(record.state, State::Active | State::Finalized)
        && record.expires_at_ms().is_some_and(|at| at <= now)
}
