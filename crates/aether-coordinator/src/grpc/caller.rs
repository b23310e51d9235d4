//! Who is calling, and whether they may touch the session they name: a thin service wrapper
//! that settles each request's principal before the handler runs, puts it in the
//! [`Principal`] request extension (read by [`super::principal`]) and, with what the RPC needs
//! ([`need_of`]), in a task-local that [`authorize`] reads whenever the request loads a
//! session record (`Sessions::load`, and so every `begin`). One table, one check: every
//! session RPC is authorized on the node that runs its handler, forwarded requests included.
//!
//! The principal comes from, in order: the [`Principal`] extension the auth layer set
//! ([`aether_auth::AuthLayer`]) unless it is the anonymous one; the `x-aether-principal`
//! metadata header, **only** when the coordinator runs with `--trust-principal-header`; else
//! "anonymous". Trusting the header lets any client claim to be anyone: it exists for tests
//! and local development of multi-principal flows (reviews), is off by default, and must never
//! be enabled on a reachable deployment.
//!
//! The same wrapper carries what makes a retry apply once (promise 9, [`crate::requests`]): a
//! change's request id (from [`REQUEST_ID_HEADER`], checked here: a malformed one is
//! INVALID_ARGUMENT), whether the request applied a change so far (which the error mapping
//! reports as the outcome of a failure), and the recorded answer of an earlier attempt, which
//! it sends in place of the handler's answer.
//!
//! Per-session policy (promise 6) is enforced when the process has an authentication source
//! ([`enforce_policy`]); without one every caller is anonymous or self-named, checks would
//! protect nothing, and the open behaviour stays (the anonymous owner of a session it created
//! keeps every right as its owner either way).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use aether_auth::access::{self, Decision};
use aether_auth::Need;
use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use tonic::body::Body;
use tonic::codegen::{http, Service};
use tonic::server::NamedService;
use tonic::Status;

use super::Principal;
use crate::error::{Error, Outcome};
use crate::model::SessionRecord;
use crate::requests::{self, RequestKey, REPLAYED_HEADER, REQUEST_ID_HEADER};

/// The metadata header a trusted client names its principal with.
pub const PRINCIPAL_HEADER: &str = "x-aether-principal";
/// Longest principal name accepted from the header.
const MAX_PRINCIPAL_BYTES: usize = 256;

static TRUST_HEADER: AtomicBool = AtomicBool::new(false);
static ENFORCE_POLICY: AtomicBool = AtomicBool::new(false);

/// The caller of the request this task serves and what its RPC needs on a session.
#[derive(Clone, Debug)]
struct Access {
    principal: Principal,
    need: Need,
    /// The RPC's method name (`Commit`).
    method: String,
    /// The change this request makes, when it is one and names itself with a request id.
    request: Option<RequestKey>,
    /// What became of the request so far.
    progress: Arc<Mutex<Progress>>,
}

/// What a request did so far, as its handler reports it.
#[derive(Debug, Default)]
struct Progress {
    /// A change of this request was committed.
    applied: bool,
    /// The recorded answer of an earlier attempt, to send instead of the handler's.
    replay: Option<Bytes>,
}

