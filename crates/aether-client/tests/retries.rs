//! Deadlines, retries and the bearer token, against an in-process ContentService that fails or
//! stalls on purpose.

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether_client::proto as pb;
use aether_client::proto::content_service_server::{ContentService, ContentServiceServer};
use aether_client::{Client, Options};
use tonic::{Code, Request, Response, Status, Streaming};

#[derive(Clone, Default)]
struct Flaky {
    calls: Arc<AtomicU32>,
    /// Calls that answer UNAVAILABLE before one succeeds.
    unavailable_first: u32,
    /// Calls that stall past any test deadline before one answers at once.
    stall_first: u32,
    authorization: Arc<Mutex<Vec<Option<String>>>>,
}

impl Flaky {
    async fn answer<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or("<binary>").to_string());
        self.authorization.lock().unwrap().push(header);
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n < self.stall_first {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        if n < self.unavailable_first {
            return Err(Status::unavailable("store warming up"));
        }
        Ok(())
    }
}

type BlobStream = Pin<Box<dyn futures::Stream<Item = Result<pb::GetBlobResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ContentService for Flaky {
    async fn put_blob(
        &self,
        _: Request<Streaming<pb::PutBlobRequest>>,
    ) -> Result<Response<pb::PutBlobResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    type GetBlobStream = BlobStream;

    async fn get_blob(
        &self,
        _: Request<pb::GetBlobRequest>,
    ) -> Result<Response<Self::GetBlobStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn has_blobs(
        &self,
        request: Request<pb::HasBlobsRequest>,
    ) -> Result<Response<pb::HasBlobsResponse>, Status> {
        self.answer(&request).await?;
        Ok(Response::new(pb::HasBlobsResponse {
            missing: request.into_inner().hashes,
        }))
    }

    async fn stat_blob(
        &self,
        request: Request<pb::StatBlobRequest>,
    ) -> Result<Response<pb::StatBlobResponse>, Status> {
        self.answer(&request).await?;
        Ok(Response::new(pb::StatBlobResponse {
            hash: request.into_inner().hash,
            size: 1,
            ..Default::default()
        }))
    }
}

/// Serves `service` on a free loopback port until the test ends.
async fn serve(service: Flaky) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(ContentServiceServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    format!("http://{addr}")
}

fn options(token: Option<&str>, retries: u32, timeout: Duration) -> Options {
    Options {
        token: token.map(str::to_string),
        retries,
        timeout,
        backoff: Duration::from_millis(10),
        ..Options::default()
    }
}

#[tokio::test]
async fn unavailable_is_retried_with_the_token_on_every_attempt() {
    let service = Flaky {
        unavailable_first: 2,
        ..Default::default()
    };
    let endpoint = serve(service.clone()).await;
    let client = Client::connect(endpoint, options(Some("s3cret"), 3, Duration::from_secs(5)))
        .await
        .unwrap();
    let missing = client.missing_blobs(&["ab".into()]).await.unwrap();
    assert_eq!(missing, vec!["ab".to_string()]);
    assert_eq!(service.calls.load(Ordering::SeqCst), 3);
    let seen = service.authorization.lock().unwrap().clone();
    assert_eq!(seen, vec![Some("Bearer s3cret".to_string()); 3]);
}

#[tokio::test]
async fn retries_stop_and_the_status_code_is_kept() {
    let service = Flaky {
        unavailable_first: 100,
        ..Default::default()
    };
    let endpoint = serve(service.clone()).await;
    let client = Client::connect(endpoint, options(None, 2, Duration::from_secs(5)))
        .await
        .unwrap();
    let error = client.missing_blobs(&["ab".into()]).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);
    assert!(
        error
            .to_string()
            .starts_with("UNAVAILABLE: store warming up"),
        "{error}"
    );
    assert_eq!(
        service.calls.load(Ordering::SeqCst),
        3,
        "one try and two retries"
    );
    assert_eq!(
        service.authorization.lock().unwrap()[0],
        None,
        "no token, no header"
    );
}

#[tokio::test]
async fn a_stalled_read_hits_its_deadline_and_is_retried() {
    let service = Flaky {
        stall_first: 1,
        ..Default::default()
    };
    let endpoint = serve(service.clone()).await;
    let client = Client::connect(endpoint, options(None, 1, Duration::from_millis(300)))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let stat = client.stat_blob("ab").await.unwrap();
    assert_eq!(stat.hash, "ab");
    assert_eq!(service.calls.load(Ordering::SeqCst), 2);
    assert!(started.elapsed() < Duration::from_secs(10));

    // Without retries the deadline is the answer.
    let service = Flaky {
        stall_first: 1,
        ..Default::default()
    };
    let endpoint = serve(service.clone()).await;
    let client = Client::connect(endpoint, options(None, 0, Duration::from_millis(300)))
        .await
        .unwrap();
    let error = client.stat_blob("ab").await.unwrap_err();
    assert_eq!(error.code(), Code::DeadlineExceeded);
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    // A port nobody listens on: bind, note it, close it.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let client = Client::connect(
        format!("http://127.0.0.1:{port}"),
        options(None, 1, Duration::from_secs(2)),
    )
    .await
    .unwrap();
    let error = client.session("abc").info().await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error}");
}

