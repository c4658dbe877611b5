//! Per-method gRPC server metrics, recorded for every Nightshift server by a tower layer:
//! `nightshift_grpc_requests_total{method, code}` and
//! `nightshift_grpc_request_duration_seconds{method}`.
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::Code;
use tonic::codegen::{Service, http};

/// Wraps a server's routes (see [`crate::GrpcServer::serve`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MetricsLayer;

impl<S> tower_layer::Layer<S> for MetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct GrpcMetrics<S> {
    inner: S,
}

/// The gRPC status of a response from its headers: a call that fails before its first message
/// answers "trailers-only", with the status in the headers; otherwise it comes in the trailers,
/// after the body, and the call is counted as OK.
pub(crate) fn status_of(headers: &http::HeaderMap) -> Code {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<i32>().ok())
        .map(Code::from_i32)
        .unwrap_or(Code::Ok)
}

impl<S, B, R> Service<http::Request<B>> for GrpcMetrics<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_owned();
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            if !crate::server::is_grpc_path(&method) {
                // A web page (GrpcServer::pages), not a call: its paths would be unbounded labels.
                return res;
            }
            let code = match &res {
                Ok(r) => status_of(r.headers()),
                Err(_) => Code::Internal,
            };
            // A path that no service knows is refused before routing (by the permission table)
            // or answered UNIMPLEMENTED: either way one label value.
            let known = code != Code::Unimplemented && nightshift_core::auth::permission_for(&method).is_some();
            let method = if known { method } else { "unknown".to_owned() };
            metrics::histogram!("nightshift_grpc_request_duration_seconds", "method" => method.clone())
                .record(started.elapsed().as_secs_f64());
            metrics::counter!("nightshift_grpc_requests_total", "method" => method, "code" => format!("{code:?}"))
                .increment(1);
            res
        })
    }
}
