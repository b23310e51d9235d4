//! Garbage collection never removes anything reachable, and does remove garbage.
//!
//! Builds every kind of reference (head, base, checkpoints, commits, forks, knowledge,
//! annotations, a closed session's commits and archive), makes garbage (overwritten, deleted
//! and never-committed content), collects with no grace period, then reads back every blob the
//! mark phase calls live — verified against its hash — and checks the garbage is gone.

use std::sync::Arc;
use std::time::Duration;

use aether_coord::EmbeddedCoordination;
use aether_coordinator::{CoordinatorArgs, EventSink, Sessions};
use aether_core::Hash;
use aether_proto as pb;
use aether_proto::history_service_client::HistoryServiceClient;
use aether_proto::knowledge_service_client::KnowledgeServiceClient;
use aether_proto::review_service_client::ReviewServiceClient;
use aether_proto::session_service_client::SessionServiceClient;
use aether_proto::workspace_service_client::WorkspaceServiceClient;
use aether_store::backend::BackendArgs;
use aether_store::{BlobStore, Blobs, Limits};
use aether_testkit::test_bytes as noise;
use bytes::Bytes;
use tonic::transport::Channel;

async fn serve(dir: &std::path::Path) -> (Channel, Arc<Sessions>, BlobStore) {
    serve_with(dir, Arc::new(EmbeddedCoordination::in_memory())).await
}

async fn serve_with(
    dir: &std::path::Path,
    coord: Arc<EmbeddedCoordination>,
) -> (Channel, Arc<Sessions>, BlobStore) {
    let store = BlobStore::new(
        BackendArgs::local(dir.to_path_buf())
            .build("objects")
            .unwrap(),
        Limits::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        coordinator: CoordinatorArgs,
    }
    let flags: Flags = clap::Parser::parse_from(["test"]);
    let sessions = aether_coordinator::start(
        coord,
        Arc::new(store.clone()),
        EventSink::disabled(),
        format!("http://{addr}"),
        &flags.coordinator,
    )
    .await
    .unwrap();
    let mut routes = tonic::service::RoutesBuilder::default();
    aether_coordinator::register(&mut routes, &sessions, Default::default());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes.routes())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (channel, sessions, store)
}

fn write(path: &str, content: impl Into<Bytes>) -> pb::Change {
    pb::Change {
        op: Some(pb::change::Op::Write(pb::WriteOp {
            path: path.into(),
            content: content.into(),
            ..Default::default()
        })),
        precondition: None,
    }
}

fn delete(path: &str) -> pb::Change {
    pb::Change {
        op: Some(pb::change::Op::Delete(pb::DeleteOp {
            path: path.into(),
            recursive: true,
        })),
        precondition: None,
    }
}

async fn apply(channel: &Channel, session: &str, changes: Vec<pb::Change>) {
    WorkspaceServiceClient::new(channel.clone())
        .apply_changes(pb::ApplyChangesRequest {
            session_id: session.into(),
            changes,
            expected_head_version: 0,
        })
        .await
        .unwrap();
}

