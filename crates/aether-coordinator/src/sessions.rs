//! The session core: records, holds, fenced mutations and audit.
//!
//! Reads are served by any coordinator straight from the coordination store and the content
//! store. Every mutation runs on the session's holder under a per-session lock, and commits
//! with one fenced transaction that puts the new record, the audit event and any side records
//! together (promises 1, 2 and 4): it applies only if this node still holds the session and the
//! record is unchanged since it was read.
//!
//! A change made for a request that names itself with a request id also records its answer in
//! that transaction, and a later attempt with the same id is answered from the record instead
//! of applying again (promise 9, [`crate::requests`]): `begin` looks the id up under the
//! session's lock, `commit` records it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use aether_coord::holder::{self, Acquire, Fence, FencedOutcome, HolderRecord};
use aether_coord::{Compare, CoordError, Coordination, LeaseKeeper, Op};
use aether_core::Hash;
use bytes::Bytes;
use tokio::sync::OwnedMutexGuard;

use crate::caller::Caller;
use crate::error::{Error, Result};
use crate::events::EventSink;
use crate::model::{self, AuditRecord, SessionRecord, State};
use crate::requests::{self, Generation, RequestIndex, RequestKey, RequestRecord};
use crate::tombstones::{self, Stored};
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
    lock: Arc<tokio::sync::Mutex<HoldState>>,
    /// When a mutation last used this hold; idle holds are released so load can spread.
    last_used: Mutex<Instant>,
}

/// What the session's lock guards besides the right to change the session.
#[derive(Debug, Default)]
pub struct HoldState {
    /// The session's recorded requests, once read; checked against the record before use.
    requests: Option<RequestIndex>,
}

impl Hold {
    fn new(fence: Fence) -> Self {
        Hold {
            fence,
            lock: Arc::new(tokio::sync::Mutex::new(HoldState::default())),
            last_used: Mutex::new(Instant::now()),
        }
    }
}

/// Shared state of one coordinator process.
pub struct Sessions {
    pub(crate) coord: Arc<dyn Coordination>,
    pub(crate) trees: Trees,
    pub(crate) events: EventSink,
    /// Audit trails, in the content store.
    pub(crate) audit: crate::audit::AuditLog,
    /// Checkpoints, in the content store.
    pub(crate) checkpoints: crate::checkpoints::Checkpoints,
    /// Approval requests, in the content store.
    pub(crate) approvals: crate::review::Approvals,
    /// Annotations, in the content store.
    pub(crate) annotations: crate::review::Annotations,
    /// Knowledge entries, in the content store.
    pub(crate) knowledge: crate::knowledge::Knowledge,
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
    state: OwnedMutexGuard<HoldState>,
    /// Side records to write in the same transaction.
    pub ops: Vec<Op>,
    /// Extra compares (for example: a checkpoint name must be free).
    pub compares: Vec<Compare>,
    /// The encoded answer of the change, recorded with it for retries ([`Mutation::reply`]).
    reply: Option<Bytes>,
    /// Whether [`Mutation::stamp`] set the update time.
    stamped: bool,
    /// The labels as read, so the commit updates the label index by what changed.
    labels_read: BTreeMap<String, String>,
    /// Who makes the change.
    caller: Caller,
}

impl Mutation {
    /// Sets the answer a retry of this change gets. A change made for a request that names
    /// itself with a request id must have one before `commit`: build the response first.
    pub fn reply(&mut self, response: &impl prost::Message) {
        self.reply = Some(Bytes::from(response.encode_to_vec()));
    }

    /// Sets the record's update time now (rather than at commit), for answers that show it.
    pub fn stamp(&mut self) -> &SessionRecord {
        if !self.stamped {
            self.record.updated_at_ms = model::now_ms();
            self.stamped = true;
        }
        &self.record
    }
}

/// A change made to a mutation's record, not yet committed (or no change at all): the
/// record is the new head. [`Sessions::finish`] commits it with its answer.
pub struct Prepared {
    mutation: Mutation,
    effect: Option<Effect>,
}

