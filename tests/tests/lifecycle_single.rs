//! The single-session pattern of the seed, end to end over real gRPC against the cluster
//! (coordinator, store and bus processes on real etcd and the real S3 server): create from
//! every source, inspect, change atomically, review the diff, save, export and import, hand
//! over, finalize and close, with the audit trail readable at the end.

use crate::common;

use std::collections::BTreeMap;

use aether_proto as pb;
use aether_proto::content_service_client::ContentServiceClient;
use aether_proto::history_service_client::HistoryServiceClient;
use aether_proto::session_service_client::SessionServiceClient;
use aether_proto::workspace_service_client::WorkspaceServiceClient;
use aether_testkit::{Cluster, ClusterSpec};
use bytes::Bytes;
use common::*;
use tonic::transport::Channel;
use tonic::Code;

fn write(path: &str, content: &str) -> pb::Change {
    pb::Change {
        op: Some(pb::change::Op::Write(pb::WriteOp {
            path: path.into(),
            content: Bytes::copy_from_slice(content.as_bytes()),
            ..Default::default()
        })),
        precondition: None,
    }
}

fn op(op: pb::change::Op) -> pb::Change {
    pb::Change {
        op: Some(op),
        precondition: None,
    }
}

async fn apply(
    channel: &Channel,
    session: &str,
    expected: u64,
    changes: Vec<pb::Change>,
) -> Result<pb::ApplyChangesResponse, tonic::Status> {
    WorkspaceServiceClient::new(channel.clone())
        .apply_changes(pb::ApplyChangesRequest {
            session_id: session.into(),
            changes,
            expected_head_version: expected,
        })
        .await
        .map(|r| r.into_inner())
}

