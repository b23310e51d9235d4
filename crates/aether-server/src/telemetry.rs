//! Logging and tracing: `tracing` to stderr; when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, also
//! OTLP/gRPC export of spans and metrics, and W3C trace context (`traceparent`) on the way in
//! and out. Without it nothing is exported and no context is propagated: the global
//! OpenTelemetry providers and propagator stay no-ops. The standard `OTEL_*` variables tune
//! the export (`OTEL_BSP_SCHEDULE_DELAY`, `OTEL_METRIC_EXPORT_INTERVAL`, ...);
//! `OTEL_METRICS_EXPORTER=none` keeps metrics off, for collectors that take only traces.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Flushes exported spans and metrics when dropped.
pub struct Telemetry {
    providers: Option<(SdkTracerProvider, Option<SdkMeterProvider>)>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some((traces, metrics)) = self.providers.take() {
            let _ = traces.shutdown();
            if let Some(metrics) = metrics {
                let _ = metrics.shutdown();
            }
        }
    }
}

/// Initialises tracing once for the process. `AETHER_LOG` (or `RUST_LOG`) sets the filter; it
/// applies to exported spans too, so it must let `info` spans of this crate through for
/// per-RPC spans to be exported. Call it inside the Tokio runtime: the exporters need it.
pub fn init(service: &str) -> Telemetry {
    let filter = std::env::var("AETHER_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let providers = if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        match otlp_providers(service) {
            Ok(providers) => Some(providers),
            Err(e) => {
                eprintln!("OTLP export disabled: {e}");
                None
            }
        }
    } else {
        None
    };
    let otel = providers
        .as_ref()
        .map(|(traces, _)| tracing_opentelemetry::layer().with_tracer(traces.tracer("aetherd")));
    tracing_subscriber::registry()
        .with(EnvFilter::new(filter))
        .with(fmt)
        .with(otel)
        .init();
    Telemetry { providers }
}

/// The span and metric pipelines; installs the global meter provider and propagator.
fn otlp_providers(
    service: &str,
) -> Result<(SdkTracerProvider, Option<SdkMeterProvider>), opentelemetry_otlp::ExporterBuildError> {
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(format!("aether-{service}"))
        .build();
    let spans = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    let traces = SdkTracerProvider::builder()
        .with_batch_exporter(spans)
        .with_resource(resource.clone())
        .build();
    let meters = if std::env::var("OTEL_METRICS_EXPORTER").is_ok_and(|v| v == "none") {
        None
    } else {
        let metrics = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .build()?;
        let meters = SdkMeterProvider::builder()
            .with_periodic_exporter(metrics)
            .with_resource(resource)
            .build();
        opentelemetry::global::set_meter_provider(meters.clone());
        Some(meters)
    };
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    Ok((traces, meters))
}