impl Prepared {
    pub fn changed(mutation: Mutation, effect: Effect) -> Self {
        Prepared {
            mutation,
            effect: Some(effect),
        }
    }

    /// Nothing to commit: the answer is not recorded (a retry changes nothing either).
    pub fn unchanged(mutation: Mutation) -> Self {
        Prepared {
            mutation,
            effect: None,
        }
    }

    pub fn record(&self) -> &SessionRecord {
        &self.mutation.record
    }

    /// The record with its update time set now, for answers that show it.
    pub fn stamp(&mut self) -> &SessionRecord {
        self.mutation.stamp()
    }
}

/// A request outcome being committed with a change.
struct Recording {
    key: RequestKey,
    sequence: u64,
    generation: Generation,
}

/// TESTS ONLY (`--test-stall-after-commit`): the RPC method (`Commit`) whose committed changes
/// are never answered, so a test can kill the process between applying and answering.
static STALL_AFTER_COMMIT: OnceLock<String> = OnceLock::new();

/// Never returns when the current request's method is the one `--test-stall-after-commit`
/// names (tests only).
async fn stall_if_testing(id: &str, caller: &Caller) {
    if let Some(stall) = STALL_AFTER_COMMIT.get() {
        let method = caller.method();
        if stall == method {
            tracing::warn!(session = %id, %method, "committed; stalling forever before answering (--test-stall-after-commit)");
            std::future::pending::<()>().await;
        }
    }
}

/// Makes every change of RPC `method` hang forever once committed (tests only; see
/// `CoordinatorArgs::test_stall_after_commit`).
pub fn stall_after_commit(method: &str) {
    tracing::warn!(
        method,
        "--test-stall-after-commit is on: committed {method} changes are never answered; never use this outside tests"
    );
    let _ = STALL_AFTER_COMMIT.set(method.to_string());
}

/// What a committed mutation records in the audit trail and publishes on the bus.
pub struct Effect {
    pub principal: String,
    pub action: &'static str,
    pub target: String,
    pub details: Vec<(String, String)>,
    pub event: Option<crate::events::Event>,
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

    pub fn event(mut self, event: crate::events::Event) -> Self {
        self.event = Some(event);
        self
    }

    pub fn detail(mut self, key: &str, value: impl Into<String>) -> Self {
        self.details.push((key.to_string(), value.into()));
        self
    }

