//! What the operator lets agents make a worker do — the programs stdio MCP servers may run, the
//! environment variables `env:NAME` may read, the private addresses a model or MCP server may
//! be reached at — and the pure checks of an agent spec against it. The manager runs the checks
//! when an agent is applied (the author gets INVALID_ARGUMENT naming the field); the worker runs
//! them again before each attempt (a spec forced into the store gets no further), and checks
//! every address its HTTP clients connect to after DNS resolution (`nightshift-egress`).
use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::namespace::Namespace;
use crate::spec::{AgentSpec, ConfigValue, McpTransport, SecretRef};

/// The `[allow]` section of a worker (and the manager's `[worker_allow]`, which must match the
/// workers').
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OperatorPolicy {
    /// Programs stdio MCP servers may run, exactly as agents write `command` (`npx`,
    /// `/opt/mcp/bin/github-mcp`). Empty: no stdio MCP server. `"*"`: any program (only for a
    /// machine where every agent author is trusted with a shell).
    pub mcp_commands: Vec<String>,
    /// Environment variables `env:NAME` may name (model API keys, MCP `env` values); a trailing
    /// `*` matches a prefix (`OPENAI_*`). Empty: none. `"*"`: any.
    pub secrets: Vec<String>,
    /// Per namespace, the environment variables its agents may name instead of `secrets`
    /// (`team-a = ["TEAM_A_*"]`), so that one tenant cannot spend another's provider keys.
    /// A namespace without an entry uses `secrets`.
    pub namespace_secrets: BTreeMap<String, Vec<String>>,
    /// Private, loopback, link-local (cloud metadata) and other non-public addresses are refused
    /// for model `base_url` and MCP `url`; these CIDRs (`10.2.0.0/16`, `127.0.0.1/32`) and host
    /// names (`llm.internal`) are let through. Checked after DNS resolution.
    pub private_egress: Vec<String>,
}

/// One thing a spec asks for that the policy does not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The spec field (`tools.mcp[0].command`).
    pub field: String,
    /// Why, without echoing secret values.
    pub message: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Whether `value` is one of `patterns`, where a trailing `*` matches a prefix (`*` alone: all).
fn matches(patterns: &[String], value: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => p == value,
    })
}

/// Why an address is not public, if it is not.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_link_local() {
                Some("link-local (cloud metadata)")
            } else if v4.is_private() {
                Some("private")
            } else if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() || a == 0 {
                Some("not a unicast address")
            } else if a == 100 && (64..128).contains(&b) {
                Some("shared (CGNAT)")
            } else if a >= 240 {
                Some("reserved")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return non_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() || v6.is_multicast() {
                Some("not a unicast address")
            } else if first & 0xfe00 == 0xfc00 {
                Some("private (unique local)")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else {
                None
            }
        }
    }
}

/// Whether `ip` falls in `cidr` (`10.0.0.0/8`, `::1/128`, or a bare address).
fn in_cidr(ip: IpAddr, cidr: &str) -> bool {
    let (net, len) = cidr.split_once('/').unwrap_or((cidr, ""));
    let Ok(net) = net.parse::<IpAddr>() else { return false };
    let bits = |ip: IpAddr| -> (u128, u32) {
        match ip {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        }
    };
    let ((n, width), (i, iw)) = (bits(net), bits(ip));
    if width != iw {
        return false;
    }
    let len: u32 = if len.is_empty() { width } else { len.parse().unwrap_or(u32::MAX) };
    if len > width {
        return false;
    }
    let shift = width - len;
    let mask = if shift >= 128 { 0 } else { (u128::MAX >> (128 - width)) >> shift << shift };
    n & mask == i & mask
}

impl OperatorPolicy {
    /// Everything allowed: for tests and a single-user machine (`nightshift dev` on loopback
    /// without authentication, where the person at the keyboard is the operator).
    pub fn trusting() -> Self {
        Self {
            mcp_commands: vec!["*".into()],
            secrets: vec!["*".into()],
            namespace_secrets: BTreeMap::new(),
            private_egress: vec!["*".into()],
        }
    }

    /// Whether `host` (a name) is let through whatever it resolves to.
    pub fn allows_host(&self, host: &str) -> bool {
        self.private_egress.iter().any(|p| p == "*" || p.eq_ignore_ascii_case(host))
    }

    /// Refuses a connection to `ip` (reached as `host`) unless it is public or allowed.
    pub fn check_address(&self, host: &str, ip: IpAddr) -> Result<(), String> {
        let Some(why) = non_public(ip) else { return Ok(()) };
        if self.allows_host(host) || self.private_egress.iter().any(|c| in_cidr(ip, c)) {
            return Ok(());
        }
        Err(format!("{host} resolves to {ip}, a {why} address the worker may not reach (allow.private_egress)"))
    }

    fn check_secret(&self, namespace: &Namespace, field: &str, secret: &SecretRef, out: &mut Vec<Refusal>) {
        let SecretRef::Env(name) = secret;
        let (allowed, option) = match self.namespace_secrets.get(namespace.as_str()) {
            Some(own) => (own, format!("allow.namespace_secrets.{namespace}")),
            None => (&self.secrets, "allow.secrets".to_owned()),
        };
        if !matches(allowed, name) {
            out.push(Refusal {
                field: field.to_owned(),
                message: format!(
                    "env:{name} is not a secret this deployment lets agents of namespace {namespace} use ({option})"
                ),
            });
        }
    }

