//! The session core: records, holds, fenced mutations and audit.
//!
//! Reads are served by any coordinator straight from the coordination store and the content
//! store. Every mutation runs on the session's holder under a per-session lock, and commits
//! with one fenced transaction that puts the new record, the audit event and any side records
//! together (promises 1, 2 and 4): it applies only if this node still holds the session and the
//! record is unchanged since it was read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aether_coord::holder::{self, Acquire, Fence, FencedOutcome, HolderRecord};
use aether_coord::{Compare, Coordination, LeaseKeeper, Op};
use aether_core::Hash;
use aether_proto::SessionEvent;
use tokio::sync::OwnedMutexGuard;

use crate::error::{Error, Result};
use crate::events::EventSink;
use crate::model::{self, AuditRecord, SessionRecord, State};
use crate::trees::Trees;

/// This coordinator's identity in the cluster.
#[derive(Clone, Debug)]
pub struct Node {
    pub id: String,
    /// Where other coordinators reach this one.
    pub address: String,
}

struct Hold {
    fence: Fence,
    lock: Arc<tokio::sync::Mutex<()>>,
    /// When a mutation last used this hold; idle holds are released so load can spread.
    last_used: Mutex<Instant>,
}

/// Shared state of one coordinator process.
pub struct Sessions {
    pub(crate) coord: Arc<dyn Coordination>,
    pub(crate) trees: Trees,
    pub(crate) events: EventSink,
    node: Node,
    /// The node lease every hold is bound to; replaced when lost (after a pause or partition).
    lease: Mutex<Arc<LeaseKeeper>>,
    /// Serializes lease replacement.
    renewing: tokio::sync::Mutex<()>,
    /// Cancelled at shutdown: no new holds, no lease renewal.
    stopped: tokio_util::sync::CancellationToken,
    holds: Mutex<HashMap<String, Arc<Hold>>>,
}

/// A mutation in progress: the session's lock is held until it is committed or dropped.
pub struct Mutation {
    pub record: SessionRecord,
    read_revision: i64,
    fence: Fence,
    _guard: OwnedMutexGuard<()>,
    /// Side records to write in the same transaction.
    pub ops: Vec<Op>,
    /// Extra compares (for example: a checkpoint name must be free).
    pub compares: Vec<Compare>,
}

/// What a committed mutation records in the audit trail and publishes on the bus.
pub struct Effect {
    pub principal: String,
    pub action: &'static str,
    pub target: String,
    pub details: Vec<(String, String)>,
    pub event: Option<(&'static str, SessionEvent)>,
}

impl Effect {
    pub fn new(principal: &str, action: &'static str, target: impl Into<String>) -> Self {
        Self {
            principal: principal.to_string(),
            action,
            target: target.into(),
            details: Vec::new(),
            event: None,
        }
    }

    pub fn event(mut self, subject: &'static str, event: SessionEvent) -> Self {
        self.event = Some((subject, event));
        self
    }

    pub fn detail(mut self, key: &str, value: impl Into<String>) -> Self {
        self.details.push((key.to_string(), value.into()));
        self
    }
}

impl Sessions {
    pub fn new(
        coord: Arc<dyn Coordination>,
        trees: Trees,
        events: EventSink,
        node: Node,
        lease: LeaseKeeper,
    ) -> Arc<Self> {
        Arc::new(Self {
            coord,
            trees,
            events,
            node,
            lease: Mutex::new(Arc::new(lease)),
            renewing: tokio::sync::Mutex::new(()),
            stopped: tokio_util::sync::CancellationToken::new(),
            holds: Mutex::new(HashMap::new()),
        })
    }

    /// Whether the node is shutting down.
    pub fn is_stopped(&self) -> bool {
        self.stopped.is_cancelled()
    }

    fn current_lease(&self) -> Arc<LeaseKeeper> {
        self.lease.lock().expect("lease").clone()
    }

