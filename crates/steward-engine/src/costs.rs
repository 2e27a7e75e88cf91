//! Cost reports: token usage from managed runs and gateway calls, priced with the price table,
//! grouped by agent, model, run or day.

use std::collections::BTreeMap;

use steward_llm::Prices;
use steward_store::UsageRow;

use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CostBy {
    Agent,
    Model,
    Run,
    Day,
}

impl CostBy {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "agent" => Ok(CostBy::Agent),
            "model" => Ok(CostBy::Model),
            "run" => Ok(CostBy::Run),
            "day" => Ok(CostBy::Day),
            other => Err(Error::InvalidRequest(format!(
                "by: {other:?} is not one of agent, model, run, day"
            ))),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct CostLine {
    pub key: String,
    pub calls: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    /// US dollars, for the calls whose model has a price.
    pub cost_usd: f64,
    /// Calls whose model has no price (add one under [llm.prices]).
    pub unpriced_calls: i64,
}

/// `YYYY-MM-DD` of a day number since the Unix epoch (proleptic Gregorian, UTC).
pub fn date_of(day: i64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

pub fn report(rows: &[UsageRow], prices: &Prices, by: CostBy) -> Vec<CostLine> {
    let mut lines: BTreeMap<String, CostLine> = BTreeMap::new();
    for r in rows {
        let key = match by {
            CostBy::Agent => r.agent.clone(),
            CostBy::Model => r.model.clone(),
            CostBy::Run => r.run_id.clone().unwrap_or_else(|| "(no run)".into()),
            CostBy::Day => date_of(r.day),
        };
        let line = lines.entry(key.clone()).or_insert_with(|| CostLine {
            key,
            ..CostLine::default()
        });
        line.calls += r.calls;
        line.tokens_in += r.tokens_in;
        line.tokens_out += r.tokens_out;
        match prices.cost(&r.model, r.tokens_in, r.tokens_out) {
            Some(c) => line.cost_usd += c,
            None => line.unpriced_calls += r.calls,
        }
    }
    let mut out: Vec<CostLine> = lines.into_values().collect();
    out.sort_by(|a, b| b.cost_usd.total_cmp(&a.cost_usd).then(a.key.cmp(&b.key)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(agent: &str, model: &str, day: i64, tin: i64, tout: i64) -> UsageRow {
        UsageRow {
            agent: agent.into(),
            model: model.into(),
            run_id: None,
            day,
            calls: 1,
            tokens_in: tin,
            tokens_out: tout,
        }
    }

    #[test]
    fn groups_and_prices() {
        let prices = Prices::new(&BTreeMap::new()).unwrap();
        let rows = [
            row("a", "openai/gpt-4o", 0, 1_000_000, 0),
            row("a", "gpt-4o-mini", 1, 0, 1_000_000),
            row("b", "mystery", 1, 5, 5),
        ];
        let by_agent = report(&rows, &prices, CostBy::Agent);
        assert_eq!(by_agent[0].key, "a");
        assert!((by_agent[0].cost_usd - 3.1).abs() < 1e-9, "{by_agent:?}");
        assert_eq!(
            (by_agent[1].key.as_str(), by_agent[1].unpriced_calls),
            ("b", 1)
        );
        let by_day = report(&rows, &prices, CostBy::Day);
        assert_eq!(
            by_day.iter().map(|l| l.key.as_str()).collect::<Vec<_>>(),
            vec!["1970-01-01", "1970-01-02"]
        );
        assert!(CostBy::parse("week").is_err());
    }

    #[test]
    fn dates() {
        assert_eq!(date_of(0), "1970-01-01");
        assert_eq!(date_of(20_778), "2026-11-21");
        assert_eq!(date_of(-1), "1969-12-31");
    }
}