    /// The audit event of this effect, number `sequence` in the session's trail.
    fn audit_record(&self, sequence: u64, time_ms: i64) -> AuditRecord {
        AuditRecord {
            sequence,
            principal: self.principal.clone(),
            action: self.action.to_string(),
            target: self.target.clone(),
            time_ms,
            outcome: "ok".into(),
            details: self.details.iter().cloned().collect(),
        }
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
        let audit = crate::audit::AuditLog::new(trees.blobs().clone());
        let checkpoints = crate::checkpoints::Checkpoints::new(trees.blobs().clone());
        let approvals = crate::review::Approvals::new(trees.blobs().clone());
        let annotations = crate::review::Annotations::new(trees.blobs().clone());
        let knowledge = crate::knowledge::Knowledge::new(trees.blobs().clone());
        Arc::new(Self {
            coord,
            trees,
            events,
            audit,
            checkpoints,
            approvals,
            annotations,
            knowledge,
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
    pub async fn load(&self, caller: &Caller, id: &str) -> Result<(SessionRecord, i64)> {
        validate_session_id(id)?;
        let kv = self
            .coord
            .get(&model::session_key(id))
            .await?
            .ok_or_else(|| Error::SessionNotFound {
                session: id.to_string(),
            })?;
        let stored = Stored::decode(&kv.value)
            .map_err(|e| Error::Internal(format!("session record {id} unreadable: {e}")))?;
        let record = stored.resolve(self.trees.blobs().as_ref()).await?;
        // Every session RPC loads its record here (mutations through `begin`): the one place
        // the caller's role on the session is checked (promise 6).
        caller.authorize(&record)?;
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
                let hold = Arc::new(Hold::new(fence));
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

    /// Starts a mutation of an existing session. A retry of a change already recorded for
    /// the session ends here: `Err(Replayed)`, and the recorded answer goes to the caller.
    pub async fn begin(&self, caller: &Caller, id: &str) -> Result<Mutation> {
        validate_session_id(id)?;
        let hold = self.hold(id).await?;
        let mut state = hold.lock.clone().lock_owned().await;
        let (record, read_revision) = self.load(caller, id).await?;
        if let Some(key) = caller.request() {
            if let Some(entry) = record.closing_request.as_ref().filter(|e| e.names(key)) {
                return Err(self.replay(caller, id, entry.clone()).await);
            }
            let index = self.request_index(&mut state, &record).await?;
            if let Some(sequence) = index.find(key) {
                if let Some(entry) = requests::fetch(&*self.coord, id, sequence, key).await? {
                    return Err(self.replay(caller, id, entry).await);
                }
            }
        }
        Ok(Mutation {
            labels_read: record.labels.clone(),
            record,
            read_revision,
            fence: hold.fence.clone(),
            state,
            ops: Vec::new(),
            compares: Vec::new(),
            reply: None,
            stamped: false,
            caller: caller.clone(),
        })
    }

    /// [`Sessions::load`] for a change that does work before it begins (reading a body): a
    /// retry of a change already applied is answered now, before its body is read.
    pub async fn load_for_change(&self, caller: &Caller, id: &str) -> Result<(SessionRecord, i64)> {
        if caller.request().is_none() {
            return self.load(caller, id).await;
        }
        let mutation = self.begin(caller, id).await?;
        Ok((mutation.record, mutation.read_revision))
    }

    /// The session's recorded requests as of `record`, read again when they may have changed.
    async fn request_index<'a>(
        &self,
        state: &'a mut HoldState,
        record: &SessionRecord,
    ) -> Result<&'a mut RequestIndex> {
        let index = match state.requests.take() {
            Some(index) if index.count() == record.request_count => index,
            _ => RequestIndex::load(&*self.coord, &record.id, record.request_count).await?,
        };
        Ok(state.requests.insert(index))
    }

    /// Hands a recorded answer to the request layer; the error ends the handler.
    async fn replay(&self, caller: &Caller, id: &str, entry: RequestRecord) -> Error {
        match requests::load_reply(self.trees.blobs().as_ref(), &entry.reply).await {
            Ok(reply) => {
                tracing::info!(
                    session = %id,
                    method = %entry.method,
                    request_id = %entry.id,
                    "answering a retry with the outcome recorded by its first attempt"
                );
                caller.replay(reply);
                Error::Replayed(entry.id)
            }
            Err(e) => e,
        }
    }

    /// The id of a session being created: derived from the request id when the request names
    /// one (so every attempt names the same session), else random. A retry of a creation that
    /// was applied ends here, answered with the recorded outcome.
    pub async fn new_session_id(&self, caller: &Caller) -> Result<String> {
        let Some(key) = caller.request() else {
            return Ok(random_session_id());
        };
        let id = requests::creation_session_id(key);
        match requests::fetch(&*self.coord, &id, 0, key).await? {
            Some(entry) => Err(self.replay(caller, &id, entry).await),
            None => Ok(id),
        }
    }

    /// Commits a prepared change with its answer (nothing when it changed nothing).
    pub async fn finish(
        &self,
        prepared: Prepared,
        reply: &impl prost::Message,
    ) -> Result<SessionRecord> {
        let Prepared {
            mut mutation,
            effect,
        } = prepared;
        match effect {
            None => Ok(mutation.record),
            Some(effect) => {
                mutation.reply(reply);
                self.commit(mutation, effect).await
            }
        }
    }

    /// The outcome of the current request, to commit with its change: the next request number
    /// of the session (counted in the record) in its generation key, or in the record itself
    /// when the change closes the session.
    async fn record_request(
        &self,
        mutation: &mut Mutation,
        key: RequestKey,
        closing: bool,
        now: i64,
    ) -> Result<(Recording, Option<Op>)> {
        let reply = mutation.reply.take().ok_or_else(|| {
            Error::Internal(format!(
                "{} changed session {} without setting the answer a retry gets",
                key.method, mutation.record.id
            ))
        })?;
        let reply = requests::store_reply(self.trees.blobs().as_ref(), reply).await?;
        let id = mutation.record.id.clone();
        let sequence = mutation.record.request_count;
        let entry = RequestRecord {
            sequence,
            principal: key.principal.clone(),
            method: key.method.clone(),
            id: key.id.clone(),
            time_ms: now,
            reply,
        };
        let (op, generation) = if closing {
            mutation.record.closing_request = Some(entry);
            (None, Generation::default())
        } else {
            let (op, generation) = self
                .request_index(&mut mutation.state, &mutation.record)
                .await?
                .next(&id, entry);
            (Some(op), generation)
        };
        mutation.record.request_count += 1;
        Ok((
            Recording {
                key,
                sequence,
                generation,
            },
            op,
        ))
    }

    /// Starts a mutation that must find the session open (active or finalized).
    pub async fn begin_open(&self, caller: &Caller, id: &str) -> Result<Mutation> {
        let mutation = self.begin(caller, id).await?;
        require_open(&mutation.record)?;
        Ok(mutation)
    }

    /// Starts a mutation that must find the session active (writable).
    pub async fn begin_active(&self, caller: &Caller, id: &str) -> Result<Mutation> {
        let mutation = self.begin(caller, id).await?;
        require_active(&mutation.record)?;
        Ok(mutation)
    }

    /// Commits a mutation: record, audit event and side records in one fenced transaction.
    pub async fn commit(&self, mut mutation: Mutation, effect: Effect) -> Result<SessionRecord> {
        let id = mutation.record.id.clone();
        let now = model::now_ms();
        if !mutation.stamped {
            mutation.record.updated_at_ms = now;
        }
        mutation.record.audit_sequence += 1;
        // A closed session keeps only the outcome of the request that closed it.
        let closing = matches!(mutation.record.state, State::Closed | State::Expired);
        let (recording, mut ops) = self.request_ops(&mut mutation, closing, now).await?;
        let audit = effect.audit_record(mutation.record.audit_sequence, now);
        let appended = self
            .audit
            .append(&*self.coord, &mut mutation.record, audit)
            .await?;
        ops.extend(appended.ops);
        let stored = if closing {
            // The last change: etcd keeps a tombstone, the store the record.
            to_json(&tombstones::archive(self.trees.blobs().as_ref(), &mutation.record).await?)
        } else {
            to_json(&mutation.record)
        };
        ops.push(Op::put(model::session_key(&id), stored));
        ops.extend(model::label_index_ops(
            &id,
            &mutation.labels_read,
            &mutation.record.labels,
        ));
        ops.append(&mut mutation.ops);
        self.fenced_commit(&id, &mut mutation, ops).await?;
        mutation.caller.note_applied();
        self.clean_up_after_commit(&id, &mutation, appended.cleanup)
            .await;
        if let Some(Recording {
            key,
            sequence,
            generation,
        }) = recording
        {
            match mutation.state.requests.as_mut() {
                Some(index) if !closing => index.applied(key, sequence, generation),
                _ => mutation.state.requests = None,
            }
        }
        stall_if_testing(&id, &mutation.caller).await;
        if let Some(event) = effect.event {
            let version = mutation.record.head_version;
            self.events
                .publish(&id, version, effect.principal, event)
                .await;
        }
        if closing {
            // Nothing can change a closed session again, so this runs once per session, and
            // the hold has nothing left to guard.
            self.events.archive(&id).await;
            self.drop_hold(&id);
            if let Err(e) = holder::release(&*self.coord, &mutation.fence).await {
                tracing::warn!(session = %id, error = %e, "releasing a closed session's hold failed");
            }
        }
        Ok(mutation.record)
    }

    /// The writes that record the mutation's request (its answer for retries), and those that
    /// drop every requests key when the session closes (the closing request is kept in the
    /// archived record).
    async fn request_ops(
        &self,
        mutation: &mut Mutation,
        closing: bool,
        now: i64,
    ) -> Result<(Option<Recording>, Vec<Op>)> {
        let mut ops = Vec::new();
        let recording = match mutation.caller.request().cloned() {
            Some(key) => {
                let (recording, op) = self.record_request(mutation, key, closing, now).await?;
                ops.extend(op);
                Some(recording)
            }
            None => None,
        };
        if closing {
            ops.extend(requests::delete_ops(&mutation.record.id, None));
        }
        Ok((recording, ops))
    }

    /// Writes `ops` if the record is as the mutation read it and this node still holds the
    /// session.
    async fn fenced_commit(&self, id: &str, mutation: &mut Mutation, ops: Vec<Op>) -> Result<()> {
        let mut compares = vec![Compare::ModRevision(
            model::session_key(id),
            mutation.read_revision,
        )];
        compares.append(&mut mutation.compares);
        let outcome = holder::fenced_txn(&*self.coord, &mutation.fence, compares, ops).await;
        match outcome.map_err(|e| unconfirmed(id, e)) {
            Err(e) => {
                // What is recorded is unknown now: read it again next time.
                mutation.state.requests = None;
                Err(e)
            }
            Ok(FencedOutcome::Applied(_)) => Ok(()),
            Ok(FencedOutcome::Conflict) => Err(Error::Aborted(format!(
                "session {id} changed concurrently (or a name is already taken); re-read and retry"
            ))),
            Ok(FencedOutcome::Fenced) => {
                self.drop_hold(id);
                Err(Error::Fenced(id.to_string()))
            }
        }
    }

    /// Deletes keys a committed mutation left unused (old label index keys, audit keys moved
    /// to the store). Best effort: a key left behind is never read.
    async fn clean_up_after_commit(&self, id: &str, mutation: &Mutation, audit_moved: Vec<Op>) {
        let removals =
            model::label_index_removals(id, &mutation.labels_read, &mutation.record.labels);
        if !removals.is_empty() {
            if let Err(e) = self.coord.txn(vec![], removals).await {
                tracing::warn!(session = %id, error = %e, "removing old label index keys failed");
            }
        }
        if !audit_moved.is_empty() {
            // The next move deletes one left behind.
            if let Err(e) = self.coord.txn(vec![], audit_moved).await {
                tracing::warn!(session = %id, error = %e, "removing moved audit keys failed");
            }
        }
    }

    /// Creates a new session record (and takes its hold) in one transaction, with `reply` as
    /// the answer a retry gets. The id must come from [`Sessions::new_session_id`].
    pub async fn create(
        &self,
        caller: &Caller,
        mut record: SessionRecord,
        effect: Effect,
        reply: &impl prost::Message,
    ) -> Result<SessionRecord> {
        let id = record.id.clone();
        let lease = self.live_lease().await?;
        record.audit_sequence = 1;
        let request = caller.request();
        let recorded = self.record_creation(&mut record, request, reply).await?;
        let audit = effect.audit_record(1, record.created_at_ms);
        // A new trail, whatever the record was built from (a fork copies its parent's record).
        record.audit_root = String::new();
        record.audit_store_from = 0;
        record.audit_log = String::new();
        record.audit_log_from = 0;
        record.audit_log_through = 0;
        let appended = self.audit.append(&*self.coord, &mut record, audit).await?;
        let holder = HolderRecord {
            node_id: self.node.id.clone(),
            address: self.node.address.clone(),
        };
        // One transaction takes the hold and writes the record: a new session costs a single
        // durable write.
        let holder_key = model::holder_key(&id);
        let mut ops = vec![
            Op::Put {
                key: holder_key.clone(),
                value: to_json(&holder),
                lease: Some(lease.id()),
            },
            Op::put(model::session_key(&id), to_json(&record)),
        ];
        ops.extend(appended.ops);
        ops.extend(recorded);
        ops.extend(model::label_index_ops(
            &id,
            &BTreeMap::new(),
            &record.labels,
        ));
        let outcome = self
            .coord
            .txn(
                vec![
                    Compare::Missing(holder_key.clone()),
                    Compare::Missing(model::session_key(&id)),
                ],
                ops,
            )
            .await
            .map_err(|e| unconfirmed(&id, e))?;
        if !outcome.succeeded {
            return Err(self.creation_refused(caller, &id).await);
        }
        caller.note_applied();
        let hold = Arc::new(Hold::new(Fence {
            key: holder_key,
            create_revision: outcome.revision,
        }));
        self.holds.lock().expect("holds").insert(id, hold);
        Ok(record)
    }

    /// Records the creating request as the session's request 0 (its answer for retries): the
    /// write to make with the record, if the request has an id.
    async fn record_creation(
        &self,
        record: &mut SessionRecord,
        request: Option<&RequestKey>,
        reply: &impl prost::Message,
    ) -> Result<Option<Op>> {
        let Some(key) = request else {
            return Ok(None);
        };
        let reply = Bytes::from(reply.encode_to_vec());
        let entry = RequestRecord {
            sequence: 0,
            principal: key.principal.clone(),
            method: key.method.clone(),
            id: key.id.clone(),
            time_ms: record.created_at_ms,
            reply: requests::store_reply(self.trees.blobs().as_ref(), reply).await?,
        };
        record.request_count = 1;
        Ok(Some(requests::only(&record.id, entry).0))
    }

    /// Why session `id` could not be created: another attempt of the same request may have
    /// created it meanwhile (answered with that attempt's outcome), or the id is taken.
    async fn creation_refused(&self, caller: &Caller, id: &str) -> Error {
        let Some(key) = caller.request() else {
            return Error::AlreadyExists(format!("session {id} already exists"));
        };
        match requests::fetch(&*self.coord, id, 0, key).await {
            Ok(Some(entry)) => self.replay(caller, id, entry).await,
            Ok(None) => Error::AlreadyExists(format!(
                "session {id} already exists: request id {} of {} already created it and its outcome is no longer kept; use a new request id",
                key.id, key.method
            )),
            Err(e) => e,
        }
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

/// The error of a transaction the coordination store did not answer: refused outright (too
/// large, or this node's lease is gone: nothing applied), or sent without an answer (it may
/// have applied).
fn unconfirmed(id: &str, error: CoordError) -> Error {
    match error {
        CoordError::Rejected(message) => Error::ResourceExhausted(message),
        CoordError::LeaseNotFound(_) => Error::Unavailable(format!(
            "this coordinator's lease ended before its change to session {id} was written (nothing applied); retry: another coordinator takes the session over"
        )),
        other => Error::OutcomeUnknown(format!(
            "the coordination store did not confirm the change to session {id} ({other})"
        )),
    }
}

/// A random session id (20 hex digits).
pub fn random_session_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..20].to_string()
}

pub fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialize")
}

/// Session ids are server-made, but arrive from clients: check before using them in keys.
pub fn validate_session_id(id: &str) -> Result<()> {
    aether_core::names::validate_session_id(id).map_err(|e| Error::InvalidArgument(e.to_string()))
}

pub fn require_active(record: &SessionRecord) -> Result<()> {
    match record.state {
        State::Active => Ok(()),
        State::Finalized => Err(Error::Finalized {
            session: record.id.clone(),
        }),
        State::Closed | State::Expired => Err(Error::Closed {
            session: record.id.clone(),
        }),
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
