//! Who may call what: roles, the permissions they hold, and the one table that maps every RPC
//! of the five services to the permission it needs. Pure values and functions; the gRPC layer in
//! `nightshift-rpc` enforces them on every call.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::namespace::Namespaces;

/// What a credential is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, including credentials.
    Admin,
    /// Writes agents and controls their runs (trigger, pause, resume, cancel); reads everything
    /// an operator needs.
    Operator,
    /// Reads agents, runs, events, memory and the state of workers and schedulers.
    Viewer,
    /// A worker process: starts, heartbeats, checkpoints and finishes the runs it is handed,
    /// publishes their events and uses the memory of the agents it runs.
    Worker,
    /// A service process (manager, scheduler, memory, events): keeps schedules in sync,
    /// publishes events, verifies the credentials callers present to it.
    Service,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 5] = [Role::Admin, Role::Operator, Role::Viewer, Role::Worker, Role::Service];

    /// The role's name (`admin`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Worker => "worker",
            Role::Service => "service",
        }
    }

    /// Whether the role holds `permission`.
    pub fn allows(self, permission: Permission) -> bool {
        use Permission::*;
        match permission {
            Public => true,
            Read => matches!(self, Role::Admin | Role::Operator | Role::Viewer),
            Write | Control | Approve => matches!(self, Role::Admin | Role::Operator),
            Execute => matches!(self, Role::Admin | Role::Worker),
            Publish => matches!(self, Role::Admin | Role::Worker | Role::Service),
            AgentMemory => matches!(self, Role::Admin | Role::Operator | Role::Worker | Role::Service),
            Sync => matches!(self, Role::Admin | Role::Service),
            Verify => matches!(self, Role::Admin | Role::Worker | Role::Service),
            Manage => matches!(self, Role::Admin),
            Identify => true,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role '{s}' (admin, operator, viewer, worker or service)"))
    }
}

/// What an RPC needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// No credential: health checks and server reflection (probes and grpcurl discovery).
    Public,
    /// Read agents, runs, events, schedules, memory, worker status.
    Read,
    /// Create, change and delete agents.
    Write,
    /// Trigger, pause, resume, cancel; drain a worker.
    Control,
    /// Approve or deny a tool call a run waits on.
    Approve,
    /// The run lifecycle of a worker: StartRun, Heartbeat, Checkpoint, FinishRun, RequestApproval.
    Execute,
    /// Publish events.
    Publish,
    /// Store, recall and compact an agent's memory.
    AgentMemory,
    /// Keep schedules in sync (the manager telling the scheduler of a change, the scheduler
    /// recording a tick's run).
    Sync,
    /// Verify a credential another caller presented (a process without the database asks the
    /// manager).
    Verify,
    /// Create, list and revoke credentials.
    Manage,
    /// Ask who one's own credential is.
    Identify,
}

impl Permission {
    /// Whether a call needing this permission changes state (and is audited).
    pub fn mutates(self) -> bool {
        matches!(self, Permission::Write | Permission::Control | Permission::Approve | Permission::Manage)
    }
}

/// The permission every RPC needs, by its gRPC path (`/package.Service/Method`). `None` for a
/// path not in the table: the server refuses such a call (a new RPC without an entry fails
/// closed, and a test walks the compiled descriptor set so that none is missing).
pub fn permission_for(path: &str) -> Option<Permission> {
    use Permission::*;
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    Some(match (service, method) {
        ("grpc.health.v1.Health", _)
        | ("grpc.reflection.v1.ServerReflection", _)
        | ("grpc.reflection.v1alpha.ServerReflection", _) => Public,
        ("nightshift.v1.ManagerService", m) => match m {
            "CreateAgent" | "ApplyAgent" | "UpdateAgent" | "DeleteAgent" => Write,
            "GetAgent" | "ListAgents" | "GetAgentStatus" | "ListAgentVersions" | "ListRuns" | "GetRun" | "WatchRun"
            | "ListApprovals" | "GetCosts" => Read,
            "ApproveToolCall" | "DenyToolCall" => Approve,
            "PauseAgent" | "ResumeAgent" | "TriggerAgent" | "CancelRun" | "ReplayRun" => Control,
            "EnqueueRun" => Sync,
            "StartRun" | "Heartbeat" | "Checkpoint" | "FinishRun" | "RequestApproval" => Execute,
            _ => return None,
        },
        ("nightshift.v1.SchedulerService", m) => match m {
            "UpsertSchedule" | "RemoveSchedule" | "PauseSchedule" | "ResumeSchedule" => Sync,
            "GetSchedule" | "ListSchedules" | "GetSchedulerStatus" => Read,
            _ => return None,
        },
        ("nightshift.v1.WorkerService", m) => match m {
            "GetWorkerStatus" => Read,
            "Drain" => Control,
            // The manager forwarding a cancellation to the worker that holds the run, and
            // relaying its LLM text to WatchRun.
            "CancelRun" | "WatchRunDeltas" => Sync,
            _ => return None,
        },
        (
            "nightshift.v1.MemoryService",
            "Store" | "Recall" | "Search" | "RecallForRun" | "Summarize" | "Forget" | "Stats",
        ) => AgentMemory,
        ("nightshift.v1.EventService", m) => match m {
            "Publish" | "PublishStream" => Publish,
            "Subscribe" | "ListEvents" => Read,
            _ => return None,
        },
        ("nightshift.v1.AuthService", m) => match m {
            "CreateApiKey" | "ListApiKeys" | "RevokeApiKey" => Manage,
            "VerifyCredential" | "AuthorizeMemory" => Verify,
            "WhoAmI" => Identify,
            _ => return None,
        },
        _ => return None,
    })
}

