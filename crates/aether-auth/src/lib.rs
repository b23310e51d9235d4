//! Who is calling, and what they may do (design promise 6).
//!
//! - [`Principal`]: the authenticated caller (a name and its groups), put in the request
//!   extensions by [`AuthLayer`] and read by every service (coordinator and bus alike).
//! - [`Authenticator`]: turns an `authorization: Bearer <token>` header into a principal, from
//!   a token file (`TOKEN principal [group,group]` per line) and/or signed JWTs (HS256 with a
//!   shared secret, RS256 with a PEM public key; claims `sub`, `groups`, `exp`).
//! - [`AuthLayer`]: one tower layer in front of every gRPC service of a process; no token or a
//!   bad token is `UNAUTHENTICATED` with a message saying what to send. Health checks and
//!   reflection stay open for probes.
//! - [`AttachToken`]: the client side of service-to-service calls (a coordinator calling its
//!   store and bus attaches its service token, the caller's trace context and what remains of
//!   the caller's deadline).
//! - [`deadline`]: the caller's `grpc-timeout`, carried from service to service.
//! - [`access`]: session roles (viewer, editor, reviewer, owner) and what each allows.

pub mod access;
mod args;
mod authenticator;
pub mod deadline;
mod layer;
mod outgoing;

pub use access::{Need, Role};
pub use args::AuthArgs;
pub use authenticator::{AuthError, Authenticator};
pub use layer::{AuthLayer, AuthService};
pub use outgoing::{inject_trace_context, AttachToken};

/// The name of the caller when anonymous access is enabled and no token was sent.
pub const ANONYMOUS: &str = "anonymous";

/// Members of this group are AetherFS services calling each other (a coordinator publishing
/// session events, for instance): they pass per-session checks. Give it only to service tokens.
pub const SERVICE_GROUP: &str = "aether-services";

/// The authenticated caller of an RPC.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal {
    pub name: String,
    pub groups: Vec<String>,
}

impl Principal {
    /// A principal without groups.
    pub fn user(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            groups: Vec::new(),
        }
    }

    /// The caller who sent no token where anonymous access is enabled.
    pub fn anonymous() -> Self {
        Self::user(ANONYMOUS)
    }

    pub fn is_anonymous(&self) -> bool {
        self.name == ANONYMOUS && self.groups.is_empty()
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// An AetherFS service (see [`SERVICE_GROUP`]).
    pub fn is_service(&self) -> bool {
        self.in_group(SERVICE_GROUP)
    }
}

/// Whether per-session authorization is enforced in this process: it is when an
/// authentication source is configured (identities are real); without one every caller is
/// "anonymous" (or names itself with a trusted test header) and policy checks would protect
/// nothing, so they are off and today's open behaviour stays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enforcement {
    Enforced,
    Open,
}
