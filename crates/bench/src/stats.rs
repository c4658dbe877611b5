//! Percentiles and the result rows every scenario reports.
use serde::Serialize;

/// Summary of a sample set: what the table prints.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    pub fn of(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        Some(Self {
            n: s.len(),
            median: percentile(&s, 50.0),
            p99: percentile(&s, 99.0),
            min: s[0],
            max: s[s.len() - 1],
            mean: s.iter().sum::<f64>() / s.len() as f64,
        })
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One printed line: a metric of a scenario with its summary over samples (rounds, seconds or
/// individual runs, as `over` says).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub metric: String,
    pub unit: String,
    /// What one sample is (e.g. "delivered run", "1 s window", "round").
    pub over: String,
    #[serde(flatten)]
    pub summary: Option<Summary>,
}

impl Row {
    pub fn new(scenario: &str, metric: &str, unit: &str, over: &str, samples: &[f64]) -> Self {
        Self {
            scenario: scenario.into(),
            metric: metric.into(),
            unit: unit.into(),
            over: over.into(),
            summary: Summary::of(samples),
        }
    }

    /// A single measured value (n = 1).
    pub fn single(scenario: &str, metric: &str, unit: &str, value: f64) -> Self {
        Self::new(scenario, metric, unit, "run", &[value])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        let sum = Summary::of(&s).expect("non-empty");
        assert_eq!((sum.median, sum.p99, sum.min, sum.max), (50.0, 99.0, 1.0, 100.0));
        assert_eq!(Summary::of(&[7.0]).expect("one").p99, 7.0);
        assert!(Summary::of(&[]).is_none());
    }
}
