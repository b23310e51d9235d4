//! The foundation, end to end: three separate service processes on real etcd and a real S3
//! server, over real gRPC; and the same flow on the single-process embedded default.

use crate::common;

use aether_proto as pb;
use aether_testkit::{Cluster, ClusterSpec, ServiceProcess};
use common::*;

async fn assert_serving(endpoint: &str, service: &str) {
    common::assert_serving(&connect(endpoint).await.unwrap(), service).await
}

/// The services a process lists through gRPC server reflection.
async fn reflected_services(endpoint: &str) -> Vec<String> {
    common::reflected_services(&connect(endpoint).await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_read_and_event_across_three_processes() {
    let cluster = Cluster::start(ClusterSpec::default())
        .await
        .expect("start cluster");
    assert_serving(&cluster.stores[0].endpoint(), "aetherfs.v1.ContentService").await;
    assert_serving(&cluster.buses[0].endpoint(), "aetherfs.v1.BusService").await;
    assert_serving(
        &cluster.coordinator_endpoint(),
        "aetherfs.v1.WorkspaceService",
    )
    .await;
    // Server reflection lets polyglot tools discover the API of every process.
    let listed = reflected_services(&cluster.coordinator_endpoint()).await;
    for service in [
        "aetherfs.v1.SessionService",
        "aetherfs.v1.WorkspaceService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            listed.iter().any(|s| s == service),
            "{service} not in {listed:?}"
        );
    }
    assert!(reflected_services(&cluster.stores[0].endpoint())
        .await
        .iter()
        .any(|s| s == "aetherfs.v1.ContentService"));

    let coordinator = connect(&cluster.coordinator_endpoint()).await.unwrap();
    let bus = connect(&cluster.buses[0].endpoint()).await.unwrap();
    let session = create_session(&coordinator).await.unwrap();
    assert_eq!(session.state, pb::SessionState::Active as i32);
    let mut events = subscribe(&bus, &session.id).await.unwrap();

    // Large enough to be cut into several chunks by the store.
    let data = test_bytes(5 * 1024 * 1024 + 123, 7);
    let written = write_file(&coordinator, &session.id, "src/data.bin", &data)
        .await
        .unwrap();
    assert_eq!(written.entry.as_ref().unwrap().size, data.len() as u64);
    assert_eq!(written.head_version, session.head_version + 1);

    let read = read_file(&coordinator, &session.id, "src/data.bin")
        .await
        .unwrap();
    assert_eq!(read.len(), data.len());
    assert!(read == data, "bytes read back differ from bytes written");

    let event = await_file_changed(&mut events, "src/data.bin")
        .await
        .unwrap();
    assert!(event.offset >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_default_serves_the_same_flow() {
    let data_dir = tempfile::tempdir().unwrap();
    let dev = ServiceProcess::start(&[
        "dev".into(),
        "--data".into(),
        data_dir.path().display().to_string(),
    ])
    .await
    .expect("start aetherd dev");
    for service in [
        "aetherfs.v1.SessionService",
        "aetherfs.v1.ContentService",
        "aetherfs.v1.BusService",
    ] {
        assert_serving(&dev.endpoint(), service).await;
    }
    let channel = connect(&dev.endpoint()).await.unwrap();
    let session = create_session(&channel).await.unwrap();
    let mut events = subscribe(&channel, &session.id).await.unwrap();
    let data = test_bytes(300_000, 3);
    write_file(&channel, &session.id, "notes/a.txt", &data)
        .await
        .unwrap();
    assert_eq!(
        read_file(&channel, &session.id, "notes/a.txt")
            .await
            .unwrap(),
        data
    );
    await_file_changed(&mut events, "notes/a.txt")
        .await
        .unwrap();
}
