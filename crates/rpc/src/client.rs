//! How a process calls other Nightshift services: one way to build a channel (TLS when the
//! endpoint is `https://`, the process's client certificate for mutual TLS) and one interceptor
//! that sends the caller's credential and trace context with every call.
use std::time::Duration;

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

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

    /// A lazily connecting channel to `uri` whose calls carry this process's credential.
    pub fn channel(&self, field: &'static str, uri: &str, timeout: Duration) -> Result<CallChannel, BadEndpoint> {
        Ok(self.wrap(self.endpoint(field, uri)?.timeout(timeout).connect_lazy()))
    }

    /// Wraps `channel` so that every call carries this process's credential and trace context.
    pub fn wrap(&self, channel: Channel) -> CallChannel {
        let authorization = (!self.api_key.is_empty())
            .then(|| MetadataValue::try_from(format!("Bearer {}", self.api_key)).ok())
            .flatten();
        InterceptedService::new(channel, CallContext { authorization })
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
pub type CallChannel = InterceptedService<Channel, CallContext>;

/// Wraps `channel` with the trace context only (no credential): for tests and tools that call
/// a server without authentication.
pub fn traced(channel: Channel) -> CallChannel {
    InterceptedService::new(channel, CallContext::default())
}
