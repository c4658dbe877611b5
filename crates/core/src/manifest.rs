//! The YAML manifest users write (`examples/agents/*.yaml`), and its conversion to and from the
//! proto [`pb::AgentSpec`].
//!
//! The manifest is deliberately thin: it only parses text (durations, instants, enum spellings)
//! and leaves every rule to [`AgentSpec::from_proto`], so YAML and gRPC clients get the same
//! validation and the same field names in errors.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Errors, ValidationError, ValidationErrors};
use crate::governance::manifest::GovernanceManifest;
use crate::spec::AgentSpec;
use crate::{duration, pb, time};

/// One agent as written in YAML.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentManifest {
    /// The namespace (absent = `default`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Agent name, unique within its namespace.
    #[serde(default)]
    pub name: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Selection labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Model settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelManifest>,
    /// System prompt.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub system_instruction: String,
    /// The task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskManifest>,
    /// When to run (absent = manual only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleManifest>,
    /// Overlap, retries, limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyManifest>,
    /// Tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<ToolsManifest>,
    /// Memory behaviour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryManifest>,
    /// Tool policy: allowed, denied and approval-gated tools, effect classes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub governance: Option<GovernanceManifest>,
    /// Spending limits per run, day and month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<crate::budget::BudgetManifest>,
}

/// A duration as written: `30s`, `5m`, `1h30m`, or a number of seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DurationText {
    /// Seconds.
    Seconds(i64),
    /// Humantime text.
    Text(String),
}

impl DurationText {
    pub(crate) fn to_pb(&self, field: &str) -> Result<prost_types::Duration, ValidationError> {
        match self {
            Self::Seconds(s) => Ok(prost_types::Duration { seconds: *s, nanos: 0 }),
            Self::Text(t) => {
                duration::parse_signed(t).map(duration::to_pb_signed).map_err(|e| ValidationError::new(field, e))
            }
        }
    }

    pub(crate) fn from_pb(d: &prost_types::Duration) -> Self {
        Self::Text(duration::format_pb(d).replace(' ', ""))
    }
}

/// `model:`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    /// `openai` (any OpenAI-compatible server), `anthropic` or `embedded` (in the worker).
    #[serde(default)]
    pub provider: String,
    /// Model name.
    #[serde(default)]
    pub model: String,
    /// API base URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Secret reference, `env:NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Completion token limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Per-call timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<DurationText>,
    /// `native` (default) or `structured`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_mode: Option<String>,
    /// Nucleus sampling threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Sampler seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Stop sequences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
}

/// `task:`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskManifest {
    /// The user message of every run.
    #[serde(default)]
    pub query: String,
}

/// `schedule:` — exactly one of `interval`, `cron`, `once_at`, `manual`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleManifest {
    /// Fixed interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<DurationText>,
    /// Cron expression (5 or 6 fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// IANA time zone of `cron`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// RFC 3339 instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub once_at: Option<String>,
    /// Manual only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual: Option<bool>,
    /// Deterministic jitter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<DurationText>,
    /// RFC 3339 instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<String>,
    /// RFC 3339 instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_at: Option<String>,
    /// `run_once` (default), `skip` or `catch_up`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misfire: Option<String>,
    /// Bound for `catch_up`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_catch_up: Option<u32>,
}

/// `policy:`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyManifest {
    /// `skip` (default), `buffer_one`, `buffer_all`, `cancel_other`, `allow_all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<String>,
    /// Retries after a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Base retry delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_delay: Option<DurationText>,
    /// `fixed` (default), `exponential`, `linear`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
    /// Retry delay cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<DurationText>,
    /// Attempt timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationText>,
    /// LLM turns per attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u32>,
}

/// `tools:` — the tool kinds are `local` and `mcp`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsManifest {
    /// Built-in tools by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local: Vec<String>,
    /// MCP servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mcp: Vec<McpManifest>,
}

/// One MCP server: `command` (+`args`, `env`) for stdio, or `url` (+`headers`) for HTTP.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpManifest {
    /// Server name.
    #[serde(default)]
    pub name: String,
    /// Stdio program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Stdio arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Stdio environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Streamable HTTP endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// HTTP headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Tool call timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_timeout: Option<DurationText>,
}

/// `memory:`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryManifest {
    /// `agent`, `run`, `fixed:<id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Recent records per run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall_recent: Option<u32>,
    /// Semantic hits per run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semantic_top_k: Option<u32>,
    /// Store results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_results: Option<bool>,
}

