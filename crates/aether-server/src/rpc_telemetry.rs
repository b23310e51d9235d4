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
//! already started answering counts as OK.
//!
//! Paths come from callers: labels (and span names) use only the services and methods this
//! process serves ([`KnownMethods`]), and "unknown" for anything else, so a caller sending
//! made-up paths cannot grow the number of series.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use opentelemetry::metrics::{Counter, Histogram};
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::KeyValue;
use prost::Message as _;
use tonic::Code;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Latency buckets in seconds (the OpenTelemetry RPC conventions' recommendation).
const DURATION_BOUNDARIES: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The label of a service or method that this process does not serve.
const UNKNOWN: &str = "unknown";

/// The gRPC services and methods a process serves: the only values of the `rpc.service` and
/// `rpc.method` labels besides "unknown".
#[derive(Clone, Debug, Default)]
pub struct KnownMethods {
    /// Service full name → its method names.
    services: Arc<HashMap<String, HashSet<String>>>,
}

impl KnownMethods {
    /// The methods of `services` (full names, `package.Service`) as declared in the encoded
    /// file descriptor sets `sets`; an error names a service none of them declares.
    pub fn from_descriptor_sets(services: &[&str], sets: &[&[u8]]) -> Result<Self, String> {
        let mut declared = HashMap::new();
        for set in sets {
            let set = prost_types::FileDescriptorSet::decode(*set)
                .map_err(|e| format!("a file descriptor set does not decode: {e}"))?;
            for file in set.file {
                let package = file.package();
                for service in &file.service {
                    let name = if package.is_empty() {
                        service.name().to_string()
                    } else {
                        format!("{package}.{}", service.name())
                    };
                    let methods: HashSet<String> = service
                        .method
                        .iter()
                        .map(|m| m.name().to_string())
                        .collect();
                    declared.insert(name, methods);
                }
            }
        }
        let mut known = HashMap::new();
        for service in services {
            let methods = declared
                .remove(*service)
                .ok_or_else(|| format!("no file descriptor declares the service {service}"))?;
            known.insert(service.to_string(), methods);
        }
        Ok(Self {
            services: Arc::new(known),
        })
    }

    /// The service and method labels of a request path (`/package.Service/Method`).
    fn labels(&self, path: &str) -> (String, String) {
        let path = path.strip_prefix('/').unwrap_or(path);
        let Some((service, method)) = path.split_once('/') else {
            return (UNKNOWN.into(), UNKNOWN.into());
        };
        match self.services.get(service) {
            Some(methods) if methods.contains(method) => (service.into(), method.into()),
            Some(_) => (service.into(), UNKNOWN.into()),
            None => (UNKNOWN.into(), UNKNOWN.into()),
        }
    }
}

/// The layer. Build it after `telemetry::init`: instruments come from the global meter
/// provider as it is at that point.
#[derive(Clone)]
pub struct RpcTelemetryLayer {
    metrics: Metrics,
    known: KnownMethods,
}

#[derive(Clone)]
struct Metrics {
    requests: Counter<u64>,
    errors: Counter<u64>,
    duration: Histogram<f64>,
}

impl RpcTelemetryLayer {
    /// Labels calls of `known` methods by service and method, others as "unknown".
    pub fn new(known: KnownMethods) -> Self {
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
        Self { metrics, known }
    }
}

impl<S> tower::Layer<S> for RpcTelemetryLayer {
    type Service = RpcTelemetry<S>;

    fn layer(&self, inner: S) -> RpcTelemetry<S> {
        RpcTelemetry {
            inner,
            metrics: self.metrics.clone(),
            known: self.known.clone(),
        }
    }
}

/// The service [`RpcTelemetryLayer`] wraps around the server's routes.
#[derive(Clone)]
pub struct RpcTelemetry<S> {
    inner: S,
    metrics: Metrics,
    known: KnownMethods,
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
        let (service, method) = self.known.labels(request.uri().path());
        let span = tracing::info_span!(
            "rpc",
            otel.name = %format_args!("{service}/{method}"),
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
    fn only_served_methods_are_labels() {
        let known = KnownMethods::from_descriptor_sets(
            &[
                "aetherfs.v1.SessionService",
                tonic_health::pb::health_server::SERVICE_NAME,
            ],
            &[
                aether_proto::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
            ],
        )
        .unwrap();
        let labels = |path: &str| {
            let (service, method) = known.labels(path);
            format!("{service}/{method}")
        };
        assert_eq!(
            labels("/aetherfs.v1.SessionService/CreateSession"),
            "aetherfs.v1.SessionService/CreateSession"
        );
        assert_eq!(
            labels("/grpc.health.v1.Health/Check"),
            "grpc.health.v1.Health/Check"
        );
        // A served service, a method it does not have.
        assert_eq!(
            labels("/aetherfs.v1.SessionService/DropEverything"),
            "aetherfs.v1.SessionService/unknown"
        );
        // Declared, but not served by this process; made up; malformed.
        for path in [
            "/aetherfs.v1.BusService/Publish",
            "/x1f3a9/y",
            "/aetherfs.v1.SessionService",
            "/",
            "",
            "/../../etc/passwd",
        ] {
            assert_eq!(labels(path), "unknown/unknown", "{path}");
        }
        // Random paths all land on one label set.
        let distinct: HashSet<String> = (0..1000)
            .map(|i| labels(&format!("/svc{i}.S/M{i}")))
            .collect();
        assert_eq!(distinct.len(), 1);

        let missing = KnownMethods::from_descriptor_sets(
            &["aetherfs.v1.NoSuchService"],
            &[aether_proto::FILE_DESCRIPTOR_SET],
        )
        .unwrap_err();
        assert!(missing.contains("aetherfs.v1.NoSuchService"), "{missing}");
    }

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
