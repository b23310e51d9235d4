//! Coordination-store failures with a real 3-member etcd cluster: one member down changes
//! nothing; no quorum makes writes fail UNAVAILABLE (retryable); quorum back, service back.

use crate::common;

use std::time::{Duration, Instant};

use aether_proto as pb;
use aether_proto::workspace_service_client::WorkspaceServiceClient;
use aether_testkit::{Cluster, ClusterSpec};
use bytes::Bytes;
use common::*;
use tonic::transport::Channel;
use tonic::Code;

async fn put(channel: &Channel, session: &str, path: &str) -> Result<u64, tonic::Status> {
    let mut request = tonic::Request::new(pb::ApplyChangesRequest {
        session_id: session.to_string(),
        changes: vec![pb::Change {
            op: Some(pb::change::Op::Write(pb::WriteOp {
                path: path.to_string(),
                content: Bytes::from_static(b"x"),
                ..Default::default()
            })),
            precondition: None,
        }],
        expected_head_version: 0,
    });
    request.set_timeout(Duration::from_secs(20));
    WorkspaceServiceClient::new(channel.clone())
        .apply_changes(request)
        .await
        .map(|r| r.into_inner().head_version)
}

/// Retries a write while it fails UNAVAILABLE, up to a deadline.
async fn put_eventually(channel: &Channel, session: &str, path: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        match put(channel, session, path).await {
            Ok(version) => return version,
            Err(status) if status.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(status) => panic!("write {path} did not recover: {status:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_member_fails_without_quorum_and_recovers() {
    let mut cluster = Cluster::start(ClusterSpec {
        etcd_members: 3,
        lease_ttl_secs: Some(2),
        ..Default::default()
    })
    .await
    .expect("start cluster");
    let channel = connect(&cluster.coordinator_endpoint()).await.unwrap();
    let session = create_session(&channel).await.unwrap().id;
    put(&channel, &session, "a").await.unwrap();

    // One member down: the other two keep quorum.
    cluster.etcd.kill(0).unwrap();
    put_eventually(&channel, &session, "b").await;
    put_eventually(&channel, &session, "c").await;

    // Two down: no quorum. Writes fail with a retryable status, and nothing is applied.
    cluster.etcd.kill(1).unwrap();
    let status = put(&channel, &session, "lost")
        .await
        .expect_err("no quorum, no write");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // Quorum back: the coordinator recovers by itself (new lease, hold taken again).
    cluster.etcd.restart(0).await.unwrap();
    cluster.etcd.restart(1).await.unwrap();
    put_eventually(&channel, &session, "d").await;
    let listing = WorkspaceServiceClient::new(channel.clone())
        .list_tree(pb::ListTreeRequest {
            session_id: session.clone(),
            recursive: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let paths: Vec<String> = listing.entries.into_iter().map(|e| e.path).collect();
    assert_eq!(paths, ["a", "b", "c", "d"]);
}
