//! Retries apply once (design promise 9), on real etcd, S3 and coordinator processes: a change
//! sent again with the same `x-aether-request-id` applies nothing new and gets the first answer,
//! through any coordinator, also after the coordinator that applied it was killed before it
//! could answer; errors say whether the change was applied.

use std::time::{Duration, Instant};

use aether_client::{Client, Options};
use aether_proto as pb;
use aether_proto::history_service_client::HistoryServiceClient;
use aether_proto::session_service_client::SessionServiceClient;
use aether_proto::workspace_service_client::WorkspaceServiceClient;
use aether_testkit::{Cluster, ClusterSpec, ServiceProcess};
use bytes::Bytes;
use tonic::transport::Channel;
use tonic::{Code, Request, Response};

use crate::common::{self, connect};

const REQUEST_ID: &str = "x-aether-request-id";
const REPLAYED: &str = "x-aether-replayed";
const OUTCOME: &str = "x-aether-outcome";
const TTL_SECS: u64 = 2;

fn with_id<T>(id: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(REQUEST_ID, id.parse().expect("ascii id"));
    request
}

fn replayed<T>(response: &Response<T>) -> bool {
    response
        .metadata()
        .get(REPLAYED)
        .is_some_and(|v| v == "true")
}

fn write_one(session: &str, path: &str, content: &str) -> pb::ApplyChangesRequest {
    pb::ApplyChangesRequest {
        session_id: session.to_string(),
        changes: vec![pb::Change {
            op: Some(pb::change::Op::Write(pb::WriteOp {
                path: path.to_string(),
                content: Bytes::from(content.to_string()),
                ..Default::default()
            })),
            precondition: None,
        }],
        expected_head_version: 0,
    }
}

fn commit_request(session: &str, message: &str) -> pb::CommitRequest {
    pb::CommitRequest {
        session_id: session.to_string(),
        message: message.to_string(),
        expected_head_version: 0,
    }
}

async fn commits(channel: &Channel, session: &str) -> Vec<pb::CommitInfo> {
    HistoryServiceClient::new(channel.clone())
        .list_commits(pb::ListCommitsRequest {
            session_id: session.to_string(),
            page: None,
        })
        .await
        .expect("list commits")
        .into_inner()
        .commits
}

