//! What the coordinator benches share: the coordinator in-process on the embedded default
//! behind a real gRPC server on loopback, and a session filled with small files.

use std::sync::Arc;

use aether_coord::EmbeddedCoordination;
use aether_coordinator::{CoordinatorArgs, EventSink};
use aether_proto as pb;
use aether_proto::session_service_client::SessionServiceClient;
use aether_proto::workspace_service_client::WorkspaceServiceClient;
use aether_store::backend::BackendArgs;
use aether_store::{BlobStore, Limits};
use tonic::transport::Channel;

pub async fn serve(dir: &std::path::Path) -> Channel {
    let store = BlobStore::new(
        BackendArgs::local(dir.to_path_buf())
            .build("objects")
            .unwrap(),
        Limits::default(),
    );
    let coord = Arc::new(EmbeddedCoordination::open(&dir.join("coordination.log")).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        coordinator: CoordinatorArgs,
    }
    let flags: Flags = clap::Parser::parse_from(["bench", "--idle-release-secs", "3600"]);
    let args = flags.coordinator;
    let sessions = aether_coordinator::start(
        coord,
        Arc::new(store),
        EventSink::disabled(),
        format!("http://{addr}"),
        &args,
    )
    .await
    .unwrap();
    let mut routes = tonic::service::RoutesBuilder::default();
    aether_coordinator::register(&mut routes, &sessions, Default::default());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes.routes())
            .serve_with_incoming(
                // As aetherd does: without TCP_NODELAY a response's last segment can wait
                // 40 ms for the client's delayed ACK.
                futures::StreamExt::map(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    |stream| {
                        stream.inspect(|s| {
                            let _ = s.set_nodelay(true);
                        })
                    },
                ),
            ),
    );
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap()
}

/// A session with `files` files of 64 bytes, 1000 per directory.
pub async fn filled_session(channel: &Channel, files: usize) -> String {
    let id = SessionServiceClient::new(channel.clone())
        .create_session(pb::CreateSessionRequest::default())
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap()
        .id;
    fill(channel, &id, files).await;
    id
}

/// Writes `files` files of 64 bytes into a session, 1000 per directory.
pub async fn fill(channel: &Channel, id: &str, files: usize) {
    let mut workspace =
        WorkspaceServiceClient::new(channel.clone()).max_encoding_message_size(64 << 20);
    for batch in (0..files).collect::<Vec<_>>().chunks(10_000) {
        let changes = batch
            .iter()
            .map(|i| pb::Change {
                op: Some(pb::change::Op::Write(pb::WriteOp {
                    path: format!("dir{:04}/file{i:07}.txt", i / 1000),
                    content: bytes::Bytes::from(format!("{i:064}")),
                    ..Default::default()
                })),
                precondition: None,
            })
            .collect();
        workspace
            .apply_changes(pb::ApplyChangesRequest {
                session_id: id.to_string(),
                changes,
                expected_head_version: 0,
            })
            .await
            .unwrap();
    }
}
