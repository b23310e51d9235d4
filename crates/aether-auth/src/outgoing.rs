//! What every outgoing call carries: [`AttachToken`], the client half of service-to-service
//! authentication, the caller's W3C trace context ([`inject_trace_context`]), so a call that
//! crosses services stays one trace, and what remains of the caller's deadline
//! ([`crate::deadline`]).

use opentelemetry::propagation::Injector;
use tonic::metadata::{Ascii, MetadataKey, MetadataMap, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// A tonic interceptor that sends `authorization: Bearer <token>` on every call that does not
/// carry one already, the current trace context (see [`inject_trace_context`]) and what remains
/// of the current call's deadline (see [`crate::deadline::propagate`]).
#[derive(Clone, Debug, Default)]
pub struct AttachToken {
    header: Option<MetadataValue<Ascii>>,
}

impl AttachToken {
    /// Attaches nothing.
    pub fn none() -> Self {
        Self::default()
    }

    /// Attaches `token`; Err when it cannot be sent in a header.
    pub fn new(token: Option<&str>) -> Result<Self, String> {
        let header = match token {
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| "the service token must be printable ASCII".to_string())?,
            ),
            None => None,
        };
        Ok(Self { header })
    }
}

impl Interceptor for AttachToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            if !request.metadata().contains_key("authorization") {
                request
                    .metadata_mut()
                    .insert("authorization", header.clone());
            }
        }
        inject_trace_context(request.metadata_mut());
        crate::deadline::propagate(request.metadata_mut())?;
        Ok(request)
    }
}

/// Adds `traceparent` (and `tracestate`) for the current OpenTelemetry context, through the
/// global propagator. Tonic runs interceptors in the calling task, so the context is the
/// caller's: with `tracing-opentelemetry`, entering a span makes it current. Without a
/// propagator installed (no exporter configured) or an active span, it adds nothing.
pub fn inject_trace_context(metadata: &mut MetadataMap) {
    let context = opentelemetry::Context::current();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataInjector(metadata))
    });
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // Propagators produce lowercase ASCII names and values; anything else is skipped.
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tonic::service::Interceptor;

    #[test]
    fn sends_the_current_trace_context() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let untraced = AttachToken::none().call(Request::new(())).unwrap();
        assert!(untraced.metadata().get("traceparent").is_none());

        let span = SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
            SpanId::from_hex("b7ad6b7169203331").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let _active = opentelemetry::Context::current()
            .with_remote_span_context(span)
            .attach();
        let traced = AttachToken::none().call(Request::new(())).unwrap();
        assert_eq!(
            traced.metadata().get("traceparent").unwrap(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
    }
}
