//! Budgets: how much an agent's runs may spend — per run, per agent per UTC day and month, per
//! namespace per day and month — in tokens and in money (micro-USD, as the cost ledger counts).
//!
//! Two pure rules: [`admit`] before a run starts (what the agent and its namespace spent in the
//! period, plus the run's projected cost, against each limit), and [`next_call`] before each LLM
//! call of a run (what the run spent, plus a call like its last, against the per-run limit).
use std::fmt;

use chrono::{DateTime, Datelike, TimeZone, Utc};

use crate::pb;

/// A limit in tokens, money, or both (`None` = no limit of that kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limit {
    /// Prompt + completion tokens.
    pub tokens: Option<u64>,
    /// Micro-USD.
    pub micros: Option<u64>,
}

impl Limit {
    /// Whether it limits anything.
    pub fn is_set(&self) -> bool {
        self.tokens.is_some() || self.micros.is_some()
    }
}

/// The limits of an agent (its `budget:`) or a namespace (the operator's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Budget {
    /// One run, all its attempts.
    pub per_run: Limit,
    /// A UTC day.
    pub per_day: Limit,
    /// A UTC month.
    pub per_month: Limit,
    /// A run a period has no room for waits for the next period (`awaiting_budget`) instead of
    /// being skipped.
    pub wait: bool,
}

impl Budget {
    /// Whether it limits anything.
    pub fn is_set(&self) -> bool {
        self.per_run.is_set() || self.per_day.is_set() || self.per_month.is_set()
    }

    /// Whether admission needs the period's spending (a day or month limit).
    pub fn limits_periods(&self) -> bool {
        self.per_day.is_set() || self.per_month.is_set()
    }
}

/// Tokens and money spent (or projected).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Spend {
    /// Prompt + completion tokens.
    pub tokens: u64,
    /// Micro-USD.
    pub micros: u64,
}

impl std::ops::Add for Spend {
    type Output = Spend;
    fn add(self, o: Spend) -> Spend {
        Spend { tokens: self.tokens.saturating_add(o.tokens), micros: self.micros.saturating_add(o.micros) }
    }
}

impl fmt::Display for Spend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} tokens, {}", self.tokens, crate::cost::format_usd(self.micros))
    }
}

/// The first limit `spent + next` exceeds, described; `None` if within all.
fn exceeded(what: &str, limit: &Limit, spent: Spend, next: Spend) -> Option<String> {
    let total = spent + next;
    if let Some(max) = limit.tokens
        && total.tokens > max
    {
        return Some(format!("{what} of {max} tokens: {} spent, {} more projected", spent.tokens, next.tokens));
    }
    if let Some(max) = limit.micros
        && total.micros > max
    {
        return Some(format!(
            "{what} of {}: {} spent, {} more projected",
            crate::cost::format_usd(max),
            crate::cost::format_usd(spent.micros),
            crate::cost::format_usd(next.micros)
        ));
    }
    None
}

/// What an agent and its namespace spent, as admission reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Spending {
    /// The agent, this UTC day.
    pub agent_day: Spend,
    /// The agent, this UTC month.
    pub agent_month: Spend,
    /// The namespace, this UTC day.
    pub namespace_day: Spend,
    /// The namespace, this UTC month.
    pub namespace_month: Spend,
}

/// A run a budget has no room for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overrun {
    /// Why, starting with `budget:`.
    pub reason: String,
    /// When the exhausted period ends (the next UTC day or month): a waiting run is admitted
    /// again then.
    pub until: DateTime<Utc>,
}

