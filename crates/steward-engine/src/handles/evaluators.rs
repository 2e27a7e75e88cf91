//! Evaluators as the management API sees them: put (checked first), listed, removed, a run
//! scored on request, and the scores they gave.

use crate::evaluation::{self, EvaluatorSpec};
use crate::*;

/// `Engine::evaluators()`.
pub struct Evaluators<'a>(pub(crate) &'a Engine);

fn check_name(name: &str) -> Result<()> {
    // A judge's calls are made as agent `eval-<name>`: the name must make an agent's.
    handles::check_resource_name("name", name, 56)
}

impl Evaluators<'_> {
    pub async fn put(
        &self,
        name: &str,
        spec: EvaluatorSpec,
    ) -> Result<(EvaluatorSpec, steward_store::EvaluatorRecord)> {
        check_name(name)?;
        spec.check().map_err(Error::InvalidRequest)?;
        if let Some(j) = &spec.judge {
            self.0
                .inner
                .kernel
                .router
                .providers()
                .deployments(&j.model)
                .map_err(|e| Error::InvalidRequest(format!("judge.model: {e}")))?;
        }
        let json = serde_json::to_string(&spec)
            .map_err(|e| Error::InvalidRequest(format!("the evaluator: {e}")))?;
        let rec = self
            .0
            .store()
            .put_evaluator(name, &json, self.0.inner.shared.clock.now_ms())
            .await?;
        Ok((spec, rec))
    }

    pub async fn list(&self) -> Result<Vec<(EvaluatorSpec, steward_store::EvaluatorRecord)>> {
        Ok(self
            .0
            .store()
            .list_evaluators()
            .await?
            .into_iter()
            .filter_map(|r| Some((serde_json::from_str(&r.spec).ok()?, r)))
            .collect())
    }

    pub async fn delete(&self, name: &str) -> Result<()> {
        check_name(name)?;
        if self.0.store().delete_evaluator(name).await? {
            Ok(())
        } else {
            Err(Error::NotFound(format!("no evaluator {name:?}")))
        }
    }

    /// Scores run `run` with evaluator `name` now (the run must have ended); a run it scored
    /// before keeps its first score.
    pub async fn score(&self, name: &str, run: &str) -> Result<steward_store::ScoreRecord> {
        check_name(name)?;
        let (spec, _) = self
            .list()
            .await?
            .into_iter()
            .find(|(_, r)| r.name == name)
            .ok_or_else(|| Error::NotFound(format!("no evaluator {name:?}")))?;
        let run = self.0.runs().get(run).await?;
        if !run.state.is_terminal() {
            return Err(Error::Conflict(format!(
                "run {} is {}: a run is scored once it has ended",
                run.id, run.state
            )));
        }
        let store = self.0.store();
        if let Some(s) = store
            .list_scores(Some(run.id.as_str()), Some(name), 1)
            .await?
            .pop()
        {
            return Ok(s);
        }
        let s = evaluation::score(&self.0.inner, name, &spec, &run, None).await?;
        store.put_score(&s).await?;
        Ok(store
            .list_scores(Some(run.id.as_str()), Some(name), 1)
            .await?
            .pop()
            .unwrap_or(s))
    }

    /// Scores given (sampled runs only), newest first.
    pub async fn scores(
        &self,
        run: Option<&str>,
        evaluator: Option<&str>,
        limit: i64,
    ) -> Result<Vec<steward_store::ScoreRecord>> {
        if let Some(r) = run {
            RunId::parse(r).map_err(|e| Error::InvalidRequest(format!("run: {}", e.0)))?;
        }
        if let Some(e) = evaluator {
            check_name(e)?;
        }
        Ok(self
            .0
            .store()
            .list_scores(run, evaluator, limit.clamp(1, 10_000))
            .await?)
    }
}