async fn tree(
    channel: &Channel,
    session: &str,
    at: Option<pb::Revision>,
) -> BTreeMap<String, (i32, String)> {
    let mut out = BTreeMap::new();
    let mut token = String::new();
    loop {
        let page = WorkspaceServiceClient::new(channel.clone())
            .list_tree(pb::ListTreeRequest {
                session_id: session.into(),
                recursive: true,
                at: at.clone(),
                page: Some(pb::PageRequest {
                    page_size: 2,
                    page_token: token,
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for e in page.entries {
            out.insert(e.path, (e.kind, e.hash));
        }
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

async fn get(channel: &Channel, session: &str) -> pb::Session {
    SessionServiceClient::new(channel.clone())
        .get_session(pb::GetSessionRequest {
            session_id: session.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap()
}

fn source(kind: pb::source::Kind) -> Option<pb::Source> {
    Some(pb::Source { kind: Some(kind) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_session_lifecycle() {
    let cluster = Cluster::start(ClusterSpec::default())
        .await
        .expect("start cluster");
    let ch = connect(&cluster.coordinator_endpoint()).await.unwrap();
    let mut sessions = SessionServiceClient::new(ch.clone());
    let mut history = HistoryServiceClient::new(ch.clone());
    let mut workspace = WorkspaceServiceClient::new(ch.clone());

    // Create: labels are validated; selectors and paging list what matches.
    let bad = sessions
        .create_session(pb::CreateSessionRequest {
            labels: [("-bad key".to_string(), "v".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    let mut ids = Vec::new();
    for i in 0..3 {
        let s = sessions
            .create_session(pb::CreateSessionRequest {
                labels: [
                    ("team".to_string(), "alpha".to_string()),
                    ("n".to_string(), i.to_string()),
                ]
                .into(),
                metadata: [("purpose".to_string(), "test".to_string())].into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .session
            .unwrap();
        assert_eq!(s.metadata["purpose"], "test");
        ids.push(s.id);
    }
    let first = sessions
        .list_sessions(pb::ListSessionsRequest {
            label_selector: "team=alpha,n!=1".into(),
            page: Some(pb::PageRequest {
                page_size: 1,
                page_token: String::new(),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.sessions.len(), 1);
    let second = sessions
        .list_sessions(pb::ListSessionsRequest {
            label_selector: "team=alpha,n!=1".into(),
            page: Some(pb::PageRequest {
                page_size: 1,
                page_token: first.next_page_token.clone(),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut listed: Vec<String> = first
        .sessions
        .iter()
        .chain(&second.sessions)
        .map(|s| s.id.clone())
        .collect();
    listed.sort();
    let mut expected = vec![ids[0].clone(), ids[2].clone()];
    expected.sort();
    assert_eq!(listed, expected);
    let id = ids[0].clone();

    // Change: a batch applies atomically at the expected version.
    let v1 = get(&ch, &id).await.head_version;
    let applied = apply(
        &ch,
        &id,
        v1,
        vec![
            write("src/main.rs", "fn main() {}\n"),
            write("src/lib.rs", "pub fn lib() {}\n"),
            write("README", "hello world\n"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(applied.head_version, v1 + 1);
    // A lost race is ABORTED and changes nothing.
    let stale = apply(&ch, &id, v1, vec![write("README", "overwritten?")])
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted, "{stale:?}");
    let wrong_hash = apply(
        &ch,
        &id,
        0,
        vec![pb::Change {
            precondition: Some(pb::PathPrecondition {
                condition: Some(pb::path_precondition::Condition::ContentHash(
                    "00".repeat(32),
                )),
            }),
            ..write("README", "overwritten?")
        }],
    )
    .await
    .unwrap_err();
    assert_eq!(wrong_hash.code(), Code::Aborted, "{wrong_hash:?}");
    // A batch whose last step fails leaves no trace of its first steps.
    let partial = apply(
        &ch,
        &id,
        0,
        vec![
            write("new-file", "x"),
            op(pb::change::Op::Delete(pb::DeleteOp {
                path: "missing".into(),
                recursive: false,
            })),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(partial.code(), Code::NotFound, "{partial:?}");
    let head = get(&ch, &id).await;
    assert_eq!(head.head_version, v1 + 1, "failed batches change nothing");
    assert!(!tree(&ch, &id, None).await.contains_key("new-file"));

    // Inspect: stat, ranged reads, and a range past the end.
    let mut stream = workspace
        .read_file(pb::ReadFileRequest {
            session_id: id.clone(),
            path: "README".into(),
            offset: 6,
            length: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut data = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        data.extend_from_slice(&m.data);
    }
    assert_eq!(data, b"world");
    let past = workspace
        .read_file(pb::ReadFileRequest {
            session_id: id.clone(),
            path: "README".into(),
            offset: 100,
            ..Default::default()
        })
        .await;
    let past = match past {
        Err(status) => status,
        Ok(response) => response.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(past.code(), Code::OutOfRange, "{past:?}");

    // Save a checkpoint, then move, copy (sharing content) and delete.
    history
        .create_checkpoint(pb::CreateCheckpointRequest {
            session_id: id.clone(),
            name: "before-refactor".into(),
            description: String::new(),
        })
        .await
        .unwrap();
    apply(
        &ch,
        &id,
        0,
        vec![
            op(pb::change::Op::Move(pb::MoveOp {
                from: "src".into(),
                to: "lib".into(),
                overwrite: false,
            })),
            op(pb::change::Op::Copy(pb::CopyOp {
                from: "lib".into(),
                to: "lib-copy".into(),
                overwrite: false,
            })),
            op(pb::change::Op::MakeDirectory(pb::MakeDirectoryOp {
                path: "docs/api".into(),
                parents: true,
            })),
            write("README", "hello again\n"),
        ],
    )
    .await
    .unwrap();
    let files = tree(&ch, &id, None).await;
    assert_eq!(
        files["lib"].1, files["lib-copy"].1,
        "a copied directory shares its tree"
    );
    assert!(files.contains_key("docs/api") && !files.contains_key("src"));

    // Review: the diff against the checkpoint names what changed, with sizes.
    let diff = workspace
        .diff(pb::DiffRequest {
            session_id: id.clone(),
            from: Some(pb::Revision {
                kind: pb::RevisionKind::Checkpoint as i32,
                name: "before-refactor".into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let kinds: BTreeMap<String, i32> = diff
        .entries
        .iter()
        .map(|d| (d.path.clone(), d.kind))
        .collect();
    assert_eq!(kinds["README"], pb::DiffKind::Modified as i32);
    assert_eq!(kinds["src/main.rs"], pb::DiffKind::Deleted as i32);
    assert_eq!(kinds["lib/main.rs"], pb::DiffKind::Added as i32);
    assert_eq!(kinds["lib-copy/lib.rs"], pb::DiffKind::Added as i32);
    assert_eq!(diff.entries.len(), 7, "1 modified, 2 deleted, 4 added");

    // Commit, and the history lists it.
    let commit = history
        .commit(pb::CommitRequest {
            session_id: id.clone(),
            message: "refactor".into(),
            expected_head_version: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .commit
        .unwrap();
    let log = history
        .list_commits(pb::ListCommitsRequest {
            session_id: id.clone(),
            page: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(log.commits.len(), 1);
    assert_eq!(log.commits[0].id, commit.id);

    // Restore the checkpoint (O(1)); the files are as they were.
    history
        .restore_checkpoint(pb::RestoreCheckpointRequest {
            session_id: id.clone(),
            name: "before-refactor".into(),
            expected_head_version: 0,
        })
        .await
        .unwrap();
    assert!(tree(&ch, &id, None).await.contains_key("src/main.rs"));

    // Export the commit as tar; upload it to the store; create sessions from it and from the
    // commit; import it into a subdirectory. All agree with the commit's tree.
    let at_commit = Some(pb::Revision {
        kind: pb::RevisionKind::Commit as i32,
        name: commit.id.clone(),
    });
    let mut export = workspace
        .export_archive(pb::ExportArchiveRequest {
            session_id: id.clone(),
            at: at_commit.clone(),
            path: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut tar = Vec::new();
    while let Some(m) = export.message().await.unwrap() {
        tar.extend_from_slice(&m.data);
    }
    let committed = tree(&ch, &id, at_commit).await;
    let store = connect(&cluster.stores[0].endpoint()).await.unwrap();
    let put = ContentServiceClient::new(store)
        .put_blob(futures::stream::iter(vec![
            pb::PutBlobRequest {
                part: Some(pb::put_blob_request::Part::Header(pb::PutBlobHeader {
                    size: tar.len() as u64,
                    expected_hash: String::new(),
                    size_unknown: false,
                })),
            },
            pb::PutBlobRequest {
                part: Some(pb::put_blob_request::Part::Data(Bytes::from(tar.clone()))),
            },
        ]))
        .await
        .unwrap()
        .into_inner();
    let from_archive = sessions
        .create_session(pb::CreateSessionRequest {
            source: source(pb::source::Kind::Archive(pb::ArchiveSource {
                blob_hash: put.hash,
            })),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    let from_commit = sessions
        .create_session(pb::CreateSessionRequest {
            source: source(pb::source::Kind::Commit(pb::CommitSource {
                session_id: id.clone(),
                commit_id: commit.id.clone(),
            })),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(tree(&ch, &from_archive.id, None).await, committed);
    assert_eq!(tree(&ch, &from_commit.id, None).await, committed);
    assert_eq!(from_commit.base_root, commit.root);
    let imported = workspace
        .import_archive(futures::stream::iter(vec![
            pb::ImportArchiveRequest {
                part: Some(pb::import_archive_request::Part::Header(
                    pb::ImportArchiveHeader {
                        session_id: ids[1].clone(),
                        path: "vendored".into(),
                        expected_head_version: 0,
                    },
                )),
            },
            pb::ImportArchiveRequest {
                part: Some(pb::import_archive_request::Part::Data(Bytes::from(tar))),
            },
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        imported.files,
        committed
            .values()
            .filter(|(k, _)| *k == pb::EntryKind::File as i32)
            .count() as u64
    );

    // Hand over (keeping a role for the previous owner), finalize, close.
    let transferred = sessions
        .transfer_session(pb::TransferSessionRequest {
            session_id: id.clone(),
            new_owner: "bob".into(),
            previous_owner_role: pb::Role::Owner as i32,
            comment: "your turn".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(transferred.owner, "bob");
    sessions
        .finalize_session(pb::FinalizeSessionRequest {
            session_id: id.clone(),
        })
        .await
        .unwrap();
    let refused = apply(&ch, &id, 0, vec![write("late", "x")])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let closed = sessions
        .close_session(pb::CloseSessionRequest {
            session_id: id.clone(),
            archive: false,
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(closed.state, pb::SessionState::Closed as i32);
    let gone = workspace
        .stat(pb::StatRequest {
            session_id: id.clone(),
            path: "README".into(),
            at: None,
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::FailedPrecondition, "{gone:?}");
    // Commits and the audit trail outlive the workspace.
    assert_eq!(
        history
            .get_commit(pb::GetCommitRequest {
                session_id: id.clone(),
                commit_id: commit.id.clone()
            })
            .await
            .unwrap()
            .into_inner()
            .commit
            .unwrap()
            .id,
        commit.id
    );
    let audit = sessions
        .list_audit_events(pb::ListAuditEventsRequest {
            session_id: id.clone(),
            page: Some(pb::PageRequest {
                page_size: 1000,
                page_token: String::new(),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    for action in [
        "session.create",
        "workspace.apply",
        "history.checkpoint",
        "history.commit",
        "history.restore",
        "session.transfer",
        "session.finalize",
        "session.close",
    ] {
        assert!(
            actions.contains(&action),
            "audit lacks {action}: {actions:?}"
        );
    }
    assert!(audit.windows(2).all(|w| w[0].sequence < w[1].sequence));
}
