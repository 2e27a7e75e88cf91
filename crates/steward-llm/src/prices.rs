//! The price table: shipped in `prices.toml`, overridable from configuration.

use std::collections::BTreeMap;

use steward_types::config::Price;

use crate::{Error, Result};

const SHIPPED: &str = include_str!("../prices.toml");

#[derive(Clone, Debug, Default)]
pub struct Prices {
    by_model: BTreeMap<String, Price>,
}

impl Prices {
    /// The shipped table with `overrides` laid over it.
    pub fn new(overrides: &BTreeMap<String, Price>) -> Result<Self> {
        let mut by_model: BTreeMap<String, Price> = toml::from_str(SHIPPED)
            .map_err(|e| Error::Route(format!("the shipped prices.toml is invalid: {e}")))?;
        for (model, p) in overrides {
            if !(p.input >= 0.0 && p.output >= 0.0 && p.cached_input.unwrap_or(0.0) >= 0.0) {
                return Err(Error::Route(format!(
                    "llm.prices.{model}: prices must be zero or more"
                )));
            }
            by_model.insert(model.clone(), *p);
        }
        Ok(Prices { by_model })
    }

    /// A model's price, by deployment label (`provider/model`) first, then by the model name.
    pub fn get(&self, model: &str) -> Option<Price> {
        self.by_model
            .get(model)
            .or_else(|| {
                model
                    .split_once('/')
                    .and_then(|(_, m)| self.by_model.get(m))
            })
            .copied()
    }

    /// US dollars for a number of tokens, or `None` when the model has no price.
    pub fn cost(&self, model: &str, tokens_in: i64, tokens_out: i64) -> Option<f64> {
        self.get(model).map(|p| {
            (tokens_in.max(0) as f64 * p.input + tokens_out.max(0) as f64 * p.output) / 1_000_000.0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_prices_load_and_overrides_win() {
        let mut o = BTreeMap::new();
        o.insert(
            "gpt-4o-mini".to_string(),
            Price {
                input: 1.0,
                output: 2.0,
                cached_input: None,
            },
        );
        let p = Prices::new(&o).unwrap();
        assert_eq!(p.cost("openai/gpt-4o-mini", 1_000_000, 500_000), Some(2.0));
        assert_eq!(p.cost("gpt-4o", 1_000_000, 0), Some(2.5));
        assert_eq!(p.cost("scripted", 1000, 1000), Some(0.0));
        assert_eq!(p.cost("mystery-model", 1, 1), None);
        o.insert(
            "bad".to_string(),
            Price {
                input: -1.0,
                output: 0.0,
                cached_input: None,
            },
        );
        assert!(Prices::new(&o).is_err());
    }
}
