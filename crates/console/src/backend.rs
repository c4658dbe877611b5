//! The services the console calls, each call carrying the signed-in user's credential (so that
//! the services, not the console, decide what the user may see and do).
use nightshift_proto::v1 as pb;
use nightshift_rpc::{CallChannel, ClientOptions};
use pb::auth_service_client::AuthServiceClient;
use pb::event_service_client::EventServiceClient;
use pb::manager_service_client::ManagerServiceClient;
use pb::memory_service_client::MemoryServiceClient;
use pb::scheduler_service_client::SchedulerServiceClient;
use pb::worker_service_client::WorkerServiceClient;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tonic::transport::Channel;

use crate::config::ConsoleConfig;
use crate::error::ConsoleError;
use crate::session::Session;

/// A name standing for every worker (`worker_discovery`), resolved at each visit.
#[derive(Clone)]
struct Discovery {
    /// As configured.
    uri: String,
    /// `http` or `https`.
    scheme: String,
    host: String,
    port: u16,
}

impl Discovery {
    fn parse(uri: &str) -> Result<Self, ConsoleError> {
        let bad = |why: &str| nightshift_rpc::BadEndpoint::of("worker_discovery")(format!("{uri}: {why}"));
        let parsed: axum::http::Uri = uri.parse().map_err(|_| bad("not a URI"))?;
        let scheme = match parsed.scheme_str() {
            Some(s @ ("http" | "https")) => s.to_owned(),
            _ => return Err(bad("the scheme is http or https").into()),
        };
        let host = parsed.host().filter(|h| !h.is_empty()).ok_or_else(|| bad("no host"))?.to_owned();
        let port = parsed.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
        Ok(Self { uri: uri.to_owned(), scheme, host, port })
    }
}

/// A worker the workers page asks: its label (endpoint as configured, or the discovery name and
/// the address it resolved to) and a client, or why there is none.
pub(crate) type WorkerClient = (String, Result<WorkerServiceClient<CallChannel>, String>);

/// Channels to the manager and the event service (lazily connected, shared by every session).
#[derive(Clone)]
pub(crate) struct Backends {
    client: ClientOptions,
    manager: Channel,
    events: Channel,
    scheduler: Channel,
    memory: Channel,
    /// Each configured worker: its endpoint as configured, and a channel to it.
    workers: Vec<(String, Channel)>,
    discovery: Vec<Discovery>,
    /// Channels to the addresses discovery found, by address URI (kept while they resolve).
    found: Arc<Mutex<HashMap<String, Channel>>>,
    call_timeout: Duration,
}

impl Backends {
    pub fn new(cfg: &ConsoleConfig) -> Result<Self, ConsoleError> {
        // The console's own key (`auth.api_key_file`) is never sent: each call carries its user's.
        let client = ClientOptions { tls: cfg.server.tls.clone(), ..ClientOptions::default() };
        let channel = |field, uri: &str| -> Result<Channel, ConsoleError> {
            Ok(client.endpoint(field, uri)?.timeout(cfg.call_timeout).connect_lazy())
        };
        let workers = cfg
            .worker_endpoints
            .iter()
            .map(|uri| Ok((uri.clone(), channel("worker_endpoints", uri)?)))
            .collect::<Result<_, ConsoleError>>()?;
        let discovery = cfg.worker_discovery.iter().map(|u| Discovery::parse(u)).collect::<Result<_, _>>()?;
        Ok(Self {
            discovery,
            found: Arc::default(),
            call_timeout: cfg.call_timeout,
            manager: channel("manager_endpoint", &cfg.manager_endpoint)?,
            events: channel("events_endpoint", &cfg.events_endpoint)?,
            scheduler: channel("scheduler_endpoint", &cfg.scheduler_endpoint)?,
            memory: channel("memory_endpoint", &cfg.memory_endpoint)?,
            workers,
            client,
        })
    }

    fn wrap(&self, channel: &Channel, credential: Option<&str>) -> CallChannel {
        let options = ClientOptions { api_key: credential.unwrap_or_default().to_owned(), ..self.client.clone() };
        options.wrap(channel.clone())
    }

    /// The manager, as the session's user.
    pub fn manager(&self, s: &Session) -> ManagerServiceClient<CallChannel> {
        ManagerServiceClient::new(self.wrap(&self.manager, s.credential.as_deref()))
    }

    /// The event service, as the session's user. Subscriptions are long: no call timeout
    /// applies to the stream itself, only to connecting.
    pub fn events(&self, s: &Session) -> EventServiceClient<CallChannel> {
        EventServiceClient::new(self.wrap(&self.events, s.credential.as_deref()))
    }

    /// The scheduler, as the session's user.
    pub fn scheduler(&self, s: &Session) -> SchedulerServiceClient<CallChannel> {
        SchedulerServiceClient::new(self.wrap(&self.scheduler, s.credential.as_deref()))
    }

