//! Who is calling: a thin service wrapper that settles each request's principal before the
//! handler runs and puts a [`crate::caller::Caller`] in the request's extensions (read by
//! [`super::caller_of`]): the principal, what the RPC needs on a session ([`need_of`], from
//! [`crate::rpcs`]), its request id, and whether policy is enforced. Handlers pass it to every
//! domain operation; `Sessions::load` (and so every `begin`) checks it against the session.
//! One table, one check: every session RPC is authorized on the node that runs its handler,
//! forwarded requests included.
//!
//! The principal comes from, in order: the [`Principal`] extension the auth layer set
//! ([`aether_auth::AuthLayer`]) unless it is the anonymous one; the `x-aether-principal`
//! metadata header, **only** when the coordinator runs with `--trust-principal-header`; else
//! "anonymous". Trusting the header lets any client claim to be anyone: it exists for tests
//! and local development of multi-principal flows (reviews), is off by default, and must never
//! be enabled on a reachable deployment.
//!
//! The wrapper also finishes what makes a retry apply once (promise 9, [`crate::requests`]): a
//! change's request id (from [`REQUEST_ID_HEADER`], checked here: a malformed one is
//! INVALID_ARGUMENT); the recorded answer of an earlier attempt, which it sends in place of the
//! handler's answer; and the outcome of a failed call (`x-aether-outcome`), set from whether
//! the request committed a change when the error does not say.
//!
//! Per-session policy (promise 6) is enforced when the process has an authentication source
//! ([`CallerPolicy::enforce_policy`]); without one every caller is anonymous or self-named,
//! checks would protect nothing, and the open behaviour stays (the anonymous owner of a
//! session it created keeps every right as its owner either way).

use std::convert::Infallible;
use std::task::{Context, Poll};

use aether_auth::Need;
use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use tonic::body::Body;
use tonic::codegen::{http, Service};
use tonic::server::NamedService;
use tonic::Status;

use super::status::{Outcome, OUTCOME_HEADER};
use super::Principal;
use crate::caller::Caller;
use crate::requests::{self, RequestKey, REPLAYED_HEADER, REQUEST_ID_HEADER};
use crate::rpcs::Rpc;

/// The metadata header a trusted client names its principal with.
pub const PRINCIPAL_HEADER: &str = "x-aether-principal";
/// Longest principal name accepted from the header.
const MAX_PRINCIPAL_BYTES: usize = 256;

/// How this process settles callers.
#[derive(Clone, Copy, Debug, Default)]
pub struct CallerPolicy {
    /// Honor [`PRINCIPAL_HEADER`] (insecure: tests and development only).
    pub trust_principal_header: bool,
    /// Check callers against session policy (the server does when it has an auth source).
    pub enforce_policy: bool,
}

/// What a coordinator RPC needs on the sessions it loads, from [`crate::rpcs`]. One missing
/// from the table (a new RPC nobody listed) needs ownership: the table fails closed, and a
/// unit test names the RPC.
pub fn need_of(path: &str) -> Need {
    need(crate::rpcs::lookup(path), path)
}

/// What `rpc`, the table's entry for `path` if it has one, needs.
fn need(rpc: Option<&Rpc>, path: &str) -> Need {
    match rpc {
        Some(rpc) => rpc.need,
        None => {
            tracing::error!(
                path,
                "RPC missing from the coordinator's RPC table; only owners may call it"
            );
            Need::Own
        }
    }
}

fn resolve(request: &http::Request<Body>, trust_header: bool) -> Result<Principal, Status> {
    let from_layer = request.extensions().get::<Principal>();
    if let Some(principal) = from_layer.filter(|p| !p.is_anonymous()) {
        return Ok(principal.clone());
    }
    if trust_header {
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
            return Ok(Principal::user(name));
        }
    }
    Ok(Principal::anonymous())
}

/// Wraps one gRPC service (see the module comment).
#[derive(Clone)]
pub struct WithCaller<S> {
    inner: S,
    policy: CallerPolicy,
}

