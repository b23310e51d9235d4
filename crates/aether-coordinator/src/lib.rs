//! The session-coordinator: sessions, trees, history, review, knowledge and audit.
//!
//! The domain is plain Rust at the crate root: functions on [`Sessions`] take validated domain
//! types and an explicit [`Caller`] and return [`Error`], one variant per cause. [`grpc`] only
//! turns protobuf into those types, calls the domain, and maps errors to status codes in one
//! match ([`grpc::status`]). Outside [`grpc`] only [`events`] (a client of the bus) touches
//! tonic; wire types appear in the domain only as the encoded answer a change records for
//! retries and as the role numbers a policy stores.
//!
//! - [`sessions`] owns records, holds and fenced mutations (promises 1, 2, 4);
//! - [`lifecycle`] creates, forks, updates, hands over, finalizes and closes sessions;
//! - [`changes`] applies file changes atomically, with their preconditions;
//! - [`listing`] pages through the sessions a caller may see;
//! - [`browse`] lists, diffs and exports a session's files as of a revision;
//! - [`tombstones`] is what etcd keeps of a closed session (its record is in the store);
//! - [`requests`] records the outcomes of recent changes by request id (promise 9);
//! - [`trees`] reads and edits content-addressed trees in the content store;
//! - [`revisions`] resolves head/base/checkpoint/commit to roots; [`checkpoints`] names them;
//! - [`archive`] imports and exports tar;
//! - [`review`] keeps annotations and the approvals that gate commits and exports;
//! - [`knowledge`] keeps knowledge entries, versioned with the files through [`paged_map`];
//! - [`audit`] keeps each session's trail, its tail in etcd and the rest in the store;
//! - [`events`] says what happened ([`events::Event`]) and publishes it on the bus;
//! - [`rpcs`] is the one table of every RPC: the role it needs, change or read, forwarding;
//! - [`grpc`] adapts all of it to the v1 services.

pub mod append_log;
pub mod archive;
pub mod audit;
pub mod browse;
pub mod caller;
pub mod changes;
pub mod checkpoints;
pub mod error;
pub mod events;
pub mod expiry;
pub mod gc;
pub mod grpc;
pub mod knowledge;
pub mod label_index;
pub mod lifecycle;
pub mod listing;
pub mod model;
pub mod paged_map;
pub mod requests;
pub mod review;
pub mod revisions;
pub mod routing;
pub mod rpcs;
pub mod sessions;
pub mod tombstones;
pub mod trees;

use std::sync::Arc;
use std::time::Duration;

use aether_coord::{Coordination, LeaseKeeper};
use aether_store::Blobs;
use tonic::service::RoutesBuilder;

pub use caller::Caller;
pub use error::Error;
pub use events::EventSink;
pub use grpc::caller::CallerPolicy;
pub use sessions::{Node, Sessions};

/// Coordinator flags.
#[derive(Clone, Debug, clap::Args)]
pub struct CoordinatorArgs {
    /// Lease TTL of this node in seconds: how long a dead holder keeps its sessions.
    #[arg(long, env = "AETHER_LEASE_TTL_SECS", default_value_t = 5)]
    pub lease_ttl_secs: u64,
    /// Release a session hold after this many idle seconds, so load can spread across nodes.
    #[arg(long, env = "AETHER_IDLE_RELEASE_SECS", default_value_t = 60)]
    pub idle_release_secs: u64,
    /// How often to look for sessions idle past their TTL, in seconds.
    #[arg(long, env = "AETHER_EXPIRY_INTERVAL_SECS", default_value_t = 30)]
    pub expiry_interval_secs: u64,
    /// Session events held while the bus is slow or away; past it new events are dropped
    /// (logged, counted in `aether.events.dropped`) so mutations never wait on the bus.
    #[arg(long, env = "AETHER_EVENT_QUEUE_DEPTH", default_value_t = events::DEFAULT_QUEUE)]
    pub event_queue_depth: usize,
    /// INSECURE, tests and development only: take the caller's principal from the
    /// `x-aether-principal` request header, so anyone can act as anyone.
    #[arg(long, env = "AETHER_TRUST_PRINCIPAL_HEADER")]
    pub trust_principal_header: bool,
    /// TESTS ONLY, breaks the coordinator: after committing a change made by the RPC method
    /// named here (e.g. `Commit`), never answer it (the request hangs until the process is
    /// killed), so a test can kill a coordinator between applying a change and answering.
    /// Never set this on a deployment.
    #[arg(long, env = "AETHER_TEST_STALL_AFTER_COMMIT", value_name = "METHOD")]
    pub test_stall_after_commit: Option<String>,
}