    /// The live node lease. When the old one was lost (this node paused or cut off past its
    /// TTL), every hold bound to it is void: they are forgotten, and a new lease is granted and
    /// the node registered again, so the node can serve (and take) sessions once more.
    async fn live_lease(&self) -> Result<Arc<LeaseKeeper>> {
        if self.stopped.is_cancelled() {
            return Err(Error::Unavailable(
                "this coordinator is shutting down; retry on another node".into(),
            ));
        }
        let lease = self.current_lease();
        if !lease.lost().is_cancelled() {
            return Ok(lease);
        }
        let _renewing = self.renewing.lock().await;
        let lease = self.current_lease();
        if !lease.lost().is_cancelled() {
            return Ok(lease);
        }
        tracing::warn!("node lease lost; dropping every session hold and registering again");
        self.holds.lock().expect("holds").clear();
        let fresh = Arc::new(LeaseKeeper::start(self.coord.clone(), lease.ttl()).await?);
        register_node(&*self.coord, &self.node, fresh.id()).await?;
        *self.lease.lock().expect("lease") = fresh.clone();
        Ok(fresh)
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The address of the coordinator holding `id`, if that is another one.
    pub async fn holder_elsewhere_of(&self, id: &str) -> Result<Option<String>> {
        if self.current_lease().lost().is_cancelled() {
            self.holds.lock().expect("holds").clear();
        }
        if self.holds.lock().expect("holds").contains_key(id) || validate_session_id(id).is_err() {
            return Ok(None);
        }
        Ok(holder::current(&*self.coord, &model::holder_key(id))
            .await?
            .map(|(record, _)| record)
            .filter(|record| record.node_id != self.node.id && !record.address.is_empty())
            .map(|record| record.address))
    }

    /// Releases holds unused for `idle`, checking every `idle / 2`, until the node stops.
    pub fn release_idle_holds(self: &Arc<Self>, idle: Duration) {
        let weak = Arc::downgrade(self);
        let stopped = self.stopped.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stopped.cancelled() => return,
                    _ = tokio::time::sleep(idle / 2) => {}
                }
                let Some(sessions) = weak.upgrade() else {
                    return;
                };
                let idle_holds: Vec<(String, Arc<Hold>)> = sessions
                    .holds
                    .lock()
                    .expect("holds")
                    .iter()
                    .filter(|(_, h)| h.last_used.lock().expect("last used").elapsed() >= idle)
                    .map(|(id, h)| (id.clone(), h.clone()))
                    .collect();
                for (id, hold) in idle_holds {
                    // Only release a hold nobody is using right now.
                    let Ok(_guard) = hold.lock.try_lock() else {
                        continue;
                    };
                    sessions.holds.lock().expect("holds").remove(&id);
                    if let Err(e) = holder::release(&*sessions.coord, &hold.fence).await {
                        tracing::warn!(session = %id, error = %e, "releasing idle hold failed");
                    } else {
                        tracing::debug!(session = %id, "released idle hold");
                    }
                }
            }
        });
    }

    /// Reads a session record and its revision.
    pub async fn load(&self, id: &str) -> Result<(SessionRecord, i64)> {
        validate_session_id(id)?;
        let kv = self
            .coord
            .get(&model::session_key(id))
            .await?
            .ok_or_else(|| Error::NotFound(format!("session {id} not found")))?;
        let record: SessionRecord = serde_json::from_slice(&kv.value)
            .map_err(|e| Error::Internal(format!("session record {id} unreadable: {e}")))?;
        // Every session RPC loads its record here (mutations through `begin`): the one place
        // the caller's role on the session is checked (promise 6).
        crate::grpc::caller::authorize(&record)?;
        Ok((record, kv.mod_revision))
    }

    /// Takes (or reuses) this node's hold on a session.
    async fn hold(&self, id: &str) -> Result<Arc<Hold>> {
        let lease = self.live_lease().await?;
        if let Some(hold) = self.holds.lock().expect("holds").get(id) {
            *hold.last_used.lock().expect("last used") = Instant::now();
            return Ok(hold.clone());
        }
        let record = HolderRecord {
            node_id: self.node.id.clone(),
            address: self.node.address.clone(),
        };
        match holder::acquire(&*self.coord, &model::holder_key(id), &record, lease.id()).await? {
            Acquire::Held(fence) => {
                let hold = Arc::new(Hold {
                    fence,
                    lock: Arc::new(tokio::sync::Mutex::new(())),
                    last_used: Mutex::new(Instant::now()),
                });
                let mut holds = self.holds.lock().expect("holds");
                Ok(holds.entry(id.to_string()).or_insert(hold).clone())
            }
            Acquire::HeldBy(other) => Err(Error::Unavailable(format!(
                "session {id} is held by coordinator {} at {}; send the request there",
                other.node_id, other.address
            ))),
        }
    }

    fn drop_hold(&self, id: &str) {
        self.holds.lock().expect("holds").remove(id);
    }

    /// Starts a mutation of an existing session.
    pub async fn begin(&self, id: &str) -> Result<Mutation> {
        validate_session_id(id)?;
        let hold = self.hold(id).await?;
        let guard = hold.lock.clone().lock_owned().await;
        let (record, read_revision) = self.load(id).await?;
        Ok(Mutation {
            record,
            read_revision,
            fence: hold.fence.clone(),
            _guard: guard,
            ops: Vec::new(),
            compares: Vec::new(),
        })
    }

    /// Starts a mutation that must find the session active (writable).
    pub async fn begin_active(&self, id: &str) -> Result<Mutation> {
        let mutation = self.begin(id).await?;
        require_active(&mutation.record)?;
        Ok(mutation)
    }

    /// Commits a mutation: record, audit event and side records in one fenced transaction.
    pub async fn commit(&self, mut mutation: Mutation, effect: Effect) -> Result<SessionRecord> {
        let id = mutation.record.id.clone();
        let now = model::now_ms();
        mutation.record.updated_at_ms = now;
        mutation.record.audit_sequence += 1;
        let audit = AuditRecord {
            sequence: mutation.record.audit_sequence,
            principal: effect.principal.clone(),
            action: effect.action.to_string(),
            target: effect.target.clone(),
            time_ms: now,
            outcome: "ok".into(),
            details: effect.details.iter().cloned().collect(),
        };
        let mut ops = vec![
            Op::put(model::session_key(&id), to_json(&mutation.record)),
            Op::put(model::audit_key(&id, audit.sequence), to_json(&audit)),
        ];
        ops.append(&mut mutation.ops);
        let mut compares = vec![Compare::ModRevision(
            model::session_key(&id),
            mutation.read_revision,
        )];
        compares.append(&mut mutation.compares);
        match holder::fenced_txn(&*self.coord, &mutation.fence, compares, ops).await? {
            FencedOutcome::Applied(_) => {}
            FencedOutcome::Conflict => {
                return Err(Error::Aborted(format!(
                "session {id} changed concurrently (or a name is already taken); re-read and retry"
            )))
            }
            FencedOutcome::Fenced => {
                self.drop_hold(&id);
                return Err(Error::Fenced(id));
            }
        }
        if let Some((subject, mut event)) = effect.event {
            event.head_version = mutation.record.head_version;
            event.principal = effect.principal;
            self.events.publish(&id, subject, event).await;
        }
        if matches!(mutation.record.state, State::Closed | State::Expired) {
            // Nothing can change a closed session again, so this runs once per session.
            self.events.archive(&id).await;
        }
        Ok(mutation.record)
    }

    /// Creates a new session record (and takes its hold) in one transaction.
    pub async fn create(&self, mut record: SessionRecord, effect: Effect) -> Result<SessionRecord> {
        let id = record.id.clone();
        let lease = self.live_lease().await?;
        record.audit_sequence = 1;
        let audit = AuditRecord {
            sequence: 1,
            principal: effect.principal.clone(),
            action: effect.action.to_string(),
            target: effect.target.clone(),
            time_ms: record.created_at_ms,
            outcome: "ok".into(),
            details: effect.details.iter().cloned().collect(),
        };
        let holder = HolderRecord {
            node_id: self.node.id.clone(),
            address: self.node.address.clone(),
        };
        // One transaction takes the hold and writes the record: a new session costs a single
        // durable write.
        let holder_key = model::holder_key(&id);
        let outcome = self
            .coord
            .txn(
                vec![
                    Compare::Missing(holder_key.clone()),
                    Compare::Missing(model::session_key(&id)),
                ],
                vec![
                    Op::Put {
                        key: holder_key.clone(),
                        value: to_json(&holder),
                        lease: Some(lease.id()),
                    },
                    Op::put(model::session_key(&id), to_json(&record)),
                    Op::put(model::audit_key(&id, 1), to_json(&audit)),
                ],
            )
            .await?;
        if !outcome.succeeded {
            return Err(Error::AlreadyExists(format!("session {id} already exists")));
        }
        let hold = Arc::new(Hold {
            fence: Fence {
                key: holder_key,
                create_revision: outcome.revision,
            },
            lock: Arc::new(tokio::sync::Mutex::new(())),
            last_used: Mutex::new(Instant::now()),
        });
        self.holds.lock().expect("holds").insert(id, hold);
        Ok(record)
    }

    /// Releases every hold (graceful shutdown), so other nodes take over at once.
    pub async fn release_all(&self) {
        self.stopped.cancel();
        let holds: Vec<Arc<Hold>> = self
            .holds
            .lock()
            .expect("holds")
            .drain()
            .map(|(_, h)| h)
            .collect();
        for hold in holds {
            if let Err(e) = holder::release(&*self.coord, &hold.fence).await {
                tracing::warn!(key = %hold.fence.key, error = %e, "releasing hold failed");
            }
        }
        if let Err(e) = self.current_lease().revoke().await {
            tracing::warn!(error = %e, "revoking node lease failed");
        }
    }

    /// Parses a stored root hash.
    pub fn root(value: &str) -> Result<Hash> {
        Hash::from_hex(value).map_err(|e| Error::Internal(format!("stored root unreadable: {e}")))
    }
}