/// The admission rule at `now`: `None` when a run projected to cost `projected` may start, else
/// the first limit it would pass.
pub fn admit(
    agent: &Budget,
    namespace: &Budget,
    spending: &Spending,
    projected: Spend,
    now: DateTime<Utc>,
) -> Option<Overrun> {
    let (day, month) = next_periods(now);
    let checks = [
        ("the agent's daily budget", &agent.per_day, spending.agent_day, day),
        ("the agent's monthly budget", &agent.per_month, spending.agent_month, month),
        ("the namespace's daily budget", &namespace.per_day, spending.namespace_day, day),
        ("the namespace's monthly budget", &namespace.per_month, spending.namespace_month, month),
    ];
    checks.into_iter().find_map(|(what, limit, spent, until)| {
        exceeded(what, limit, spent, projected).map(|why| Overrun { reason: format!("budget: {why}"), until })
    })
}

/// The start of the UTC day and month after `now`'s.
fn next_periods(now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let (day, month) = periods(now);
    let next_month = month.checked_add_months(chrono::Months::new(1)).unwrap_or(DateTime::<Utc>::MAX_UTC);
    (day + chrono::Duration::days(1), next_month)
}

/// The rule before each LLM call of a run: `Err(reason)` when a call like the last one would take
/// the run past its per-run limit (the stricter of the agent's and the namespace's).
pub fn next_call(agent: &Budget, namespace: &Budget, spent: Spend, last_call: Spend) -> Result<(), String> {
    for limit in [&agent.per_run, &namespace.per_run] {
        if let Some(why) = exceeded("the run's budget", limit, spent, last_call) {
            return Err(format!("budget: {why}; the run stops before the next LLM call"));
        }
    }
    Ok(())
}

/// The p90 of recent runs' spending, the projection of the next run (zero without history).
pub fn projection(recent: &[Spend]) -> Spend {
    if recent.is_empty() {
        return Spend::default();
    }
    let p90 = |mut v: Vec<u64>| {
        v.sort_unstable();
        v[((v.len() as f64 * 0.9).ceil() as usize).clamp(1, v.len()) - 1]
    };
    Spend {
        tokens: p90(recent.iter().map(|s| s.tokens).collect()),
        micros: p90(recent.iter().map(|s| s.micros).collect()),
    }
}

/// The start of `now`'s UTC day and month.
pub fn periods(now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let day = Utc.with_ymd_and_hms(now.year(), now.month(), now.day(), 0, 0, 0).single().unwrap_or(now);
    let month = Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0).single().unwrap_or(now);
    (day, month)
}

/// Most dollars a limit may name (a typo guard).
const MAX_USD: f64 = 1_000_000.0;

impl Limit {
    fn from_pb(errs: &mut crate::error::Errors, field: &str, p: Option<&pb::BudgetLimit>) -> Self {
        let Some(p) = p else { return Self::default() };
        if p.tokens == Some(0) {
            errs.push(format!("{field}.tokens"), "must be at least 1 (leave it out for no limit)");
        }
        let micros = p.usd.and_then(|usd| {
            if !usd.is_finite() || !(0.0..=MAX_USD).contains(&usd) {
                errs.push(format!("{field}.usd"), format!("must be between 0 and {MAX_USD}"));
                None
            } else {
                Some((usd * 1e6).round() as u64)
            }
        });
        Self { tokens: p.tokens, micros }
    }

    fn to_pb(self) -> Option<pb::BudgetLimit> {
        self.is_set().then(|| pb::BudgetLimit { tokens: self.tokens, usd: self.micros.map(|m| m as f64 / 1e6) })
    }
}

impl Budget {
    /// Validates a budget; `prefix` names it in errors (`budget`, or a config section).
    pub(crate) fn from_pb_into(errs: &mut crate::error::Errors, prefix: &str, p: Option<&pb::BudgetSpec>) -> Self {
        let Some(p) = p else { return Self::default() };
        Self {
            per_run: Limit::from_pb(errs, &format!("{prefix}.per_run"), p.per_run.as_ref()),
            per_day: Limit::from_pb(errs, &format!("{prefix}.per_day"), p.per_day.as_ref()),
            per_month: Limit::from_pb(errs, &format!("{prefix}.per_month"), p.per_month.as_ref()),
            wait: p.on_exceeded() == pb::BudgetOverrun::Wait,
        }
    }

