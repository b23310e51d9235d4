//! Admission control (design promise 8): each process admits a bounded number of calls and
//! refuses the rest at once with RESOURCE_EXHAUSTED instead of queuing them without bound.
//!
//! Four budgets. Counted until the handler answers (response headers): every call
//! (`--max-in-flight`), and uploads — the client-streaming calls whose bodies go to the store
//! (WriteFile, ImportArchive, PutBlob; `--max-uploads`) — because an upload holds a few chunks
//! of memory while it lasts. Counted until the answer's stream ends (or its client goes away):
//! reading streams (ReadFile, GetBlob, ExportArchive; `--max-read-streams`), each of which
//! reads content ahead of its reader, and subscriptions (Subscribe, PublishStream;
//! `--max-subscriptions`). A refused call changed nothing (`x-aether-outcome: not-applied`,
//! `x-aether-admission: busy`): retry it later, as the SDK does. Health and reflection are always admitted, so a loaded process still says
//! it is alive.

use std::sync::Arc;
use std::task::{Context, Poll};

use std::future::Future;
use std::pin::Pin;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tower::{Layer, Service};

/// Calls in flight per process, by default.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
/// Uploads in flight per process, by default.
pub const DEFAULT_MAX_UPLOADS: usize = 32;
/// Reading streams open per process, by default (each may hold `--store-concurrency` chunks
/// read ahead).
pub const DEFAULT_MAX_READ_STREAMS: usize = 256;
/// Subscriptions and publish streams open per process, by default.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 4096;

/// Methods whose answer is a stream that reads content ahead of its reader.
const READ_STREAMS: &[&str] = &[
    "/aetherfs.v1.WorkspaceService/ReadFile",
    "/aetherfs.v1.WorkspaceService/ExportArchive",
    "/aetherfs.v1.ContentService/GetBlob",
];

/// Methods whose answer is a stream that lasts as long as its client wants.
const SUBSCRIPTIONS: &[&str] = &[
    "/aetherfs.v1.BusService/Subscribe",
    "/aetherfs.v1.BusService/PublishStream",
];

/// Methods whose request body is an upload.
const UPLOADS: &[&str] = &[
    "/aetherfs.v1.WorkspaceService/WriteFile",
    "/aetherfs.v1.WorkspaceService/ImportArchive",
    "/aetherfs.v1.ContentService/PutBlob",
];

/// Always admitted.
const EXEMPT_PREFIXES: &[&str] = &["/grpc.health.", "/grpc.reflection."];

/// The process's budgets, each a number of permits.
#[derive(Clone, Copy, Debug)]
pub struct Budgets {
    pub calls: usize,
    pub uploads: usize,
    pub read_streams: usize,
    pub subscriptions: usize,
}

/// One budget: its permits and its size (for the refusal's message).
#[derive(Clone, Debug)]
struct Budget {
    permits: Arc<Semaphore>,
    size: usize,
    what: &'static str,
}

impl Budget {
    fn new(size: usize, what: &'static str) -> Self {
        let size = size.max(1);
        Self {
            permits: Arc::new(Semaphore::new(size)),
            size,
            what,
        }
    }

    #[allow(clippy::result_large_err)]
    fn take(&self) -> Result<OwnedSemaphorePermit, tonic::Status> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            let mut status = tonic::Status::resource_exhausted(format!(
                "this server is at its limit of {} {} at once; nothing was applied, retry shortly",
                self.size, self.what
            ));
            let metadata = status.metadata_mut();
            metadata.insert("x-aether-outcome", "not-applied".parse().expect("ascii"));
            // A refusal for load, not for the request: clients may try again shortly.
            metadata.insert("x-aether-admission", "busy".parse().expect("ascii"));
            status
        })
    }
}

#[derive(Clone, Debug)]
pub struct AdmissionLayer {
    calls: Budget,
    uploads: Budget,
    read_streams: Budget,
    subscriptions: Budget,
}

