//! The overview's figures, from the services' own Prometheus metrics: read from their
//! `/metrics` endpoints (`metrics_urls`) or, in `nightshift dev`, from the process's own
//! recorder; rates are the difference between two readings.
use std::collections::BTreeMap;
use std::time::Instant;

/// What one reading of every source adds up to.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Totals {
    /// Runs ended, by status (`nightshift_worker_runs_total{status}`).
    pub runs: BTreeMap<String, f64>,
    /// Ticks fired (`nightshift_scheduler_fired_total`).
    pub fired: f64,
    /// Fire lag histogram: (upper bound in seconds, cumulative count), summed over sources.
    pub fire_lag: Vec<(f64, f64)>,
    /// Run requests waiting in the queue (`nightshift_queue_depth`), if a scheduler reports it.
    pub queue_depth: Option<f64>,
    /// Schedules the schedulers hold.
    pub active_schedules: Option<f64>,
    /// Events published.
    pub events: f64,
    /// LLM tokens.
    pub tokens: f64,
    /// Tool calls.
    pub tool_calls: f64,
    /// Sources that could not be read, with why.
    pub unreadable: Vec<String>,
}

/// A sample's labels, in order.
type Labels = Vec<(String, String)>;

/// One sample line: name, labels, value. `None` for comments, blank and malformed lines.
fn sample(line: &str) -> Option<(&str, Labels, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        // `key="value"` pairs; values may hold escaped quotes and commas.
        let mut chars = inner.char_indices().peekable();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            if c == '}' {
                end = Some(i);
                break;
            }
            if c == ',' || c == ' ' {
                continue;
            }
            let key_start = i;
            let mut key_end = i;
            for (j, c) in chars.by_ref() {
                if c == '=' {
                    key_end = j;
                    break;
                }
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut value = String::new();
            let mut escaped = false;
            for (_, c) in chars.by_ref() {
                match (escaped, c) {
                    (true, 'n') => (value.push('\n'), escaped = false).1,
                    (true, c) => (value.push(c), escaped = false).1,
                    (false, '\\') => escaped = true,
                    (false, '"') => break,
                    (false, c) => value.push(c),
                }
            }
            labels.push((inner[key_start..key_end].to_owned(), value));
        }
        rest = &inner[end? + 1..];
    }
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some((name, labels, value))
}

fn label<'a>(labels: &'a [(String, String)], key: &str) -> Option<&'a str> {
    labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

impl Totals {
    /// Adds one source's exposition text.
    pub fn add(&mut self, text: &str) {
        for (name, labels, value) in text.lines().filter_map(sample) {
            match name {
                "nightshift_worker_runs_total" => {
                    *self.runs.entry(label(&labels, "status").unwrap_or("unknown").to_owned()).or_default() += value;
                }
                "nightshift_scheduler_fired_total" => self.fired += value,
                "nightshift_scheduler_fire_lag_seconds_bucket" => {
                    let le = match label(&labels, "le") {
                        Some("+Inf") => f64::INFINITY,
                        Some(le) => match le.parse() {
                            Ok(le) => le,
                            Err(_) => continue,
                        },
                        None => continue,
                    };
                    match self.fire_lag.iter_mut().find(|(b, _)| *b == le) {
                        Some((_, n)) => *n += value,
                        None => self.fire_lag.push((le, value)),
                    }
                    self.fire_lag.sort_by(|a, b| a.0.total_cmp(&b.0));
                }
                "nightshift_queue_depth" => *self.queue_depth.get_or_insert(0.0) += value,
                "nightshift_scheduler_active_schedules" => *self.active_schedules.get_or_insert(0.0) += value,
                "nightshift_events_published_total" => self.events += value,
                "nightshift_llm_tokens_total" => self.tokens += value,
                "nightshift_tool_calls_total" => self.tool_calls += value,
                _ => {}
            }
        }
    }
}

/// A reading and when it was taken.
#[derive(Debug, Clone)]
pub(crate) struct Reading {
    pub at: Instant,
    pub totals: Totals,
}