    /// Validates a budget on its own (the operator's namespace budgets).
    pub fn from_pb(prefix: &str, p: &pb::BudgetSpec) -> Result<Self, crate::ValidationErrors> {
        let mut errs = crate::error::Errors::default();
        let b = Self::from_pb_into(&mut errs, prefix, Some(p));
        errs.finish(|| b)
    }

    /// The proto form; `None` when it limits nothing (a spec without `budget:` stays unchanged).
    pub fn to_pb(&self) -> Option<pb::BudgetSpec> {
        self.is_set().then(|| pb::BudgetSpec {
            per_run: self.per_run.to_pb(),
            per_day: self.per_day.to_pb(),
            per_month: self.per_month.to_pb(),
            on_exceeded: if self.wait { pb::BudgetOverrun::Wait } else { pb::BudgetOverrun::Skip } as i32,
        })
    }
}

/// `budget:` as written in YAML (an agent manifest) or TOML (`[budgets.NAMESPACE]`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetManifest {
    /// One run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_run: Option<LimitManifest>,
    /// A UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_day: Option<LimitManifest>,
    /// A UTC month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_month: Option<LimitManifest>,
    /// `skip` (default) or `wait`: what becomes of a run a day or month has no room for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_exceeded: Option<String>,
}

/// `{tokens: N, usd: X}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitManifest {
    /// Prompt + completion tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// US dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd: Option<f64>,
}

impl BudgetManifest {
    /// The proto form; `prefix` names the section in errors (only `on_exceeded` is parsed here).
    pub(crate) fn to_pb(&self, errs: &mut crate::error::Errors, prefix: &str) -> pb::BudgetSpec {
        let limit = |l: &Option<LimitManifest>| l.map(|l| pb::BudgetLimit { tokens: l.tokens, usd: l.usd });
        pb::BudgetSpec {
            per_run: limit(&self.per_run),
            per_day: limit(&self.per_day),
            per_month: limit(&self.per_month),
            on_exceeded: crate::manifest::pick(errs, &format!("{prefix}.on_exceeded"), &self.on_exceeded, OVERRUNS),
        }
    }

    /// Validated on its own (the operator's namespace budgets); `prefix` names it in errors.
    pub fn to_budget(&self, prefix: &str) -> Result<Budget, crate::ValidationErrors> {
        let mut errs = crate::error::Errors::default();
        let p = self.to_pb(&mut errs, prefix);
        errs.finish(|| ())?;
        Budget::from_pb(prefix, &p)
    }

    /// From the proto form.
    pub fn from_pb(p: &pb::BudgetSpec) -> Self {
        let limit = |l: &Option<pb::BudgetLimit>| l.map(|l| LimitManifest { tokens: l.tokens, usd: l.usd });
        Self {
            per_run: limit(&p.per_run),
            per_day: limit(&p.per_day),
            per_month: limit(&p.per_month),
            on_exceeded: crate::manifest::spelling(OVERRUNS, p.on_exceeded()),
        }
    }
}

