//! TLS for every server (certificates re-read when their files change, so cert-manager can rotate
//! them under a running process) and the TLS settings of every client channel.
//!
//! The server side is our own accept loop over tokio-rustls rather than tonic's `tls_config`:
//! tonic reads its certificate once at start-up, and a process that must be restarted to pick up
//! a renewed certificate is down at the worst time (when the old one expires).
use std::io;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How often a TLS server compares its certificate files with what it serves.
const RELOAD_EVERY: Duration = Duration::from_secs(5);
/// A peer that has not finished its handshake by then is dropped (it holds no accept slot
/// meanwhile: each handshake runs in its own task).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `[tls]` section of every role: the certificate this process serves with, whether callers
/// must present one (mutual TLS), and whom it trusts when it calls another service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsOptions {
    /// PEM certificate chain this server presents; with `key_file`, the server speaks TLS only
    /// (a plaintext client is refused). Also this process's client certificate when the services
    /// it calls require mutual TLS. Empty = plaintext.
    pub cert_file: String,
    /// PEM private key of `cert_file`.
    pub key_file: String,
    /// PEM CA bundle: when set, every caller must present a certificate that chains to it
    /// (mutual TLS).
    pub client_ca_file: String,
    /// PEM CA bundle that the servers this process calls over `https://` must chain to; empty =
    /// the system's roots.
    pub ca_file: String,
    /// The name the servers this process calls must present in their certificates, instead of
    /// the host it dials; empty = that host. For replicas reached at addresses no certificate
    /// can name in advance (scaled workers advertise their container or pod name): give every
    /// service a certificate for one shared name (`nightshift`) and set it here.
    pub server_name: String,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        source: io::Error,
    },
    /// A file holds no PEM item of the expected kind.
    #[error("{path}: no {what} in it (PEM expected)")]
    Empty {
        /// The file.
        path: String,
        /// What was looked for.
        what: &'static str,
    },
    /// `cert_file` and `key_file` are set together or not at all.
    #[error("tls.cert_file and tls.key_file go together (one is empty)")]
    Incomplete,
    /// `client_ca_file` without a server certificate.
    #[error("tls.client_ca_file needs tls.cert_file and tls.key_file (mutual TLS is TLS)")]
    ClientCaWithoutCert,
    /// rustls refused the material (key does not match, unsupported algorithm, …).
    #[error("{0}")]
    Rustls(String),
}

fn read(path: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

/// The certificates of a PEM bundle.
pub(crate) fn certificates(path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(TlsError::Empty { path: path.to_owned(), what: "certificate" });
    }
    Ok(certs)
}

impl TlsOptions {
    /// Whether this process serves TLS.
    pub fn serves_tls(&self) -> bool {
        !self.cert_file.is_empty()
    }

    /// Checks that the set fields make a whole (the files themselves are read when used).
    pub fn validate(&self) -> Result<(), TlsError> {
        if self.cert_file.is_empty() != self.key_file.is_empty() {
            return Err(TlsError::Incomplete);
        }
        if !self.client_ca_file.is_empty() && self.cert_file.is_empty() {
            return Err(TlsError::ClientCaWithoutCert);
        }
        Ok(())
    }

    /// The rustls configuration of a server, read from the files now.
    fn server_config(&self) -> Result<ServerConfig, TlsError> {
        let chain = certificates(&self.cert_file)?;
        let key = PrivateKeyDer::from_pem_slice(&read(&self.key_file)?)
            .map_err(|_| TlsError::Empty { path: self.key_file.clone(), what: "private key" })?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let builder = if self.client_ca_file.is_empty() {
            builder.with_no_client_auth()
        } else {
            let mut roots = rustls::RootCertStore::empty();
            for ca in certificates(&self.client_ca_file)? {
                roots.add(ca).map_err(|e| TlsError::Rustls(format!("{}: {e}", self.client_ca_file)))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Rustls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| TlsError::Rustls(e.to_string()))?;
        // gRPC is HTTP/2 only; clients such as grpcurl insist on negotiating it.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// The files a server reads, in a fixed order, for change detection.
    fn server_files(&self) -> Vec<&str> {
        [&self.cert_file, &self.key_file, &self.client_ca_file]
            .into_iter()
            .filter(|f| !f.is_empty())
            .map(String::as_str)
            .collect()
    }
}

/// A server's TLS: the configuration in force and what its files held when it was built.
pub struct ServerTls {
    options: TlsOptions,
    current: RwLock<(Arc<ServerConfig>, Vec<Vec<u8>>)>,
}

impl ServerTls {
    /// Reads the certificate (and client CA) now: `None` when `options` serves plaintext, an
    /// error when the files are missing or do not make a valid pair.
    pub fn load(options: &TlsOptions) -> Result<Option<Arc<Self>>, TlsError> {
        options.validate()?;
        if !options.serves_tls() {
            return Ok(None);
        }
        let contents = Self::contents(options)?;
        let config = Arc::new(options.server_config()?);
        Ok(Some(Arc::new(Self { options: options.clone(), current: RwLock::new((config, contents)) })))
    }

    fn contents(options: &TlsOptions) -> Result<Vec<Vec<u8>>, TlsError> {
        options.server_files().into_iter().map(read).collect()
    }

    /// Re-reads the files and, when they changed and still make a valid configuration, serves
    /// new connections with it. Returns whether the configuration was replaced; on an error the
    /// previous one stays in force (a half-written renewal must not take the server down).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let contents = Self::contents(&self.options)?;
        if self.current.read().map(|c| c.1 == contents).unwrap_or(false) {
            return Ok(false);
        }
        let config = Arc::new(self.options.server_config()?);
        if let Ok(mut current) = self.current.write() {
            *current = (config, contents);
        }
        Ok(true)
    }

    fn acceptor(&self) -> Option<TlsAcceptor> {
        self.current.read().ok().map(|c| TlsAcceptor::from(c.0.clone()))
    }
}

/// The connections of a TLS server: accepts on `listener`, runs each handshake in its own task,
/// and yields the streams that completed one. Reloads the certificate files every few seconds.
/// Ends when the receiving side (the server) is dropped.
pub(crate) fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsStream<TcpStream>, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut reload = tokio::time::interval(RELOAD_EVERY);
        reload.tick().await;
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                _ = reload.tick() => {
                    match tls.reload_if_changed() {
                        Ok(true) => tracing::info!(cert = %tls.options.cert_file, "TLS certificate reloaded"),
                        Ok(false) => {}
                        Err(e) => tracing::warn!(error = %e, "TLS files changed but cannot be used; serving the previous certificate"),
                    }
                    continue;
                }
                accepted = listener.accept() => accepted,
            };
            let tcp = match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Without TCP_NODELAY small responses wait ~40 ms for the peer's delayed ACK.
            let _ = tcp.set_nodelay(true);
            let Some(acceptor) = tls.acceptor() else { continue };
            let tx = tx.clone();
            tokio::spawn(async move {
                let peer = tcp.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(?peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::debug!(?peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