impl AdmissionLayer {
    pub fn new(budgets: Budgets) -> Self {
        Self {
            calls: Budget::new(budgets.calls, "calls in flight"),
            uploads: Budget::new(budgets.uploads, "uploads in flight"),
            read_streams: Budget::new(budgets.read_streams, "reading streams open"),
            subscriptions: Budget::new(budgets.subscriptions, "subscriptions open"),
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Admission<S> {
        Admission {
            inner,
            budget: self.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Admission<S> {
    inner: S,
    budget: AdmissionLayer,
}

/// What an admitted call holds: permits until it answers, and one until its stream ends.
struct Admitted {
    until_answered: Vec<OwnedSemaphorePermit>,
    until_stream_ends: Option<OwnedSemaphorePermit>,
}

impl AdmissionLayer {
    /// The permits a call needs, or the refusal.
    #[allow(clippy::result_large_err)]
    fn admit(&self, path: &str) -> Result<Admitted, tonic::Status> {
        if EXEMPT_PREFIXES.iter().any(|p| path.starts_with(p)) {
            return Ok(Admitted {
                until_answered: Vec::new(),
                until_stream_ends: None,
            });
        }
        let mut until_answered = Vec::with_capacity(2);
        if UPLOADS.contains(&path) {
            until_answered.push(self.uploads.take()?);
        }
        let until_stream_ends = if READ_STREAMS.contains(&path) {
            Some(self.read_streams.take()?)
        } else if SUBSCRIPTIONS.contains(&path) {
            Some(self.subscriptions.take()?)
        } else {
            None
        };
        until_answered.push(self.calls.take()?);
        Ok(Admitted {
            until_answered,
            until_stream_ends,
        })
    }
}

/// An answer's body holding its stream's permit until it ends or is dropped.
struct HeldOpen {
    body: Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for HeldOpen {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl<S, B> Service<http::Request<B>> for Admission<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Send,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match self.budget.admit(request.uri().path()) {
            Ok(admitted) => {
                let answer = self.inner.call(request);
                Box::pin(async move {
                    let response = answer.await;
                    drop(admitted.until_answered);
                    match admitted.until_stream_ends {
                        Some(permit) => response.map(|answer| {
                            answer.map(|body| {
                                Body::new(HeldOpen {
                                    body,
                                    _permit: permit,
                                })
                            })
                        }),
                        None => response,
                    }
                })
            }
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_refuse_past_their_limit_and_free_on_drop() {
        let budget = AdmissionLayer::new(Budgets {
            calls: 2,
            uploads: 1,
            read_streams: 1,
            subscriptions: 1,
        });
        let upload = budget
            .admit("/aetherfs.v1.WorkspaceService/WriteFile")
            .unwrap();
        let status = budget
            .admit("/aetherfs.v1.ContentService/PutBlob")
            .err()
            .unwrap();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("1 uploads"), "{status:?}");
        let call = budget.admit("/aetherfs.v1.WorkspaceService/Stat").unwrap();
        let status = budget
            .admit("/aetherfs.v1.WorkspaceService/Stat")
            .err()
            .unwrap();
        assert!(status.message().contains("2 calls"), "{status:?}");
        assert_eq!(
            status.metadata().get("x-aether-outcome").unwrap(),
            "not-applied"
        );
        assert_eq!(status.metadata().get("x-aether-admission").unwrap(), "busy");
        // Health is always answered.
        assert!(budget.admit("/grpc.health.v1.Health/Check").is_ok());
        drop((upload, call));
        assert!(budget.admit("/aetherfs.v1.ContentService/PutBlob").is_ok());

        // A stream's permit outlives its answer's headers; the call's does not.
        let read = budget.admit("/aetherfs.v1.ContentService/GetBlob").unwrap();
        let Admitted {
            until_answered,
            until_stream_ends,
        } = read;
        drop(until_answered);
        let status = budget
            .admit("/aetherfs.v1.WorkspaceService/ReadFile")
            .err()
            .unwrap();
        assert!(status.message().contains("1 reading streams"), "{status:?}");
        assert!(budget.admit("/aetherfs.v1.BusService/Subscribe").is_ok());
        drop(until_stream_ends);
        assert!(budget
            .admit("/aetherfs.v1.WorkspaceService/ReadFile")
            .is_ok());
    }
}
