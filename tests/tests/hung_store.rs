//! Deadlines everywhere (design promise 8): with the content store stopped (SIGSTOP: its TCP
//! connections stay open, nothing answers), a mutation that needs it ends by the caller's
//! deadline, one without a deadline ends once HTTP/2 keepalive finds the store gone, neither
//! applies anything, and the coordinator keeps serving; once the store resumes, the same
//! mutation succeeds.

use crate::common::{self, connect, create_session};

use std::time::{Duration, Instant};

use aether_proto as pb;
use aether_proto::workspace_service_client::WorkspaceServiceClient;
use aether_testkit::{Cluster, ClusterSpec};

fn write(session: &str, path: &str) -> pb::ApplyChangesRequest {
    pb::ApplyChangesRequest {
        session_id: session.to_string(),
        changes: vec![pb::Change {
            op: Some(pb::change::Op::Write(pb::WriteOp {
                path: path.to_string(),
                content: format!("content of {path}").into_bytes().into(),
                ..Default::default()
            })),
            precondition: None,
        }],
        expected_head_version: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_store_fails_mutations_by_their_deadline_and_applies_nothing() {
    let cluster = Cluster::start(ClusterSpec {
        coordinators: 1,
        ..ClusterSpec::default()
    })
    .await
    .unwrap();
    let channel = connect(&cluster.coordinators[0].endpoint()).await.unwrap();
    let session = create_session(&channel).await.unwrap().id;
    let mut workspace = WorkspaceServiceClient::new(channel.clone());
    workspace
        .apply_changes(write(&session, "before.txt"))
        .await
        .unwrap();
    let version = common::head_version(&channel, &session).await;

    cluster.stores[0].pause().unwrap();

    // With a deadline: the answer comes by it. (Half a second: HTTP/2 keepalive, a ping every
    // 2 s with 3 s to answer, notices the stopped store no sooner than 1 s after it stopped
    // and would answer UNAVAILABLE first.)
    let mut request = tonic::Request::new(write(&session, "with-deadline.txt"));
    request.set_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(10), workspace.apply_changes(request))
        .await
        .expect("a mutation with a 500 ms deadline waited on the stopped store past 10 s")
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(
            status.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{status:?}"
    );
    assert!(took < Duration::from_secs(2), "answered after {took:?}");

    // Without one: the coordinator's own bound (keepalive) ends it, UNAVAILABLE.
    let started = Instant::now();
    let status = tokio::time::timeout(
        Duration::from_secs(40),
        workspace.apply_changes(write(&session, "no-deadline.txt")),
    )
    .await
    .expect("a mutation without a deadline hung on the stopped store")
    .unwrap_err();
    assert!(
        matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        ),
        "{status:?} after {:?}",
        started.elapsed()
    );

    // The coordinator still answers what needs no store (the session's record).
    assert_eq!(common::head_version(&channel, &session).await, version);

    cluster.stores[0].resume().unwrap();
    assert_eq!(
        common::head_version(&channel, &session).await,
        version,
        "a mutation that failed on the stopped store changed the session"
    );
    workspace
        .apply_changes(write(&session, "after.txt"))
        .await
        .unwrap();
    assert_eq!(common::head_version(&channel, &session).await, version + 1);
    for (path, present) in [
        ("before.txt", true),
        ("with-deadline.txt", false),
        ("no-deadline.txt", false),
        ("after.txt", true),
    ] {
        let found = workspace
            .stat(pb::StatRequest {
                session_id: session.clone(),
                path: path.to_string(),
                ..Default::default()
            })
            .await;
        assert_eq!(found.is_ok(), present, "{path}: {found:?}");
    }
}
