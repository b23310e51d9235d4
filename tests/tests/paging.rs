//! Paging costs one page: ListTree (one level and recursive) and Diff resume from their token by
//! seeking, so every page joins up exactly with the one before (no entry lost or repeated,
//! the same order as one unpaged listing), also when the entry a token names is deleted
//! between pages; a token this listing did not make is INVALID_ARGUMENT.

use crate::common::{create_session, start_dev};

use aether_proto as pb;
use aether_proto::session_service_client::SessionServiceClient;
use aether_proto::workspace_service_client::WorkspaceServiceClient;
use tonic::transport::Channel;
use tonic::Code;

fn write(path: &str, content: &str) -> pb::Change {
    pb::Change {
        op: Some(pb::change::Op::Write(pb::WriteOp {
            path: path.into(),
            content: content.as_bytes().to_vec().into(),
            ..Default::default()
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

async fn list_page(
    channel: &Channel,
    session: &str,
    path: &str,
    recursive: bool,
    size: u32,
    token: &str,
) -> Result<pb::ListTreeResponse, tonic::Status> {
    WorkspaceServiceClient::new(channel.clone())
        .list_tree(pb::ListTreeRequest {
            session_id: session.into(),
            path: path.into(),
            recursive,
            at: None,
            page: Some(pb::PageRequest {
                page_size: size,
                page_token: token.into(),
            }),
        })
        .await
        .map(|r| r.into_inner())
}

async fn list_all(
    channel: &Channel,
    session: &str,
    path: &str,
    recursive: bool,
    size: u32,
) -> Vec<String> {
    let (mut paths, mut token) = (Vec::new(), String::new());
    loop {
        let page = list_page(channel, session, path, recursive, size, &token)
            .await
            .unwrap();
        assert!(page.entries.len() <= size as usize);
        paths.extend(page.entries.into_iter().map(|e| e.path));
        if page.next_page_token.is_empty() {
            return paths;
        }
        token = page.next_page_token;
    }
}

async fn diff_all(channel: &Channel, session: &str, size: u32) -> Vec<String> {
    let (mut paths, mut token) = (Vec::new(), String::new());
    loop {
        let page = WorkspaceServiceClient::new(channel.clone())
            .diff(pb::DiffRequest {
                session_id: session.into(),
                page: Some(pb::PageRequest {
                    page_size: size,
                    page_token: token.clone(),
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= size as usize);
        paths.extend(page.entries.into_iter().map(|e| e.path));
        if page.next_page_token.is_empty() {
            return paths;
        }
        token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_join_up_and_foreign_tokens_are_invalid() {
    let dev = start_dev(&[]).await;
    let channel = dev.channel.clone();
    let session = create_session(&channel).await.unwrap().id;
    // Names that sort differently byte-wise and component-wise ("a-b" < "a/…" < "a0").
    let mut changes = Vec::new();
    for dir in ["a", "a-b", "a0", "b/c", "b/c/d", "z"] {
        for file in ["1", "2", "x.txt"] {
            changes.push(write(&format!("{dir}/{file}"), dir));
        }
    }
    apply(&channel, &session, changes).await;

    for recursive in [false, true] {
        let whole = list_all(&channel, &session, "", recursive, 1000).await;
        for size in [1, 2, 3, 7] {
            assert_eq!(
                list_all(&channel, &session, "", recursive, size).await,
                whole,
                "recursive {recursive}, pages of {size}"
            );
        }
    }
    let whole = list_all(&channel, &session, "b", true, 1000).await;
    assert_eq!(list_all(&channel, &session, "b", true, 2).await, whole);
    let diff = diff_all(&channel, &session, 1000).await;
    assert_eq!(diff.len(), 18, "{diff:?}");
    for size in [1, 4, 5] {
        assert_eq!(
            diff_all(&channel, &session, size).await,
            diff,
            "pages of {size}"
        );
    }

    // The entry a token names is deleted between pages: the next page starts after it.
    let first = list_page(&channel, &session, "", true, 6, "")
        .await
        .unwrap();
    let token = first.next_page_token.clone();
    assert_eq!(token, "a-b/1");
    apply(
        &channel,
        &session,
        vec![pb::Change {
            op: Some(pb::change::Op::Delete(pb::DeleteOp {
                path: token.clone(),
                recursive: false,
            })),
            precondition: None,
        }],
    )
    .await;
    let next = list_page(&channel, &session, "", true, 2, &token)
        .await
        .unwrap();
    let names: Vec<_> = next.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(names, ["a-b/2", "a-b/x.txt"]);

    // Tokens this listing did not make.
    for (path, recursive, token) in [
        ("", true, "../etc"),
        ("", true, "/abs"),
        ("", true, "garbage\0token"),
        ("b", true, "a/1"),
        ("b", true, "b"),
        ("", false, "b/c"),
    ] {
        let status = list_page(&channel, &session, path, recursive, 10, token)
            .await
            .expect_err(token);
        assert_eq!(status.code(), Code::InvalidArgument, "{token}: {status:?}");
        assert!(status.message().contains("page_token"), "{status:?}");
    }
    let status = WorkspaceServiceClient::new(channel.clone())
        .diff(pb::DiffRequest {
            session_id: session.clone(),
            page: Some(pb::PageRequest {
                page_size: 10,
                page_token: "../x".into(),
            }),
            ..Default::default()
        })
        .await
        .expect_err("a foreign diff token");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

/// Lists every session matching `selector`, `size` at a time; their ids in order.
async fn list_sessions_paged(channel: &Channel, selector: &str, size: u32) -> Vec<String> {
    let mut sessions = SessionServiceClient::new(channel.clone());
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let page = sessions
            .list_sessions(pb::ListSessionsRequest {
                label_selector: selector.into(),
                states: vec![],
                page: Some(pb::PageRequest {
                    page_size: size,
                    page_token: token.clone(),
                }),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.sessions.len() <= size as usize);
        ids.extend(page.sessions.into_iter().map(|s| s.id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        token = page.next_page_token;
    }
}

/// ListSessions with a "k=v" term reads the label index (kept in etcd in the same transaction
/// as each session record): pages join up in id order, label changes move a session between
/// answers at once, and the index holds exactly one key per label of each session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_sessions_by_label_pages_through_the_index() {
    let cluster = aether_testkit::Cluster::start(aether_testkit::ClusterSpec {
        coordinators: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let channel = crate::common::connect(&cluster.coordinators[0].endpoint())
        .await
        .unwrap();
    let mut client = SessionServiceClient::new(channel.clone());
    let mut team_a = Vec::new();
    for i in 0..12 {
        let team = if i % 3 == 0 { "b" } else { "a" };
        let env = if i % 2 == 0 { "prod" } else { "dev" };
        let id = client
            .create_session(pb::CreateSessionRequest {
                labels: [
                    ("team".to_string(), team.to_string()),
                    ("env".to_string(), env.to_string()),
                    ("example.com/path".to_string(), "z".to_string()),
                ]
                .into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .session
            .unwrap()
            .id;
        if team == "a" {
            team_a.push((id, env));
        }
    }
    team_a.sort();
    let ids = |filter: &dyn Fn(&str) -> bool| -> Vec<String> {
        team_a
            .iter()
            .filter(|(_, env)| filter(env))
            .map(|(id, _)| id.clone())
            .collect()
    };
    assert_eq!(
        list_sessions_paged(&channel, "team=a", 3).await,
        ids(&|_| true)
    );
    assert_eq!(
        list_sessions_paged(&channel, "team=a,env!=prod", 2).await,
        ids(&|env| env != "prod")
    );
    assert_eq!(
        list_sessions_paged(&channel, "example.com/path=z,team=a", 5).await,
        ids(&|_| true)
    );
    assert!(list_sessions_paged(&channel, "team=c", 5).await.is_empty());

    // A label change moves the session between answers.
    let moved = team_a[0].0.clone();
    client
        .update_session(pb::UpdateSessionRequest {
            session_id: moved.clone(),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["labels".into()],
            }),
            labels: [("team".to_string(), "c".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        list_sessions_paged(&channel, "team=c", 5).await,
        std::slice::from_ref(&moved)
    );
    let rest: Vec<String> = ids(&|_| true)
        .into_iter()
        .filter(|id| *id != moved)
        .collect();
    assert_eq!(list_sessions_paged(&channel, "team=a", 4).await, rest);

    // Closed sessions leave a tombstone (their records go to the store) and keep their label
    // keys: listings by label still find them, in the same order, filtered by state.
    let closed: Vec<String> = rest.iter().step_by(2).cloned().collect();
    for id in &closed {
        client
            .close_session(pb::CloseSessionRequest {
                session_id: id.clone(),
                archive: false,
            })
            .await
            .unwrap();
    }
    assert_eq!(list_sessions_paged(&channel, "team=a", 2).await, rest);
    let closed_by_label = client
        .list_sessions(pb::ListSessionsRequest {
            label_selector: "team=a".into(),
            states: vec![pb::SessionState::Closed as i32],
            page: None,
        })
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(
        closed_by_label
            .iter()
            .map(|s| s.id.clone())
            .collect::<Vec<_>>(),
        closed
    );
    assert!(closed_by_label
        .iter()
        .all(|s| s.labels.contains_key("env") && !s.head_root.is_empty()));

    // The index in etcd: one key per label of each session, none left from the old labels.
    let coord = aether_coord::EtcdCoordination::connect(&cluster.etcd.endpoints())
        .await
        .unwrap();
    use aether_coord::Coordination;
    let keys = coord.range("/aether/v1/labels/", None, 1000).await.unwrap();
    let keys: Vec<&str> = keys.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys.len(), 12 * 3 - 3 + 1, "{keys:#?}");
    assert!(keys.contains(&format!("/aether/v1/labels/team=c/{moved}").as_str()));
    assert!(!keys
        .iter()
        .any(|k| k.ends_with(&moved) && !k.contains("team=c")));
    assert!(keys
        .iter()
        .any(|k| k.starts_with("/aether/v1/labels/example.com%2Fpath=z/")));
    assert!(coord
        .get("/aether/v1/labels-ready")
        .await
        .unwrap()
        .is_some());

    // Sessions written before the index existed: a coordinator that starts indexes them.
    let mut deletes: Vec<aether_coord::Op> =
        keys.iter().map(|k| aether_coord::Op::delete(*k)).collect();
    deletes.push(aether_coord::Op::delete("/aether/v1/labels-ready"));
    assert!(coord.txn(vec![], deletes).await.unwrap().succeeded);
    assert_eq!(
        list_sessions_paged(&channel, "team=a", 4).await,
        rest,
        "scanned"
    );
    let second = crate::common::start_coordinator(&cluster, &[]).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while coord
        .get("/aether/v1/labels-ready")
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the index was not rebuilt"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let rebuilt = coord.range("/aether/v1/labels/", None, 1000).await.unwrap();
    assert_eq!(rebuilt.len(), keys.len());
    let second = crate::common::connect(&second.endpoint()).await.unwrap();
    assert_eq!(list_sessions_paged(&second, "team=a", 4).await, rest);

    // 64 labels (the limit) replaced by 64 others at once: one transaction within etcd's
    // operation limit, and the index follows.
    for value in ["first", "second"] {
        let labels = (0..64)
            .map(|i| (format!("k{i:02}"), format!("{value}{i}")))
            .collect();
        client
            .update_session(pb::UpdateSessionRequest {
                session_id: moved.clone(),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["labels".into()],
                }),
                labels,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("replacing 64 labels ({value}): {e:?}"));
    }
    assert_eq!(
        list_sessions_paged(&channel, "k63=second63", 5).await,
        std::slice::from_ref(&moved)
    );
    assert!(list_sessions_paged(&channel, "k63=first63", 5)
        .await
        .is_empty());
    let stale = coord
        .range("/aether/v1/labels/k00=first0/", None, 10)
        .await
        .unwrap();
    assert!(stale.is_empty(), "old index keys left: {stale:?}");
}