async fn two_coordinators() -> Cluster {
    Cluster::start(ClusterSpec {
        coordinators: 2,
        lease_ttl_secs: Some(TTL_SECS),
        ..Default::default()
    })
    .await
    .expect("start cluster")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_sent_twice_with_one_id_applies_once_through_any_coordinator() {
    let cluster = two_coordinators().await;
    let holder = connect(&cluster.coordinators[0].endpoint()).await.unwrap();
    let other = connect(&cluster.coordinators[1].endpoint()).await.unwrap();
    let mut sessions = SessionServiceClient::new(holder.clone());
    let mut workspace = WorkspaceServiceClient::new(holder.clone());
    let mut history = HistoryServiceClient::new(holder.clone());

    // A creation sent twice names, and makes, one session.
    let create = pb::CreateSessionRequest::default();
    let first = sessions
        .create_session(with_id("create-1", create.clone()))
        .await
        .unwrap();
    let again = sessions
        .create_session(with_id("create-1", create.clone()))
        .await
        .unwrap();
    assert!(!replayed(&first) && replayed(&again));
    assert_eq!(first.get_ref(), again.get_ref());
    let session = first.into_inner().session.unwrap().id;
    let fresh = sessions
        .create_session(with_id("create-2", create))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(fresh.session.unwrap().id, session);

    // ApplyChanges: one version bump for two sends; the retry (through the other coordinator,
    // which forwards it) gets the same answer.
    let version = common::head_version(&holder, &session).await;
    let first = workspace
        .apply_changes(with_id("write-a", write_one(&session, "a.txt", "one")))
        .await
        .unwrap();
    let again = WorkspaceServiceClient::new(other.clone())
        .apply_changes(with_id("write-a", write_one(&session, "a.txt", "one")))
        .await
        .unwrap();
    assert!(
        !replayed(&first) && replayed(&again),
        "{:?}",
        again.metadata()
    );
    assert_eq!(first.get_ref(), again.get_ref());
    assert_eq!(first.get_ref().head_version, version + 1);
    assert_eq!(common::head_version(&other, &session).await, version + 1);
    // The id names the request: a retry gets the first outcome even if the body differs.
    let same_id = workspace
        .apply_changes(with_id("write-a", write_one(&session, "b.txt", "two")))
        .await
        .unwrap();
    assert!(replayed(&same_id));
    assert_eq!(same_id.get_ref(), first.get_ref());
    // Another id applies again.
    let next = workspace
        .apply_changes(with_id("write-b", write_one(&session, "a.txt", "three")))
        .await
        .unwrap();
    assert!(!replayed(&next));
    assert_eq!(next.get_ref().head_version, version + 2);
    // Without an id nothing is recognised: each send applies.
    let plain = workspace
        .apply_changes(write_one(&session, "c.txt", "four"))
        .await
        .unwrap();
    assert_eq!(plain.get_ref().head_version, version + 3);

    // Commit: one commit for two sends, the same answer.
    let first = history
        .commit(with_id("commit-1", commit_request(&session, "first")))
        .await
        .unwrap();
    let again = HistoryServiceClient::new(other.clone())
        .commit(with_id("commit-1", commit_request(&session, "first")))
        .await
        .unwrap();
    assert!(replayed(&again));
    assert_eq!(first.get_ref(), again.get_ref());
    let listed = commits(&other, &session).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(Some(&listed[0]), first.get_ref().commit.as_ref());
    history
        .commit(with_id("commit-2", commit_request(&session, "second")))
        .await
        .unwrap();
    assert_eq!(commits(&other, &session).await.len(), 2);

    // WriteFile (a client stream) is recognised before its body is read.
    let file = |content: &'static [u8]| {
        futures::stream::iter(vec![
            pb::WriteFileRequest {
                part: Some(pb::write_file_request::Part::Header(pb::WriteFileHeader {
                    session_id: session.clone(),
                    path: "streamed.bin".into(),
                    ..Default::default()
                })),
            },
            pb::WriteFileRequest {
                part: Some(pb::write_file_request::Part::Data(Bytes::from_static(
                    content,
                ))),
            },
        ])
    };
    let version = common::head_version(&holder, &session).await;
    let first = workspace
        .write_file(with_id("file-1", file(b"first body")))
        .await
        .unwrap();
    let again = WorkspaceServiceClient::new(other.clone())
        .write_file(with_id("file-1", file(b"first body")))
        .await
        .unwrap();
    assert!(replayed(&again));
    assert_eq!(first.get_ref(), again.get_ref());
    assert_eq!(common::head_version(&holder, &session).await, version + 1);

    // A malformed id is refused before anything happens, and says so.
    let version = common::head_version(&holder, &session).await;
    let long = "x".repeat(129);
    for bad in ["has space", long.as_str(), "caf\u{e9}-ish"] {
        let mut request = Request::new(write_one(&session, "bad.txt", "bad"));
        request.metadata_mut().insert(
            REQUEST_ID,
            tonic::metadata::MetadataValue::try_from(bad.as_bytes()).unwrap(),
        );
        let status = workspace.apply_changes(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}: {status:?}");
        assert!(status.message().contains(REQUEST_ID), "{status:?}");
        assert_eq!(
            status.metadata().get(OUTCOME).unwrap(),
            "not-applied",
            "{status:?}"
        );
    }
    let mut empty = Request::new(commit_request(&session, "empty id"));
    empty
        .metadata_mut()
        .insert(REQUEST_ID, tonic::metadata::MetadataValue::from_static(""));
    let status = history.commit(empty).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(common::head_version(&holder, &session).await, version);
    assert_eq!(commits(&holder, &session).await.len(), 2);

    // Errors of changes say whether they were applied.
    let status = history
        .commit(with_id("empty", commit_request(&session, " ")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = workspace
        .apply_changes(with_id(
            "stale",
            pb::ApplyChangesRequest {
                expected_head_version: 1,
                ..write_one(&session, "stale.txt", "late")
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(status.metadata().get(OUTCOME).unwrap(), "not-applied");
    // A refused attempt is not recorded: the same id, fixed, applies.
    let fixed = workspace
        .apply_changes(with_id("stale", write_one(&session, "stale.txt", "late")))
        .await
        .unwrap();
    assert!(!replayed(&fixed));
    assert_eq!(fixed.get_ref().head_version, version + 1);

    // A close sent twice: the retry gets the first answer, from the record archived at close
    // (etcd keeps no requests key of a closed session).
    let close = pb::CloseSessionRequest {
        session_id: session.clone(),
        archive: true,
    };
    let first = sessions
        .close_session(with_id("close-1", close.clone()))
        .await
        .unwrap();
    let again = SessionServiceClient::new(other.clone())
        .close_session(with_id("close-1", close.clone()))
        .await
        .unwrap();
    assert!(!replayed(&first) && replayed(&again));
    assert_eq!(first.get_ref(), again.get_ref());
    assert!(!first.get_ref().archive_blob_hash.is_empty());
    let status = sessions
        .close_session(with_id("close-2", close))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let etcd = aether_coord::EtcdCoordination::connect(&cluster.etcd.endpoints())
        .await
        .unwrap();
    let kept = aether_coord::Coordination::range(
        &etcd,
        &format!("/aether/v1/requests/{session}/"),
        None,
        100,
    )
    .await
    .unwrap();
    assert!(kept.is_empty(), "{} requests keys kept", kept.len());
}

/// A coordinator of `cluster`'s etcd, store and bus that never answers a committed Commit.
async fn stalling_coordinator(cluster: &Cluster) -> ServiceProcess {
    let args: Vec<String> = [
        "coordinator",
        "--etcd-endpoints",
        &cluster.etcd.endpoints().join(","),
        "--store-endpoint",
        &cluster.stores[0].endpoint(),
        "--bus-endpoint",
        &cluster.buses[0].endpoint(),
        "--lease-ttl-secs",
        &TTL_SECS.to_string(),
        "--test-stall-after-commit",
        "Commit",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    ServiceProcess::start(&args)
        .await
        .expect("start the stalling coordinator")
}

/// Waits until `session` shows `count` commits (read by `channel`, which serves reads itself).
async fn await_commits(channel: &Channel, session: &str, count: usize) -> Vec<pb::CommitInfo> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = commits(channel, session).await;
        if listed.len() >= count {
            return listed;
        }
        assert!(Instant::now() < deadline, "the commit was never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_after_committing_leaves_the_outcome_for_the_retry() {
    let cluster = Cluster::start(ClusterSpec {
        coordinators: 1,
        lease_ttl_secs: Some(TTL_SECS),
        ..Default::default()
    })
    .await
    .expect("start cluster");
    let mut stalling = stalling_coordinator(&cluster).await;
    let doomed = connect(&stalling.endpoint()).await.unwrap();
    let survivor = connect(&cluster.coordinators[0].endpoint()).await.unwrap();

    // The stalling coordinator holds the session; the commit is applied there and never
    // answered.
    let session = SessionServiceClient::new(doomed.clone())
        .create_session(pb::CreateSessionRequest::default())
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap()
        .id;
    WorkspaceServiceClient::new(doomed.clone())
        .apply_changes(write_one(&session, "work.txt", "done"))
        .await
        .unwrap();
    let pending = tokio::spawn({
        let doomed = doomed.clone();
        let session = session.clone();
        async move {
            HistoryServiceClient::new(doomed)
                .commit(with_id("the-commit", commit_request(&session, "survives")))
                .await
        }
    });
    let applied = await_commits(&survivor, &session, 1).await;
    stalling.kill().unwrap();
    let lost = pending
        .await
        .unwrap()
        .expect_err("the killed coordinator never answered");
    eprintln!("the first attempt ended with {lost:?}");

    // The retry goes to the other coordinator: refused while the dead holder's lease lasts,
    // then answered from the record the first attempt committed.
    let deadline = Instant::now() + Duration::from_secs(TTL_SECS + 15);
    let answer = loop {
        match HistoryServiceClient::new(survivor.clone())
            .commit(with_id("the-commit", commit_request(&session, "survives")))
            .await
        {
            Ok(answer) => break answer,
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(Instant::now() < deadline, "never taken over: {status:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(replayed(&answer), "{:?}", answer.metadata());
    let listed = commits(&survivor, &session).await;
    assert_eq!(listed.len(), 1, "exactly one commit: {listed:?}");
    assert_eq!(listed, applied);
    assert_eq!(answer.into_inner().commit.as_ref(), Some(&listed[0]));
}

/// The same through the SDK: it names the commit once and retries with that id until the
/// session is taken over, and gets the first outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_retries_a_commit_whose_coordinator_died_and_gets_one_commit() {
    let cluster = Cluster::start(ClusterSpec {
        coordinators: 1,
        lease_ttl_secs: Some(TTL_SECS),
        ..Default::default()
    })
    .await
    .expect("start cluster");
    let mut stalling = stalling_coordinator(&cluster).await;
    let survivor = connect(&cluster.coordinators[0].endpoint()).await.unwrap();
    // The SDK talks to the survivor only, which forwards to the holder while it lives.
    let client = Client::connect(
        cluster.coordinators[0].endpoint(),
        Options {
            retries: 12,
            backoff: Duration::from_millis(200),
            timeout: Duration::from_secs(20),
            store_endpoint: Some(cluster.stores[0].endpoint()),
            bus_endpoint: Some(cluster.buses[0].endpoint()),
            ..Options::default()
        },
    )
    .await
    .unwrap();
    let doomed = connect(&stalling.endpoint()).await.unwrap();
    let session = SessionServiceClient::new(doomed)
        .create_session(pb::CreateSessionRequest::default())
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap()
        .id;
    let handle = client.session(session.clone());
    handle
        .upload_bytes("work.txt", Bytes::from_static(b"done"), 0o644)
        .await
        .unwrap();
    let pending = tokio::spawn(async move { handle.commit("through the SDK").await });
    let applied = await_commits(&survivor, &session, 1).await;
    stalling.kill().unwrap();
    let info = pending
        .await
        .unwrap()
        .expect("the SDK's retry gets the outcome");
    let listed = commits(&survivor, &session).await;
    assert_eq!(listed.len(), 1, "exactly one commit: {listed:?}");
    assert_eq!(listed, applied);
    assert_eq!(info, listed[0]);
}

/// What the mount does after a batch failed with an unknown outcome: the same batch again under
/// the same id (`SessionHandle::apply_changes_as`) applies once; a malformed id is refused
/// before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sent_again_under_its_own_id_applies_once() {
    let dev = crate::common::start_dev(&[]).await;
    let channel = dev.channel.clone();
    let client = Client::connect(dev.server.endpoint(), Options::default())
        .await
        .unwrap();
    let session = crate::common::create_session(&channel).await.unwrap().id;
    let handle = client.session(session.clone());
    let batch = || {
        write_one(&session, "moved-from.txt", "x")
            .changes
            .into_iter()
            .chain([pb::Change {
                op: Some(pb::change::Op::Move(pb::MoveOp {
                    from: "moved-from.txt".into(),
                    to: "moved-to.txt".into(),
                    overwrite: true,
                })),
                precondition: None,
            }])
            .collect::<Vec<_>>()
    };
    let first = handle
        .apply_changes_as("mount-batch-1-0", batch(), 0)
        .await
        .unwrap();
    // Again: a plain resend would fail (the move's source is gone); the same id replays.
    let again = handle
        .apply_changes_as("mount-batch-1-0", batch(), 0)
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(
        common::head_version(&channel, &session).await,
        first.head_version
    );
    let error = handle
        .apply_changes_as("not a valid id", batch(), 0)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error}");
    assert_eq!(
        common::head_version(&channel, &session).await,
        first.head_version
    );
}