/// Registers this node, starts its lease and returns the shared session state.
pub async fn start(
    coord: Arc<dyn Coordination>,
    blobs: Arc<dyn Blobs>,
    events: EventSink,
    address: String,
    args: &CoordinatorArgs,
) -> Result<Arc<Sessions>, Error> {
    if let Some(method) = &args.test_stall_after_commit {
        sessions::stall_after_commit(method);
    }
    let lease = LeaseKeeper::start(
        coord.clone(),
        Duration::from_secs(args.lease_ttl_secs.max(1)),
    )
    .await?;
    let node = Node {
        id: uuid::Uuid::new_v4().simple().to_string()[..16].to_string(),
        address,
    };
    sessions::register_node(&*coord, &node, lease.id()).await?;
    let trees = trees::Trees::new(blobs);
    trees.ensure_empty().await?;
    tracing::info!(node = %node.id, address = %node.address, "coordinator registered");
    // Sessions written before the label index existed are indexed in the background;
    // ListSessions scans until that is done.
    let indexing = coord.clone();
    tokio::spawn(async move {
        if let Err(e) = label_index::ensure(&*indexing).await {
            tracing::warn!(error = %e, "building the label index failed; ListSessions scans");
        }
    });
    let sessions = Sessions::new(coord, trees, events, node, lease);
    sessions.release_idle_holds(Duration::from_secs(args.idle_release_secs.max(1)));
    sessions.expire_periodically(Duration::from_secs(args.expiry_interval_secs.max(1)));
    Ok(sessions)
}

/// Adds the coordinator's gRPC services to a router, each behind the layer that settles its
/// callers by `policy`.
pub fn register(routes: &mut RoutesBuilder, sessions: &Arc<Sessions>, policy: CallerPolicy) {
    use aether_proto::{
        history_service_server::HistoryServiceServer,
        knowledge_service_server::KnowledgeServiceServer,
        review_service_server::ReviewServiceServer, session_service_server::SessionServiceServer,
        workspace_service_server::WorkspaceServiceServer,
    };
    use grpc::caller::WithCaller;
    const MAX_MESSAGE: usize = 8 * 1024 * 1024;
    if policy.trust_principal_header {
        tracing::warn!(
            "--trust-principal-header is on: any client can act as any principal by sending {}; never use this outside tests and development",
            grpc::caller::PRINCIPAL_HEADER
        );
    }
    routes.add_service(WithCaller::new(
        SessionServiceServer::new(grpc::session::SessionGrpc::new(sessions.clone())),
        policy,
    ));
    routes.add_service(WithCaller::new(
        WorkspaceServiceServer::new(grpc::workspace::WorkspaceGrpc::new(sessions.clone()))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
        policy,
    ));
    routes.add_service(WithCaller::new(
        HistoryServiceServer::new(grpc::history::HistoryGrpc::new(sessions.clone())),
        policy,
    ));
    routes.add_service(WithCaller::new(
        ReviewServiceServer::new(grpc::review::ReviewGrpc::new(sessions.clone())),
        policy,
    ));
    routes.add_service(WithCaller::new(
        KnowledgeServiceServer::new(grpc::knowledge::KnowledgeGrpc::new(sessions.clone())),
        policy,
    ));
}

/// What this crate's unit tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::Path;
    use std::sync::Arc;

    use aether_coord::EmbeddedCoordination;
    use aether_store::backend::BackendArgs;
    use aether_store::{BlobStore, Blobs, Limits};

    use crate::model::SessionRecord;

    /// A content store on the local filesystem under `dir`.
    pub fn local_blobs(dir: &Path) -> Arc<dyn Blobs> {
        let backend = BackendArgs::local(dir.to_path_buf());
        Arc::new(BlobStore::new(
            backend.build("objects").expect("local backend"),
            Limits::default(),
        ))
    }

    /// Embedded coordination in `dir`.
    pub fn coordination(dir: &Path) -> EmbeddedCoordination {
        EmbeddedCoordination::open(&dir.join("coord.log")).expect("embedded coordination")
    }

    /// An active session record `id` as the first version wrote it (no later fields).
    pub fn record(id: &str) -> SessionRecord {
        let json = r#"{"id":"ID","labels":{},"metadata":{},"owner":"alice",
            "policy":{"bindings":[],"required_commit_approvals":0,"required_export_approvals":0},
            "state":"Active","source":"Empty","base_root":"r","head_root":"r","head_version":3,
            "head_commit":null,"created_at_ms":1,"updated_at_ms":2,"ttl_ms":0,
            "checkpoint_count":0,"commit_count":0,"audit_sequence":0}"#;
        serde_json::from_str(&json.replace("ID", id)).expect("record")
    }
}
