//! Forwarding to holders: any node accepts any request; a request for a session held by
//! another node is sent on to that holder, so clients can talk to any node behind a plain load
//! balancer. Used by the coordinators (session changes) and the buses (streams).
//!
//! This is a tower layer in front of every service, so handlers stay unaware of it. For the
//! RPCs a [`Routes`] table names, it reads just enough of the request to find the session id
//! (field 1 of the request, or of its header message for client streams), asks a
//! [`HolderLookup`] who holds the session, and either lets the request through or proxies the
//! whole HTTP/2 request, body stream included, to the holder.
//!
//! Holder addresses are `https://` when the nodes serve TLS; the channels to them are built
//! with the node's client TLS settings (its CA bundle, and its certificate for mutual TLS).
//!
//! A forwarded request carries `x-aether-forwarded`; a node never forwards such a request
//! again but answers UNAVAILABLE when it does not hold the session either. If the holder is
//! gone, requests fail UNAVAILABLE until its lease expires, after which the next request takes
//! the session over.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use aether_tls::ClientTls;
use bytes::{Buf, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::StreamExt;
use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::transport::Channel;
use tonic::Status;

use async_trait::async_trait;

/// Header marking a request that was already forwarded once.
pub const FORWARDED_HEADER: &str = "x-aether-forwarded";

/// How the session id is found in a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Field 1 of the (first) request message.
    Unary,
    /// Field 1 of the header message in field 1 of the first stream message.
    StreamHeader,
}

/// Which RPCs (by gRPC path) are routed to holders, and how to find their session id.
pub type Routes = fn(&str) -> Option<Shape>;

/// Who holds a session, as seen by this node.
#[async_trait]
pub trait HolderLookup: Send + Sync + 'static {
    /// The address of another node holding `session_id`; None to handle the request here
    /// (this node holds it, nobody does, or it cannot be told).
    async fn holder_elsewhere(&self, session_id: &str) -> Option<String>;
    /// This node's id, sent along with forwarded requests.
    fn node_id(&self) -> String;
}

/// Reads a varint from the front of `buf`.
fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.first()?;
        buf.advance(1);
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The bytes of length-delimited field 1 of an encoded message, skipping other fields.
pub fn field_one(mut buf: &[u8]) -> Option<&[u8]> {
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                varint(&mut buf)?;
            }
            1 => buf = buf.get(8..)?,
            2 => {
                let len = varint(&mut buf)? as usize;
                let value = buf.get(..len)?;
                if field == 1 {
                    return Some(value);
                }
                buf = &buf[len..];
            }
            5 => buf = buf.get(4..)?,
            _ => return None,
        }
    }
    None
}

/// Most bytes of a first message read to find its session id. Reading a whole message would
/// buffer as much as the caller declares before any size limit applies; field 1 is the first
/// field encoders write, so the id of a larger message is in its first bytes.
const MAX_PEEK_BYTES: usize = 64 * 1024;

/// The session id in the first gRPC message of a body prefix, if the prefix holds it: the whole
/// message, or its first [`MAX_PEEK_BYTES`] when it is larger.
fn session_id(shape: Shape, prefix: &[u8]) -> Option<String> {
    // gRPC framing: 1 byte compressed flag, 4 bytes big-endian length, then the message.
    if prefix.len() < 5 || prefix[0] != 0 {
        return None;
    }
    let len = u32::from_be_bytes(prefix[1..5].try_into().ok()?) as usize;
    let message = prefix.get(5..5 + len.min(MAX_PEEK_BYTES))?;
    let id = match shape {
        Shape::Unary => field_one(message)?,
        Shape::StreamHeader => field_one(field_one(message)?)?,
    };
    String::from_utf8(id.to_vec())
        .ok()
        .filter(|s| !s.is_empty())
}

