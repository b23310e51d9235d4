//! Admission control (design promise 8): each process admits a bounded number of calls and
//! refuses the rest at once with RESOURCE_EXHAUSTED instead of queuing them without bound.
//!
//! Two budgets, both counted until the handler answers (response headers): every call
//! (`--max-in-flight`), and uploads — the client-streaming calls whose bodies go to the store
//! (WriteFile, ImportArchive, PutBlob; `--max-uploads`) — because an upload holds a few chunks
//! of memory while it lasts. Streams already answering (ReadFile, Subscribe) hold nothing. A
//! refused call changed nothing (`x-aether-outcome: not-applied`): retry it later. Health and
//! reflection are always admitted, so a loaded process still says it is alive.

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

/// Methods whose request body is an upload.
const UPLOADS: &[&str] = &[
    "/aetherfs.v1.WorkspaceService/WriteFile",
    "/aetherfs.v1.WorkspaceService/ImportArchive",
    "/aetherfs.v1.ContentService/PutBlob",
];

/// Always admitted.
const EXEMPT_PREFIXES: &[&str] = &["/grpc.health.", "/grpc.reflection."];

#[derive(Clone, Debug)]
pub struct AdmissionLayer {
    calls: Arc<Semaphore>,
    uploads: Arc<Semaphore>,
    max_calls: usize,
    max_uploads: usize,
}

impl AdmissionLayer {
    pub fn new(max_calls: usize, max_uploads: usize) -> Self {
        let (max_calls, max_uploads) = (max_calls.max(1), max_uploads.max(1));
        Self {
            calls: Arc::new(Semaphore::new(max_calls)),
            uploads: Arc::new(Semaphore::new(max_uploads)),
            max_calls,
            max_uploads,
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

impl AdmissionLayer {
    /// The permits a call needs, or the refusal.
    #[allow(clippy::result_large_err)]
    fn admit(&self, path: &str) -> Result<Vec<OwnedSemaphorePermit>, tonic::Status> {
        if EXEMPT_PREFIXES.iter().any(|p| path.starts_with(p)) {
            return Ok(Vec::new());
        }
        let refuse = |what: &str, limit: usize| {
            let mut status = tonic::Status::resource_exhausted(format!(
                "this server is at its limit of {limit} {what} in flight; nothing was applied, retry shortly"
            ));
            status
                .metadata_mut()
                .insert("x-aether-outcome", "not-applied".parse().expect("ascii"));
            status
        };
        let mut permits = Vec::with_capacity(2);
        if UPLOADS.contains(&path) {
            permits.push(
                self.uploads
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| refuse("uploads", self.max_uploads))?,
            );
        }
        permits.push(
            self.calls
                .clone()
                .try_acquire_owned()
                .map_err(|_| refuse("calls", self.max_calls))?,
        );
        Ok(permits)
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
            Ok(permits) => {
                let answer = self.inner.call(request);
                Box::pin(async move {
                    let response = answer.await;
                    drop(permits);
                    response
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
        let budget = AdmissionLayer::new(2, 1);
        let upload = budget
            .admit("/aetherfs.v1.WorkspaceService/WriteFile")
            .unwrap();
        let status = budget
            .admit("/aetherfs.v1.ContentService/PutBlob")
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("1 uploads"), "{status:?}");
        let call = budget.admit("/aetherfs.v1.WorkspaceService/Stat").unwrap();
        let status = budget
            .admit("/aetherfs.v1.WorkspaceService/Stat")
            .unwrap_err();
        assert!(status.message().contains("2 calls"), "{status:?}");
        assert_eq!(
            status.metadata().get("x-aether-outcome").unwrap(),
            "not-applied"
        );
        // Health is always answered.
        assert!(budget.admit("/grpc.health.v1.Health/Check").is_ok());
        drop((upload, call));
        assert!(budget.admit("/aetherfs.v1.ContentService/PutBlob").is_ok());
    }
}
