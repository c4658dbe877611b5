//! W3C trace-context propagation, so that one run is one trace across processes: through gRPC
//! metadata (see `nightshift_rpc`) and through the work queue (`RunRequest.trace_context`).
//!
//! Everything here is a no-op, and nearly free, when no OTLP exporter is configured
//! ([`tracing_enabled`] is false): nothing is injected and incoming contexts are ignored.
use std::collections::BTreeMap;

use opentelemetry::propagation::TextMapPropagator as _;
pub use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Whether spans are exported (an OTLP endpoint was configured when [`crate::init`] ran).
pub fn tracing_enabled() -> bool {
    crate::TRACER_PROVIDER.get().is_some()
}

/// Writes the trace context of `span` (`traceparent`, `tracestate`) into `carrier`.
pub fn inject(span: &tracing::Span, carrier: &mut dyn Injector) {
    if !tracing_enabled() {
        return;
    }
    TraceContextPropagator::new().inject_context(&span.context(), carrier);
}

/// The trace context of `span` as a string map, the form carried by `RunRequest.trace_context`.
pub fn context_map(span: &tracing::Span) -> BTreeMap<String, String> {
    let mut map = Map(BTreeMap::new());
    inject(span, &mut map);
    map.0
}

/// Makes `span` a child of the remote span described by `carrier`, if it describes one (a
/// missing or malformed `traceparent` leaves `span` a root).
pub fn set_parent(span: &tracing::Span, carrier: &dyn Extractor) {
    if !tracing_enabled() || carrier.get("traceparent").is_none() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(carrier);
    if let Err(e) = span.set_parent(cx) {
        tracing::debug!(error = %e, "cannot attach a remote trace context");
    }
}

/// [`set_parent`] from a `RunRequest.trace_context`-style map.
pub fn set_parent_from_map(span: &tracing::Span, map: &BTreeMap<String, String>) {
    set_parent(span, &MapRef(map));
}

struct Map(BTreeMap<String, String>);

impl Injector for Map {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct MapRef<'a>(&'a BTreeMap<String, String>);

impl Extractor for MapRef<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_round_trips_through_a_map() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let map = BTreeMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
        let cx = TraceContextPropagator::new().extract(&MapRef(&map));
        let mut out = Map(BTreeMap::new());
        TraceContextPropagator::new().inject_context(&cx, &mut out);
        assert_eq!(out.0.get("traceparent").map(String::as_str), Some(traceparent));
    }
}
