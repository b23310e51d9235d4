//! Telemetry end to end: two coordinators, a store and a bus run as separate processes
//! exporting spans and metrics over OTLP/gRPC to a collector inside this test. One client call
//! is one trace across every service it reaches, forwarding between coordinators included, and
//! every RPC is counted, failed ones as errors.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether_proto as pb;
use aether_proto::session_service_client::SessionServiceClient;
use aether_proto::workspace_service_client::WorkspaceServiceClient;
use aether_testkit::{Cluster, ClusterSpec};
use common::*;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

const DEADLINE: Duration = Duration::from_secs(30);

/// One exported span, flattened.
#[derive(Clone, Debug)]
struct SpanSeen {
    service: String,
    name: String,
    kind: i32,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
}

/// A counter's series: service, metric, `rpc.method`, `rpc.grpc.status_code`.
type Series = (String, String, String, i64);

/// What the collector received; `changed` fires on every export.
#[derive(Default)]
struct Collected {
    /// Spans by trace id.
    spans: Mutex<HashMap<Vec<u8>, Vec<SpanSeen>>>,
    /// The latest value of each counter series (exports are cumulative).
    counts: Mutex<HashMap<Series, i64>>,
    changed: Notify,
}

#[derive(Clone, Default)]
struct Collector(Arc<Collected>);

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn string_attribute(attributes: &[KeyValue], key: &str) -> String {
    match attribute(attributes, key) {
        Some(Value::StringValue(s)) => s.clone(),
        _ => String::new(),
    }
}

fn service_name(resource: &Option<Resource>) -> String {
    resource
        .as_ref()
        .map(|r| string_attribute(&r.attributes, "service.name"))
        .unwrap_or_default()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.0.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = service_name(&resource.resource);
            for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.entry(span.trace_id).or_default().push(SpanSeen {
                    service: service.clone(),
                    name: span.name,
                    kind: span.kind,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                });
            }
        }
        drop(spans);
        self.0.changed.notify_one();
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut counts = self.0.counts.lock().unwrap();
        for resource in request.into_inner().resource_metrics {
            let service = service_name(&resource.resource);
            for m in resource.scope_metrics.into_iter().flat_map(|s| s.metrics) {
                let Some(metric::Data::Sum(sum)) = m.data else {
                    continue;
                };
                for point in sum.data_points {
                    let code = match attribute(&point.attributes, "rpc.grpc.status_code") {
                        Some(Value::IntValue(code)) => *code,
                        _ => -1,
                    };
                    let value = match point.value {
                        Some(number_data_point::Value::AsInt(v)) => v,
                        Some(number_data_point::Value::AsDouble(v)) => v as i64,
                        None => 0,
                    };
                    let method = string_attribute(&point.attributes, "rpc.method");
                    counts.insert((service.clone(), m.name.clone(), method, code), value);
                }
            }
        }
        drop(counts);
        self.0.changed.notify_one();
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

