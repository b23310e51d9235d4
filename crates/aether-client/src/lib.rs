//! Rust SDK for AetherFS. This release re-exports the generated clients; the typed session
//! handle (retries, deadlines, dedup-aware uploads) arrives with the client issue.

pub use aether_proto as proto;
