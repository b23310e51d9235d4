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
//! Per-session policy (promise 6) is enforced when the process has an authentication source
//! ([`enforce_policy`]); without one every caller is anonymous or self-named, checks would
//! protect nothing, and the open behaviour stays (the anonymous owner of a session it created
//! keeps every right as its owner either way).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use aether_auth::access::{self, Decision};
use aether_auth::Need;
use futures::future::BoxFuture;
use tonic::body::Body;
use tonic::codegen::{http, Service};
use tonic::server::NamedService;
use tonic::Status;

use super::Principal;
use crate::error::Error;
use crate::model::SessionRecord;

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
    /// Hide sessions the caller has no role in (NOT_FOUND rather than PERMISSION_DENIED).
    hide: bool,
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

/// What each coordinator RPC needs on the sessions it loads. Anything not listed reads.
pub fn need_of(path: &str) -> Need {
    let method = path.rsplit('/').next().unwrap_or_default();
    match method {
        "UpdateSession" | "TransferSession" | "FinalizeSession" | "CloseSession" => Need::Own,
        "ApplyChanges" | "WriteFile" | "DeletePath" | "MakeDirectory" | "MovePath" | "CopyPath"
        | "ImportArchive" | "CreateCheckpoint" | "RestoreCheckpoint" | "Commit"
        | "RequestApproval" | "PutEntry" | "DeleteEntry" => Need::Write,
        "AddAnnotation" | "ResolveAnnotation" => Need::Annotate,
        "DecideApproval" => Need::Review,
        _ => Need::Read,
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
        Decision::NoRole if access.hide => {
            deny(&access, record, "no role");
            Err(Error::NotFound(format!("session {} not found", record.id)))
        }
        Decision::NoRole | Decision::Insufficient => {
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
        let access = Access {
            principal: principal.clone(),
            need: need_of(path),
            hide: path.ends_with("/GetSession"),
        };
        request.extensions_mut().insert(principal);
        // Take the service that was polled ready; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(CALLER.scope(access, async move { inner.call(request).await }))
    }
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
}
