//! What an LLM call costs: the operator's price table (USD per million tokens, per model) applied
//! to the tokens the provider reported. Costs are integers of micro-USD, so that sums over a
//! ledger are exact (a price in USD per million tokens is a price in micro-USD per token).
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The price of one model, in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Prompt tokens.
    pub input: f64,
    /// Completion tokens.
    pub output: f64,
    /// Prompt tokens the provider read from its cache; absent = `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
}

impl Price {
    /// The cost of a call in micro-USD, rounded to the nearest: `cached` of the `input` tokens at
    /// the cached price, the rest at the input price.
    pub fn cost_micros(&self, input: u64, cached: u64, output: u64) -> u64 {
        let cached = cached.min(input);
        let micros = (input - cached) as f64 * self.input
            + cached as f64 * self.cached_input.unwrap_or(self.input)
            + output as f64 * self.output;
        micros.round().clamp(0.0, u64::MAX as f64) as u64
    }
}

/// Prices by model name. A model is priced by its exact name, else by the longest configured
/// name it starts with (`gpt-4o-mini` prices `gpt-4o-mini-2024-07-18`, as providers report dated
/// names).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PriceTable(pub BTreeMap<String, Price>);

impl PriceTable {
    /// Checks every price: finite and not negative; names not empty. The first bad entry is named.
    pub fn validate(&self) -> Result<(), String> {
        for (model, p) in &self.0 {
            if model.trim().is_empty() {
                return Err("prices: a model name is empty".into());
            }
            let cached = p.cached_input.unwrap_or(0.0);
            for (what, v) in [("input", p.input), ("output", p.output), ("cached_input", cached)] {
                if !v.is_finite() || v < 0.0 {
                    return Err(format!(
                        "prices.{model}.{what}: must be a non-negative number (USD per million tokens)"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The price of `model`, if configured.
    pub fn price(&self, model: &str) -> Option<Price> {
        if let Some(p) = self.0.get(model) {
            return Some(*p);
        }
        self.0
            .iter()
            .filter(|(name, _)| model.starts_with(name.as_str()))
            .max_by_key(|(name, _)| name.len())
            .map(|(_, p)| *p)
    }

    /// The cost of a call to `model` in micro-USD ([`Price::cost_micros`]); `None` when the model
    /// has no price.
    pub fn cost_micros(&self, model: &str, input: u64, cached: u64, output: u64) -> Option<u64> {
        self.price(model).map(|p| p.cost_micros(input, cached, output))
    }
}

/// Micro-USD as dollars for display, e.g. `$0.000123`.
pub fn format_usd(micros: u64) -> String {
    format!("${}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> PriceTable {
        PriceTable(BTreeMap::from([
            ("gpt-4o".into(), Price { input: 2.5, output: 10.0, cached_input: Some(1.25) }),
            ("gpt-4o-mini".into(), Price { input: 0.15, output: 0.6, cached_input: None }),
        ]))
    }

    #[test]
    fn a_model_is_priced_by_its_name_or_its_longest_prefix() {
        let t = table();
        assert_eq!(t.price("gpt-4o-mini-2024-07-18").map(|p| p.input), Some(0.15));
        assert_eq!(t.price("gpt-4o-2024-08-06").map(|p| p.input), Some(2.5));
        assert_eq!(t.price("claude-3-haiku"), None);
        // 1,000 prompt and 200 completion tokens of gpt-4o-mini: 150 + 120 micro-USD; its cached
        // prompt tokens cost what the others do (no cached price).
        assert_eq!(t.cost_micros("gpt-4o-mini", 1000, 0, 200), Some(270));
        assert_eq!(t.cost_micros("gpt-4o-mini", 1000, 800, 200), Some(270));
        // gpt-4o: 200 × 2.5 + 800 × 1.25 + 200 × 10.
        assert_eq!(t.cost_micros("gpt-4o", 1000, 800, 200), Some(3500));
        assert_eq!(t.cost_micros("gpt-4o", 10, 50, 0), Some(13), "cached tokens are at most the prompt's");
        assert_eq!(t.cost_micros("local", 1000, 0, 200), None);
        assert_eq!(format_usd(1_234_567), "$1.234567");
    }

    #[test]
    fn bad_prices_are_named() {
        let mut t = table();
        t.0.insert("x".into(), Price { input: -1.0, output: 0.0, cached_input: None });
        assert_eq!(t.validate().unwrap_err(), "prices.x.input: must be a non-negative number (USD per million tokens)");
        assert!(table().validate().is_ok());
    }
}
