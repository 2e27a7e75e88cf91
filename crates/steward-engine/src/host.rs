//! The engine's side of `ToolHost`: what tools may ask of the engine without touching the store.

use std::sync::Arc;
use std::time::Duration;

use steward_store::{NewRun, RunUpdate, Store, WAIT_CHILD};
use steward_tools::{ChildOutcome, ToolError, ToolHost};
use steward_types::{AgentName, NodeId, RunId, RunState};
use tokio::sync::Notify;

use crate::clock::Clock;

/// How deep `spawn_agent` may nest: an agent that spawns itself must end somewhere.
pub const MAX_SPAWN_DEPTH: usize = 8;

/// State the scheduler, the run tasks and the tool host share.
pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub node: NodeId,
    pub clock: Arc<dyn Clock>,
    /// Wakes the scheduler: there may be a run to claim.
    pub wake: Notify,
    /// Signalled whenever a run this node drove has ended.
    pub finished: Notify,
    /// Credentials for tools (`{{secret:NAME}}`), when a vault is configured.
    pub vault: Option<Arc<crate::vault::Vault>>,
}

pub(crate) struct Host(pub Arc<Shared>);

fn failed(e: impl std::fmt::Display) -> ToolError {
    ToolError::Failed(e.to_string())
}

#[async_trait::async_trait]
impl ToolHost for Host {
    fn secret(&self, name: &str) -> Option<String> {
        use steward_llm::SecretSource;
        self.0.vault.as_ref()?.secret(name)
    }

    async fn scratch_put(&self, run: &RunId, key: &str, value: &str) -> Result<(), ToolError> {
        self.0
            .store
            .scratch_put(run, key, value, self.0.clock.now_ms())
            .await
            .map_err(failed)
    }

    async fn scratch_get(&self, run: &RunId, key: &str) -> Result<Option<String>, ToolError> {
        self.0.store.scratch_get(run, key).await.map_err(failed)
    }

    async fn spawn_and_wait(
        &self,
        parent: &RunId,
        child: &RunId,
        agent: &str,
        input: &str,
    ) -> Result<ChildOutcome, ToolError> {
        let s = &self.0;
        let name = AgentName::parse(agent).map_err(|e| ToolError::InvalidArgs(e.0))?;
        if s.store.get_run(child).await.map_err(failed)?.is_none() {
            let mut depth = 0;
            let mut cur = s
                .store
                .get_run(parent)
                .await
                .map_err(failed)?
                .and_then(|r| r.parent_id);
            while let Some(p) = cur {
                depth += 1;
                if depth >= MAX_SPAWN_DEPTH {
                    return Err(ToolError::Denied(format!(
                        "spawn_agent: runs nest at most {MAX_SPAWN_DEPTH} deep"
                    )));
                }
                cur = s
                    .store
                    .get_run(&p)
                    .await
                    .map_err(failed)?
                    .and_then(|r| r.parent_id);
            }
            let spec = s
                .store
                .get_agent(&name, None)
                .await
                .map_err(failed)?
                .ok_or_else(|| {
                    ToolError::Failed(format!(
                        "no agent named {agent:?}; apply its manifest first"
                    ))
                })?;
            let new = NewRun {
                id: child.clone(),
                agent: name,
                agent_version: spec.version,
                parent_id: Some(parent.clone()),
                input: input.to_string(),
            };
            s.store
                .create_run(&new, s.clock.now_ms())
                .await
                .map_err(failed)?;
        }
        let waiting = RunUpdate {
            wait_kind: Some(WAIT_CHILD.into()),
            ..RunUpdate::state(RunState::Waiting)
        };
        if !s
            .store
            .update_run(parent, &s.node, &waiting, s.clock.now_ms())
            .await
            .map_err(failed)?
        {
            return Err(ToolError::Failed(
                "this node no longer holds the run's lease".into(),
            ));
        }
        s.wake.notify_one();
        let done = loop {
            let notified = s.finished.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let run = s
                .store
                .get_run(child)
                .await
                .map_err(failed)?
                .ok_or_else(|| failed("the child run vanished"))?;
            if run.state.is_terminal() {
                break run;
            }
            // The child may run on another node: poll as well as listen.
            let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
        };
        s.store
            .update_run(
                parent,
                &s.node,
                &RunUpdate::state(RunState::Running),
                s.clock.now_ms(),
            )
            .await
            .map_err(failed)?;
        Ok(ChildOutcome {
            run_id: done.id,
            state: done.state.to_string(),
            result: done.result,
            error: done.error_message,
        })
    }
}