/// Turns a serde error such as `tools: unknown field `shell`, expected ...` into an error whose
/// field is the path serde reported.
fn yaml_error(e: serde_norway::Error) -> ValidationError {
    let text = e.to_string();
    match text.split_once(": ") {
        Some((path, rest)) if !path.is_empty() && !path.contains(' ') => ValidationError::new(path, rest),
        _ => ValidationError::new("manifest", text),
    }
}

/// Looks an enum spelling up in `(text, value)` pairs.
pub(crate) fn pick<T: Copy + Into<i32>>(
    errs: &mut Errors,
    field: &str,
    v: &Option<String>,
    options: &[(&str, T)],
) -> i32 {
    let Some(v) = v else { return 0 };
    match options.iter().find(|(s, _)| s.eq_ignore_ascii_case(v.trim())) {
        Some((_, t)) => (*t).into(),
        None => {
            let names: Vec<&str> = options.iter().map(|(s, _)| *s).collect();
            errs.push(field, format!("unknown value '{v}' (expected one of: {})", names.join(", ")));
            0
        }
    }
}

pub(crate) fn spelling<T: Copy + PartialEq>(options: &[(&str, T)], v: T) -> Option<String> {
    options.iter().find(|(_, t)| *t == v).map(|(s, _)| (*s).to_owned())
}

const PROVIDERS: &[(&str, pb::ModelProvider)] = &[
    ("openai", pb::ModelProvider::Openai),
    ("anthropic", pb::ModelProvider::Anthropic),
    ("embedded", pb::ModelProvider::Embedded),
];
const TOOL_MODES: &[(&str, pb::ToolCallMode)] =
    &[("native", pb::ToolCallMode::Native), ("structured", pb::ToolCallMode::Structured)];
const MISFIRES: &[(&str, pb::MisfirePolicy)] = &[
    ("run_once", pb::MisfirePolicy::RunOnce),
    ("skip", pb::MisfirePolicy::Skip),
    ("catch_up", pb::MisfirePolicy::CatchUp),
];
const OVERLAPS: &[(&str, pb::OverlapPolicy)] = &[
    ("skip", pb::OverlapPolicy::Skip),
    ("buffer_one", pb::OverlapPolicy::BufferOne),
    ("buffer_all", pb::OverlapPolicy::BufferAll),
    ("cancel_other", pb::OverlapPolicy::CancelOther),
    ("allow_all", pb::OverlapPolicy::AllowAll),
];
const BACKOFFS: &[(&str, pb::BackoffKind)] = &[
    ("fixed", pb::BackoffKind::Fixed),
    ("exponential", pb::BackoffKind::Exponential),
    ("linear", pb::BackoffKind::Linear),
];

impl AgentManifest {
    /// Parses one YAML document.
    pub fn from_yaml(text: &str) -> Result<Self, ValidationErrors> {
        serde_norway::from_str(text).map_err(|e| yaml_error(e).into())
    }

    /// Parses every document of a multi-document YAML stream (`---` separated); empty documents
    /// are ignored.
    pub fn from_yaml_stream(text: &str) -> Result<Vec<Self>, ValidationErrors> {
        let mut out = Vec::new();
        for doc in serde_norway::Deserializer::from_str(text) {
            let value = serde_norway::Value::deserialize(doc).map_err(yaml_error)?;
            if value.is_null() {
                continue;
            }
            out.push(serde_norway::from_value(value).map_err(yaml_error)?);
        }
        Ok(out)
    }

