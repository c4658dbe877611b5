//! Logging set-up shared by every Nightshift binary: `tracing` with a text or JSON formatter and
//! an `RUST_LOG`-style filter (default `info`), OpenTelemetry span export over OTLP when the
//! standard `OTEL_EXPORTER_OTLP_*` variables ask for it, and the Prometheus `/metrics` endpoint.
use std::str::FromStr;

mod propagation;
pub use propagation::{Extractor, Injector, context_map, inject, set_parent, set_parent_from_map, tracing_enabled};

/// Log output format (`text` or `json` in config files and `--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for log aggregation).
    Json,
}

/// From config files: the error names the key, which serde cannot do inside the flattened
/// `ServerOptions` section.
impl TryFrom<String> for LogFormat {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse().map_err(|e| format!("log_format: {e}"))
    }
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(format!("unknown log format '{s}' (expected text or json)")),
        }
    }
}

/// Installs the global subscriber. Later calls are ignored (tests may call it repeatedly).
///
/// With the standard OpenTelemetry variable `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, spans are also exported over OTLP/gRPC, named by
/// `OTEL_SERVICE_NAME`. Must be called inside the Tokio runtime (the exporter's gRPC client
/// needs it); call [`shutdown`] before exiting so the last spans are flushed.
pub fn init(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,h2=warn,tower=warn"));
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => registry.with(fmt).try_init(),
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).try_init(),
    };
}

static TRACER_PROVIDER: std::sync::OnceLock<opentelemetry_sdk::trace::SdkTracerProvider> = std::sync::OnceLock::new();

/// The OpenTelemetry layer, when an OTLP endpoint is configured (see [`init`]).
fn otel_layer<S>() -> Option<tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    use opentelemetry::trace::TracerProvider as _;
    let configured = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| !v.trim().is_empty()));
    if !configured {
        return None;
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder().with_tonic().build() {
        Ok(e) => e,
        Err(e) => {
            // The subscriber is not installed yet: this goes to stderr directly, once.
            eprintln!("OpenTelemetry export disabled: cannot build the OTLP exporter: {e}");
            return None;
        }
    };
    // The default resource reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(opentelemetry_sdk::Resource::builder().build())
        .build();
    let tracer = provider.tracer("nightshift");
    opentelemetry::global::set_tracer_provider(provider.clone());
    let _ = TRACER_PROVIDER.set(provider);
    Some(tracing_opentelemetry::layer().with_tracer(tracer))
}

/// Flushes and stops the OpenTelemetry exporter (a no-op without one).
pub fn shutdown() {
    if let Some(p) = TRACER_PROVIDER.get()
        && let Err(e) = p.shutdown()
    {
        tracing::warn!(error = %e, "flushing OpenTelemetry spans failed");
    }
}

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A recorder is already installed with a different handle (second init in one process).
    #[error("metrics recorder: {0}")]
    Recorder(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Requested address.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// The handle of the process's Prometheus recorder (its text: `render()`).
pub use metrics_exporter_prometheus::PrometheusHandle;

static PROMETHEUS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> = std::sync::OnceLock::new();

/// Installs the process-wide Prometheus recorder (once) and returns its handle.
pub fn metrics_handle() -> Result<metrics_exporter_prometheus::PrometheusHandle, MetricsError> {
    if let Some(h) = PROMETHEUS.get() {
        return Ok(h.clone());
    }
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let handle = PrometheusBuilder::new()
        // Latencies as histograms (aggregatable across replicas), not per-process summaries.
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .and_then(|b| b.install_recorder())
        .map_err(|e| MetricsError::Recorder(e.to_string()))?;
    describe_metrics();
    Ok(PROMETHEUS.get_or_init(|| handle).clone())
}

const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Help texts of every Nightshift metric (one catalogue, so `/metrics` passes
/// `promtool check metrics` and docs/operations can list them).
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("nightshift_scheduler_active_schedules", "Unpaused schedules owned by this scheduler replica.");
    describe_counter!("nightshift_scheduler_fired_total", "Schedule ticks fired (runs recorded and published).");
    describe_counter!(
        "nightshift_scheduler_deduplicated_total",
        "Ticks whose run already existed (fired by another replica or before a restart)."
    );
    describe_counter!("nightshift_scheduler_missed_ticks_total", "Late ticks not fired because of the misfire policy.");
    describe_counter!(
        "nightshift_scheduler_republished_total",
        "Queued runs published again because their first publish never reached the queue."
    );
    describe_histogram!(
        "nightshift_scheduler_fire_lag_seconds",
        Unit::Seconds,
        "Delay from a tick's fire time (tick + jitter) to its run request being published."
    );
    describe_counter!("nightshift_worker_runs_total", "Run attempts ended by this worker, by status.");
    describe_counter!(
        "nightshift_worker_memory_errors_total",
        "Memory service calls that failed around a run (the run went on without), by op."
    );
    describe_histogram!(
        "nightshift_run_duration_seconds",
        Unit::Seconds,
        "Wall-clock duration of run attempts on this worker, by status."
    );
    describe_counter!("nightshift_llm_tokens_total", "LLM tokens used, by model and kind (input/output).");
    describe_histogram!(
        "nightshift_llm_request_duration_seconds",
        Unit::Seconds,
        "LLM call latency, by the model the server answered with (\"error\" for failed calls)."
    );
    describe_counter!("nightshift_memory_records_stored_total", "Memory records stored, by memory type.");
    describe_counter!(
        "nightshift_memory_embed_cache_total",
        "Texts the memory service's embedder was asked for, by result: hit (from the cache) or miss (embedded)."
    );
    describe_histogram!(
        "nightshift_memory_search_duration_seconds",
        Unit::Seconds,
        "Semantic memory searches: embedding the query plus the vector index lookup."
    );
    describe_counter!(
        "nightshift_memory_summaries_total",
        "Episodic summaries written (ok) or failed (error), by trigger (auto after a Store, rpc)."
    );
    describe_gauge!("nightshift_queue_depth", "Run requests waiting in the work queue (reported by schedulers).");
    describe_counter!("nightshift_events_published_total", "Events stored in the event log, by backend.");
    describe_counter!(
        "nightshift_events_subscriber_lagged_total",
        "Subscriptions ended with Lagged (the subscriber fell behind its buffer and must resume)."
    );
    describe_counter!(
        "nightshift_events_subscriber_dropped_total",
        "Live events lagging subscribers missed (to resume)."
    );
    describe_counter!("nightshift_tool_calls_total", "Tool calls, by tool and outcome (ok/error).");
    describe_counter!("nightshift_grpc_requests_total", "gRPC calls served, by method and status code.");
    describe_histogram!(
        "nightshift_grpc_request_duration_seconds",
        Unit::Seconds,
        "gRPC call latency until the response starts (streams: until they open), by method."
    );
}

/// Serves `GET /metrics` (Prometheus text format) on `addr` in the background; returns the bound
/// address. Every service of the process shares the one recorder.
pub async fn serve_metrics(addr: &str) -> Result<std::net::SocketAddr, MetricsError> {
    let handle = metrics_handle()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr: addr.to_owned(), source })?;
    let local = listener.local_addr().map_err(|source| MetricsError::Bind { addr: addr.to_owned(), source })?;
    let app = axum::Router::new().route("/metrics", axum::routing::get(move || std::future::ready(handle.render())));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    tracing::info!(addr = %local, "metrics on /metrics");
    Ok(local)
}
