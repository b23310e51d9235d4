//! Per-RPC telemetry as one tower layer, outermost in every server (so calls that
//! authentication refuses are seen too):
//!
//! - a server span per call, named `package.Service/Method`, child of the caller's W3C trace
//!   context (`traceparent` header). Handlers run inside it, so their own outgoing calls (store,
//!   bus) carry it on; a request forwarded to a session's holder carries it too, since the
//!   layer rewrites `traceparent` to point at this span before inner layers see the request.
//! - metrics through the global meter provider (OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//!   set, no-ops otherwise), all labelled `rpc.service`, `rpc.method`, `rpc.grpc.status_code`:
//!   `rpc.server.requests` (calls), `rpc.server.errors` (calls ending in any status but OK),
//!   `rpc.server.call.duration` (seconds, histogram).
//!
//! The status is read when the response headers are sent: from `grpc-status` in the headers
//! (how a call that fails before answering ends), OK otherwise. So for server streams the
//! duration is the time to open the stream, and an error in the trailers of a stream that
//! already started answering counts as OK. Unknown method names come from callers and are
//! unbounded: the SDK caps each metric's attribute sets (2000 by default).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use opentelemetry::metrics::{Counter, Histogram};
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::KeyValue;
use tonic::Code;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Latency buckets in seconds (the OpenTelemetry RPC conventions' recommendation).
const DURATION_BOUNDARIES: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The layer. Build it after `telemetry::init`: instruments come from the global meter
/// provider as it is at that point.
#[derive(Clone)]
pub struct RpcTelemetryLayer {
    metrics: Metrics,
}

#[derive(Clone)]
struct Metrics {
    requests: Counter<u64>,
    errors: Counter<u64>,
    duration: Histogram<f64>,
}

impl RpcTelemetryLayer {
    pub fn new() -> Self {
        let meter = opentelemetry::global::meter("aetherd");
        let metrics = Metrics {
            requests: meter
                .u64_counter("rpc.server.requests")
                .with_description("RPCs received, by method and gRPC status")
                .build(),
            errors: meter
                .u64_counter("rpc.server.errors")
                .with_description("RPCs that ended with a status other than OK")
                .build(),
            duration: meter
                .f64_histogram("rpc.server.call.duration")
                .with_unit("s")
                .with_description("Time from request to response headers")
                .with_boundaries(DURATION_BOUNDARIES.to_vec())
                .build(),
        };
        Self { metrics }
    }
}

impl Default for RpcTelemetryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> tower::Layer<S> for RpcTelemetryLayer {
    type Service = RpcTelemetry<S>;

    fn layer(&self, inner: S) -> RpcTelemetry<S> {
        RpcTelemetry {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`RpcTelemetryLayer`] wraps around the server's routes.
#[derive(Clone)]
pub struct RpcTelemetry<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, R> tower::Service<http::Request<B>> for RpcTelemetry<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().trim_start_matches('/').to_string();
        let (service, method) = path.split_once('/').unwrap_or((&path, ""));
        let (service, method) = (service.to_string(), method.to_string());
        let span = tracing::info_span!(
            "rpc",
            otel.name = %path,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(request.headers()))
        });
        // Fails without an OpenTelemetry layer or when the span is filtered out: nothing to join.
        let _ = span.set_parent(parent);
        // A request forwarded to a session's holder keeps these headers: make the holder's span
        // a child of this one rather than of the caller's.
        let own = span.context();
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&own, &mut HeaderInjector(request.headers_mut()))
        });

        // Take the service that was polled ready; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = self.metrics.clone();
        let start = Instant::now();
        let recorder = span.clone();
        Box::pin(
            async move {
                let response = inner.call(request).await;
                let code = match &response {
                    Ok(response) => status_code(response.headers()),
                    Err(_) => Code::Unknown,
                };
                recorder.record("rpc.grpc.status_code", code as i32);
                if is_server_fault(code) {
                    recorder.record("otel.status_code", "error");
                }
                let labels = [
                    KeyValue::new("rpc.service", service),
                    KeyValue::new("rpc.method", method),
                    KeyValue::new("rpc.grpc.status_code", code as i64),
                ];
                metrics.requests.add(1, &labels);
                if code != Code::Ok {
                    metrics.errors.add(1, &labels);
                }
                metrics
                    .duration
                    .record(start.elapsed().as_secs_f64(), &labels);
                response
            }
            .instrument(span),
        )
    }
}

/// The status of a trailers-only response (a failure before any message); OK otherwise.
fn status_code(headers: &http::HeaderMap) -> Code {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from)
}

/// Statuses that mark a server span as failed (OpenTelemetry's gRPC conventions): the
/// others describe the caller's request, not a fault of the server.
fn is_server_fault(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailers_only_responses_carry_their_status() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(status_code(&headers), Code::Ok);
        headers.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(status_code(&headers), Code::NotFound);
        assert!(!is_server_fault(Code::NotFound));
        assert!(is_server_fault(Code::Unavailable));
    }
}
