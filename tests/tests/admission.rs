//! Admission control: past `--max-uploads` uploads or `--max-in-flight` calls, a process
//! refuses at once with RESOURCE_EXHAUSTED ("not-applied") instead of queuing; health checks
//! are always answered, and the budget frees as calls finish.

use crate::common::{create_session, start_dev};

use std::time::Duration;

use aether_proto as pb;
use aether_proto::workspace_service_client::WorkspaceServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Code;

fn header(session: &str, path: &str) -> pb::WriteFileRequest {
    pb::WriteFileRequest {
        part: Some(pb::write_file_request::Part::Header(pb::WriteFileHeader {
            session_id: session.into(),
            path: path.into(),
            ..Default::default()
        })),
    }
}

/// Starts a WriteFile that stays open until the sender is dropped or finished.
async fn held_upload(
    channel: &Channel,
    session: &str,
) -> (
    mpsc::Sender<pb::WriteFileRequest>,
    tokio::task::JoinHandle<Result<tonic::Response<pb::WriteFileResponse>, tonic::Status>>,
) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(header(session, "held.txt")).await.unwrap();
    let mut client = WorkspaceServiceClient::new(channel.clone());
    let call = tokio::spawn(async move { client.write_file(ReceiverStream::new(rx)).await });
    (tx, call)
}

async fn write(channel: &Channel, session: &str, path: &str) -> Result<(), tonic::Status> {
    let messages = vec![
        header(session, path),
        pb::WriteFileRequest {
            part: Some(pb::write_file_request::Part::Data(b"data".to_vec().into())),
        },
    ];
    WorkspaceServiceClient::new(channel.clone())
        .write_file(futures::stream::iter(messages))
        .await
        .map(|_| ())
}

type Held = (
    mpsc::Sender<pb::WriteFileRequest>,
    tokio::task::JoinHandle<Result<tonic::Response<pb::WriteFileResponse>, tonic::Status>>,
);

/// Holds an upload open and probes until the probe is refused: the probe can overtake the held
/// upload on its way to the server (then the held one is refused and started again).
async fn hold_and_probe<F, Fut>(
    channel: &Channel,
    session: &str,
    mut probe: F,
) -> (Held, tonic::Status)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut held = held_upload(channel, session).await;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the probe was never refused"
        );
        match probe().await {
            Err(status) if status.code() == Code::ResourceExhausted && !held.1.is_finished() => {
                return (held, status);
            }
            Err(status) if status.code() != Code::ResourceExhausted => panic!("{status:?}"),
            _ => {}
        }
        if held.1.is_finished() {
            held = held_upload(channel, session).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Retries `attempt` until it is admitted: the held call takes a moment to leave the server.
async fn once_admitted<F, Fut>(mut attempt: F) -> Result<(), tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let result = attempt().await;
        let refused = matches!(&result, Err(s) if s.code() == Code::ResourceExhausted);
        if !refused || tokio::time::Instant::now() > deadline {
            return result;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_budgets_a_process_refuses_at_once() {
    // Uploads.
    let dev = start_dev(&["--max-uploads", "1"]).await;
    let channel = dev.channel.clone();
    let session = create_session(&channel).await.unwrap().id;
    let ((tx, held), status) = hold_and_probe(&channel, &session, || {
        write(&channel, &session, "second.txt")
    })
    .await;
    assert!(status.message().contains("1 uploads"), "{status:?}");
    assert_eq!(
        status.metadata().get("x-aether-outcome").unwrap(),
        "not-applied"
    );
    crate::common::assert_serving(&channel, "aetherfs.v1.WorkspaceService").await;
    drop(tx);
    held.await.unwrap().unwrap();
    once_admitted(|| write(&channel, &session, "third.txt"))
        .await
        .expect("an upload once the first finished");

    // Calls.
    let dev = start_dev(&["--max-in-flight", "1"]).await;
    let channel = dev.channel.clone();
    let session = create_session(&channel).await.unwrap().id;
    let stat = || {
        let mut client = WorkspaceServiceClient::new(channel.clone());
        let session = session.clone();
        async move {
            client
                .stat(pb::StatRequest {
                    session_id: session,
                    path: String::new(),
                    at: None,
                })
                .await
                .map(|_| ())
        }
    };
    let ((tx, held), status) = hold_and_probe(&channel, &session, stat).await;
    assert!(status.message().contains("1 calls"), "{status:?}");
    crate::common::assert_serving(&channel, "aetherfs.v1.WorkspaceService").await;
    drop(tx);
    held.await.unwrap().unwrap();
    once_admitted(stat)
        .await
        .expect("a call once the first finished");
}

/// Streams count until they end, not until they answer: past `--max-read-streams` open
/// reads and `--max-subscriptions` open subscriptions, new ones are refused at once, and the
/// budget frees when a client goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_count_until_they_end() {
    let dev = start_dev(&["--max-read-streams", "2", "--max-subscriptions", "1"]).await;
    let channel = dev.channel.clone();
    let session = create_session(&channel).await.unwrap().id;
    // Larger than the stream's flow-control windows: its answer cannot end unread.
    let big = aether_testkit::test_bytes(32 * 1024 * 1024, 9);
    crate::common::write_file(&channel, &session, "big.bin", &big)
        .await
        .unwrap();
    let read = || {
        let mut client = WorkspaceServiceClient::new(channel.clone());
        let session = session.clone();
        async move {
            client
                .read_file(pb::ReadFileRequest {
                    session_id: session,
                    path: "big.bin".into(),
                    ..Default::default()
                })
                .await
                .map(|response| response.into_inner())
        }
    };
    let first = read().await.unwrap();
    let second = read().await.unwrap();
    let status = read().await.expect_err("a third open read is refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("2 reading streams"), "{status:?}");
    assert_eq!(
        status.metadata().get("x-aether-outcome").unwrap(),
        "not-applied"
    );
    // Unary calls are not held back by open streams.
    crate::common::assert_serving(&channel, "aetherfs.v1.WorkspaceService").await;
    crate::common::head_version(&channel, &session).await;
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let third = loop {
        match read().await {
            Ok(stream) => break stream,
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no read was admitted once a reader went away"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(s) => panic!("{s:?}"),
        }
    };
    // A stream read to its end frees its permit too.
    let mut whole = Vec::new();
    let mut second = second;
    while let Some(message) = second.message().await.unwrap() {
        whole.extend_from_slice(&message.data);
    }
    assert!(whole == big, "the read returned other bytes");
    once_admitted(|| async { read().await.map(|_| ()) })
        .await
        .expect("a read once another ended");
    drop(third);

    // Subscriptions.
    let subscribe = || {
        let channel = channel.clone();
        let session = session.clone();
        async move { crate::common::subscribe(&channel, &session).await }
    };
    let held = subscribe().await.unwrap();
    let refused = subscribe()
        .await
        .expect_err("a second subscription is refused");
    let status = refused.downcast_ref::<tonic::Status>().expect("a status");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    drop(held);
    once_admitted(|| async {
        subscribe()
            .await
            .map(|_| ())
            .map_err(|e| e.downcast::<tonic::Status>().expect("a status"))
    })
    .await
    .expect("a subscription once the first went away");
}
