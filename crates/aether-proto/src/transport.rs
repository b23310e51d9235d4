//! The HTTP/2 settings every AetherFS server and channel uses.
//!
//! Blobs and files move in messages of up to a few MiB. With HTTP/2's defaults (16 KiB frames,
//! 1–2 MiB flow-control windows) a 1 MiB message is cut into 64 frames and a large transfer
//! stalls on window updates; on loopback, 1 MiB frames and 8 MiB windows raised GetBlob from
//! ~0.9 to ~1.25 GB/s for 1 MiB blobs and from ~0.6 to ~1.5 GB/s for 64 MiB ones
//! (`crates/aether-store/benches/store_vs_raw.rs`). The windows bound what one stream (8 MiB)
//! and one connection (16 MiB) may have in flight unread.

use tonic::codegen::http::HeaderMap;
use tonic::transport::{Endpoint, Server};
use tonic::{Code, Status};

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

/// tonic refuses a message over a service's decoding limit with OUT_OF_RANGE ("... message
/// length too large: found N bytes, the limit is: M bytes"); every exceeded limit is
/// RESOURCE_EXHAUSTED (design §5). This turns that status into RESOURCE_EXHAUSTED with its
/// message kept, so the limit stays named; `setting`, when given, names what sets the limit
/// and is appended in parentheses. Any other status passes unchanged (the bus answers
/// OUT_OF_RANGE for offsets past the end of a stream).
pub fn oversize_is_resource_exhausted(status: Status, setting: Option<&str>) -> Status {
    if status.code() != Code::OutOfRange || !status.message().contains("message length too large") {
        return status;
    }
    Status::resource_exhausted(match setting {
        Some(setting) => format!("{} ({setting})", status.message()),
        None => status.message().to_string(),
    })
}

/// [`oversize_is_resource_exhausted`] for the status of a trailers-only response, which
/// travels in its headers (a call that ended before answering).
pub fn oversize_in_headers_is_resource_exhausted(headers: &mut HeaderMap, setting: Option<&str>) {
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    if status.code() == Code::OutOfRange {
        // Only fails for a message that cannot be a header value, which this one can.
        let _ = oversize_is_resource_exhausted(status, setting).add_header(headers);
    }
}
