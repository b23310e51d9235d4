//! The conformance suite against both backends: embedded (memory and file) and a real etcd.

use std::sync::Arc;

use aether_coord::{conformance, Coordination, EmbeddedCoordination, EtcdCoordination, Op};

#[tokio::test]
async fn embedded_in_memory_conforms() {
    conformance::run_all(Arc::new(EmbeddedCoordination::in_memory()), "/t").await;
}

#[tokio::test]
async fn embedded_file_conforms_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coord.log");
    {
        let coord = Arc::new(EmbeddedCoordination::open(&path).unwrap());
        conformance::run_all(coord.clone(), "/t").await;
        coord
            .txn(vec![], vec![Op::put("/durable", "yes")])
            .await
            .unwrap();
        let lease = coord
            .grant_lease(std::time::Duration::from_secs(60))
            .await
            .unwrap();
        coord
            .txn(
                vec![],
                vec![Op::Put {
                    key: "/ephemeral".into(),
                    value: b"gone after restart".to_vec(),
                    lease: Some(lease),
                }],
            )
            .await
            .unwrap();
    }
    let reopened = EmbeddedCoordination::open(&path).unwrap();
    let durable = reopened
        .get("/durable")
        .await
        .unwrap()
        .expect("logged key survives reopen");
    assert_eq!(durable.value, b"yes");
    assert!(reopened.get("/ephemeral").await.unwrap().is_none());
    // Revisions keep increasing across restarts, so fences stay unique.
    let next = reopened
        .txn(vec![], vec![Op::put("/after", "x")])
        .await
        .unwrap();
    assert!(next.revision > durable.mod_revision);
}

#[tokio::test]
async fn etcd_conforms() {
    let etcd = aether_testkit::Etcd::start().await.expect("start etcd");
    let coord = EtcdCoordination::connect(&[etcd.endpoint()]).await.unwrap();
    conformance::run_all(Arc::new(coord), "/t").await;
}