    /// Renders as YAML.
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).unwrap_or_default()
    }

    /// Converts to the proto form. Only text parsing happens here; [`AgentSpec::from_proto`]
    /// applies the rules.
    pub fn to_proto(&self) -> Result<pb::AgentSpec, ValidationErrors> {
        let mut errs = Errors::default();
        let dur = |errs: &mut Errors, field: &str, d: &Option<DurationText>| {
            d.as_ref().and_then(|d| errs.take(d.to_pb(field)))
        };
        let model = self.model.as_ref().map(|m| pb::ModelConfig {
            provider: pick(&mut errs, "model.provider", &Some(m.provider.clone()).filter(|p| !p.is_empty()), PROVIDERS),
            model: m.model.clone(),
            base_url: m.base_url.clone().unwrap_or_default(),
            api_key: m.api_key.clone().unwrap_or_default(),
            temperature: m.temperature,
            max_tokens: m.max_tokens,
            request_timeout: dur(&mut errs, "model.request_timeout", &m.request_timeout),
            tool_call_mode: pick(&mut errs, "model.tool_call_mode", &m.tool_call_mode, TOOL_MODES),
            top_p: m.top_p,
            seed: m.seed,
            stop: m.stop.clone(),
        });
        let schedule = self.schedule.as_ref().map(|s| {
            use pb::schedule_spec::Trigger as T;
            let mut triggers = Vec::new();
            if let Some(i) = &s.interval {
                triggers.push(("interval", errs.take(i.to_pb("schedule.interval")).map(T::Interval)));
            }
            if let Some(c) = &s.cron {
                let cron = pb::CronSchedule { expression: c.clone(), timezone: s.timezone.clone().unwrap_or_default() };
                triggers.push(("cron", Some(T::Cron(cron))));
            } else if s.timezone.is_some() {
                errs.push("schedule.timezone", "only applies to cron schedules");
            }
            if let Some(o) = &s.once_at {
                let at = time::parse_rfc3339(o).map_err(|e| ValidationError::new("schedule.once_at", e));
                triggers.push(("once_at", errs.take(at).map(|t| T::OnceAt(time::to_pb(t)))));
            }
            if let Some(m) = s.manual {
                triggers.push(("manual", Some(T::Manual(m))));
            }
            if triggers.len() > 1 {
                let names: Vec<&str> = triggers.iter().map(|(n, _)| *n).collect();
                errs.push(
                    "schedule",
                    format!("set only one of interval, cron, once_at, manual (got {})", names.join(" and ")),
                );
            }
            let instant = |errs: &mut Errors, field: &str, v: &Option<String>| {
                v.as_ref().and_then(|v| {
                    errs.take(time::parse_rfc3339(v).map_err(|e| ValidationError::new(field, e))).map(time::to_pb)
                })
            };
            pb::ScheduleSpec {
                trigger: triggers.into_iter().next().and_then(|(_, t)| t),
                jitter: dur(&mut errs, "schedule.jitter", &s.jitter),
                start_at: instant(&mut errs, "schedule.start_at", &s.start_at),
                end_at: instant(&mut errs, "schedule.end_at", &s.end_at),
                misfire: pick(&mut errs, "schedule.misfire", &s.misfire, MISFIRES),
                max_catch_up: s.max_catch_up.unwrap_or(0),
            }
        });
        let policy = self.policy.as_ref().map(|p| pb::RunPolicy {
            overlap: pick(&mut errs, "policy.overlap", &p.overlap, OVERLAPS),
            max_retries: p.max_retries,
            retry_delay: dur(&mut errs, "policy.retry_delay", &p.retry_delay),
            backoff: pick(&mut errs, "policy.backoff", &p.backoff, BACKOFFS),
            max_delay: dur(&mut errs, "policy.max_delay", &p.max_delay),
            timeout: dur(&mut errs, "policy.timeout", &p.timeout),
            max_steps: p.max_steps,
        });
        let tools = self.tools.as_ref().map(|t| pb::ToolsSpec {
            local: t.local.clone(),
            mcp: t
                .mcp
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    use pb::mcp_server_spec::Transport;
                    let f = format!("tools.mcp[{i}]");
                    let transport = match (&m.command, &m.url) {
                        (Some(_), Some(_)) => {
                            errs.push(&f, "set either command (stdio) or url (streamable HTTP), not both");
                            None
                        }
                        (Some(c), None) => Some(Transport::Stdio(pb::McpStdio {
                            command: c.clone(),
                            args: m.args.clone(),
                            env: m.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                        })),
                        (None, Some(u)) => Some(Transport::Http(pb::McpHttp {
                            url: u.clone(),
                            headers: m.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                        })),
                        (None, None) => None,
                    };
                    pb::McpServerSpec {
                        name: m.name.clone(),
                        transport,
                        call_timeout: dur(&mut errs, &format!("{f}.call_timeout"), &m.call_timeout),
                    }
                })
                .collect(),
        });
        let memory = self.memory.as_ref().map(|m| pb::MemorySpec {
            session: m.session.clone().unwrap_or_default(),
            recall_recent: m.recall_recent,
            semantic_top_k: m.semantic_top_k,
            store_results: m.store_results,
        });
        let governance = self.governance.as_ref().map(|g| g.to_pb(&mut errs, "governance"));
        let spec = pb::AgentSpec {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            labels: self.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            model,
            system_instruction: self.system_instruction.clone(),
            task: self.task.as_ref().map(|t| pb::TaskSpec { query: t.query.clone() }),
            schedule,
            policy,
            tools,
            memory,
            governance,
            budget: self.budget.as_ref().map(|b| b.to_pb(&mut errs, "budget")),
        };
        errs.finish(|| spec)
    }

    /// Parses and validates: YAML → proto → [`AgentSpec`].
    pub fn validate(&self) -> Result<AgentSpec, ValidationErrors> {
        AgentSpec::from_proto(&self.to_proto()?)
    }

    /// The manifest form of a proto spec (for display; never fails).
    pub fn from_proto(p: &pb::AgentSpec) -> Self {
        let d = |x: &Option<prost_types::Duration>| x.as_ref().map(DurationText::from_pb);
        let ts = |x: &Option<prost_types::Timestamp>| {
            x.as_ref().and_then(time::from_pb).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        };
        use pb::schedule_spec::Trigger as T;
        Self {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            description: p.description.clone(),
            labels: p.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            model: p.model.as_ref().map(|m| ModelManifest {
                provider: spelling(PROVIDERS, m.provider()).unwrap_or_default(),
                model: m.model.clone(),
                base_url: Some(m.base_url.clone()).filter(|s| !s.is_empty()),
                api_key: Some(m.api_key.clone()).filter(|s| !s.is_empty()),
                temperature: m.temperature,
                max_tokens: m.max_tokens,
                request_timeout: d(&m.request_timeout),
                tool_call_mode: spelling(TOOL_MODES, m.tool_call_mode()),
                top_p: m.top_p,
                seed: m.seed,
                stop: m.stop.clone(),
            }),
            system_instruction: p.system_instruction.clone(),
            task: p.task.as_ref().map(|t| TaskManifest { query: t.query.clone() }),
            schedule: p.schedule.as_ref().map(|s| {
                let mut m = ScheduleManifest {
                    jitter: d(&s.jitter),
                    start_at: ts(&s.start_at),
                    end_at: ts(&s.end_at),
                    misfire: spelling(MISFIRES, s.misfire()),
                    max_catch_up: Some(s.max_catch_up).filter(|n| *n > 0),
                    ..Default::default()
                };
                match &s.trigger {
                    Some(T::Interval(i)) => m.interval = Some(DurationText::from_pb(i)),
                    Some(T::Cron(c)) => {
                        m.cron = Some(c.expression.clone());
                        m.timezone = Some(c.timezone.clone()).filter(|t| !t.is_empty());
                    }
                    Some(T::OnceAt(t)) => m.once_at = ts(&Some(*t)),
                    Some(T::Manual(b)) => m.manual = Some(*b),
                    None => {}
                }
                m
            }),
            policy: p.policy.as_ref().map(|p| PolicyManifest {
                overlap: spelling(OVERLAPS, p.overlap()),
                max_retries: p.max_retries,
                retry_delay: d(&p.retry_delay),
                backoff: spelling(BACKOFFS, p.backoff()),
                max_delay: d(&p.max_delay),
                timeout: d(&p.timeout),
                max_steps: p.max_steps,
            }),
            tools: p.tools.as_ref().map(|t| ToolsManifest {
                local: t.local.clone(),
                mcp: t
                    .mcp
                    .iter()
                    .map(|m| {
                        use pb::mcp_server_spec::Transport;
                        let mut out = McpManifest {
                            name: m.name.clone(),
                            call_timeout: d(&m.call_timeout),
                            ..Default::default()
                        };
                        match &m.transport {
                            Some(Transport::Stdio(s)) => {
                                out.command = Some(s.command.clone());
                                out.args = s.args.clone();
                                out.env = s.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                            }
                            Some(Transport::Http(h)) => {
                                out.url = Some(h.url.clone());
                                out.headers = h.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                            }
                            None => {}
                        }
                        out
                    })
                    .collect(),
            }),
            memory: p.memory.as_ref().map(|m| MemoryManifest {
                session: Some(m.session.clone()).filter(|s| !s.is_empty()),
                recall_recent: m.recall_recent,
                semantic_top_k: m.semantic_top_k,
                store_results: m.store_results,
            }),
            governance: p.governance.as_ref().map(GovernanceManifest::from_pb),
            budget: p.budget.as_ref().map(crate::budget::BudgetManifest::from_pb),
        }
    }
}

impl AgentSpec {
    /// Parses and validates one YAML manifest.
    pub fn from_yaml(text: &str) -> Result<Self, ValidationErrors> {
        AgentManifest::from_yaml(text)?.validate()
    }
}