/// The layer: wrap the server's routes with it.
#[derive(Clone)]
pub struct ForwardLayer {
    lookup: Arc<dyn HolderLookup>,
    routes: Routes,
    tls: ClientTls,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl ForwardLayer {
    /// `tls` is how this node connects to `https://` holders.
    pub fn new(lookup: Arc<dyn HolderLookup>, routes: Routes, tls: ClientTls) -> Self {
        Self {
            lookup,
            routes,
            tls,
            channels: Arc::default(),
        }
    }

    fn channel(&self, address: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().expect("channels");
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let channel = aether_tls::endpoint(address, &self.tls)
            .map_err(|e| Status::internal(format!("cannot reach the holder: {e}")))?
            .connect_timeout(std::time::Duration::from_secs(2))
            // A holder that stops answering (paused, partitioned) must fail forwarded calls
            // quickly, so clients retry and the session is taken over once its lease ends.
            .http2_keep_alive_interval(std::time::Duration::from_secs(1))
            .keep_alive_timeout(std::time::Duration::from_secs(2))
            .keep_alive_while_idle(true)
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }
}

impl<S> tower::Layer<S> for ForwardLayer {
    type Service = Forward<S>;

    fn layer(&self, inner: S) -> Forward<S> {
        Forward {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service the layer produces.
#[derive(Clone)]
pub struct Forward<S> {
    inner: S,
    layer: ForwardLayer,
}

/// Reads whole body frames until `wanted(prefix)` is satisfied or the body ends; returns the
/// prefix read and a body that replays it followed by the rest.
async fn peek(body: Body, enough: impl Fn(&[u8]) -> bool) -> (Bytes, Body) {
    let mut body = body;
    let mut prefix = BytesMut::new();
    let mut trailers = None;
    let mut ended = false;
    while !enough(&prefix) {
        match body.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => prefix.extend_from_slice(&data),
                Err(frame) => {
                    trailers = frame.into_trailers().ok();
                    ended = true;
                    break;
                }
            },
            Some(Err(_)) | None => {
                ended = true;
                break;
            }
        }
    }
    let prefix = prefix.freeze();
    let head = futures::stream::once({
        let prefix = prefix.clone();
        async move { Ok::<_, Status>(http_body::Frame::data(prefix)) }
    });
    let rebuilt = if ended {
        let tail = futures::stream::iter(trailers.map(|t| Ok(http_body::Frame::trailers(t))));
        Body::new(http_body_util::StreamBody::new(head.chain(tail)))
    } else {
        let rest = body
            .into_data_stream()
            .map(|d| d.map(http_body::Frame::data));
        Body::new(http_body_util::StreamBody::new(head.chain(rest)))
    };
    (prefix, rebuilt)
}

/// Whether the prefix holds all [`session_id`] reads.
fn enough_to_route(prefix: &[u8]) -> bool {
    prefix.len() >= 5
        && prefix.len()
            >= 5 + (u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize)
                .min(MAX_PEEK_BYTES)
}

impl<S> tower::Service<http::Request<Body>> for Forward<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // Take the service that was polled ready; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        let Some(shape) = (layer.routes)(request.uri().path()) else {
            return Box::pin(inner.call(request));
        };
        let forwarded = request.headers().contains_key(FORWARDED_HEADER);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let (prefix, body) = peek(body, enough_to_route).await;
            let request = http::Request::from_parts(parts, body);
            let Some(id) = session_id(shape, &prefix) else {
                return inner.call(request).await;
            };
            let Some(address) = layer.lookup.holder_elsewhere(&id).await else {
                // Ours, nobody's, or unknown: the handler decides (and reports errors).
                return inner.call(request).await;
            };
            if forwarded {
                // Forwarded here on a stale view of who holds it: never forward twice.
                return Ok(Status::unavailable(format!(
                    "session {id} is held by the node at {address}; retry the request"
                ))
                .into_http());
            }
            tracing::debug!(session = %id, holder = %address, "forwarding to holder");
            let mut request = request;
            request.headers_mut().insert(
                FORWARDED_HEADER,
                http::HeaderValue::from_str(&layer.lookup.node_id())
                    .unwrap_or(http::HeaderValue::from_static("1")),
            );
            let channel = match layer.channel(&address) {
                Ok(channel) => channel,
                Err(status) => return Ok(status.into_http()),
            };
            let mut channel = channel;
            if let Err(e) = futures::future::poll_fn(|cx| channel.poll_ready(cx)).await {
                return Ok(unavailable(&id, &address, &e).into_http());
            }
            match channel.call(request).await {
                Ok(response) => Ok(response.map(Body::new)),
                Err(e) => Ok(unavailable(&id, &address, &e).into_http()),
            }
        })
    }
}

