//! The SDK against a real `aetherd dev`: dedup-aware uploads, downloads, history, the bus and
//! status codes.

use std::path::Path;
use std::time::Duration;

use aether_client::proto as pb;
use aether_client::{Client, NewSession, NoProgress, Options, Rev, SessionHandle};
use aether_testkit::ServiceProcess;
use tonic::Code;

use aether_testkit::test_bytes;

async fn start() -> (ServiceProcess, tempfile::TempDir, Client) {
    let data = tempfile::tempdir().unwrap();
    let server = ServiceProcess::start(&[
        "dev".into(),
        "--data".into(),
        data.path().display().to_string(),
    ])
    .await
    .expect("start aetherd dev");
    let client = Client::connect(server.endpoint(), Options::default())
        .await
        .unwrap();
    (server, data, client)
}

fn write(root: &Path, path: &str, data: &[u8]) {
    let path = root.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// Every file below `root`, as (relative path, bytes), sorted.
fn snapshot(root: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

async fn new_session(client: &Client) -> SessionHandle {
    client
        .create_session(NewSession {
            labels: vec![("suite".into(), "sdk".into())],
            ..Default::default()
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_send_only_what_the_store_lacks() {
    let (_server, _data, client) = start().await;
    let session = new_session(&client).await;
    let local = tempfile::tempdir().unwrap();
    let big = test_bytes(20 * 1024 * 1024 + 321, 9);
    write(local.path(), "data/big.bin", &big);
    write(local.path(), "src/main.rs", b"fn main() {}\n");
    write(local.path(), "src/copy.rs", b"fn main() {}\n");
    write(local.path(), "empty.txt", b"");
    std::fs::create_dir_all(local.path().join("empty-dir")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let script = local.path().join("run.sh");
        std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    let first = session
        .upload_directory(local.path(), "tree", &NoProgress)
        .await
        .unwrap();
    assert_eq!(first.files, 5);
    assert!(
        first.chunks >= 3,
        "the big file spans several chunks: {first:?}"
    );
    assert_eq!(first.batches, 1, "one atomic batch");
    // The big file's chunks and the content two small files share go by PutBlob, once each;
    // the one small unshared file (run.sh) rides inline; the empty file costs nothing.
    assert_eq!(first.inline_files, 1, "{first:?}");
    assert_eq!(first.inline_bytes, 18, "{first:?}");
    assert_eq!(first.chunks_uploaded, first.chunks - 1, "{first:?}");
    assert_eq!(
        first.bytes_uploaded + first.inline_bytes,
        big.len() as u64 + 13 + 18,
        "each distinct content is sent once: {first:?}"
    );

    // The same tree again: nothing to send.
    let again = session
        .upload_directory(local.path(), "tree", &NoProgress)
        .await
        .unwrap();
    assert_eq!(again.chunks_uploaded, 0, "{again:?}");
    assert_eq!(again.bytes_uploaded + again.inline_bytes, 0, "{again:?}");

    // An edit in the middle of the big file re-sends only the chunks around it.
    let mut edited = big.clone();
    edited[3 * 1024 * 1024..3 * 1024 * 1024 + 10].copy_from_slice(b"0123456789");
    write(local.path(), "data/big.bin", &edited);
    let third = session
        .upload_directory(local.path(), "tree", &NoProgress)
        .await
        .unwrap();
    assert!(
        third.chunks_uploaded >= 1 && third.chunks_uploaded <= 2,
        "{third:?}"
    );
    assert!(third.bytes_uploaded < edited.len() as u64 / 2, "{third:?}");
    assert_eq!(
        session.read("tree/data/big.bin", &Rev::Head).await.unwrap(),
        edited
    );
    let entry = session.stat("tree/src/main.rs", &Rev::Head).await.unwrap();
    assert_eq!(
        &client.get_blob(&entry.hash, 0, 0).await.unwrap()[..],
        b"fn main() {}\n"
    );

    // Download it back: same bytes, same modes, the empty directory too.
    let copy = tempfile::tempdir().unwrap();
    let report = session
        .download_directory("tree", &Rev::Head, copy.path(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(report.files, 5);
    assert_eq!(snapshot(copy.path()), snapshot(local.path()));
    assert!(copy.path().join("empty-dir").is_dir());
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(copy.path().join("run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_bus_and_status_codes() {
    let (_server, _data, client) = start().await;
    let session = new_session(&client).await;
    assert_eq!(
        session
            .created()
            .unwrap()
            .labels
            .get("suite")
            .map(String::as_str),
        Some("sdk")
    );
    let mut events = session.subscribe(
        pb::StartPosition {
            position: Some(pb::start_position::Position::Earliest(true)),
        },
        "",
    );

    session
        .upload_bytes("a.txt", "one".into(), 0)
        .await
        .unwrap();
    session.checkpoint("v1", "first").await.unwrap();
    session
        .upload_bytes("a.txt", "two".into(), 0)
        .await
        .unwrap();
    session.write_file("b.txt", "bee".into(), 0).await.unwrap();
    let diff = session
        .diff(&Rev::Checkpoint("v1".into()), &Rev::Head, "")
        .await
        .unwrap();
    let paths: Vec<&str> = diff.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, vec!["a.txt", "b.txt"]);
    session.restore("v1").await.unwrap();
    assert_eq!(session.read("a.txt", &Rev::Head).await.unwrap(), b"one");
    let commit = session.commit("first commit").await.unwrap();
    let log = session.log().await.unwrap();
    assert_eq!(log[0].id, commit.id);
    assert_eq!(
        session
            .read("a.txt", &Rev::Commit(commit.id.clone()))
            .await
            .unwrap(),
        b"one"
    );

    let offset = session
        .publish_one("agent.note", "hello".into(), Default::default())
        .await
        .unwrap();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let message = events.next().await.unwrap().expect("stream open");
            if message.subject == "agent.note" {
                return message;
            }
        }
    })
    .await
    .expect("the published message arrives");
    assert_eq!(found.offset, offset);
    assert_eq!(&found.payload[..], b"hello");

    let missing = session.stat("nope.txt", &Rev::Head).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(missing.is_not_found());

    session.finalize().await.unwrap();
    let refused = session
        .upload_bytes("c.txt", "late".into(), 0)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");

    let closed = session.close(false).await.unwrap();
    assert_eq!(
        closed.session.unwrap().state,
        pb::SessionState::Closed as i32
    );
    assert!(!session.audit_events().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_past_ten_thousand_changes_go_in_several_batches() {
    use aether_client::{UploadFile, UploadPlan, UploadSource};
    let (_server, _data, client) = start().await;
    let session = new_session(&client).await;
    let count = aether_client::MAX_BATCH_CHANGES + 5;
    let plan = UploadPlan {
        files: (0..count)
            .map(|i| UploadFile {
                path: format!("many/{:02}/{i}.txt", i % 50),
                mode: 0,
                mtime_ns: 0,
                source: UploadSource::Bytes(format!("file {i}\n").into()),
            })
            .collect(),
        ..Default::default()
    };
    let report = session.upload(plan, &NoProgress).await.unwrap();
    assert_eq!(report.batches, 2, "{report:?}");
    assert_eq!(report.files, count as u64);
    let listed = session.list("many", true, &Rev::Head).await.unwrap();
    assert_eq!(listed.len(), count + 50, "files and their 50 directories");
    assert_eq!(
        session.read("many/03/10003.txt", &Rev::Head).await.unwrap(),
        b"file 10003\n"
    );
}