    /// The memory service, as the session's user.
    pub fn memory(&self, s: &Session) -> MemoryServiceClient<CallChannel> {
        MemoryServiceClient::new(self.wrap(&self.memory, s.credential.as_deref()))
    }

    /// Each configured worker and each address the discovery names resolve to now, as the
    /// session's user.
    pub async fn workers(&self, s: &Session) -> Vec<WorkerClient> {
        let client = |ch: &Channel| WorkerServiceClient::new(self.wrap(ch, s.credential.as_deref()));
        let mut out: Vec<WorkerClient> = self.workers.iter().map(|(uri, ch)| (uri.clone(), Ok(client(ch)))).collect();
        let resolved = futures::future::join_all(self.discovery.iter().map(|d| async move {
            let lookup = tokio::net::lookup_host((d.host.as_str(), d.port));
            let addrs = match tokio::time::timeout(self.call_timeout, lookup).await {
                Ok(Ok(addrs)) => Ok(addrs.collect::<std::collections::BTreeSet<_>>()),
                Ok(Err(e)) => Err(format!("resolving {}: {e}", d.host)),
                Err(_) => Err(format!("resolving {} took too long", d.host)),
            };
            (d, addrs)
        }))
        .await;
        let mut found = self.found.lock().unwrap_or_else(PoisonError::into_inner);
        let mut current = std::collections::HashSet::new();
        for (d, addrs) in resolved {
            let addrs = match addrs {
                Ok(a) => a,
                Err(e) => {
                    out.push((d.uri.clone(), Err(e)));
                    continue;
                }
            };
            for addr in addrs {
                let uri = format!("{}://{addr}", d.scheme);
                let label = format!("{} → {addr}", d.uri);
                let channel = match found.get(&uri) {
                    Some(ch) => Ok(ch.clone()),
                    None => self.discovered_channel(d, &uri),
                };
                if let Ok(ch) = &channel {
                    found.insert(uri.clone(), ch.clone());
                }
                current.insert(uri);
                out.push((label, channel.map(|ch| client(&ch))));
            }
        }
        found.retain(|uri, _| current.contains(uri));
        out
    }

    /// A channel to address `uri` found for `d`: TLS still verifies the certificate for the
    /// name (unless `[tls] server_name` says which name to verify).
    fn discovered_channel(&self, d: &Discovery, uri: &str) -> Result<Channel, String> {
        let mut options = self.client.clone();
        if options.tls.server_name.is_empty() {
            options.tls.server_name = d.host.clone();
        }
        let endpoint = options.endpoint("worker_discovery", uri).map_err(|e| e.to_string())?;
        Ok(endpoint.timeout(self.call_timeout).connect_lazy())
    }

    /// The manager's auth service with `credential` (signing in).
    pub fn auth(&self, credential: Option<&str>) -> AuthServiceClient<CallChannel> {
        AuthServiceClient::new(self.wrap(&self.manager, credential))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(discovery: &[&str]) -> Backends {
        let cfg = ConsoleConfig {
            worker_discovery: discovery.iter().map(|s| (*s).to_owned()).collect(),
            call_timeout: Duration::from_secs(5),
            ..ConsoleConfig::default()
        };
        Backends::new(&cfg).unwrap()
    }

    #[test]
    fn discovery_names_are_checked() {
        for bad in ["worker:50053", "ftp://worker:21", "https://:50053", "not a uri"] {
            let Err(e) = Backends::new(&ConsoleConfig { worker_discovery: vec![bad.into()], ..Default::default() })
            else {
                panic!("{bad} accepted")
            };
            assert!(e.to_string().starts_with("worker_discovery: "), "{e}");
        }
        let d = Discovery::parse("https://workers.nightshift.svc").unwrap();
        assert_eq!((d.scheme.as_str(), d.host.as_str(), d.port), ("https", "workers.nightshift.svc", 443));
    }

    #[tokio::test]
    async fn each_address_of_a_name_is_a_worker_and_an_unknown_name_says_so() {
        let b = backends(&["http://127.0.0.1:50053", "http://no-such-worker.invalid:50053"]);
        let s = crate::session::Sessions::new(Duration::from_secs(60), 10).create(
            None,
            "anonymous".into(),
            nightshift_core::auth::Role::Admin,
            "*".into(),
        );
        let found = b.workers(&s).await;
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].0, "http://127.0.0.1:50053 → 127.0.0.1:50053");
        assert!(found[0].1.is_ok());
        assert_eq!(found[1].0, "http://no-such-worker.invalid:50053");
        assert!(found[1].1.as_ref().err().is_some_and(|e| e.starts_with("resolving no-such-worker.invalid")));
        // The channel to an address is kept from one visit to the next.
        assert_eq!(b.found.lock().unwrap().len(), 1);
        b.workers(&s).await;
        assert_eq!(b.found.lock().unwrap().len(), 1);
    }
}