const OVERRUNS: &[(&str, pb::BudgetOverrun)] = &[("skip", pb::BudgetOverrun::Skip), ("wait", pb::BudgetOverrun::Wait)];

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(micros: u64) -> Limit {
        Limit { tokens: None, micros: Some(micros) }
    }

    #[test]
    fn a_run_starts_only_within_every_period_limit() {
        let agent = Budget { per_day: usd(1000), ..Budget::default() };
        let ns = Budget { per_month: Limit { tokens: Some(10_000), micros: None }, ..Budget::default() };
        let spent = Spending {
            agent_day: Spend { tokens: 300, micros: 600 },
            namespace_month: Spend { tokens: 9000, micros: 0 },
            ..Spending::default()
        };
        let now = Utc.with_ymd_and_hms(2026, 12, 31, 17, 0, 0).unwrap();
        assert_eq!(admit(&agent, &ns, &spent, Spend { tokens: 100, micros: 400 }, now), None, "exactly at the limit");
        let over = admit(&agent, &ns, &spent, Spend { tokens: 100, micros: 401 }, now).unwrap();
        assert!(over.reason.starts_with("budget: the agent's daily budget of $0.001000"), "{}", over.reason);
        assert_eq!(over.until, Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap(), "the next UTC day");
        let over = admit(&agent, &ns, &spent, Spend { tokens: 1001, micros: 0 }, now).unwrap();
        assert!(over.reason.contains("namespace's monthly budget of 10000 tokens"), "{}", over.reason);
        assert_eq!(over.until, Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap(), "the next UTC month");
        let none = Budget::default();
        assert_eq!(admit(&none, &none, &spent, Spend { tokens: u64::MAX, micros: 1 }, now), None);
    }

    #[test]
    fn a_run_stops_before_a_call_that_would_pass_its_limit() {
        let agent = Budget { per_run: Limit { tokens: Some(150), micros: None }, ..Budget::default() };
        let ns = Budget::default();
        assert!(next_call(&agent, &ns, Spend { tokens: 60, micros: 0 }, Spend { tokens: 60, micros: 0 }).is_ok());
        let why =
            next_call(&agent, &ns, Spend { tokens: 120, micros: 0 }, Spend { tokens: 60, micros: 0 }).unwrap_err();
        assert!(why.contains("run's budget of 150 tokens") && why.contains("stops"), "{why}");
        let tight = Budget { per_run: usd(10), ..Budget::default() };
        assert!(next_call(&agent, &tight, Spend { tokens: 0, micros: 6 }, Spend { tokens: 0, micros: 5 }).is_err());
    }

    #[test]
    fn the_projection_is_the_p90_of_recent_runs() {
        assert_eq!(projection(&[]), Spend::default());
        let runs: Vec<Spend> = (1..=10).map(|i| Spend { tokens: i * 10, micros: i }).collect();
        assert_eq!(projection(&runs), Spend { tokens: 90, micros: 9 });
        assert_eq!(projection(&runs[..1]), Spend { tokens: 10, micros: 1 });
    }

    #[test]
    fn the_manifest_section_round_trips_and_bad_values_are_named() {
        let yaml = "name: a\nmodel: {provider: openai, model: m}\ntask: {query: q}\n\
                    budget: {per_run: {tokens: 20000, usd: 0.5}, per_day: {usd: 5}, on_exceeded: wait}\n";
        let spec = crate::AgentSpec::from_yaml(yaml).unwrap();
        assert_eq!(spec.budget.per_run, Limit { tokens: Some(20_000), micros: Some(500_000) });
        assert_eq!(spec.budget.per_day.micros, Some(5_000_000));
        assert!(!spec.budget.per_month.is_set());
        assert!(spec.budget.wait);
        assert_eq!(crate::AgentManifest::from_proto(&spec.to_proto()).validate().unwrap(), spec);
        let bad = yaml.replace("usd: 5", "usd: -1").replace("tokens: 20000", "tokens: 0");
        let err = crate::AgentSpec::from_yaml(&bad).unwrap_err();
        let fields: Vec<&str> = err.fields().collect();
        assert!(fields.contains(&"budget.per_day.usd") && fields.contains(&"budget.per_run.tokens"), "{err}");
        let none = crate::AgentSpec::from_yaml("name: a\nmodel: {provider: openai, model: m}\ntask: {query: q}\n");
        assert!(none.unwrap().to_proto().budget.is_none(), "no budget: the stored spec is unchanged");
    }

    #[test]
    fn periods_are_utc_days_and_months() {
        let now = Utc.with_ymd_and_hms(2026, 12, 5, 17, 30, 0).unwrap();
        let (day, month) = periods(now);
        assert_eq!(day, Utc.with_ymd_and_hms(2026, 12, 5, 0, 0, 0).unwrap());
        assert_eq!(month, Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap());
    }
}