impl Collector {
    /// Serves OTLP/gRPC on a free loopback port until the test ends.
    async fn start() -> (Collector, std::net::SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collector = Collector::default();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .add_service(MetricsServiceServer::new(collector.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
        tokio::spawn(server);
        (collector, addr)
    }

    /// Waits until `check` finds what it looks for in the collected data, failing after
    /// [`DEADLINE`] with `what` and the last thing `check` was given.
    async fn wait_for<T>(&self, what: &str, mut check: impl FnMut(&Collected) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            // Registered before checking: an export in between leaves a permit.
            let changed = self.0.changed.notified();
            if let Some(found) = check(&self.0) {
                return found;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!(
                    "{what}: not exported within {DEADLINE:?}; spans by trace: {:#?}\ncounts: {:#?}",
                    self.0.spans.lock().unwrap(),
                    self.0.counts.lock().unwrap()
                );
            }
        }
    }
}

/// A W3C trace context of a (pretend) client span: trace id and span id, as hex and bytes.
fn client_trace() -> (String, Vec<u8>, Vec<u8>) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let trace_id = (nanos | 1 << 127).to_be_bytes().to_vec();
    let span_id = 0x00f0_67aa_0ba9_02b7_u64.to_be_bytes().to_vec();
    let header = format!("00-{}-{}-01", hex(&trace_id), hex(&span_id));
    (header, trace_id, span_id)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_call_is_one_trace_across_services_and_is_counted() {
    let (collector, addr) = Collector::start().await;
    let cluster = Cluster::start(ClusterSpec {
        coordinators: 2,
        otlp_endpoint: Some(addr),
        ..Default::default()
    })
    .await
    .expect("start cluster");
    // The session is held by the coordinator that created it; the other one forwards to it.
    let holder = connect(&cluster.coordinators[0].endpoint()).await.unwrap();
    let other = connect(&cluster.coordinators[1].endpoint()).await.unwrap();
    let session = create_session(&holder).await.unwrap();

    // WriteFile, forwarded to the holder, stores the bytes in the store, then publishes
    // "files changed" on the bus.
    let (traceparent, trace_id, client_span_id) = client_trace();
    let messages = vec![
        pb::WriteFileRequest {
            part: Some(pb::write_file_request::Part::Header(pb::WriteFileHeader {
                session_id: session.id.clone(),
                path: "traced.txt".into(),
                ..Default::default()
            })),
        },
        pb::WriteFileRequest {
            part: Some(pb::write_file_request::Part::Data(
                test_bytes(100_000, 5).into(),
            )),
        },
    ];
    let mut request = Request::new(futures::stream::iter(messages));
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    WorkspaceServiceClient::new(other)
        .write_file(request)
        .await
        .expect("WriteFile");

    // The trace is complete when every service has reported its part (both coordinators) and
    // every span's parent is in it (the first coordinator's span hangs off the client's).
    let write_file = "aetherfs.v1.WorkspaceService/WriteFile";
    let trace = collector
        .wait_for(
            "spans of coordinators, store and bus in the client's trace",
            |c| {
                let spans = c.spans.lock().unwrap().get(&trace_id)?.clone();
                let services: HashSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
                let ids: HashSet<&[u8]> = spans.iter().map(|s| s.span_id.as_slice()).collect();
                let connected = spans.iter().all(|s| {
                    s.parent_span_id == client_span_id || ids.contains(s.parent_span_id.as_slice())
                });
                let all = ["aether-coordinator", "aether-store", "aether-bus"];
                let writes = spans.iter().filter(|s| s.name == write_file).count();
                (all.iter().all(|s| services.contains(s)) && connected && writes == 2)
                    .then_some(spans)
            },
        )
        .await;
    let services: HashSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
    assert!(services.len() >= 2, "one trace spans {services:?}");
    let root = trace
        .iter()
        .find(|s| s.parent_span_id == client_span_id)
        .expect("a span whose parent is the client's");
    assert_eq!(root.service, "aether-coordinator");
    assert_eq!(root.name, write_file);
    assert_eq!(root.kind, SpanKind::Server as i32);
    assert!(
        trace
            .iter()
            .any(|s| s.name == write_file && s.parent_span_id == root.span_id),
        "the holder's WriteFile span is not a child of the forwarding one: {trace:#?}"
    );
    for (service, name) in [
        ("aether-store", "aetherfs.v1.ContentService/"),
        ("aether-bus", "aetherfs.v1.BusService/Publish"),
    ] {
        assert!(
            trace
                .iter()
                .any(|s| s.service == service && s.name.starts_with(name)),
            "no {name} span of {service} in {trace:#?}"
        );
    }

    // A failing call is counted as a request and as an error, with its status code.
    let failed = SessionServiceClient::new(holder)
        .get_session(pb::GetSessionRequest {
            session_id: "no-such-session".into(),
        })
        .await
        .expect_err("GetSession of an unknown session fails");
    let code = failed.code() as i64;
    let counted = |metric: &'static str, method: &'static str, code: i64| {
        move |c: &Collected| {
            let counts = c.counts.lock().unwrap();
            let key = (
                "aether-coordinator".to_string(),
                metric.to_string(),
                method.to_string(),
                code,
            );
            counts.get(&key).copied().filter(|value| *value >= 1)
        }
    };
    collector
        .wait_for(
            "a WriteFile request counted OK",
            counted("rpc.server.requests", "WriteFile", 0),
        )
        .await;
    collector
        .wait_for(
            "the failed GetSession counted as a request",
            counted("rpc.server.requests", "GetSession", code),
        )
        .await;
    collector
        .wait_for(
            "the failed GetSession counted as an error",
            counted("rpc.server.errors", "GetSession", code),
        )
        .await;
    let errors_ok = counted("rpc.server.errors", "WriteFile", 0)(&collector.0);
    assert!(
        errors_ok.is_none(),
        "a successful call counted as an error: {errors_ok:?}"
    );
}
