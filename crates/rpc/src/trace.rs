//! Trace context through gRPC metadata: clients inject the current span's `traceparent`
//! ([`crate::CallContext`]), servers continue it in their per-call span ([`server_span`]).
use nightshift_telemetry::{Extractor, Injector};
use tonic::codegen::http;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};

/// Puts the current span's trace context into outgoing call metadata.
pub(crate) fn inject_trace(metadata: &mut MetadataMap) {
    nightshift_telemetry::inject(&tracing::Span::current(), &mut MetadataInjector(metadata));
}

/// The span of one incoming call, continuing the caller's trace when it sent one.
pub(crate) fn server_span<B>(req: &http::Request<B>) -> tracing::Span {
    // Per call on every server: without an exporter, not even the span is built.
    if !nightshift_telemetry::tracing_enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!("grpc.server", otel.name = %req.uri().path(), otel.kind = "server");
    nightshift_telemetry::set_parent(&span, &HeaderExtractor(req.headers()));
    span
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (MetadataKey::from_bytes(key.as_bytes()), MetadataValue::try_from(value)) {
            self.0.insert(k, v);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}
