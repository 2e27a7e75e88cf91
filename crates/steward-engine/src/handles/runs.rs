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

    /// Starts a fork of run `id`: a new run of the same agent version whose journal holds the
    /// source's steps before `fork.at` (replayed, never redone or paid again) and whose model
    /// sees `fork`'s edits from step `fork.at` on.
    pub async fn fork(&self, id: &str, mut fork: steward_store::RunFork) -> Result<RunRecord> {
        let source = self.get(id).await?;
        if crate::compensation::steps_of(&source).is_some() {
            return Err(Error::InvalidRequest(format!(
                "run {id} undoes another run's steps (a compensation); fork the run it compensates"
            )));
        }
        let at = fork.at;
        let before = if at > 0 {
            self.0
                .store()
                .load_journal(&source.id, None, at.saturating_mul(2))
                .await?
        } else {
            Vec::new()
        };
        // Every step before `at` must be whole: a step in doubt cannot be replayed.
        for seq in 0..at {
            let phases = before.iter().filter(|e| e.seq == seq).count();
            if phases < 2 {
                let taken = before.iter().filter(|e| e.phase == 1).count();
                return Err(Error::InvalidRequest(format!(
                    "at: run {id} has {taken} completed steps, so a fork departs at a step from 0 to {taken}; {at} is past them"
                )));
            }
        }
        let agent = self
            .0
            .agents()
            .get(&source.agent, Some(source.agent_version))
            .await?;
        let spec: AgentSpec = serde_json::from_str(&agent.spec).map_err(|e| {
            steward_store::Error::Corrupt(format!("the stored spec of {}: {e}", agent.name))
        })?;
        if let Some(m) = &fork.model {
            if m == steward_llm::SCRIPTED_LABEL {
                if !spec.is_scripted() {
                    return Err(Error::InvalidRequest(
                        "model: the scripted model plays an agent's script, and this agent has none; name an alias or provider/model".into(),
                    ));
                }
                fork.model = None;
            } else {
                self.0
                    .inner
                    .kernel
                    .router
                    .providers()
                    .deployments(m)
                    .map_err(|e| Error::InvalidRequest(format!("model: {e}")))?;
            }
        }
        fork.source = source.id.clone();
        let run = NewRun {
            id: self.0.inner.shared.clock.new_run_id(),
            agent: AgentName::parse(&source.agent)
                .map_err(|e| steward_store::Error::Corrupt(e.0))?,
            agent_version: source.agent_version,
            parent_id: None,
            input: source.input.clone(),
        };
        let rec = self.0.inner.shared.launch.fork(run, &fork).await?;
        self.0.inner.shared.wake.notify_one();
        Ok(rec)
    }

    /// What run `id` was forked from, if it is a fork.
    pub async fn fork_of(&self, id: &RunId) -> Result<Option<steward_store::RunFork>> {
        Ok(self.0.store().run_fork(id).await?)
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
