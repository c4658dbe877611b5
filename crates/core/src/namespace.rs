//! Namespaces: the unit of tenancy. Agents belong to one (their runs, events and memory with
//! them); a credential holds a set of them, and every call is confined to that set. The rules
//! here are pure; the manager, the event service and the memory service apply them.
use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;
use crate::ids::AgentName;

/// Most namespaces one credential may name (beyond that, use `*`).
pub const MAX_NAMESPACES: usize = 64;

/// A namespace's name: a DNS label, like an agent's name. `default` always exists.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Namespace(String);

impl Namespace {
    /// The name of the namespace agents land in when none is given.
    pub const DEFAULT: &'static str = "default";

    /// The `default` namespace.
    pub fn default_namespace() -> Self {
        Self(Self::DEFAULT.to_owned())
    }

    /// Validates `s` (same rules as an agent name); `field` names it in the error.
    pub fn parse(field: &str, s: &str) -> Result<Self, ValidationError> {
        AgentName::parse(field, s).map(|n| Self(n.as_str().to_owned()))
    }

    /// Like [`Self::parse`], with "" meaning `default` (proto fields left unset).
    pub fn parse_or_default(field: &str, s: &str) -> Result<Self, ValidationError> {
        if s.is_empty() { Ok(Self::default_namespace()) } else { Self::parse(field, s) }
    }

    /// Wraps a name read from the store (checked when it was written).
    pub fn from_stored(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is `default`.
    pub fn is_default(&self) -> bool {
        self.0 == Self::DEFAULT
    }
}

impl Default for Namespace {
    fn default() -> Self {
        Self::default_namespace()
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The namespaces a credential may act in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Namespaces {
    /// Every namespace, present and future (`*`): admins, services, workers.
    All,
    /// Only these (possibly none).
    Only(BTreeSet<Namespace>),
}

/// What a call asking for `requested` namespaces may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Visible {
    /// Every namespace: no filter.
    All,
    /// Only these (never empty).
    Only(Vec<Namespace>),
}

impl Namespaces {
    /// The text that means every namespace.
    pub const ALL: &'static str = "*";

    /// Only `default`.
    pub fn default_only() -> Self {
        Self::Only(BTreeSet::from([Namespace::default_namespace()]))
    }

    /// None: a credential that may act in no namespace (it may still call what needs none,
    /// e.g. WhoAmI).
    pub fn none() -> Self {
        Self::Only(BTreeSet::new())
    }

    /// Parses a list of names where `*` means all; `field` names it in errors. An empty list is
    /// an error: the caller decides the default.
    pub fn parse<S: AsRef<str>>(field: &str, items: &[S]) -> Result<Self, ValidationError> {
        if items.is_empty() {
            return Err(ValidationError::new(field, "is empty"));
        }
        if items.len() > MAX_NAMESPACES {
            return Err(ValidationError::new(field, format!("at most {MAX_NAMESPACES} namespaces (or '*')")));
        }
        if items.iter().any(|s| s.as_ref() == Self::ALL) {
            return if items.len() == 1 {
                Ok(Self::All)
            } else {
                Err(ValidationError::new(field, "'*' means every namespace; name no other"))
            };
        }
        items.iter().map(|s| Namespace::parse(field, s.as_ref())).collect::<Result<_, _>>().map(Self::Only)
    }

    /// Whether `ns` is one of them.
    pub fn contains(&self, ns: &Namespace) -> bool {
        match self {
            Self::All => true,
            Self::Only(set) => set.contains(ns),
        }
    }

    /// The list form: `["*"]` or the names.
    pub fn to_strings(&self) -> Vec<String> {
        match self {
            Self::All => vec![Self::ALL.to_owned()],
            Self::Only(set) => set.iter().map(|n| n.to_string()).collect(),
        }
    }

    /// What a list or subscribe call may see: `requested` (empty = every namespace the caller
    /// holds) cut down to the caller's namespaces. Naming a namespace the caller does not hold
    /// is an error (PERMISSION_DENIED), not an empty answer, so that a typo is not mistaken for
    /// an empty namespace.
    pub fn visible(&self, requested: &[Namespace]) -> Result<Visible, NotPermitted> {
        if let Some(denied) = requested.iter().find(|n| !self.contains(n)) {
            return Err(NotPermitted(denied.clone()));
        }
        match (self, requested.is_empty()) {
            (_, false) => Ok(Visible::Only(requested.to_vec())),
            (Self::All, true) => Ok(Visible::All),
            (Self::Only(set), true) if set.is_empty() => Err(NotPermitted(Namespace::default_namespace())),
            (Self::Only(set), true) => Ok(Visible::Only(set.iter().cloned().collect())),
        }
    }
}

impl fmt::Display for Namespaces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_strings().join(","))
    }
}

/// A namespace the caller does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("namespace '{0}' is not one of this credential's namespaces")]
pub struct NotPermitted(pub Namespace);

