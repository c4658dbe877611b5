//! Logging set-up shared by every Nightshift binary: `tracing` with a text or JSON formatter and
//! an `RUST_LOG`-style filter (default `info`).
use std::str::FromStr;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for log aggregation).
    Json,
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
pub fn init(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,h2=warn,tower=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
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

static PROMETHEUS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> = std::sync::OnceLock::new();

/// Installs the process-wide Prometheus recorder (once) and returns its handle.
pub fn metrics_handle() -> Result<metrics_exporter_prometheus::PrometheusHandle, MetricsError> {
    if let Some(h) = PROMETHEUS.get() {
        return Ok(h.clone());
    }
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| MetricsError::Recorder(e.to_string()))?;
    Ok(PROMETHEUS.get_or_init(|| handle).clone())
}

/// Serves `GET /metrics` (Prometheus text format) on `addr` in the background; returns the bound
/// address. Every service of the process shares the one recorder.
pub async fn serve_metrics(addr: &str) -> Result<std::net::SocketAddr, MetricsError> {
    let handle = metrics_handle()?;
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|source| MetricsError::Bind { addr: addr.to_owned(), source })?;
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
