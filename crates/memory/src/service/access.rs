//! Which memory a caller may touch. The memory service does not trust the `agent_id` of a
//! scope: a worker names the run it holds (headers [`RUN_HEADER`] and [`LEASE_HEADER`]) and may
//! touch that run's agent's memory only; an operator may touch the memory of agents in its
//! namespaces. The manager vouches for both ([`MemoryAuthority`]); its answers are cached
//! briefly, so a run's memory calls cost one round trip, not one each. The rule itself is
//! [`MemoryGrant::permits`] in core.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nightshift_core::auth::{Principal, Role};
use nightshift_core::namespace::MemoryGrant;
use nightshift_core::{Namespace, Namespaces, pb};
use nightshift_rpc::{LEASE_HEADER, MemoryAuthority, RUN_HEADER};
use tonic::{Request, Status};

/// How long the manager's answer is reused.
const GRANT_CACHE: Duration = Duration::from_secs(2);
/// Most answers kept (the cache is cleared when full: it only saves round trips).
const MAX_GRANTS: usize = 10_000;

type GrantKey = (String, String, String);

/// The memory service's access check.
#[derive(Clone, Default)]
pub(crate) struct Access {
    authority: Option<Arc<dyn MemoryAuthority>>,
    grants: Arc<Mutex<HashMap<GrantKey, (Instant, MemoryGrant)>>>,
}

fn denied(why: impl Into<String>) -> Status {
    Status::permission_denied(why.into())
}

fn header<'a, T>(req: &'a Request<T>, name: &str) -> Option<&'a str> {
    req.metadata().get(name).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty())
}

impl Access {
    /// Checked against `authority` (`None`: calls that need a check are refused).
    pub(crate) fn new(authority: Option<Arc<dyn MemoryAuthority>>) -> Self {
        Self { authority, grants: Arc::default() }
    }

    /// Whether the caller of `req` may touch every one of `scopes` (none: the whole store, for
    /// Stats without a scope). A server without authentication puts no principal on requests:
    /// nothing is checked there.
    pub(crate) async fn check<T>(&self, req: &Request<T>, scopes: &[&pb::MemoryScope]) -> Result<(), Status> {
        let Some(principal) = req.extensions().get::<Principal>() else { return Ok(()) };
        if matches!(principal.role, Role::Admin | Role::Service) && principal.namespaces == Namespaces::All {
            return Ok(());
        }
        if scopes.is_empty() {
            return Err(denied("name a scope: totals over every agent are for callers holding every namespace"));
        }
        if principal.role == Role::Worker {
            let (Some(run), Some(token)) = (header(req, RUN_HEADER), header(req, LEASE_HEADER)) else {
                return Err(denied(format!(
                    "a worker's memory calls name the run it holds ({RUN_HEADER}, {LEASE_HEADER})"
                )));
            };
            let grant = self.grant("", run, token).await?;
            for s in scopes {
                grant.permits(&s.agent_id, &s.session).map_err(denied)?;
            }
            return Ok(());
        }
        for s in scopes {
            if s.agent_id.is_empty() {
                return Err(denied("scope.agent_id: name the agent whose memory this is"));
            }
            let grant = self.grant(&s.agent_id, "", "").await?;
            if !principal.namespaces.contains(&grant.namespace) {
                return Err(Status::not_found(format!("agent {} not found", s.agent_id)));
            }
            grant.permits(&s.agent_id, &s.session).map_err(denied)?;
        }
        Ok(())
    }

    /// What the manager says the holder of (`agent_id`) or (`run_id`, `lease_token`) may touch.
    async fn grant(&self, agent_id: &str, run_id: &str, lease_token: &str) -> Result<MemoryGrant, Status> {
        let key = (agent_id.to_owned(), run_id.to_owned(), lease_token.to_owned());
        if let Some((at, grant)) = self.grants.lock().unwrap_or_else(|e| e.into_inner()).get(&key)
            && at.elapsed() < GRANT_CACHE
        {
            return Ok(grant.clone());
        }
        let Some(authority) = &self.authority else {
            return Err(Status::failed_precondition(
                "memory access cannot be checked: this memory service has no auth.verify_endpoint (the manager)",
            ));
        };
        let request = pb::AuthorizeMemoryRequest {
            agent_id: agent_id.to_owned(),
            run_id: run_id.to_owned(),
            lease_token: lease_token.to_owned(),
        };
        let answer = authority.authorize(request).await?;
        let grant = MemoryGrant {
            agent_id: answer.agent_id,
            namespace: Namespace::from_stored(answer.namespace),
            fixed_session: Some(answer.fixed_session).filter(|s| !s.is_empty()),
            run_id: Some(run_id.to_owned()).filter(|r| !r.is_empty()),
        };
        let mut grants = self.grants.lock().unwrap_or_else(|e| e.into_inner());
        if grants.len() >= MAX_GRANTS {
            grants.clear();
        }
        grants.insert(key, (Instant::now(), grant.clone()));
        Ok(grant)
    }
}