impl Visible {
    /// Whether an item of namespace `ns` is visible.
    pub fn admits(&self, ns: &Namespace) -> bool {
        match self {
            Self::All => true,
            Self::Only(list) => list.contains(ns),
        }
    }
}

/// The memory session a `fixed:<id>` scope is stored under: `fixed:<id>` in `default` (as
/// before namespaces existed), `fixed:<namespace>/<id>` elsewhere, so that two namespaces that
/// pick the same id never share records.
pub fn fixed_session(namespace: &Namespace, id: &str) -> String {
    if namespace.is_default() { format!("fixed:{id}") } else { format!("fixed:{namespace}/{id}") }
}

/// What a memory call may touch, as the manager vouches for it: the agent (and, for a worker,
/// the one run it holds) and that agent's shared session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryGrant {
    /// The agent whose memory it is.
    pub agent_id: String,
    /// The agent's namespace.
    pub namespace: Namespace,
    /// The agent's `fixed:` session as stored ([`fixed_session`]), if it names one.
    pub fixed_session: Option<String>,
    /// For a worker: the run it holds (working memory of other runs is out of reach).
    pub run_id: Option<String>,
}

impl MemoryGrant {
    /// Whether a memory call on scope (`agent_id`, `session`) stays within the grant.
    pub fn permits(&self, agent_id: &str, session: &str) -> Result<(), String> {
        if let Some(id) = session.strip_prefix("fixed:") {
            return if self.fixed_session.as_deref() == Some(session) {
                Ok(())
            } else {
                Err(format!("the shared session 'fixed:{id}' is not this agent's"))
            };
        }
        if agent_id != self.agent_id {
            return Err(format!("agent {agent_id} is not the agent of this grant"));
        }
        match (session.strip_prefix("run:"), &self.run_id) {
            (Some(run), Some(held)) if run != held => Err(format!("run {run} is not the run this worker holds")),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(s: &str) -> Namespace {
        Namespace::parse("ns", s).unwrap()
    }

    #[test]
    fn names_follow_the_agent_name_rules() {
        assert_eq!(Namespace::parse_or_default("ns", "").unwrap(), Namespace::default_namespace());
        assert_eq!(ns("team-a").as_str(), "team-a");
        for bad in ["Team", "a b", "-a", "a/b", "*"] {
            assert!(Namespace::parse("ns", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lists_parse_with_star_alone() {
        assert_eq!(Namespaces::parse("n", &["*"]).unwrap(), Namespaces::All);
        assert!(Namespaces::parse("n", &["*", "a"]).is_err());
        assert!(Namespaces::parse::<&str>("n", &[]).is_err());
        let two = Namespaces::parse("n", &["b", "a", "a"]).unwrap();
        assert_eq!(two.to_strings(), ["a", "b"]);
        assert!(two.contains(&ns("a")) && !two.contains(&ns("c")));
    }

    #[test]
    fn visibility_is_cut_to_the_credential() {
        let a = Namespaces::parse("n", &["a"]).unwrap();
        assert_eq!(a.visible(&[]).unwrap(), Visible::Only(vec![ns("a")]));
        assert_eq!(a.visible(&[ns("a")]).unwrap(), Visible::Only(vec![ns("a")]));
        assert_eq!(a.visible(&[ns("b")]).unwrap_err(), NotPermitted(ns("b")));
        assert_eq!(Namespaces::All.visible(&[]).unwrap(), Visible::All);
        assert!(Namespaces::none().visible(&[]).is_err());
        assert!(!Visible::Only(vec![ns("a")]).admits(&ns("b")));
    }

    #[test]
    fn fixed_sessions_are_namespace_local() {
        assert_eq!(fixed_session(&Namespace::default_namespace(), "x"), "fixed:x");
        assert_eq!(fixed_session(&ns("a"), "x"), "fixed:a/x");
    }

    #[test]
    fn grants_confine_memory_to_the_agent_and_the_held_run() {
        let g = MemoryGrant {
            agent_id: "ag1".into(),
            namespace: ns("a"),
            fixed_session: Some("fixed:a/shared".into()),
            run_id: Some("r1".into()),
        };
        assert!(g.permits("ag1", "agent").is_ok());
        assert!(g.permits("ag1", "run:r1").is_ok());
        assert!(g.permits("ag1", "run:r2").is_err(), "another run's working memory");
        assert!(g.permits("ag2", "agent").is_err(), "another agent");
        assert!(g.permits("", "fixed:a/shared").is_ok());
        assert!(g.permits("ag1", "fixed:shared").is_err(), "the default namespace's session of that id");
        assert!(g.permits("ag1", "fixed:b/shared").is_err());
        let operator = MemoryGrant { run_id: None, fixed_session: None, ..g };
        assert!(operator.permits("ag1", "run:r2").is_ok(), "an operator reads any run of its agent");
        assert!(operator.permits("ag1", "fixed:a/shared").is_err());
    }
}