    /// Everything `spec` asks for that this policy refuses, checked without the network (the
    /// hosts of URLs are checked when they are resolved).
    pub fn refusals(&self, spec: &AgentSpec) -> Vec<Refusal> {
        let mut out = Vec::new();
        let ns = &spec.namespace;
        if let Some(key) = &spec.model.api_key {
            self.check_secret(ns, "model.api_key", key, &mut out);
        }
        for (i, server) in spec.tools.mcp.iter().enumerate() {
            let f = format!("tools.mcp[{i}]");
            match &server.transport {
                McpTransport::Stdio { command, env, .. } => {
                    // Exact names only (or "*"): a prefix such as `/opt/mcp/` would admit
                    // `/opt/mcp/../../bin/sh`.
                    if !self.mcp_commands.iter().any(|c| c == "*" || c == command) {
                        out.push(Refusal {
                            field: format!("{f}.command"),
                            message: format!(
                                "'{command}' is not a program this deployment lets MCP servers run (allow.mcp_commands)"
                            ),
                        });
                    }
                    for (name, value) in env {
                        if let ConfigValue::Secret(secret) = value {
                            self.check_secret(ns, &format!("{f}.env.{name}"), secret, &mut out);
                        }
                    }
                }
                McpTransport::Http { headers, .. } => {
                    for (name, value) in headers {
                        if let ConfigValue::Secret(secret) = value {
                            self.check_secret(ns, &format!("{f}.headers.{name}"), secret, &mut out);
                        }
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_public_addresses_are_named() {
        for (ip, why) in [
            ("127.0.0.1", "loopback"),
            ("169.254.169.254", "link-local (cloud metadata)"),
            ("10.0.0.1", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "shared (CGNAT)"),
            ("0.0.0.0", "not a unicast address"),
            ("::1", "loopback"),
            ("fd00::1", "private (unique local)"),
            ("fe80::1", "link-local"),
            ("::ffff:10.0.0.1", "private"),
        ] {
            assert_eq!(non_public(ip.parse().unwrap()), Some(why), "{ip}");
        }
        assert_eq!(non_public("8.8.8.8".parse().unwrap()), None);
        assert_eq!(non_public("2606:4700::1111".parse().unwrap()), None);
    }

    #[test]
    fn allowed_ranges_and_names_let_private_addresses_through() {
        let p =
            OperatorPolicy { private_egress: vec!["127.0.0.0/8".into(), "llm.internal".into()], ..Default::default() };
        assert!(p.check_address("localhost", "127.0.0.1".parse().unwrap()).is_ok());
        assert!(p.check_address("llm.internal", "10.9.9.9".parse().unwrap()).is_ok());
        let err = p.check_address("evil.example", "169.254.169.254".parse().unwrap()).unwrap_err();
        assert!(err.contains("link-local"), "{err}");
        assert!(p.check_address("x", "10.0.0.1".parse().unwrap()).is_err());
        assert!(OperatorPolicy::default().check_address("x", "127.0.0.1".parse().unwrap()).is_err());
        assert!(in_cidr("10.1.2.3".parse().unwrap(), "10.0.0.0/8"));
        assert!(!in_cidr("11.1.2.3".parse().unwrap(), "10.0.0.0/8"));
        assert!(in_cidr("::1".parse().unwrap(), "::1/128"));
        assert!(!in_cidr("::1".parse().unwrap(), "127.0.0.1/32"));
    }

    #[test]
    fn commands_and_secrets_are_checked_against_the_lists() {
        let yaml = "name: x\nmodel: {provider: openai, model: m, api_key: env:AWS_SECRET_ACCESS_KEY}\n\
                    task: {query: q}\nschedule: {interval: 1h}\n\
                    tools: {mcp: [{name: sh, command: bash, args: ['-c', 'id'], env: {T: env:GITHUB_TOKEN}}]}";
        let spec = crate::AgentManifest::from_yaml(yaml).unwrap().validate().unwrap();
        let strict = OperatorPolicy { secrets: vec!["OPENAI_*".into()], ..Default::default() };
        let fields: Vec<String> = strict.refusals(&spec).into_iter().map(|r| r.field).collect();
        assert_eq!(fields, ["model.api_key", "tools.mcp[0].command", "tools.mcp[0].env.T"]);
        let prefix = OperatorPolicy { mcp_commands: vec!["ba*".into()], ..OperatorPolicy::trusting() };
        assert_eq!(prefix.refusals(&spec).len(), 1, "commands match exactly, never by prefix");
        let open = OperatorPolicy {
            mcp_commands: vec!["bash".into()],
            secrets: vec!["AWS_*".into(), "GITHUB_TOKEN".into()],
            ..Default::default()
        };
        assert!(open.refusals(&spec).is_empty());
        assert!(OperatorPolicy::trusting().refusals(&spec).is_empty());
    }

    #[test]
    fn a_namespace_with_its_own_secrets_uses_only_those() {
        let yaml = |ns: &str, key: &str| {
            let text = format!(
                "namespace: {ns}\nname: x\nmodel: {{provider: openai, model: m, api_key: env:{key}}}\n\
                 task: {{query: q}}\nschedule: {{interval: 1h}}"
            );
            crate::AgentManifest::from_yaml(&text).unwrap().validate().unwrap()
        };
        let p = OperatorPolicy {
            secrets: vec!["OPENAI_API_KEY".into()],
            namespace_secrets: BTreeMap::from([("team-a".into(), vec!["TEAM_A_*".into()])]),
            ..Default::default()
        };
        assert!(p.refusals(&yaml("team-a", "TEAM_A_OPENAI")).is_empty());
        let shared = p.refusals(&yaml("team-a", "OPENAI_API_KEY"));
        assert!(shared[0].message.contains("allow.namespace_secrets.team-a"), "{shared:?}");
        assert!(p.refusals(&yaml("team-b", "OPENAI_API_KEY")).is_empty(), "no entry: the shared list");
        assert_eq!(p.refusals(&yaml("team-b", "TEAM_A_OPENAI")).len(), 1, "another tenant's key");
    }
}
