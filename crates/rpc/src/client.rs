//! How a process calls other Nightshift services: one way to build a channel (TLS when the
//! endpoint is `https://`, the process's client certificate for mutual TLS; in-process when it
//! is the process's own server, see [`crate::InProcess`]) and one interceptor that sends the
//! caller's credential and trace context with every call.
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::Body;
use tonic::codegen::{Service, StdError, http};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::in_process::{InProcess, InProcessCall};
use crate::role::BadEndpoint;
use crate::tls::TlsOptions;
use crate::trace::inject_trace;

/// How long connecting to a service may take before a call fails `UNAVAILABLE`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a process presents when it calls another service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientOptions {
    /// Whom to trust (`ca_file`) and, for mutual TLS, which certificate to present
    /// (`cert_file` + `key_file`).
    pub tls: TlsOptions,
    /// Sent as `authorization: Bearer …` with every call; empty = none.
    pub api_key: String,
    /// Calls to this process's own server, made without the network (`nightshift dev`).
    pub in_process: InProcess,
}

impl ClientOptions {
    /// An endpoint for `uri`, with TLS configured when it is `https://`. `field` names the
    /// option the URI came from, for the error.
    pub fn endpoint(&self, field: &'static str, uri: &str) -> Result<Endpoint, BadEndpoint> {
        let endpoint =
            Endpoint::from_shared(uri.to_owned()).map_err(BadEndpoint::of(field))?.connect_timeout(CONNECT_TIMEOUT);
        if endpoint.uri().scheme_str() != Some("https") {
            return Ok(endpoint);
        }
        let mut tls = ClientTlsConfig::new();
        tls = if self.tls.ca_file.is_empty() {
            tls.with_native_roots()
        } else {
            let pem = std::fs::read(&self.tls.ca_file)
                .map_err(|e| BadEndpoint::of(field)(format!("tls.ca_file {}: {e}", self.tls.ca_file)))?;
            tls.ca_certificate(Certificate::from_pem(pem))
        };
        if !self.tls.server_name.is_empty() {
            tls = tls.domain_name(self.tls.server_name.clone());
        }
        if !self.tls.cert_file.is_empty() {
            let read = |path: &str| {
                std::fs::read(path).map_err(|e| BadEndpoint::of(field)(format!("client certificate {path}: {e}")))
            };
            tls = tls.identity(Identity::from_pem(read(&self.tls.cert_file)?, read(&self.tls.key_file)?));
        }
        endpoint.tls_config(tls).map_err(BadEndpoint::of(field))
    }

    /// A lazily connecting channel to `uri` whose calls carry this process's credential; each
    /// call may take at most `timeout`.
    pub fn channel(&self, field: &'static str, uri: &str, timeout: Duration) -> Result<CallChannel, BadEndpoint> {
        self.lazy(field, uri, Some(timeout))
    }

    /// A lazily connecting channel to `uri` whose calls carry this process's credential, without
    /// a time limit per call (streams, and publishers that bound their calls themselves).
    pub fn connect_lazy(&self, field: &'static str, uri: &str) -> Result<CallChannel, BadEndpoint> {
        self.lazy(field, uri, None)
    }

    fn lazy(&self, field: &'static str, uri: &str, timeout: Option<Duration>) -> Result<CallChannel, BadEndpoint> {
        let endpoint = self.endpoint(field, uri)?;
        Ok(match self.in_process.call_to(uri, timeout) {
            Some(call) => self.intercept(Transport::InProcess(call)),
            None => self.wrap(
                match timeout {
                    Some(t) => endpoint.timeout(t),
                    None => endpoint,
                }
                .connect_lazy(),
            ),
        })
    }

    /// Wraps `channel` so that every call carries this process's credential and trace context.
    pub fn wrap(&self, channel: Channel) -> CallChannel {
        self.intercept(Transport::Network(channel))
    }

    fn intercept(&self, transport: Transport) -> CallChannel {
        let authorization = (!self.api_key.is_empty())
            .then(|| MetadataValue::try_from(format!("Bearer {}", self.api_key)).ok())
            .flatten();
        InterceptedService::new(transport, CallContext { authorization })
    }
}

/// How a client's calls reach the server.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Over the network (HTTP/2, TLS when configured).
    Network(Channel),
    /// To the server of this process, by a direct call ([`crate::InProcess`]).
    InProcess(InProcessCall),
}

impl Service<http::Request<Body>> for Transport {
    type Response = http::Response<Body>;
    type Error = StdError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            Transport::Network(channel) => channel.poll_ready(cx).map_err(Into::into),
            Transport::InProcess(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        match self {
            Transport::Network(channel) => {
                let call = channel.call(req);
                Box::pin(async move { call.await.map_err(Into::into) })
            }
            Transport::InProcess(call) => call.call(req),
        }
    }
}

/// A client interceptor that sends the caller's credential (if any) and its current span as
/// the parent of the server's.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    authorization: Option<AsciiMetadataValue>,
}

impl Interceptor for CallContext {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.authorization {
            req.metadata_mut().insert("authorization", value.clone());
        }
        inject_trace(req.metadata_mut());
        Ok(req)
    }
}

/// A channel whose calls carry the caller's credential and trace context; build clients with
/// `XServiceClient::new(options.wrap(channel))`.
pub type CallChannel = InterceptedService<Transport, CallContext>;

/// Wraps `channel` with the trace context only (no credential): for tests and tools that call
/// a server without authentication.
pub fn traced(channel: Channel) -> CallChannel {
    InterceptedService::new(Transport::Network(channel), CallContext::default())
}
