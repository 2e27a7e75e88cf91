//! The one place runs are created. Every path that starts a run — the API, `spawn_agent`,
//! a restart, a compensation, a supervisor, a schedule, a merge conflict's resolver — comes here,
//! so each new run is held to the input limit and leaves an audit record naming where it came
//! from, written in the commit that creates it.

use std::sync::Arc;

use steward_store::{NewRun, RunRecord, RunStore};

use crate::clock::Clock;
use crate::identities::Identities;
pub(crate) use steward_orchestrate::{LaunchError, Origin};

/// Creates runs: shared by every component that starts one.
#[derive(Clone)]
pub(crate) struct Launcher {
    store: Arc<dyn RunStore>,
    clock: Arc<dyn Clock>,
    identities: Arc<Identities>,
    max_input_bytes: usize,
}

impl Launcher {
    pub(crate) fn new(
        store: Arc<dyn RunStore>,
        clock: Arc<dyn Clock>,
        identities: Arc<Identities>,
        max_input_bytes: usize,
    ) -> Self {
        Launcher {
            store,
            clock,
            identities,
            max_input_bytes,
        }
    }

    /// Creates `run` unless one with its id exists (ids of runs that must start once are
    /// derived from what starts them); whether it was created now. Only a new run is audited.
    pub(crate) async fn create(
        &self,
        run: NewRun,
        origin: Origin,
    ) -> Result<(RunRecord, bool), LaunchError> {
        if run.input.len() > self.max_input_bytes {
            return Err(LaunchError::TooLarge {
                size: run.input.len(),
                limit: self.max_input_bytes,
            });
        }
        let now = self.clock.now_ms();
        let audit = self.audit_of(&run, &origin, now).await?;
        Ok(self.store.create_run_audited(&run, &audit, now).await?)
    }

    /// Creates `run` as `fork` of its source: its journal up to the fork's step copied, in the
    /// commit that creates it, with the audit record that names the source.
    pub(crate) async fn fork(
        &self,
        run: NewRun,
        fork: &steward_store::RunFork,
    ) -> Result<RunRecord, LaunchError> {
        for text in [Some(&run.input), fork.input.as_ref()]
            .into_iter()
            .flatten()
        {
            if text.len() > self.max_input_bytes {
                return Err(LaunchError::TooLarge {
                    size: text.len(),
                    limit: self.max_input_bytes,
                });
            }
        }
        let now = self.clock.now_ms();
        let origin = Origin::Fork {
            source: fork.source.to_string(),
            at: fork.at,
        };
        let audit = self.audit_of(&run, &origin, now).await?;
        Ok(self.store.fork_run_audited(&run, fork, &audit, now).await?)
    }

    /// The audit record of `run`'s creation from `origin`.
    async fn audit_of(
        &self,
        run: &NewRun,
        origin: &Origin,
        now: i64,
    ) -> Result<String, LaunchError> {
        // The new run's chain, as its own actions will carry it.
        let owner = self.identities.owner(run.agent.as_str()).await?;
        let chain = crate::authority::run_chain(
            owner.as_deref(),
            run.parent_id.as_ref().map(|p| p.as_str()),
            run.agent.as_str(),
            run.id.as_str(),
        );
        let principal = match &run.parent_id {
            Some(p) => format!("run:{p}"),
            None => format!("steward:{}", origin.describe()),
        };
        Ok(steward_gov::AuditRecord {
            outcome: Some(format!("origin:{}", origin.describe())),
            ..steward_gov::AuditRecord::new(
                steward_gov::AuditEvent::Lifecycle,
                now,
                principal,
                chain,
                "run.create",
                &format!("agent:{}@{}", run.agent, run.agent_version),
            )
            .in_run(Some(run.id.to_string()), None)
        }
        .to_json())
    }
}

#[async_trait::async_trait]
impl steward_orchestrate::Launch for Launcher {
    async fn create(&self, run: NewRun, origin: Origin) -> Result<(RunRecord, bool), LaunchError> {
        Launcher::create(self, run, origin).await
    }
}
