//! The HTTP/2 settings every AetherFS server and channel uses.
//!
//! Blobs and files move in messages of up to a few MiB. With HTTP/2's defaults (16 KiB frames,
//! 1–2 MiB flow-control windows) a 1 MiB message is cut into 64 frames and a large transfer
//! stalls on window updates; on loopback, 1 MiB frames and 8 MiB windows raised GetBlob from
//! ~0.9 to ~1.25 GB/s for 1 MiB blobs and from ~0.6 to ~1.5 GB/s for 64 MiB ones
//! (`crates/aether-store/benches/store_vs_raw.rs`). The windows bound what one stream (8 MiB)
//! and one connection (16 MiB) may have in flight unread.

use tonic::transport::{Endpoint, Server};

/// Largest HTTP/2 frame a peer may send us (the protocol allows up to 16 MiB - 1).
pub const MAX_FRAME_BYTES: u32 = 1024 * 1024;
/// Flow-control window of one stream.
pub const STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
/// Flow-control window of one connection.
pub const CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;

/// A client endpoint with AetherFS's HTTP/2 settings and Nagle off.
pub fn tune_endpoint(endpoint: Endpoint) -> Endpoint {
    endpoint
        .tcp_nodelay(true)
        .max_frame_size(MAX_FRAME_BYTES)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
}

/// A server builder with AetherFS's HTTP/2 settings and Nagle off (apply before layers).
pub fn tune_server(server: Server) -> Server {
    server
        .tcp_nodelay(true)
        .max_frame_size(MAX_FRAME_BYTES)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
}