/// The SHA-256 of a credential, as hex: how keys are stored and compared (API keys carry 256
/// random bits, so a fast hash is enough: there is nothing to brute-force).
pub fn secret_hash(secret: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Equal without an early exit, so that the time taken does not tell how much of a secret
/// matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who is calling: the identity behind a verified credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The key's name or the token's subject, for audit.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Where it may do it.
    pub namespaces: Namespaces,
}

impl Principal {
    /// A principal of `role` in every namespace (static keys of admins, services, workers).
    pub fn everywhere(name: impl Into<String>, role: Role) -> Self {
        Self { name: name.into(), role, namespaces: Namespaces::All }
    }

    /// The caller of a server that runs without authentication (`nightshift dev` on loopback):
    /// everything is allowed, and audit names it so.
    pub fn unauthenticated() -> Self {
        Self::everywhere("anonymous (auth off)", Role::Admin)
    }
}

/// The namespaces a credential of `role` holds when its issuer named none: admins, workers
/// and services act everywhere (they run the deployment); operators and viewers only in
/// `default`, so that forgetting to scope a person's key never grants every tenant.
pub fn default_namespaces(role: Role) -> Namespaces {
    match role {
        Role::Admin | Role::Worker | Role::Service => Namespaces::All,
        Role::Operator | Role::Viewer => Namespaces::default_only(),
    }
}

/// The namespaces a credential of `role` may be given: an admin's are always all (it manages
/// credentials, so a narrower admin would be a fiction).
pub fn check_namespaces(role: Role, namespaces: &Namespaces) -> Result<(), String> {
    if role == Role::Admin && *namespaces != Namespaces::All {
        return Err("an admin acts in every namespace; give it no namespaces or '*'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_hold_what_the_security_model_says() {
        use Permission::*;
        let table = [
            (Role::Viewer, vec![Public, Read, Identify]),
            (Role::Operator, vec![Public, Read, Write, Control, AgentMemory, Identify]),
            (Role::Worker, vec![Public, Execute, Publish, AgentMemory, Verify, Identify]),
            (Role::Service, vec![Public, Publish, AgentMemory, Sync, Verify, Identify]),
        ];
        let all = [Public, Read, Write, Control, Execute, Publish, AgentMemory, Sync, Verify, Manage, Identify];
        for (role, held) in table {
            for p in all {
                assert_eq!(role.allows(p), held.contains(&p), "{role} {p:?}");
            }
        }
        assert!(all.iter().all(|p| Role::Admin.allows(*p)));
        assert!(!Role::Worker.allows(Write), "a worker's key must not change agents");
    }

    /// A new RPC without an entry would be refused to everyone (fail closed): this walks the
    /// compiled descriptor set so that the table is completed in the same change.
    #[test]
    fn every_rpc_of_the_descriptor_set_has_a_permission() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(nightshift_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut count = 0;
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    assert!(permission_for(&path).is_some(), "{path} has no entry in the permission table");
                    assert_ne!(permission_for(&path), Some(Permission::Public), "{path} must not be public");
                    count += 1;
                }
            }
        }
        assert!(count >= 40, "the descriptor set holds the services' RPCs: {count}");
    }

    #[test]
    fn unknown_paths_fail_closed() {
        assert_eq!(permission_for("/nightshift.v1.ManagerService/DropEverything"), None);
        assert_eq!(permission_for("/other.Service/Method"), None);
        assert_eq!(permission_for("garbage"), None);
        assert_eq!(permission_for("/nightshift.v1.ManagerService/FinishRun"), Some(Permission::Execute));
    }

    #[test]
    fn roles_parse_from_their_names() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().unwrap_err().contains("unknown role"));
    }
}
