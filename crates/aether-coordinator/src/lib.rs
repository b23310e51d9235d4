//! The session-coordinator: sessions, trees, history, review, knowledge and audit.
//!
//! - [`sessions`] owns records, holds and fenced mutations (promises 1, 2, 4);
//! - [`trees`] reads and edits content-addressed trees in the content store;
//! - [`revisions`] resolves head/base/checkpoint/commit to roots;
//! - [`archive`] imports and exports tar;
//! - [`events`] publishes session events on the bus;
//! - [`grpc`] adapts all of it to the v1 services.

pub mod archive;
pub mod error;
pub mod events;
pub mod grpc;
pub mod model;
pub mod revisions;
pub mod sessions;
pub mod trees;

use std::sync::Arc;
use std::time::Duration;

use aether_coord::{Coordination, LeaseKeeper, Op};
use aether_store::Blobs;
use tonic::service::RoutesBuilder;

pub use error::Error;
pub use events::EventSink;
pub use sessions::{Node, Sessions};

/// Coordinator flags.
#[derive(Clone, Debug, clap::Args)]
pub struct CoordinatorArgs {
    /// Lease TTL of this node in seconds: how long a dead holder keeps its sessions.
    #[arg(long, env = "AETHER_LEASE_TTL_SECS", default_value_t = 5)]
    pub lease_ttl_secs: u64,
}

/// Registers this node, starts its lease and returns the shared session state.
pub async fn start(
    coord: Arc<dyn Coordination>,
    blobs: Arc<dyn Blobs>,
    events: EventSink,
    address: String,
    args: &CoordinatorArgs,
) -> Result<Arc<Sessions>, Error> {
    let lease = LeaseKeeper::start(
        coord.clone(),
        Duration::from_secs(args.lease_ttl_secs.max(1)),
    )
    .await?;
    let node = Node {
        id: uuid::Uuid::new_v4().simple().to_string()[..16].to_string(),
        address,
    };
    let registration = serde_json::json!({ "id": node.id, "address": node.address });
    coord
        .txn(
            vec![],
            vec![Op::Put {
                key: model::node_key(&node.id),
                value: registration.to_string().into_bytes(),
                lease: Some(lease.id()),
            }],
        )
        .await?;
    let trees = trees::Trees::new(blobs);
    trees.ensure_empty().await?;
    tracing::info!(node = %node.id, address = %node.address, "coordinator registered");
    Ok(Sessions::new(coord, trees, events, node, lease))
}

/// Adds the coordinator's gRPC services to a router.
pub fn register(routes: &mut RoutesBuilder, sessions: &Arc<Sessions>) {
    use aether_proto::{
        history_service_server::HistoryServiceServer,
        knowledge_service_server::KnowledgeServiceServer,
        review_service_server::ReviewServiceServer, session_service_server::SessionServiceServer,
        workspace_service_server::WorkspaceServiceServer,
    };
    const MAX_MESSAGE: usize = 8 * 1024 * 1024;
    routes.add_service(SessionServiceServer::new(grpc::session::SessionGrpc::new(
        sessions.clone(),
    )));
    routes.add_service(
        WorkspaceServiceServer::new(grpc::workspace::WorkspaceGrpc::new(sessions.clone()))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
    );
    routes.add_service(HistoryServiceServer::new(grpc::history::HistoryGrpc::new(
        sessions.clone(),
    )));
    routes.add_service(ReviewServiceServer::new(grpc::review::ReviewGrpc));
    routes.add_service(KnowledgeServiceServer::new(grpc::knowledge::KnowledgeGrpc));
}
