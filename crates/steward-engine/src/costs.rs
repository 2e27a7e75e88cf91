//! Cost reports: token usage from managed runs and gateway calls, priced with the price table,
//! grouped by agent, model, run, task, tool, outcome, day or hour — and what an outcome costs: all
//! spend on runs (or tasks, failed attempts included) over the runs that succeeded (the tasks
//! done).

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
    /// UTC hours (`2026-12-07 14:00`): what the console charts.
    Hour,
    /// The task a run served (`(no task)` for the rest).
    Task,
    /// Tool calls by tool.
    Tool,
    /// How the run ended (`succeeded`, `failed`, …; `(no run)` for gateway calls outside runs).
    Outcome,
}

impl CostBy {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "agent" => Ok(CostBy::Agent),
            "model" => Ok(CostBy::Model),
            "run" => Ok(CostBy::Run),
            "day" => Ok(CostBy::Day),
            "hour" => Ok(CostBy::Hour),
            "task" => Ok(CostBy::Task),
            "tool" => Ok(CostBy::Tool),
            "outcome" => Ok(CostBy::Outcome),
            other => Err(Error::InvalidRequest(format!(
                "by: {other:?} is not one of agent, model, run, task, tool, outcome, day, hour"
            ))),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct CostLine {
    pub key: String,
    /// Model calls (tool calls, for a report by tool).
    pub calls: i64,
    /// Tool calls of managed runs.
    pub tool_calls: i64,
    /// How the run or task ended, in a report by run or by task.
    pub outcome: Option<String>,
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

fn is_tool(r: &UsageRow) -> bool {
    r.kind == "tool"
}

pub fn report(rows: &[UsageRow], prices: &Prices, by: CostBy) -> Vec<CostLine> {
    let mut lines: BTreeMap<String, CostLine> = BTreeMap::new();
    for r in rows {
        if by == CostBy::Tool && !is_tool(r) {
            continue;
        }
        let (key, outcome) = match by {
            CostBy::Agent => (r.agent.clone(), None),
            CostBy::Model if is_tool(r) => continue,
            CostBy::Model => (r.model.clone(), None),
            CostBy::Run => (
                r.run_id.clone().unwrap_or_else(|| "(no run)".into()),
                r.run_state.clone(),
            ),
            CostBy::Day => (date_of(r.hour.div_euclid(24)), None),
            CostBy::Hour => (
                format!(
                    "{} {:02}:00",
                    date_of(r.hour.div_euclid(24)),
                    r.hour.rem_euclid(24)
                ),
                None,
            ),
            CostBy::Task => (
                r.task_id.clone().unwrap_or_else(|| "(no task)".into()),
                r.task_state.clone(),
            ),
            CostBy::Tool => (r.model.clone(), None),
            CostBy::Outcome => (
                r.run_state.clone().unwrap_or_else(|| "(no run)".into()),
                None,
            ),
        };
        let line = lines.entry(key.clone()).or_insert_with(|| CostLine {
            key,
            outcome,
            ..CostLine::default()
        });
        if is_tool(r) {
            line.tool_calls += r.calls;
            if by == CostBy::Tool {
                line.calls += r.calls;
            }
            continue;
        }
        line.calls += r.calls;
        line.tokens_in += r.tokens_in;
        line.tokens_out += r.tokens_out;
        // Calls cut off before their answer was recorded: booked in dollars, tokens unknown.
        line.cost_usd += r.booked_nanos as f64 / 1e9;
        match prices.cost(&r.model, r.tokens_in, r.tokens_out) {
            Some(c) => line.cost_usd += c,
            // A call that used no tokens (refused, failed upstream) cost nothing, priced or not.
            None if r.tokens_in == 0 && r.tokens_out == 0 => {}
            None => line.unpriced_calls += r.calls,
        }
    }
    let mut out: Vec<CostLine> = lines.into_values().collect();
    out.sort_by(|a, b| b.cost_usd.total_cmp(&a.cost_usd).then(a.key.cmp(&b.key)));
    out
}

/// What outcomes cost: every run's spend over the runs that succeeded (and were not rejected by
/// an evaluator: `succeeded` or `accepted`), and every task's spend (all its runs, failed
/// attempts included) over the tasks done.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OutcomeCosts {
    pub runs: i64,
    pub successful_runs: i64,
    pub cost_per_successful_run_usd: Option<f64>,
    pub tasks: i64,
    pub successful_tasks: i64,
    pub cost_per_successful_task_usd: Option<f64>,
}

pub fn outcomes(rows: &[UsageRow], prices: &Prices) -> OutcomeCosts {
    let runs = report(rows, prices, CostBy::Run);
    let runs: Vec<&CostLine> = runs.iter().filter(|l| l.outcome.is_some()).collect();
    let tasks = report(rows, prices, CostBy::Task);
    let tasks: Vec<&CostLine> = tasks.iter().filter(|l| l.outcome.is_some()).collect();
    let per = |lines: &[&CostLine], ok: &[&str]| {
        let n = lines
            .iter()
            .filter(|l| l.outcome.as_deref().is_some_and(|o| ok.contains(&o)))
            .count() as i64;
        let spent: f64 = lines.iter().map(|l| l.cost_usd).sum();
        (n, (n > 0).then(|| spent / n as f64))
    };
    let (successful_runs, cost_per_successful_run_usd) = per(&runs, &["succeeded", "accepted"]);
    let (successful_tasks, cost_per_successful_task_usd) = per(&tasks, &["done"]);
    OutcomeCosts {
        runs: runs.len() as i64,
        successful_runs,
        cost_per_successful_run_usd,
        tasks: tasks.len() as i64,
        successful_tasks,
        cost_per_successful_task_usd,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row of `day` (its hour 0, or `hour` added by the caller).
    fn row(agent: &str, model: &str, day: i64, tin: i64, tout: i64) -> UsageRow {
        UsageRow {
            kind: "model".into(),
            agent: agent.into(),
            model: model.into(),
            run_id: None,
            task_id: None,
            task_state: None,
            run_state: None,
            hour: day * 24,
            calls: 1,
            tokens_in: tin,
            tokens_out: tout,
            booked_nanos: 0,
        }
    }

    #[test]
    fn groups_and_prices() {
        let prices = Prices::new(&BTreeMap::new()).unwrap();
        let rows = [
            row("a", "openai/gpt-4o", 0, 1_000_000, 0),
            row("a", "gpt-4o-mini", 1, 0, 1_000_000),
            row("b", "mystery", 1, 5, 5),
            // A call cut off before its answer was recorded, booked at its $0.25 hold.
            UsageRow {
                booked_nanos: 250_000_000,
                ..row("c", "openai/gpt-4o", 1, 0, 0)
            },
        ];
        let by_agent = report(&rows, &prices, CostBy::Agent);
        assert_eq!(by_agent[0].key, "a");
        assert!((by_agent[0].cost_usd - 3.1).abs() < 1e-9, "{by_agent:?}");
        let b = by_agent.iter().find(|l| l.key == "b").unwrap();
        assert_eq!(b.unpriced_calls, 1);
        let by_day = report(&rows, &prices, CostBy::Day);
        assert_eq!(
            by_day.iter().map(|l| l.key.as_str()).collect::<Vec<_>>(),
            vec!["1970-01-01", "1970-01-02"]
        );
        let late = UsageRow {
            hour: 24 + 23,
            ..row("a", "mystery", 0, 1, 1)
        };
        let by_hour = report(&[rows[0].clone(), late], &prices, CostBy::Hour);
        assert_eq!(
            by_hour.iter().map(|l| l.key.as_str()).collect::<Vec<_>>(),
            vec!["1970-01-01 00:00", "1970-01-02 23:00"]
        );
        let c = by_agent.iter().find(|l| l.key == "c").unwrap();
        assert_eq!((c.calls, c.unpriced_calls), (1, 0));
        assert!((c.cost_usd - 0.25).abs() < 1e-9, "{c:?}");
        assert!(CostBy::parse("week").is_err());
    }

    /// A task done on its second run costs both runs; a failed task counts in the spend, not in
    /// the successes; tool calls are counted by tool.
    #[test]
    fn outcomes_carry_their_failed_attempts() {
        let prices = Prices::new(&BTreeMap::new()).unwrap();
        let run = |run: &str, run_state: &str, task: &str, task_state: &str| UsageRow {
            run_id: Some(run.into()),
            run_state: Some(run_state.into()),
            task_id: Some(task.into()),
            task_state: Some(task_state.into()),
            // $1 of gpt-4o-mini output.
            ..row("a", "gpt-4o-mini", 0, 0, 1_666_667)
        };
        let rows = [
            run("r1", "failed", "t1", "done"),
            run("r2", "succeeded", "t1", "done"),
            run("r3", "failed", "t2", "dead"),
            UsageRow {
                kind: "tool".into(),
                calls: 3,
                ..run("r2", "succeeded", "t1", "done")
            },
        ];
        let o = outcomes(&rows, &prices);
        assert_eq!(
            (o.runs, o.successful_runs, o.tasks, o.successful_tasks),
            (3, 1, 2, 1)
        );
        let per_task = o.cost_per_successful_task_usd.unwrap();
        assert!((per_task - 3.0).abs() < 1e-3, "{o:?}");
        let by_task = report(&rows, &prices, CostBy::Task);
        assert_eq!(by_task[0].key, "t1");
        assert_eq!(by_task[0].outcome.as_deref(), Some("done"));
        assert_eq!((by_task[0].calls, by_task[0].tool_calls), (2, 3));
        let by_tool = report(&rows, &prices, CostBy::Tool);
        assert_eq!((by_tool.len(), by_tool[0].calls), (1, 3));
        let by_outcome = report(&rows, &prices, CostBy::Outcome);
        assert_eq!(by_outcome[0].key, "failed");
    }

    #[test]
    fn dates() {
        assert_eq!(date_of(0), "1970-01-01");
        assert_eq!(date_of(20_778), "2026-11-21");
        assert_eq!(date_of(-1), "1969-12-31");
    }
}
