//! Paging costs one page: ListTree (one level and recursive) and Diff resume from their token by
//! seeking, so every page joins up exactly with the one before (no entry lost or repeated,
//! the same order as one unpaged listing), also when the entry a token names is deleted
//! between pages; a token this listing did not make is INVALID_ARGUMENT.

use crate::common::{create_session, start_dev};

use aether_proto as pb;
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
