//! `aetherd gc --once` as its own process on a cluster (etcd + S3): it sweeps content nothing
//! references, keeps what sessions reach, and otherwise only reads: it registers no node and
//! holds no session, so no coordinator ever routes a request to it.

use aether_coord::{Coordination, EtcdCoordination};
use aether_store::{Blobs, RemoteBlobs};
use aether_testkit::{aetherd_path, Cluster, ClusterSpec};
use bytes::Bytes;

use crate::common;

const NODES: &str = "/aether/v1/nodes/";
const HOLDERS: &str = "/aether/v1/holders/";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_process_sweeps_unreferenced_content_and_holds_nothing() {
    let cluster = Cluster::start(ClusterSpec::default()).await.unwrap();
    let channel = common::connect(&cluster.coordinator_endpoint())
        .await
        .unwrap();
    let session = common::create_session(&channel).await.unwrap().id;
    let kept = common::test_bytes(10_000, 1);
    common::write_file(&channel, &session, "kept.bin", &kept)
        .await
        .unwrap();
    // Content nobody references: uploaded straight to the store.
    let store = RemoteBlobs::new(
        common::connect(&cluster.stores[0].endpoint())
            .await
            .unwrap(),
    );
    let orphan = store
        .put(Bytes::from(common::test_bytes(10_000, 2)))
        .await
        .unwrap();
    assert!(store.missing(&[orphan]).await.unwrap().is_empty());

    let etcd = EtcdCoordination::connect(&cluster.etcd.endpoints())
        .await
        .unwrap();
    let keys = |prefix: &'static str| {
        let etcd = &etcd;
        async move {
            let kvs = etcd.range(prefix, None, 1000).await.unwrap();
            kvs.into_iter().map(|kv| kv.key).collect::<Vec<_>>()
        }
    };
    let (nodes, holders) = (keys(NODES).await, keys(HOLDERS).await);

    let mut args = vec![
        "gc".to_string(),
        "--once".into(),
        "--gc-grace-secs".into(),
        "0".into(),
        "--etcd-endpoints".into(),
        cluster.etcd.endpoints().join(","),
    ];
    args.extend(cluster.s3.aetherd_args());
    let aetherd = aetherd_path().unwrap();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(aetherd).args(&args).output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "aetherd gc --once failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("SweepReport"),
        "the report is printed: {stdout}"
    );

    assert_eq!(
        store.missing(&[orphan]).await.unwrap(),
        vec![orphan],
        "swept"
    );
    assert_eq!(
        common::read_file(&channel, &session, "kept.bin")
            .await
            .unwrap(),
        kept,
        "what the session reaches is kept"
    );
    assert_eq!(keys(NODES).await, nodes, "the collector registered no node");
    assert_eq!(keys(HOLDERS).await, holders, "the collector took no hold");
}
