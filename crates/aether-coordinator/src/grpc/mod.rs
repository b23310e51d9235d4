//! gRPC adapters: one module per service of the v1 API, each a thin layer from the wire to
//! [`crate::sessions::Sessions`] and the tree operations.

pub mod caller;
mod convert;
pub mod history;
pub mod knowledge;
pub mod review;
pub mod session;
pub mod workspace;

use tonic::Request;

/// The authenticated caller, set as a request extension by the auth layer
/// ([`aether_auth::AuthLayer`]) or by [`caller::Caller`] from a trusted header in tests.
pub use aether_auth::Principal;

/// The caller's principal name; "anonymous" when no auth layer is configured.
pub fn principal<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<Principal>()
        .map(|p| p.name.clone())
        .unwrap_or_else(|| aether_auth::ANONYMOUS.to_string())
}

/// Page size from a request: default 100, at most 1000.
pub fn page_size(page: &Option<aether_proto::PageRequest>) -> usize {
    match page.as_ref().map(|p| p.page_size).unwrap_or(0) {
        0 => 100,
        n => (n as usize).min(1000),
    }
}

pub fn page_token(page: &Option<aether_proto::PageRequest>) -> Option<String> {
    page.as_ref()
        .map(|p| p.page_token.clone())
        .filter(|t| !t.is_empty())
}