impl<S> WithCaller<S> {
    pub fn new(inner: S, policy: CallerPolicy) -> Self {
        Self { inner, policy }
    }
}

impl<S: NamedService> NamedService for WithCaller<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for WithCaller<S>
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
        let principal = match resolve(&request, self.policy.trust_principal_header) {
            Ok(principal) => principal,
            Err(status) => return Box::pin(async move { Ok(status.into_http()) }),
        };
        let path = request.uri().path();
        let request_id = match request.headers().get(REQUEST_ID_HEADER) {
            None => None,
            Some(value) => match requests::parse_request_id(value.as_bytes()) {
                Ok(id) => Some(id),
                Err(message) => {
                    let status = super::status::status(
                        tonic::Code::InvalidArgument,
                        message,
                        Some(Outcome::NotApplied),
                    );
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            },
        };
        // One look in the table for everything the request is.
        let rpc = crate::rpcs::lookup(path);
        let key = rpc
            .filter(|rpc| rpc.is_change())
            .map(Rpc::name)
            .zip(request_id)
            .map(|(method, id)| RequestKey {
                principal: principal.name.clone(),
                method,
                id,
            });
        let method = path.rsplit('/').next().unwrap_or_default();
        let caller = Caller::new(
            principal.clone(),
            need(rpc, path),
            method,
            key,
            self.policy.enforce_policy,
        );
        request.extensions_mut().insert(principal);
        request.extensions_mut().insert(caller.clone());
        // Take the service that was polled ready; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let mut response = inner.call(request).await?;
            if let Some(reply) = caller.take_replay() {
                return Ok(replayed(reply));
            }
            note_outcome(response.headers_mut(), &caller);
            Ok(response)
        })
    }
}

/// Marks a failed call that ended before answering (its status in the headers) with its
/// outcome, unless the error set one: not applied while the request committed nothing, unknown
/// once it did. A stream that fails after answering carries no outcome: unknown.
fn note_outcome(headers: &mut http::HeaderMap, caller: &Caller) {
    let failed = headers
        .get("grpc-status")
        .is_some_and(|status| status.as_bytes() != b"0");
    if failed && !headers.contains_key(OUTCOME_HEADER) {
        let outcome = if caller.applied() {
            Outcome::Unknown
        } else {
            Outcome::NotApplied
        };
        headers.insert(
            OUTCOME_HEADER,
            http::HeaderValue::from_static(outcome.as_str()),
        );
    }
}

/// A successful gRPC answer carrying `reply`, an encoded response message recorded earlier,
/// marked with [`REPLAYED_HEADER`].
fn replayed(reply: Bytes) -> http::Response<Body> {
    let mut frame = BytesMut::with_capacity(5 + reply.len());
    frame.put_u8(0);
    frame.put_u32(reply.len() as u32);
    frame.extend_from_slice(&reply);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames = futures::stream::iter([
        Ok::<_, Status>(http_body::Frame::data(frame.freeze())),
        Ok(http_body::Frame::trailers(trailers)),
    ]);
    let mut response = http::Response::new(Body::new(http_body_util::StreamBody::new(frames)));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert(REPLAYED_HEADER, http::HeaderValue::from_static("true"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs() {
        assert_eq!(
            need_of("/aetherfs.v1.SessionService/GetSession"),
            Need::Read
        );
        assert_eq!(
            need_of("/aetherfs.v1.SessionService/CloseSession"),
            Need::Own
        );
        assert_eq!(
            need_of("/aetherfs.v1.WorkspaceService/WriteFile"),
            Need::Write
        );
        assert_eq!(
            need_of("/aetherfs.v1.ReviewService/DecideApproval"),
            Need::Review
        );
        assert_eq!(
            need_of("/aetherfs.v1.ReviewService/AddAnnotation"),
            Need::Annotate
        );
        assert_eq!(
            need_of("/aetherfs.v1.WorkspaceService/ReadFile"),
            Need::Read
        );
    }

    #[test]
    fn an_unlisted_rpc_needs_the_owner() {
        assert_eq!(need_of("/aetherfs.v1.WorkspaceService/NewRpc"), Need::Own);
    }
}
