//! Who is calling: a thin service wrapper that settles each request's principal before the
//! handler runs, puts it in the [`Principal`] request extension (read by [`super::principal`])
//! and in a task-local for code that no longer has the request ([`current`]).
//!
//! The principal comes from, in order: a `Principal` extension an outer auth layer set; the
//! `x-aether-principal` metadata header, **only** when the coordinator runs with
//! `--trust-principal-header`; else "anonymous". Trusting the header lets any client claim to
//! be anyone: it exists for tests and local development of multi-principal flows (reviews),
//! is off by default, and must never be enabled on a reachable deployment (promise 6 needs the
//! bearer-token auth layer instead).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::body::Body;
use tonic::codegen::{http, Service};
use tonic::server::NamedService;
use tonic::Status;

use super::Principal;

/// The metadata header a trusted client names its principal with.
pub const PRINCIPAL_HEADER: &str = "x-aether-principal";
/// Longest principal name accepted from the header.
const MAX_PRINCIPAL_BYTES: usize = 256;

static TRUST_HEADER: AtomicBool = AtomicBool::new(false);

tokio::task_local! {
    static CALLER: String;
}

/// Makes this process honor [`PRINCIPAL_HEADER`] (insecure: tests and development only).
pub fn trust_principal_header(trust: bool) {
    if trust {
        tracing::warn!(
            "--trust-principal-header is on: any client can act as any principal by sending {PRINCIPAL_HEADER}; never use this outside tests and development"
        );
    }
    TRUST_HEADER.store(trust, Ordering::SeqCst);
}

/// The principal of the request this task serves; "anonymous" outside a request.
pub fn current() -> String {
    CALLER
        .try_with(Clone::clone)
        .unwrap_or_else(|_| "anonymous".to_string())
}

fn resolve(request: &http::Request<Body>) -> Result<String, Status> {
    if let Some(principal) = request.extensions().get::<Principal>() {
        return Ok(principal.0.clone());
    }
    if TRUST_HEADER.load(Ordering::Relaxed) {
        if let Some(value) = request.headers().get(PRINCIPAL_HEADER) {
            let name = value
                .to_str()
                .ok()
                .filter(|n| {
                    !n.is_empty()
                        && n.len() <= MAX_PRINCIPAL_BYTES
                        && n.bytes().all(|b| b.is_ascii_graphic())
                })
                .ok_or_else(|| {
                    Status::unauthenticated(format!(
                        "{PRINCIPAL_HEADER} must be 1 to {MAX_PRINCIPAL_BYTES} printable ASCII characters without spaces"
                    ))
                })?;
            return Ok(name.to_string());
        }
    }
    Ok("anonymous".to_string())
}

/// Wraps one gRPC service (see the module comment).
#[derive(Clone)]
pub struct Caller<S> {
    inner: S,
}

impl<S> Caller<S> {
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S: NamedService> NamedService for Caller<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Caller<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let principal = match resolve(&request) {
            Ok(principal) => principal,
            Err(status) => return Box::pin(async move { Ok(status.into_http()) }),
        };
        request
            .extensions_mut()
            .insert(Principal(principal.clone()));
        // Take the service that was polled ready; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(CALLER.scope(principal, async move { inner.call(request).await }))
    }
}
