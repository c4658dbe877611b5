//! Calls between roles served by one process (`nightshift dev`), without the network.
//!
//! The roles of `nightshift dev` call each other as they do across processes — through their
//! generated gRPC clients, with the caller's credential, through the server's auth and metrics
//! layers to the same routes — but a call to the process's own endpoint is handed to the
//! server's service stack directly instead of going through HTTP/2 framing, a loopback TCP
//! connection and the tasks on both of its ends. Each run makes about eight such calls; over
//! loopback their transport took ≈ 15 % of the process's CPU (docs/benchmarks.md).
//!
//! What a call skips is only what no in-process call can need: TLS (both ends are this
//! process) and the connection itself. A call made before the server serves waits for it (as a
//! connection to a bound port would); a call after it stopped fails UNAVAILABLE.
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{Service, StdError, http};

/// The answer to one in-process call.
type CallFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

/// The server's service stack, as a function of a request.
#[derive(Clone)]
struct Stack(Arc<dyn Fn(http::Request<Body>) -> CallFuture + Send + Sync>);

/// Where the server stands, as in-process callers see it.
#[derive(Clone)]
enum State {
    /// Not serving yet: calls wait.
    Starting,
    Serving(Stack),
    /// Stopped: calls fail UNAVAILABLE.
    Stopped,
}

struct Link {
    /// The endpoint this link stands for (`http://ADDR` of the process's own port).
    endpoint: String,
    state: watch::Sender<State>,
}

/// The in-process route to this process's own server, shared by its server ([`crate::Listener`])
/// and its clients ([`crate::ClientOptions`]); the default routes nothing in-process.
#[derive(Clone, Default)]
pub struct InProcess(Option<Arc<Link>>);

impl InProcess {
    /// Calls to `endpoint` (as the roles' options name it) go to the server this link is given
    /// to ([`crate::Listener::with_in_process`]).
    pub fn to(endpoint: &str) -> Self {
        let (state, _) = watch::channel(State::Starting);
        Self(Some(Arc::new(Link { endpoint: endpoint.to_owned(), state })))
    }

    /// A transport for calls to `uri` if it is this link's endpoint; each call may take at most
    /// `timeout`.
    pub(crate) fn call_to(&self, uri: &str, timeout: Option<Duration>) -> Option<InProcessCall> {
        let link = self.0.as_ref().filter(|l| l.endpoint == uri)?;
        Some(InProcessCall { state: link.state.subscribe(), timeout })
    }

    /// Serves the link's calls with `stack` (the server's routes inside its layers).
    pub(crate) fn serve<S>(&self, stack: S)
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let Some(link) = &self.0 else { return };
        let stack = Stack(Arc::new(move |req| {
            let mut stack = stack.clone();
            Box::pin(async move {
                std::future::poll_fn(|cx| stack.poll_ready(cx)).await?;
                stack.call(req).await
            })
        }));
        link.state.send_replace(State::Serving(stack));
    }

    /// The server stopped: later calls fail.
    pub(crate) fn stop(&self) {
        if let Some(link) = &self.0 {
            link.state.send_replace(State::Stopped);
        }
    }
}

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(link) => write!(f, "InProcess({})", link.endpoint),
            None => f.write_str("InProcess(none)"),
        }
    }
}

/// Two options are equal when they route the same link (or none).
impl PartialEq for InProcess {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
}

impl Eq for InProcess {}

/// One client's in-process route (see [`crate::client::Transport`]).
#[derive(Clone)]
pub struct InProcessCall {
    state: watch::Receiver<State>,
    timeout: Option<Duration>,
}

impl std::fmt::Debug for InProcessCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessCall").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl InProcessCall {
    /// Runs `req` through the server's stack, within the call's timeout (which, as a channel's,
    /// also bounds the wait for the server to start).
    pub(crate) fn call(
        &self,
        req: http::Request<Body>,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<Body>, StdError>> + Send>> {
        let (mut state, timeout) = (self.state.clone(), self.timeout);
        let span = crate::trace::server_span(&req);
        let call = async move {
            let stack = match &*state.wait_for(|s| !matches!(s, State::Starting)).await.map_err(|_| stopped())? {
                State::Serving(stack) => stack.clone(),
                State::Starting | State::Stopped => return Err(stopped()),
            };
            Ok::<_, StdError>(match (stack.0)(req).await {
                Ok(response) => response,
                Err(never) => match never {},
            })
        };
        let call = tracing::Instrument::instrument(call, span);
        Box::pin(async move {
            match timeout {
                Some(t) => tokio::time::timeout(t, call)
                    .await
                    .unwrap_or_else(|_| Err(Box::new(Status::deadline_exceeded("in-process call timed out")))),
                None => call.await,
            }
        })
    }
}

/// The error of a call to a server that stopped.
fn stopped() -> StdError {
    Box::new(Status::unavailable("the server in this process has stopped"))
}
