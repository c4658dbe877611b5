//! The overview: runs per second by outcome, failures, ticks fired and their lag, the queue,
//! events and tokens — from the services' own metrics, over the time since an earlier reading
//! (the page reloads itself every 5 s). Aggregates span every namespace, so only a user who
//! holds every namespace sees them.
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use futures::future::join_all;
use maud::{Markup, html};

use super::{App, Signed};
use crate::config::ConsoleConfig;
use crate::error::{ConsoleError, PageError};
use crate::metrics::{Reading, Totals, rates};
use crate::view::{self, Nav};

/// Readings kept, at least this far apart; rates span the oldest within [`WINDOW`].
const KEPT: usize = 16;
const APART: Duration = Duration::from_secs(2);
const WINDOW: Duration = Duration::from_secs(60);
/// Largest exposition read from one endpoint.
const MAX_TEXT: usize = 8 << 20;

/// Where the overview reads metrics.
pub(crate) struct Sources {
    urls: Vec<String>,
    local: Option<nightshift_telemetry::PrometheusHandle>,
    http: reqwest::Client,
    readings: Mutex<VecDeque<Reading>>,
}

impl Sources {
    pub fn new(cfg: &ConsoleConfig) -> Result<Self, ConsoleError> {
        for url in &cfg.metrics_urls {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return Err(ConsoleError::Invalid(format!("metrics_urls: '{url}' is not an http(s) URL")));
            }
        }
        // Installed now, so that the roles' metrics are recorded from the start.
        let local = if cfg.metrics_local {
            Some(nightshift_telemetry::metrics_handle().map_err(|e| ConsoleError::Invalid(e.to_string()))?)
        } else {
            None
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ConsoleError::Invalid(e.to_string()))?;
        Ok(Self { urls: cfg.metrics_urls.clone(), local, http, readings: Mutex::new(VecDeque::new()) })
    }

    fn configured(&self) -> bool {
        self.local.is_some() || !self.urls.is_empty()
    }

    async fn fetch(&self, url: &str) -> Result<String, String> {
        let res = self.http.get(url).send().await.map_err(|e| e.to_string())?;
        if !res.status().is_success() {
            return Err(format!("HTTP {}", res.status()));
        }
        let text = res.text().await.map_err(|e| e.to_string())?;
        if text.len() > MAX_TEXT { Err("too large".into()) } else { Ok(text) }
    }

    /// Reads every source now; returns the reading and the one to compute rates against.
    async fn read(&self) -> (Reading, Option<Reading>) {
        let mut totals = Totals::default();
        if let Some(h) = &self.local {
            totals.add(&h.render());
        }
        for (url, text) in self.urls.iter().zip(join_all(self.urls.iter().map(|u| self.fetch(u))).await) {
            match text {
                Ok(text) => totals.add(&text),
                Err(e) => totals.unreadable.push(format!("{url}: {e}")),
            }
        }
        let now = Reading { at: Instant::now(), totals };
        let Ok(mut kept) = self.readings.lock() else { return (now, None) };
        kept.retain(|r| now.at.duration_since(r.at) <= WINDOW);
        let earlier = kept.front().cloned();
        if kept.back().is_none_or(|r| now.at.duration_since(r.at) >= APART) {
            kept.push_back(now.clone());
            while kept.len() > KEPT {
                kept.pop_front();
            }
        }
        (now, earlier)
    }
}

fn per_second(v: f64) -> String {
    if v >= 100.0 { format!("{v:.0}/s") } else { format!("{v:.1}/s") }
}

/// `GET /`.
pub(super) async fn show(State(app): State<Arc<App>>, Signed(s): Signed) -> Result<Markup, PageError> {
    let all_namespaces = s.namespaces == "*" || s.namespaces.split(',').any(|n| n == "*");
    let body = if !all_namespaces {
        html! { h1 { "Overview" } p.muted { "The overview sums every namespace; it is shown to users who hold all of them. See " a href="/agents" { "your agents" } "." } }
    } else if !app.metrics.configured() {
        html! { h1 { "Overview" } p.muted { "No metrics source is configured (" code { "metrics_urls" } " of the console)." } }
    } else {
        let (now, earlier) = app.metrics.read().await;
        let r = earlier.as_ref().and_then(|e| rates(e, &now));
        let t = &now.totals;
        let failed = |m: &std::collections::BTreeMap<String, f64>| {
            ["failed", "timed_out"].iter().map(|k| m.get(*k).copied().unwrap_or(0.0)).sum::<f64>()
        };
        html! {
            meta http-equiv="refresh" content="5";
            h1 { "Overview" }
            @match &r {
                Some(r) => p.muted { "Rates over the last " (format!("{:.0}", r.seconds)) " s; the page refreshes every 5 s." },
                None => p.muted { "Totals since the services started; rates appear at the next refresh." },
            }
            section.stats.overview aria-label="Figures" { dl {
                div { dt { "Runs ended" } dd data-figure="runs" { @match &r { Some(r) => (per_second(r.runs.values().sum())), None => (t.runs.values().sum::<f64>()) } } }
                div { dt { "Failed or timed out" } dd data-figure="failed" { @match &r { Some(r) => (per_second(failed(&r.runs))), None => (failed(&t.runs)) } } }
                div { dt { "Ticks fired" } dd { @match &r { Some(r) => (per_second(r.fired)), None => (t.fired) } } }
                div { dt { "Fire lag p99" } dd { @match r.as_ref().and_then(|r| r.fire_lag_p99) {
                    Some(v) if v.is_finite() => { "≤ " (view::millis(v * 1000.0)) },
                    Some(_) => { "> 5 min" },
                    None => { "—" },
                } } }
                div { dt { "Queue depth" } dd { (t.queue_depth.map_or("—".into(), |d| format!("{d:.0}"))) } }
                div { dt { "Schedules" } dd { (t.active_schedules.map_or("—".into(), |d| format!("{d:.0}"))) } }
                div { dt { "Events" } dd { @match &r { Some(r) => (per_second(r.events)), None => (t.events) } } }
                div { dt { "LLM tokens" } dd { @match &r { Some(r) => (per_second(r.tokens)), None => (t.tokens) } } }
                div { dt { "Tool calls" } dd { @match &r { Some(r) => (per_second(r.tool_calls)), None => (t.tool_calls) } } }
            } }
            @if let Some(r) = &r { @if !r.runs.is_empty() {
                h2 { "Runs ended by outcome" }
                table { tbody { @for (status, v) in &r.runs { tr { td { (view::status_badge_name(status)) } td { (per_second(*v)) } } } } }
            } }
            @for why in &t.unreadable { p.error { "Not read: " (why) } }
        }
    };
    Ok(view::page("Overview", &s, Nav::Overview, body))
}