/// Per-second rates and the fire lag p99 between two readings.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rates {
    pub seconds: f64,
    pub runs: BTreeMap<String, f64>,
    pub fired: f64,
    pub events: f64,
    pub tokens: f64,
    pub tool_calls: f64,
    /// The upper bound of the bucket holding the 99th percentile of the lags recorded between
    /// the readings (`None`: no tick fired).
    pub fire_lag_p99: Option<f64>,
}

/// The rates from `before` to `after` (a counter that went down — a restarted process — counts
/// from zero).
pub(crate) fn rates(before: &Reading, after: &Reading) -> Option<Rates> {
    let seconds = after.at.checked_duration_since(before.at)?.as_secs_f64();
    if seconds < 0.5 {
        return None;
    }
    let per = |a: f64, b: f64| if a >= b { (a - b) / seconds } else { a / seconds };
    let (a, b) = (&after.totals, &before.totals);
    let runs = a.runs.iter().map(|(k, v)| (k.clone(), per(*v, b.runs.get(k).copied().unwrap_or(0.0)))).collect();
    let lag: Vec<(f64, f64)> = a
        .fire_lag
        .iter()
        .map(|(le, n)| (*le, n - b.fire_lag.iter().find(|(l, _)| l == le).map_or(0.0, |(_, m)| *m)))
        .map(|(le, n)| (le, n.max(0.0)))
        .collect();
    let total = lag.last().map_or(0.0, |(_, n)| *n);
    let fire_lag_p99 =
        (total > 0.0).then(|| lag.iter().find(|(_, n)| *n >= 0.99 * total).map_or(f64::INFINITY, |(le, _)| *le));
    Some(Rates {
        seconds,
        runs,
        fired: per(a.fired, b.fired),
        events: per(a.events, b.events),
        tokens: per(a.tokens, b.tokens),
        tool_calls: per(a.tool_calls, b.tool_calls),
        fire_lag_p99,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP nightshift_worker_runs_total Runs ended.
# TYPE nightshift_worker_runs_total counter
nightshift_worker_runs_total{status="succeeded"} 90
nightshift_worker_runs_total{status="failed"} 10
nightshift_scheduler_fired_total 100
nightshift_scheduler_fire_lag_seconds_bucket{le="0.005"} 50
nightshift_scheduler_fire_lag_seconds_bucket{le="0.05"} 99
nightshift_scheduler_fire_lag_seconds_bucket{le="+Inf"} 100
nightshift_queue_depth 7
nightshift_grpc_requests_total{method="/a.B/C",code="Ok"} 5
weird_line{unterminated="x 1
"#;

    #[test]
    fn expositions_add_up_and_rates_follow() {
        let mut t = Totals::default();
        t.add(TEXT);
        assert_eq!(t.runs["succeeded"], 90.0);
        assert_eq!(t.fired, 100.0);
        assert_eq!(t.queue_depth, Some(7.0));
        assert_eq!(t.fire_lag, [(0.005, 50.0), (0.05, 99.0), (f64::INFINITY, 100.0)]);
        let start = Instant::now();
        let before = Reading { at: start, totals: Totals::default() };
        let after = Reading { at: start + std::time::Duration::from_secs(10), totals: t.clone() };
        let r = rates(&before, &after).unwrap();
        assert_eq!(r.runs["failed"], 1.0);
        assert_eq!(r.fired, 10.0);
        assert_eq!(r.fire_lag_p99, Some(0.05));
        // A second source doubles the sums; a restart (counter down) counts from zero.
        t.add(TEXT);
        assert_eq!(t.runs["succeeded"], 180.0);
        let later = Reading { at: start + std::time::Duration::from_secs(20), totals: Totals::default() };
        assert_eq!(rates(&after, &later).unwrap().fired, 0.0);
        assert!(rates(&after, &after).is_none(), "no rate over no time");
    }

    #[test]
    fn labels_with_escapes_parse() {
        let (name, labels, value) = sample(r#"m{a="x\"y,z",b="2"} 3.5"#).unwrap();
        assert_eq!((name, value), ("m", 3.5));
        assert_eq!(labels, [("a".to_owned(), "x\"y,z".to_owned()), ("b".to_owned(), "2".to_owned())]);
        assert!(sample("# comment").is_none());
    }
}