fn unavailable(id: &str, address: &str, error: &dyn std::fmt::Display) -> Status {
    Status::unavailable(format!(
        "session {id} is held by the coordinator at {address}, which cannot be reached ({error}); \
         retry: another coordinator takes the session over once the holder's lease expires"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn frame(message: &impl Message) -> Vec<u8> {
        let encoded = message.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
        out.extend_from_slice(&encoded);
        out
    }

    #[test]
    fn finds_session_id_of_unary_requests() {
        let request = aether_proto::ApplyChangesRequest {
            session_id: "abc123".into(),
            changes: vec![Default::default()],
            expected_head_version: 7,
        };
        assert_eq!(
            session_id(Shape::Unary, &frame(&request)).as_deref(),
            Some("abc123")
        );
        let request = aether_proto::CommitRequest {
            expected_head_version: 3,
            message: "m".into(),
            session_id: "s-1".into(),
        };
        assert_eq!(
            session_id(Shape::Unary, &frame(&request)).as_deref(),
            Some("s-1")
        );
    }

    #[test]
    fn finds_session_id_in_stream_headers() {
        let request = aether_proto::WriteFileRequest {
            part: Some(aether_proto::write_file_request::Part::Header(
                aether_proto::WriteFileHeader {
                    session_id: "sess".into(),
                    path: "a/b".into(),
                    ..Default::default()
                },
            )),
        };
        assert_eq!(
            session_id(Shape::StreamHeader, &frame(&request)).as_deref(),
            Some("sess")
        );
        let data = aether_proto::WriteFileRequest {
            part: Some(aether_proto::write_file_request::Part::Data(
                Bytes::from_static(b"xx"),
            )),
        };
        assert_eq!(session_id(Shape::StreamHeader, &frame(&data)), None);
    }

    #[test]
    fn incomplete_or_compressed_frames_are_not_guessed() {
        let request = aether_proto::DeletePathRequest {
            session_id: "abc".into(),
            ..Default::default()
        };
        let full = frame(&request);
        assert_eq!(session_id(Shape::Unary, &full[..full.len() - 1]), None);
        let mut compressed = full.clone();
        compressed[0] = 1;
        assert_eq!(session_id(Shape::Unary, &compressed), None);
    }

    #[tokio::test]
    async fn large_messages_are_routed_from_their_first_bytes() {
        let request = aether_proto::ApplyChangesRequest {
            session_id: "big".into(),
            changes: (0..20_000)
                .map(|i| aether_proto::Change {
                    op: Some(aether_proto::change::Op::MakeDirectory(
                        aether_proto::MakeDirectoryOp {
                            path: format!("directory-{i}"),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                })
                .collect(),
            expected_head_version: 0,
        };
        let framed = frame(&request);
        assert!(framed.len() > 4 * MAX_PEEK_BYTES);
        // Sent in HTTP/2-sized frames: the peek stops soon after MAX_PEEK_BYTES.
        let frames: Vec<Result<http_body::Frame<Bytes>, Status>> = framed
            .chunks(16 * 1024)
            .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let body = Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )));
        let (prefix, body) = peek(body, enough_to_route).await;
        assert!(
            prefix.len() < MAX_PEEK_BYTES + 5 + 16 * 1024,
            "{}",
            prefix.len()
        );
        assert_eq!(session_id(Shape::Unary, &prefix).as_deref(), Some("big"));
        // The body still replays the whole request.
        let replayed = body.collect().await.unwrap().to_bytes();
        assert_eq!(replayed, framed);
    }
}
