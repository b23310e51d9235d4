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
