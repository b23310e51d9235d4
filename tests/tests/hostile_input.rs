//! Hostile input over real gRPC against `aetherd dev`: each case asserts the exact status and
//! that nothing changed (head version and listing).

mod common;

use aether_proto as pb;
use aether_proto::history_service_client::HistoryServiceClient;
use aether_proto::session_service_client::SessionServiceClient;
use aether_proto::workspace_service_client::WorkspaceServiceClient;
use aether_testkit::ServiceProcess;
use common::{connect, create_session};
use tonic::transport::Channel;
use tonic::Code;

struct Dev {
    _data: tempfile::TempDir,
    _server: ServiceProcess,
    channel: Channel,
}

async fn start() -> Dev {
    let data = tempfile::tempdir().unwrap();
    let server = ServiceProcess::start(&[
        "dev".into(),
        "--data".into(),
        data.path().display().to_string(),
    ])
    .await
    .unwrap();
    let channel = connect(&server.endpoint()).await.unwrap();
    Dev {
        _data: data,
        _server: server,
        channel,
    }
}

fn code<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// Head version and the full listing of a session.
async fn snapshot(dev: &Dev, id: &str) -> (u64, Vec<String>) {
    let session = SessionServiceClient::new(dev.channel.clone())
        .get_session(pb::GetSessionRequest {
            session_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    let tree = WorkspaceServiceClient::new(dev.channel.clone())
        .list_tree(pb::ListTreeRequest {
            session_id: id.into(),
            recursive: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let paths = tree.entries.into_iter().map(|e| e.path).collect();
    (session.head_version, paths)
}

fn mkdir(id: &str, path: &str) -> pb::MakeDirectoryRequest {
    pb::MakeDirectoryRequest {
        session_id: id.into(),
        path: path.into(),
        parents: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_are_invalid_and_change_nothing() {
    let dev = start().await;
    let id = create_session(&dev.channel).await.unwrap().id;
    let mut workspace = WorkspaceServiceClient::new(dev.channel.clone());
    workspace.make_directory(mkdir(&id, "src")).await.unwrap();
    let before = snapshot(&dev, &id).await;
    let long_name = "n".repeat(300);
    let long_path = vec!["d"; 3000].join("/");
    for path in [
        "..",
        "../etc",
        "src/../../etc",
        "/abs",
        "src//x",
        "src/a\0b",
        long_name.as_str(),
        long_path.as_str(),
    ] {
        let result = workspace.make_directory(mkdir(&id, path)).await;
        assert_eq!(code(result), Code::InvalidArgument, "path {path:?}");
    }
    assert_eq!(snapshot(&dev, &id).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ids_and_states_change_nothing() {
    let dev = start().await;
    let mut sessions = SessionServiceClient::new(dev.channel.clone());
    let mut workspace = WorkspaceServiceClient::new(dev.channel.clone());
    let mut history = HistoryServiceClient::new(dev.channel.clone());
    let id = create_session(&dev.channel).await.unwrap().id;
    workspace.make_directory(mkdir(&id, "src")).await.unwrap();

    // An unknown (well-formed) session.
    let unknown = "0123456789abcdef0123456789abcdef";
    let result = workspace.make_directory(mkdir(unknown, "src")).await;
    assert_eq!(code(result), Code::NotFound);

    // A checkpoint that does not exist.
    let before = snapshot(&dev, &id).await;
    let result = history
        .restore_checkpoint(pb::RestoreCheckpointRequest {
            session_id: id.clone(),
            name: "never-taken".into(),
            expected_head_version: 0,
        })
        .await;
    assert_eq!(code(result), Code::NotFound);
    assert_eq!(snapshot(&dev, &id).await, before);

    // Writes to a finalized session.
    sessions
        .finalize_session(pb::FinalizeSessionRequest {
            session_id: id.clone(),
        })
        .await
        .unwrap();
    let before = snapshot(&dev, &id).await;
    let result = workspace.make_directory(mkdir(&id, "late")).await;
    assert_eq!(code(result), Code::FailedPrecondition);
    assert_eq!(snapshot(&dev, &id).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_concurrent_patches_exactly_one_wins() {
    let dev = start().await;
    let id = create_session(&dev.channel).await.unwrap().id;
    let (version, _) = snapshot(&dev, &id).await;
    let attempts = (0..8).map(|i| {
        let mut workspace = WorkspaceServiceClient::new(dev.channel.clone());
        let id = id.clone();
        async move {
            workspace
                .apply_changes(pb::ApplyChangesRequest {
                    session_id: id,
                    changes: vec![pb::Change {
                        op: Some(pb::change::Op::MakeDirectory(pb::MakeDirectoryOp {
                            path: format!("dir-{i}"),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    expected_head_version: version,
                })
                .await
        }
    });
    let codes: Vec<Code> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(code)
        .collect();
    assert_eq!(
        codes.iter().filter(|c| **c == Code::Ok).count(),
        1,
        "{codes:?}"
    );
    assert!(
        codes.iter().all(|c| matches!(c, Code::Ok | Code::Aborted)),
        "{codes:?}"
    );
    let (after, paths) = snapshot(&dev, &id).await;
    assert_eq!(after, version + 1);
    assert_eq!(paths.len(), 1, "{paths:?}");
}