/// Records this node under its lease, so the cluster knows who is alive and where.
pub async fn register_node(
    coord: &dyn Coordination,
    node: &Node,
    lease: aether_coord::LeaseId,
) -> Result<()> {
    let registration = serde_json::json!({ "id": node.id, "address": node.address });
    coord
        .txn(
            vec![],
            vec![Op::Put {
                key: model::node_key(&node.id),
                value: registration.to_string().into_bytes(),
                lease: Some(lease),
            }],
        )
        .await?;
    Ok(())
}

pub fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialize")
}

/// Session ids are server-made, but arrive from clients: check before using them in keys.
pub fn validate_session_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::InvalidArgument("session_id is required".into()));
    }
    if id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Error::InvalidArgument(format!(
            "session_id {:?} is malformed: ids are up to 64 characters of [A-Za-z0-9_-]",
            id.chars().take(80).collect::<String>()
        )));
    }
    Ok(())
}

pub fn require_active(record: &SessionRecord) -> Result<()> {
    match record.state {
        State::Active => Ok(()),
        State::Finalized => Err(Error::FailedPrecondition(format!(
            "session {} is finalized (read-only); fork it to keep working",
            record.id
        ))),
        State::Closed | State::Expired => Err(Error::FailedPrecondition(format!(
            "session {} is closed; its workspace is gone (commits and audit remain)",
            record.id
        ))),
    }
}

/// Reads must find the workspace still there.
pub fn require_open(record: &SessionRecord) -> Result<()> {
    match record.state {
        State::Active | State::Finalized => Ok(()),
        _ => require_active(record),
    }
}

pub fn check_expected_version(record: &SessionRecord, expected: u64) -> Result<()> {
    if expected != 0 && expected != record.head_version {
        return Err(Error::Aborted(format!(
            "expected head version {expected} but session {} is at {}; re-read and retry",
            record.id, record.head_version
        )));
    }
    Ok(())
}