async fn create(channel: &Channel) -> String {
    SessionServiceClient::new(channel.clone())
        .create_session(pb::CreateSessionRequest::default())
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap()
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_keeps_everything_reachable_and_removes_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let (channel, sessions, store) = serve(dir.path()).await;
    let mut history = HistoryServiceClient::new(channel.clone());

    // Session A: files, a multi-chunk file, a checkpoint and a commit, then changes that leave
    // the old content reachable only through them.
    let a = create(&channel).await;
    let big = noise(6 * 1024 * 1024, 1);
    let mut workspace = WorkspaceServiceClient::new(channel.clone());
    let mut messages = vec![pb::WriteFileRequest {
        part: Some(pb::write_file_request::Part::Header(pb::WriteFileHeader {
            session_id: a.clone(),
            path: "big.bin".into(),
            ..Default::default()
        })),
    }];
    messages.extend(big.chunks(1 << 20).map(|c| pb::WriteFileRequest {
        part: Some(pb::write_file_request::Part::Data(Bytes::copy_from_slice(
            c,
        ))),
    }));
    workspace
        .write_file(futures::stream::iter(messages))
        .await
        .unwrap();
    apply(
        &channel,
        &a,
        vec![write("f1", "version one"), write("dir/x", "x")],
    )
    .await;
    history
        .create_checkpoint(pb::CreateCheckpointRequest {
            session_id: a.clone(),
            name: "c1".into(),
            description: String::new(),
        })
        .await
        .unwrap();
    history
        .commit(pb::CommitRequest {
            session_id: a.clone(),
            message: "first".into(),
            expected_head_version: 0,
        })
        .await
        .unwrap();
    apply(
        &channel,
        &a,
        vec![write("f1", "version two"), delete("big.bin")],
    )
    .await;
    // Garbage: content that no state keeps.
    apply(&channel, &a, vec![write("temp", "never kept anywhere")]).await;
    apply(&channel, &a, vec![delete("temp")]).await;
    let garbage = Hash::of(b"never kept anywhere");
    let mut knowledge = KnowledgeServiceClient::new(channel.clone());
    for value in ["old knowledge value", "new knowledge value"] {
        knowledge
            .put_entry(pb::PutEntryRequest {
                session_id: a.clone(),
                entry: Some(pb::KnowledgeEntry {
                    key: "k".into(),
                    value: Bytes::from(value),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
    }

    // Session B: a fork that diverges.
    let b = SessionServiceClient::new(channel.clone())
        .fork_session(pb::ForkSessionRequest {
            session_id: a.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap()
        .id;
    apply(&channel, &b, vec![write("only-in-b", "b")]).await;

    // Session C: committed, then closed with an archive; its head is no longer served.
    let c = create(&channel).await;
    apply(&channel, &c, vec![write("kept-by-commit", "c committed")]).await;
    history
        .commit(pb::CommitRequest {
            session_id: c.clone(),
            message: "c".into(),
            expected_head_version: 0,
        })
        .await
        .unwrap();
    apply(&channel, &c, vec![write("uncommitted", "c head only")]).await;
    history
        .create_checkpoint(pb::CreateCheckpointRequest {
            session_id: c.clone(),
            name: "before-close".into(),
            description: "listed after close".into(),
        })
        .await
        .unwrap();
    ReviewServiceClient::new(channel.clone())
        .add_annotation(pb::AddAnnotationRequest {
            session_id: c.clone(),
            path: "kept-by-commit".into(),
            lines: None,
            body: "a remark that outlives the workspace".into(),
        })
        .await
        .unwrap();
    let closed = SessionServiceClient::new(channel.clone())
        .close_session(pb::CloseSessionRequest {
            session_id: c.clone(),
            archive: true,
        })
        .await
        .unwrap()
        .into_inner();
    let archive = Hash::from_hex(&closed.archive_blob_hash).unwrap();

    assert!(
        store.missing_hashes(&[garbage]).await.unwrap().is_empty(),
        "garbage exists before GC"
    );
    let report = aether_coordinator::gc::collect(&sessions, &store, Duration::ZERO)
        .await
        .unwrap();
    assert!(report.deleted_objects > 0, "{report:?}");

    // Everything still reachable reads back, verified.
    let live = aether_coordinator::gc::mark(&sessions).await.unwrap();
    assert!(live.contains(&archive));
    for hash in &live {
        store
            .get(hash)
            .await
            .unwrap_or_else(|e| panic!("reachable blob {hash} lost: {e}"));
    }
    // Through the API too: the checkpoint and commit still hold the old content.
    for (revision, path, expected) in [
        (
            pb::Revision {
                kind: pb::RevisionKind::Checkpoint as i32,
                name: "c1".into(),
            },
            "f1",
            b"version one".to_vec(),
        ),
        (
            pb::Revision {
                kind: pb::RevisionKind::Checkpoint as i32,
                name: "c1".into(),
            },
            "big.bin",
            big.clone(),
        ),
        (
            pb::Revision {
                kind: pb::RevisionKind::Head as i32,
                name: String::new(),
            },
            "f1",
            b"version two".to_vec(),
        ),
    ] {
        let mut stream = workspace
            .read_file(pb::ReadFileRequest {
                session_id: a.clone(),
                path: path.into(),
                at: Some(revision),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut data = Vec::new();
        while let Some(message) = stream.message().await.unwrap() {
            data.extend_from_slice(&message.data);
        }
        assert!(data == expected, "{path} changed after GC");
    }
    let value = knowledge
        .get_entry(pb::GetEntryRequest {
            session_id: b.clone(),
            key: "k".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap()
        .value;
    assert_eq!(&value[..], b"new knowledge value");
    // Garbage is gone: the deleted file, the replaced knowledge value, the closed head.
    let gone = [
        garbage,
        Hash::of(b"old knowledge value"),
        Hash::of(b"c head only"),
    ];
    assert_eq!(store.missing_hashes(&gone).await.unwrap(), gone.to_vec());
    assert!(!live.contains(&Hash::of(b"c head only")));
    assert!(live.contains(&Hash::of(b"c committed")));

    // A closed session's record is archived in the store (etcd keeps a tombstone naming it):
    // the mark keeps it, so the session reads back by id.
    let c_after = SessionServiceClient::new(channel.clone())
        .get_session(pb::GetSessionRequest {
            session_id: c.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(c_after.state, pb::SessionState::Closed as i32);
    assert_eq!(c_after.counts.unwrap().commits, 1);

    // A closed session's metadata stays listed: its checkpoints (whose files are gone, so no
    // session starts from them) and its annotations.
    let listed = history
        .list_checkpoints(pb::ListCheckpointsRequest {
            session_id: c.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .checkpoints;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "before-close");
    let annotations = ReviewServiceClient::new(channel.clone())
        .list_annotations(pb::ListAnnotationsRequest {
            session_id: c.clone(),
            include_resolved: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .annotations;
    assert_eq!(annotations.len(), 1);
    let from_checkpoint = SessionServiceClient::new(channel.clone())
        .create_session(pb::CreateSessionRequest {
            source: Some(pb::Source {
                kind: Some(pb::source::Kind::Checkpoint(pb::CheckpointSource {
                    session_id: c.clone(),
                    name: "before-close".into(),
                })),
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        from_checkpoint.code(),
        tonic::Code::FailedPrecondition,
        "{from_checkpoint:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn young_objects_survive_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let (channel, sessions, store) = serve(dir.path()).await;
    let a = create(&channel).await;
    apply(&channel, &a, vec![write("t", "transient")]).await;
    apply(&channel, &a, vec![delete("t")]).await;
    // An upload in flight: stored, not yet referenced by anything.
    let in_flight = store
        .put(Bytes::from_static(b"uploaded, not yet referenced"))
        .await
        .unwrap();
    let report =
        aether_coordinator::gc::collect(&sessions, &store, aether_coordinator::gc::MIN_GRACE)
            .await
            .unwrap();
    assert_eq!(report.deleted_objects, 0, "{report:?}");
    assert!(report.kept_young > 0);
    assert!(store
        .missing_hashes(&[in_flight, Hash::of(b"transient")])
        .await
        .unwrap()
        .is_empty());
}

/// A session closed by a version that kept its whole record in etcd is read as before, and
/// the expiry sweep replaces that record with a tombstone naming the same record in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_closed_record_left_by_an_earlier_version_becomes_a_tombstone() {
    use aether_coord::{Coordination, Op};
    use aether_coordinator::tombstones::Stored;

    let dir = tempfile::tempdir().unwrap();
    let coord = Arc::new(EmbeddedCoordination::in_memory());
    let (channel, sessions, store) = serve_with(dir.path(), coord.clone()).await;
    let id = create(&channel).await;
    apply(&channel, &id, vec![write("f", "kept by the record")]).await;
    let mut client = SessionServiceClient::new(channel.clone());
    let mut close = tonic::Request::new(pb::CloseSessionRequest {
        session_id: id.clone(),
        archive: false,
    });
    close
        .metadata_mut()
        .insert("x-aether-request-id", "close-1".parse().unwrap());
    client.close_session(close).await.unwrap();
    let key = format!("/aether/v1/sessions/{id}");
    let Stored::Tombstone(tombstone) =
        Stored::decode(&coord.get(&key).await.unwrap().unwrap().value).unwrap()
    else {
        panic!("closing left a whole record in etcd");
    };
    let archived = Hash::from_hex(&tombstone.archived_record).unwrap();
    let mut whole: serde_json::Value =
        serde_json::from_slice(&store.get(&archived).await.unwrap()).unwrap();
    // As an earlier version left it: the whole record under the session's key, and the
    // request that closed it alone in its requests key.
    let closing = whole
        .as_object_mut()
        .unwrap()
        .remove("closing_request")
        .expect("the close is recorded in the archived record");
    let requests_key = format!("/aether/v1/requests/{id}/00");
    let generation = serde_json::json!({ "entries": [closing] });
    coord
        .txn(
            vec![],
            vec![
                Op::put(key.clone(), serde_json::to_vec(&whole).unwrap()),
                Op::put(
                    requests_key.clone(),
                    serde_json::to_vec(&generation).unwrap(),
                ),
            ],
        )
        .await
        .unwrap();
    let get = |mut client: SessionServiceClient<Channel>| {
        let id = id.clone();
        async move {
            client
                .get_session(pb::GetSessionRequest { session_id: id })
                .await
                .unwrap()
                .into_inner()
                .session
                .unwrap()
        }
    };
    let before = get(client.clone()).await;
    assert_eq!(before.state, pb::SessionState::Closed as i32);

    assert_eq!(
        sessions.expire_idle_sessions().await,
        0,
        "nothing to expire"
    );
    let stored = Stored::decode(&coord.get(&key).await.unwrap().unwrap().value).unwrap();
    assert_eq!(
        stored,
        Stored::Tombstone(tombstone),
        "the sweep archived it, with the request that closed it"
    );
    assert!(coord.get(&requests_key).await.unwrap().is_none());
    assert_eq!(get(client).await, before, "the session reads the same");
}