/// A HistoryService whose Commit fails its first `failures` attempts with `first` and records
/// the request id of every attempt.
#[derive(Clone)]
struct FlakyHistory {
    failures: u32,
    first: Status,
    ids: Arc<Mutex<Vec<Option<String>>>>,
}

#[tonic::async_trait]
impl pb::history_service_server::HistoryService for FlakyHistory {
    async fn create_checkpoint(
        &self,
        _: Request<pb::CreateCheckpointRequest>,
    ) -> Result<Response<pb::CreateCheckpointResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn list_checkpoints(
        &self,
        _: Request<pb::ListCheckpointsRequest>,
    ) -> Result<Response<pb::ListCheckpointsResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn restore_checkpoint(
        &self,
        _: Request<pb::RestoreCheckpointRequest>,
    ) -> Result<Response<pb::RestoreCheckpointResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let id = request
            .metadata()
            .get(aether_client::REQUEST_ID_HEADER)
            .map(|v| v.to_str().unwrap().to_string());
        let attempt = {
            let mut ids = self.ids.lock().unwrap();
            ids.push(id);
            ids.len() as u32
        };
        if attempt <= self.failures {
            return Err(self.first.clone());
        }
        Ok(Response::new(pb::CommitResponse {
            commit: Some(pb::CommitInfo {
                id: "c1".into(),
                message: request.into_inner().message,
                ..Default::default()
            }),
        }))
    }

    async fn list_commits(
        &self,
        _: Request<pb::ListCommitsRequest>,
    ) -> Result<Response<pb::ListCommitsResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn get_commit(
        &self,
        _: Request<pb::GetCommitRequest>,
    ) -> Result<Response<pb::GetCommitResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

async fn serve_history(service: FlakyHistory) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(pb::history_service_server::HistoryServiceServer::new(
                service,
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    format!("http://{addr}")
}

fn outcome(mut status: Status, outcome: &'static str) -> Status {
    status.metadata_mut().insert(
        aether_client::OUTCOME_HEADER,
        tonic::metadata::MetadataValue::from_static(outcome),
    );
    status
}

#[tokio::test]
async fn a_change_is_retried_only_with_its_one_request_id() {
    // Whether the failed attempt applied or not, the retry carries the same id (the server
    // answers it with the first outcome); the next call has its own id.
    for first in [
        outcome(Status::unavailable("etcd timed out"), "unknown"),
        outcome(Status::unavailable("fenced"), "not-applied"),
        Status::deadline_exceeded("slow"),
    ] {
        let service = FlakyHistory {
            failures: 2,
            first: first.clone(),
            ids: Arc::default(),
        };
        let endpoint = serve_history(service.clone()).await;
        let client = Client::connect(endpoint, options(None, 3, Duration::from_secs(5)))
            .await
            .unwrap();
        let session = client.session("s1");
        let info = session.commit("once").await.unwrap();
        assert_eq!(info.message, "once");
        session.commit("twice").await.unwrap();
        let ids = service.ids.lock().unwrap().clone();
        assert_eq!(ids.len(), 4, "{first:?}: three attempts, then one");
        let first_id = ids[0].clone().expect("a change names itself");
        assert!(!first_id.is_empty() && first_id.len() <= 128);
        assert_eq!(ids[1].as_deref(), Some(first_id.as_str()), "{first:?}");
        assert_eq!(ids[2].as_deref(), Some(first_id.as_str()), "{first:?}");
        assert_ne!(
            ids[3].as_deref(),
            Some(first_id.as_str()),
            "a new call, a new id"
        );
    }
    // A refusal that is not transient is not retried.
    let service = FlakyHistory {
        failures: 1,
        first: outcome(Status::aborted("expected head version 3"), "not-applied"),
        ids: Arc::default(),
    };
    let endpoint = serve_history(service.clone()).await;
    let client = Client::connect(endpoint, options(None, 3, Duration::from_secs(5)))
        .await
        .unwrap();
    let error = client.session("s1").commit("once").await.unwrap_err();
    assert_eq!(error.code(), Code::Aborted);
    assert_eq!(service.ids.lock().unwrap().len(), 1);
}
