//! Runs as the management API sees them: created through the one launcher, read with their
//! journals, cancelled with their children, and resolved by a human when a step is in doubt.

use crate::*;

/// `Engine::runs()`.
pub struct Runs<'a>(pub(crate) &'a Engine);

impl Runs<'_> {
    /// Queues a run of the agent's latest version.
    pub async fn create(&self, agent: &str, input: &str) -> Result<RunRecord> {
        let a = self.0.agents().get(agent, None).await?;
        let run = NewRun {
            id: self.0.inner.shared.clock.new_run_id(),
            agent: AgentName::parse(&a.name).map_err(|e| Error::InvalidRequest(e.0))?,
            agent_version: a.version,
            parent_id: None,
            input: input.to_string(),
        };
        let (rec, _) = self
            .0
            .inner
            .shared
            .launch
            .create(run, launch::Origin::Api)
            .await?;
        self.0.inner.shared.wake.notify_one();
        Ok(rec)
    }

    pub async fn get(&self, id: &str) -> Result<RunRecord> {
        let id = RunId::parse(id).map_err(|e| Error::InvalidRequest(e.0))?;
        self.0
            .store()
            .get_run(&id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no run {id}")))
    }

    pub async fn list(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        Ok(self.0.store().list_runs(filter).await?)
    }

    pub async fn journal(
        &self,
        id: &str,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<JournalEntry>> {
        let run = self.get(id).await?;
        Ok(self
            .0
            .store()
            .load_journal(&run.id, after, limit.clamp(1, 10_000))
            .await?)
    }

    /// Cancels a run and, below it, every unfinished child run.
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<RunRecord> {
        let reason = reason.trim();
        if reason.is_empty() || reason.len() > 1000 {
            return Err(Error::InvalidRequest(
                "reason: required, at most 1000 characters".into(),
            ));
        }
        let run = self.get(id).await?;
        if run.state.is_terminal() {
            return Err(Error::Conflict(format!(
                "run {} has already {}",
                run.id, run.state
            )));
        }
        let mut stack = vec![(run.id.clone(), reason.to_string())];
        while let Some((rid, why)) = stack.pop() {
            self.0
                .store()
                .request_cancel(&rid, &why, self.0.inner.shared.clock.now_ms())
                .await?;
            self.0
                .inner
                .shared
                .active
                .stop(&rid, Stop::Cancel(why.clone()));
            let children = self
                .0
                .store()
                .list_runs(&RunFilter {
                    parent: Some(rid.clone()),
                    limit: 10_000,
                    ..Default::default()
                })
                .await?;
            for c in children.into_iter().filter(|c| !c.state.is_terminal()) {
                stack.push((c.id, format!("parent {rid} cancelled: {why}")));
            }
        }
        self.get(id).await
    }

    /// A human's answer to a run parked on an in-doubt step: retry the step, or fail the run.
    pub async fn resolve(&self, id: &str, retry: bool) -> Result<RunRecord> {
        let run = self.get(id).await?;
        let rec = self
            .0
            .store()
            .resolve_waiting(&run.id, retry, self.0.inner.shared.clock.now_ms())
            .await
            .map_err(|e| match e {
                steward_store::Error::Conflict(m) => Error::Conflict(m),
                other => other.into(),
            })?
            .ok_or_else(|| Error::NotFound(format!("no run {id}")))?;
        self.0.inner.shared.wake.notify_one();
        Ok(rec)
    }
}
