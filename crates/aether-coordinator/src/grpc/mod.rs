//! gRPC adapters: one module per service of the v1 API, each converting protobuf to validated
//! domain types, calling the domain ([`crate::sessions::Sessions`]) and answering with its
//! result; [`status`] maps its errors to status codes.

pub mod caller;
mod convert;
pub mod history;
pub mod knowledge;
pub mod review;
pub mod session;
pub mod status;
pub mod workspace;

use tonic::Request;

use crate::caller::Caller;

/// The authenticated caller, set as a request extension by the auth layer
/// ([`aether_auth::AuthLayer`]) or by [`caller::WithCaller`] from a trusted header in tests.
pub use aether_auth::Principal;

/// The request's caller, which [`caller::WithCaller`] set. A service registered without that
/// wrapper fails every call rather than run unchecked.
pub fn caller_of<T>(request: &Request<T>) -> Result<Caller, tonic::Status> {
    request.extensions().get::<Caller>().cloned().ok_or_else(|| {
        tonic::Status::internal(
            "this coordinator service was registered without its caller layer (aether_coordinator::register adds it)",
        )
    })
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
