//! The page shell and the small pieces every page uses: times (rendered in UTC, shown in the
//! browser's zone by the script, UTC on hover), run states, durations and token counts.
use maud::{DOCTYPE, Markup, html};
use nightshift_core::RunStatus;
use nightshift_proto::v1 as pb;
use prost_types::Timestamp;

use crate::session::Session;

/// The navigation entries; the current one is marked.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Overview,
    Agents,
    Runs,
    Approvals,
    Events,
    Workers,
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="color-scheme" content="light dark";
            title { (title) " · Nightshift" }
            link rel="stylesheet" href="/static/console.css";
            script src="/static/console.js" defer {}
        }
    }
}

/// A page of the signed-in console.
pub(crate) fn page(title: &str, s: &Session, nav: Nav, body: Markup) -> Markup {
    let item = |n: Nav, href: &str, label: &str| {
        html! { a href=(href) aria-current=[(n == nav).then_some("page")] { (label) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.top {
                    a.brand href="/agents" { "Nightshift" }
                    nav aria-label="Main" {
                        (item(Nav::Overview, "/", "Overview"))
                        (item(Nav::Agents, "/agents", "Agents"))
                        (item(Nav::Runs, "/runs", "Runs"))
                        (item(Nav::Approvals, "/approvals", "Approvals"))
                        (item(Nav::Events, "/events", "Events"))
                        (item(Nav::Workers, "/workers", "Workers"))
                    }
                    div.who {
                        span title=(format!("namespaces: {}", s.namespaces)) { (s.name) " · " (s.role) }
                        @if s.credential.is_some() {
                            form method="post" action="/logout" {
                                (csrf(s))
                                button.link type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A page outside a session (sign-in, errors).
pub(crate) fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.top { a.brand href="/agents" { "Nightshift" } }
                main { (body) }
            }
        }
    }
}

/// The hidden CSRF field of every form.
pub(crate) fn csrf(s: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

/// A time: UTC text in a `<time>` the script turns into the browser's zone (UTC on hover).
pub(crate) fn time(t: Option<&Timestamp>) -> Markup {
    match t.and_then(nightshift_core::time::from_pb) {
        Some(t) => {
            let iso = t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let text = t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
            html! { time datetime=(iso) title=(text) { (text) } }
        }
        None => html! { span.muted { "—" } },
    }
}

/// A run state's name (`succeeded`, …).
pub(crate) fn status_name(status: i32) -> &'static str {
    pb::RunStatus::try_from(status).ok().and_then(RunStatus::from_pb).map_or("unknown", |s| s.as_str())
}

/// Whether a run is over.
pub(crate) fn is_terminal(status: i32) -> bool {
    pb::RunStatus::try_from(status).ok().and_then(RunStatus::from_pb).is_some_and(|s| s.is_terminal())
}

/// A run state as a badge.
pub(crate) fn status(status: i32) -> Markup {
    status_badge_name(status_name(status))
}

/// A run state, by name, as a badge.
pub(crate) fn status_badge_name(name: &str) -> Markup {
    html! { span class={ "badge " (name) } { (name) } }
}

/// An approval's state, by name.
pub(crate) fn approval_status(status: pb::ApprovalStatus) -> &'static str {
    nightshift_core::governance::ApprovalStatus::from_pb(status).map_or("unknown", |s| s.as_str())
}

/// An agent state as a badge.
pub(crate) fn agent_state(state: i32) -> Markup {
    let name = match pb::AgentState::try_from(state) {
        Ok(pb::AgentState::Active) => "active",
        Ok(pb::AgentState::Paused) => "paused",
        _ => "unknown",
    };
    html! { span class={ "badge " (name) } { (name) } }
}

/// The last 24 hours of an agent's runs (`GetAgentStatus.last_24h`): a bar per hour, its
/// height the runs created in it, stacked succeeded / failed / the rest; then the share that
/// succeeded of those that ended and their mean duration. `data-ended` / `data-succeeded` carry
/// the numbers.
pub(crate) fn day_chart(hours: &[pb::HourOfRuns]) -> Markup {
    let total = |h: &pb::HourOfRuns| h.succeeded + h.failed + h.other;
    let most = hours.iter().map(total).max().unwrap_or(0).max(1) as f64;
    let (succeeded, failed): (u64, u64) = hours.iter().fold((0, 0), |(s, f), h| (s + h.succeeded, f + h.failed));
    let weighted: f64 = hours
        .iter()
        .filter_map(|h| {
            h.mean_duration
                .as_ref()
                .map(|d| (d.seconds as f64 * 1000.0 + f64::from(d.nanos) / 1e6) * h.succeeded as f64)
        })
        .sum();
    let (w, height) = (4usize, 20.0_f64);
    // Each hour's bars, stacked from the bottom: (x, y, height, class, runs).
    let mut bars = Vec::new();
    for (i, h) in hours.iter().enumerate() {
        let mut top = height;
        for (class, n) in [("succeeded", h.succeeded), ("failed", h.failed), ("other", h.other)] {
            if n > 0 {
                let bar = (n as f64 / most * height).max(1.0);
                top -= bar;
                bars.push((i * w, top, bar, class, n));
            }
        }
    }
    html! {
        span.day data-ended=(succeeded + failed) data-succeeded=(succeeded) {
            svg.chart width=(hours.len() * w) height=(height as u32) role="img" aria-label="Runs per hour, last 24 hours" {
                @for (x, y, bar, class, n) in &bars {
                    rect class=(class) x=(x) y=(format!("{y:.1}")) width=(w - 1) height=(format!("{bar:.1}")) {
                        title { (n) " " (class) }
                    }
                }
            }
            " "
            @if succeeded + failed == 0 {
                span.rate.muted { "no run ended" }
            } @else {
                span.rate {
                    (format!("{:.0} %", succeeded as f64 * 100.0 / (succeeded + failed) as f64)) " of " (succeeded + failed)
                    @if succeeded > 0 { " · " (millis(weighted / succeeded as f64)) }
                }
            }
        }
    }
}

/// A protobuf duration in words (`1.2 s`, `35 ms`).
pub(crate) fn duration(d: Option<&prost_types::Duration>) -> String {
    match d {
        Some(d) => millis(d.seconds as f64 * 1000.0 + f64::from(d.nanos) / 1e6),
        None => "—".into(),
    }
}

/// Milliseconds in words.
pub(crate) fn millis(ms: f64) -> String {
    if ms >= 60_000.0 {
        format!("{:.1} min", ms / 60_000.0)
    } else if ms >= 1000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

/// Token usage (`in 80 · out 12`).
pub(crate) fn usage(u: Option<&pb::TokenUsage>) -> String {
    let u = u.copied().unwrap_or_default();
    format!("in {} · out {}", u.input_tokens, u.output_tokens)
}

/// The wall-clock time between two timestamps, if both are set.
pub(crate) fn elapsed(from: Option<&Timestamp>, to: Option<&Timestamp>) -> Option<f64> {
    let (from, to) = (nightshift_core::time::from_pb(from?)?, nightshift_core::time::from_pb(to?)?);
    Some((to - from).num_milliseconds() as f64)
}

/// A URL query value, percent-encoded.
pub(crate) fn encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `?k=v&…` of the pairs whose value is not empty (values percent-encoded); empty without any.
pub(crate) fn query(pairs: &[(&str, &str)]) -> String {
    let parts: Vec<String> =
        pairs.iter().filter(|(_, v)| !v.trim().is_empty()).map(|(k, v)| format!("{k}={}", encode(v.trim()))).collect();
    if parts.is_empty() { String::new() } else { format!("?{}", parts.join("&")) }
}

/// A filter's drop-down: "any" (empty) or one of `options`, `current` selected.
pub(crate) fn choice(label: &str, name: &str, current: &str, options: &[&str]) -> Markup {
    html! {
        label { (label) " "
            select name=(name) {
                option value="" selected[current.is_empty()] { "any" }
                @for o in options { option value=(o) selected[current == *o] { (o) } }
            }
        }
    }
}

/// Text clipped to `max` characters, with an ellipsis when clipped.
pub(crate) fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// JSON text pretty-printed when it parses, as given otherwise.
pub(crate) fn pretty_json(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_for_times_and_sizes() {
        assert_eq!(millis(35.0), "35 ms");
        assert_eq!(millis(1234.0), "1.2 s");
        assert_eq!(millis(90_000.0), "1.5 min");
        assert_eq!(encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(query(&[("q", "a b"), ("state", ""), ("page", "x/y")]), "?q=a%20b&page=x%2Fy");
        assert_eq!(query(&[("q", " ")]), "");
        assert_eq!(clip("abcdef", 3), "abc…");
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(pretty_json("{\"a\":1}"), "{\n  \"a\": 1\n}");
        assert_eq!(pretty_json("not json"), "not json");
        let t = Timestamp { seconds: 1_700_000_000, nanos: 0 };
        let html = time(Some(&t)).into_string();
        assert!(html.contains("datetime=\"2023-11-14T22:13:20.000Z\""), "{html}");
        assert!(html.contains("2023-11-14 22:13:20 UTC"), "{html}");
    }
}