tokio::task_local! {
    static CALLER: Access;
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

/// Turns per-session authorization on (the server does when an auth source is configured).
pub fn enforce_policy(enforce: bool) {
    ENFORCE_POLICY.store(enforce, Ordering::SeqCst);
}

/// Whether per-session authorization is on.
pub fn policy_enforced() -> bool {
    ENFORCE_POLICY.load(Ordering::Relaxed)
}

/// The principal name of the request this task serves; "anonymous" outside a request.
pub fn current() -> String {
    CALLER
        .try_with(|a| a.principal.name.clone())
        .unwrap_or_else(|_| aether_auth::ANONYMOUS.to_string())
}

/// The change the current request makes and its request id, if it names one.
pub fn request() -> Option<RequestKey> {
    CALLER.try_with(|a| a.request.clone()).ok().flatten()
}

/// The method name of the current request's RPC (`Commit`), if there is a request.
pub fn method() -> Option<String> {
    CALLER.try_with(|a| a.method.clone()).ok()
}

/// Notes that the current request committed a change: a failure after this point is no
/// longer "not applied".
pub fn note_applied() {
    let _ = CALLER.try_with(|a| a.progress.lock().expect("progress").applied = true);
}

/// Answers the current request with `reply`, the encoded response an earlier attempt recorded,
/// in place of what its handler returns.
pub fn replay(reply: Bytes) {
    let _ = CALLER.try_with(|a| a.progress.lock().expect("progress").replay = Some(reply));
}

/// The outcome of a request failing now: not applied while it committed nothing; unknown once
/// it did, or outside a request (a stream failing after its handler returned).
pub fn outcome_so_far() -> Outcome {
    match CALLER.try_with(|a| a.progress.lock().expect("progress").applied) {
        Ok(false) => Outcome::NotApplied,
        Ok(true) | Err(_) => Outcome::Unknown,
    }
}

/// What a coordinator RPC needs on the sessions it loads, from [`crate::rpcs`]. One missing
/// from the table (a new RPC nobody listed) needs ownership: the table fails closed, and a
/// unit test names the RPC.
pub fn need_of(path: &str) -> Need {
    match crate::rpcs::lookup(path) {
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

/// Whether `principal` may see `record` at all (ListSessions shows only these).
pub fn can_see(principal: &Principal, record: &SessionRecord) -> bool {
    !policy_enforced() || decision(principal, record, Need::Read) == Decision::Allowed
}

fn decision(principal: &Principal, record: &SessionRecord, need: Need) -> Decision {
    let bindings = record
        .policy
        .bindings
        .iter()
        .map(|b| (b.subject.as_str(), b.role));
    access::decide(principal, &record.owner, bindings, need)
}

/// Checks the caller of the current request against a session it loaded; Ok outside a
/// request (expiry, garbage collection) and when policy is not enforced.
pub fn authorize(record: &SessionRecord) -> Result<(), Error> {
    if !policy_enforced() {
        return Ok(());
    }
    let Ok(access) = CALLER.try_with(Clone::clone) else {
        return Ok(());
    };
    match decision(&access.principal, record, access.need) {
        Decision::Allowed => Ok(()),
        // A caller with no role learns nothing of the session, not even that it exists.
        Decision::NoRole => {
            deny(&access, record, "no role");
            Err(Error::NotFound(format!("session {} not found", record.id)))
        }
        Decision::Insufficient => {
            deny(&access, record, "insufficient role");
            Err(Error::PermissionDenied(format!(
                "{} may not do this on session {}: it needs {} in the session's policy (ask the owner, {}, to bind \"user:{}\" or one of its groups)",
                access.principal.name,
                record.id,
                access.need.describe(),
                record.owner,
                access.principal.name,
            )))
        }
    }
}

fn deny(access: &Access, record: &SessionRecord, why: &str) {
    tracing::warn!(
        principal = %access.principal.name,
        session = %record.id,
        need = ?access.need,
        why,
        "request denied by session policy"
    );
}

fn resolve(request: &http::Request<Body>) -> Result<Principal, Status> {
    let from_layer = request.extensions().get::<Principal>();
    if let Some(principal) = from_layer.filter(|p| !p.is_anonymous()) {
        return Ok(principal.clone());
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
            return Ok(Principal::user(name));
        }
    }
    Ok(Principal::anonymous())
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
        let path = request.uri().path();
        let request_id = match request.headers().get(REQUEST_ID_HEADER) {
            None => None,
            Some(value) => match requests::parse_request_id(value.as_bytes()) {
                Ok(id) => Some(id),
                Err(message) => {
                    let status = crate::error::status(
                        tonic::Code::InvalidArgument,
                        message,
                        Some(Outcome::NotApplied),
                    );
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            },
        };
        let progress = Arc::new(Mutex::new(Progress::default()));
        let access = Access {
            principal: principal.clone(),
            need: need_of(path),
            method: path.rsplit('/').next().unwrap_or_default().to_string(),
            request: requests::change_of(path)
                .zip(request_id)
                .map(|(method, id)| RequestKey {
                    principal: principal.name.clone(),
                    method,
                    id,
                }),
            progress: progress.clone(),
        };
        request.extensions_mut().insert(principal);
        // Take the service that was polled ready; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(CALLER.scope(access, async move {
            let response = inner.call(request).await?;
            let replay = progress.lock().expect("progress").replay.take();
            Ok(match replay {
                Some(reply) => replayed(reply),
                None => response,
            })
        }))
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
