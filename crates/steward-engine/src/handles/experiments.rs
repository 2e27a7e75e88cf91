//! Datasets (inputs with what is expected of them, given by hand or taken from past runs) and
//! experiments (an agent version run over a dataset, its runs scored by the evaluators named),
//! as the management API sees them.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::*;

/// `Engine::experiments()`.
pub struct Experiments<'a>(pub(crate) &'a Engine);

/// An input, and what a good run's result contains (for `result_contains_expected`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    pub input: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
}

/// An experiment's item with its run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunItem {
    pub input: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    pub run_id: String,
}

const MAX_ITEMS: usize = 1000;

fn check_name(what: &str, name: &str) -> Result<()> {
    handles::check_resource_name(what, name, 63)
}

impl Experiments<'_> {
    /// Creates or replaces dataset `name`.
    pub async fn put_dataset(&self, name: &str, items: Vec<Item>) -> Result<Vec<Item>> {
        check_name("name", name)?;
        if items.is_empty() || items.len() > MAX_ITEMS {
            return Err(Error::InvalidRequest(format!(
                "items: from 1 to {MAX_ITEMS}, found {}",
                items.len()
            )));
        }
        let limit = self.0.inner.cfg.max_input_bytes;
        for (i, it) in items.iter().enumerate() {
            if it.input.len() > limit {
                return Err(Error::PayloadTooLarge(format!(
                    "items[{i}].input: {} bytes; the limit is {limit} (engine.max_input_bytes)",
                    it.input.len()
                )));
            }
            if it.expected.as_ref().is_some_and(|e| e.len() > limit) {
                return Err(Error::PayloadTooLarge(format!(
                    "items[{i}].expected: longer than {limit} bytes"
                )));
            }
        }
        let json = serde_json::to_string(&items).unwrap_or_default();
        self.0
            .store()
            .put_dataset(name, &json, self.0.inner.shared.clock.now_ms())
            .await?;
        Ok(items)
    }

    pub async fn dataset(&self, name: &str) -> Result<Vec<Item>> {
        check_name("name", name)?;
        let d = self
            .0
            .store()
            .get_dataset(name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no dataset {name:?}")))?;
        Ok(serde_json::from_str(&d.items).unwrap_or_default())
    }

    pub async fn datasets(&self) -> Result<Vec<(String, usize, i64)>> {
        Ok(self
            .0
            .store()
            .list_datasets()
            .await?
            .into_iter()
            .map(|d| {
                let n = serde_json::from_str::<Vec<Item>>(&d.items).map_or(0, |v| v.len());
                (d.name, n, d.updated_at)
            })
            .collect())
    }

    /// Adds past runs to dataset `name` (made if new): each run's input, and its result as
    /// what is expected.
    pub async fn add_runs(&self, name: &str, runs: &[String]) -> Result<Vec<Item>> {
        check_name("name", name)?;
        let mut items = match self.dataset(name).await {
            Ok(items) => items,
            Err(Error::NotFound(_)) => Vec::new(),
            Err(e) => return Err(e),
        };
        for (i, id) in runs.iter().enumerate() {
            let run = self.0.runs().get(id).await.map_err(|e| match e {
                Error::NotFound(m) | Error::InvalidRequest(m) => {
                    Error::InvalidRequest(format!("runs[{i}]: {m}"))
                }
                other => other,
            })?;
            items.push(Item {
                input: run.input,
                expected: run.result,
            });
        }
        self.put_dataset(name, items).await
    }

    /// Runs agent `agent` (at `version`, or its latest) over dataset `dataset`, one run per
    /// item, and has `evaluators` score each run once it has ended.
    pub async fn start(
        &self,
        dataset: &str,
        agent: &str,
        version: Option<i64>,
        evaluators: &[String],
    ) -> Result<steward_store::ExperimentRecord> {
        let items = self.dataset(dataset).await?;
        let a = self.0.agents().get(agent, version).await?;
        let known: Vec<String> = self
            .0
            .store()
            .list_evaluators()
            .await?
            .into_iter()
            .map(|e| e.name)
            .collect();
        if evaluators.is_empty() || evaluators.len() > 20 {
            return Err(Error::InvalidRequest("evaluators: from 1 to 20".into()));
        }
        for (i, e) in evaluators.iter().enumerate() {
            if !known.contains(e) {
                return Err(Error::InvalidRequest(format!(
                    "evaluators[{i}]: no evaluator {e:?}"
                )));
            }
        }
        let clock = &self.0.inner.shared.clock;
        let id = format!("exp_{}", uuid::Uuid::now_v7().simple());
        let ns = uuid::Uuid::from_bytes([0x5d; 16]);
        let run_items: Vec<RunItem> = items
            .iter()
            .enumerate()
            .map(|(i, it)| RunItem {
                input: it.input.clone(),
                expected: it.expected.clone(),
                run_id: RunId::from_uuid(uuid::Uuid::new_v5(&ns, format!("{id}:{i}").as_bytes()))
                    .to_string(),
            })
            .collect();
        let record = steward_store::ExperimentRecord {
            id: id.clone(),
            dataset: dataset.to_string(),
            agent: a.name.clone(),
            agent_version: a.version,
            evaluators: serde_json::to_string(evaluators).unwrap_or_default(),
            items: serde_json::to_string(&run_items).unwrap_or_default(),
            created_at: clock.now_ms(),
        };
        let scoring: Vec<(String, String, Option<String>)> = run_items
            .iter()
            .flat_map(|it| {
                evaluators
                    .iter()
                    .map(|e| (it.run_id.clone(), e.clone(), it.expected.clone()))
            })
            .collect();
        // The experiment first, then its runs (each created once: their ids are derived).
        self.0.store().put_experiment(&record, &scoring).await?;
        let name = AgentName::parse(&a.name).map_err(|e| Error::InvalidRequest(e.0))?;
        for it in &run_items {
            let run = NewRun {
                id: RunId::parse(&it.run_id).map_err(|e| Error::InvalidRequest(e.0))?,
                agent: name.clone(),
                agent_version: a.version,
                parent_id: None,
                input: it.input.clone(),
            };
            self.0
                .inner
                .shared
                .launch
                .create(run, launch::Origin::Experiment(id.clone()))
                .await?;
        }
        self.0.inner.shared.wake.notify_one();
        Ok(record)
    }

    /// Experiment `id` with each item's run and scores, and its summary: runs ended and
    /// succeeded, cost, mean duration, and each evaluator's mean score and pass rate.
    pub async fn get(&self, id: &str) -> Result<Value> {
        let e = self
            .0
            .store()
            .get_experiment(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no experiment {id:?}")))?;
        self.report(e).await
    }

    pub async fn list(&self) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        for e in self.0.store().list_experiments(100).await? {
            let mut r = self.report(e).await?;
            if let Some(o) = r.as_object_mut() {
                o.remove("items");
            }
            out.push(r);
        }
        Ok(out)
    }

    async fn report(&self, e: steward_store::ExperimentRecord) -> Result<Value> {
        let store = self.0.store();
        let items: Vec<RunItem> = serde_json::from_str(&e.items).unwrap_or_default();
        let evaluators: Vec<String> = serde_json::from_str(&e.evaluators).unwrap_or_default();
        let mut usage = store.usage(e.created_at - 3_600_000).await?;
        let ids: std::collections::HashSet<&str> =
            items.iter().map(|i| i.run_id.as_str()).collect();
        usage.retain(|u| u.run_id.as_deref().is_some_and(|r| ids.contains(r)));
        let cost: f64 = crate::costs::report(&usage, &self.0.inner.prices, crate::CostBy::Run)
            .iter()
            .map(|l| l.cost_usd)
            .sum();
        let (mut ended, mut succeeded, mut took) = (0usize, 0usize, 0i64);
        let mut by_evaluator: std::collections::BTreeMap<&str, (Vec<f64>, usize, usize)> =
            evaluators
                .iter()
                .map(|e| (e.as_str(), (Vec::new(), 0, 0)))
                .collect();
        let mut rows = Vec::with_capacity(items.len());
        for it in &items {
            let run = match RunId::parse(&it.run_id) {
                Ok(rid) => store.get_run(&rid).await?,
                Err(_) => None,
            };
            let scores = store.list_scores(Some(&it.run_id), None, 100).await?;
            if let Some(r) = &run {
                if r.state.is_terminal() {
                    ended += 1;
                    took += r.updated_at - r.created_at;
                    if r.state == steward_types::RunState::Succeeded {
                        succeeded += 1;
                    }
                }
            }
            let mut shown = serde_json::Map::new();
            for s in scores.iter().filter(|s| evaluators.contains(&s.evaluator)) {
                if let Some(slot) = by_evaluator.get_mut(s.evaluator.as_str()) {
                    if let Some(v) = s.score {
                        slot.0.push(v);
                    }
                    if let Some(p) = s.passed {
                        slot.1 += 1;
                        slot.2 += usize::from(p == 1);
                    }
                }
                shown.insert(
                    s.evaluator.clone(),
                    json!({"score": s.score, "passed": s.passed.map(|p| p == 1), "reason": s.reason}),
                );
            }
            rows.push(json!({
                "input": it.input,
                "expected": it.expected,
                "run_id": it.run_id,
                "state": run.as_ref().map(|r| r.state.to_string()),
                "result": run.as_ref().and_then(|r| r.result.clone()),
                "duration_ms": run.as_ref().filter(|r| r.state.is_terminal()).map(|r| r.updated_at - r.created_at),
                "scores": shown,
            }));
        }
        let per_evaluator: serde_json::Map<String, Value> = by_evaluator
            .into_iter()
            .map(|(name, (scores, judged, passed))| {
                let mean =
                    (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64);
                let rate = (judged > 0).then(|| passed as f64 / judged as f64);
                (
                    name.to_string(),
                    json!({"scored": scores.len(), "mean": mean, "pass_rate": rate}),
                )
            })
            .collect();
        Ok(json!({
            "id": e.id,
            "dataset": e.dataset,
            "agent": e.agent,
            "agent_version": e.agent_version,
            "evaluators": evaluators,
            "created_at": e.created_at,
            "summary": {
                "runs": items.len(),
                "ended": ended,
                "succeeded": succeeded,
                "cost_usd": cost,
                "mean_duration_ms": (ended > 0).then(|| took as f64 / ended as f64),
                "evaluators": per_evaluator,
            },
            "items": rows,
        }))
    }
}
