//! The engine's side of `ToolHost`: what tools may ask of the engine without touching the store.

use std::sync::Arc;
use std::time::Duration;

use steward_gov::delegation::Requested;
use steward_gov::Scope;
use steward_store::{DelegationRecord, NewRun, RunUpdate, Store, WAIT_CHILD};
use steward_tools::{ChildOutcome, Grant, ToolError, ToolHost};
use steward_types::{AgentName, NodeId, RunId, RunState};
use tokio::sync::Notify;

use crate::clock::Clock;

/// How deep `spawn_agent` may nest: an agent that spawns itself must end somewhere.
pub const MAX_SPAWN_DEPTH: usize = 8;

/// State the scheduler, the run tasks and the tool host share.
pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    /// Where every new run is created.
    pub launch: crate::launch::Launcher,
    pub node: NodeId,
    pub clock: Arc<dyn Clock>,
    /// Wakes the scheduler: there may be a run to claim.
    pub wake: Notify,
    /// Signalled whenever a run this node drove has ended.
    pub finished: Notify,
    /// The runs this node drives now, each with the claim it drives it under.
    pub active: Arc<crate::active::ActiveRuns>,
    /// Credentials for tools (`{{secret:NAME}}`), when a vault is configured.
    pub vault: Option<Arc<crate::vault::Vault>>,
    /// Runs' sandboxes, when code execution is configured.
    pub sandboxes: Option<Arc<crate::sandboxes::SandboxService>>,
    /// Decides the secrets a run's tools send (`secret.use`), as every other action of a run.
    pub authority: crate::authority::Authority,
    /// Task queues, and the tasks runs serve.
    pub tasks: crate::tasks::Tasks,
    /// Durable timers that enqueue tasks and start runs.
    pub schedules: crate::schedules::Schedules,
    /// Supervision trees.
    pub supervisors: crate::supervisors::Supervisors,
    /// Agents' branches landing on git repositories.
    pub merges: Arc<crate::merge_queue::MergeQueue>,
    /// Agents' memory: the store's rows and this node's index over them.
    pub memory: Arc<steward_memory::Memory>,
}

impl Shared {
    /// The claim this node drives `run` under, if it drives it.
    pub(crate) fn claim_of(&self, run: &RunId) -> Option<steward_store::Claim> {
        let active = self.active.lock().ok()?;
        active.get(run).map(|a| a.held.claim())
    }
}

pub(crate) struct Host(pub Arc<Shared>);

fn failed(e: impl std::fmt::Display) -> ToolError {
    ToolError::Failed(e.to_string())
}

/// The delegation link that holds what a run was granted by the run that spawned it.
pub(crate) fn run_link(run: &RunId) -> String {
    format!("run:{run}")
}

impl Host {
    /// Before sandbox step `seq` of `run`: its workspace here is as its last saved state left
    /// it (restored, if the run moved here); returns that state's hash.
    async fn follow(
        &self,
        run: &RunId,
        seq: i64,
        changes: bool,
    ) -> Result<Option<String>, ToolError> {
        let sandboxes = self.sandboxes()?;
        let dir = sandboxes.workspace(run)?;
        crate::workspace_sync::follow(&*self.0.store, run, seq, &dir, sandboxes.owner(), changes)
            .await
    }

    /// After sandbox step `seq` of `run`: its workspace is saved where every node can read it,
    /// before the step's outcome is journaled.
    async fn keep(&self, run: &RunId, seq: i64, before: Option<&str>) -> Result<(), ToolError> {
        let dir = self.sandboxes()?.workspace(run)?;
        crate::workspace_sync::keep(
            &*self.0.store,
            run,
            seq,
            &dir,
            before,
            self.0.clock.now_ms(),
        )
        .await
    }

    /// The run a tool acts for.
    pub(crate) async fn run_record(
        &self,
        run: &RunId,
    ) -> Result<steward_store::RunRecord, ToolError> {
        self.0
            .store
            .get_run(run)
            .await
            .map_err(failed)?
            .ok_or_else(|| failed("the run vanished"))
    }

    /// The run's agent and the spec it runs with.
    async fn spec_of(
        &self,
        run: &RunId,
    ) -> Result<Option<(String, steward_types::AgentSpec)>, ToolError> {
        let s = &self.0;
        let rec = self.run_record(run).await?;
        let name = AgentName::parse(&rec.agent).map_err(|e| failed(e.0))?;
        Ok(
            match s
                .store
                .get_agent(&name, Some(rec.agent_version))
                .await
                .map_err(failed)?
            {
                Some(a) => Some((rec.agent, serde_json::from_str(&a.spec).map_err(failed)?)),
                None => None,
            },
        )
    }

    /// The secrets the run's spec asks for, each decided by policy (`secret.use`) and audited:
    /// one refused, or missing from the vault, refuses the exec.
    async fn granted_secrets(
        &self,
        run: &RunId,
        spec: Option<&(String, steward_types::AgentSpec)>,
    ) -> Result<Vec<(String, String)>, ToolError> {
        let Some((_, spec)) = spec else {
            return Ok(Vec::new());
        };
        let names = spec
            .sandbox
            .as_ref()
            .map(|sb| sb.secrets.clone())
            .unwrap_or_default();
        let mut granted = Vec::new();
        for name in names {
            let value = self.decided_secret(run, &name, "sandbox").await?;
            granted.push((name, value));
        }
        Ok(granted)
    }

    /// A vault secret for `run` to send to `destination` (a host name, or `sandbox`):
    /// `secret.use` on it decided as every other action of the run where nobody can be asked
    /// (policy, with the destination in `context.destination`; the agent's identity; the run's
    /// grant), and audited, before the value is read.
    async fn decided_secret(
        &self,
        run: &RunId,
        name: &str,
        destination: &str,
    ) -> Result<String, ToolError> {
        let s = &self.0;
        let rec = self.run_record(run).await?;
        let acts = s.authority.acts_for(&rec).await.map_err(failed)?;
        let now = s.clock.now_ms();
        let u = s
            .authority
            .unattended(&rec, &acts, ("secret.use", name), Some(destination), now)
            .await
            .map_err(failed)?;
        let verdict = if u.refused.is_none() { "allow" } else { "deny" };
        let record = steward_gov::AuditRecord {
            outcome: Some(format!("destination:{destination}")),
            error: u.refused.clone(),
            ..crate::authority::decision_record(&rec, &acts.chain, None, ("secret.use", name), now)
                .decided(verdict, Some(&u.decision))
        }
        .to_json();
        s.store
            .append_audit(&[(now, record)])
            .await
            .map_err(failed)?;
        if let Some(why) = u.refused {
            return Err(ToolError::Denied(format!(
                "secret {name:?} may not be sent to {destination}: {why} (permit Steward::Action::\"secret.use\" on Steward::Secret::\"{name}\", with `context.destination` to bind it to hosts)"
            )));
        }
        use steward_llm::SecretSource;
        s.vault
            .as_ref()
            .and_then(|v| v.secret(name))
            .ok_or_else(|| ToolError::Failed(format!("no secret {name:?} in the vault")))
    }

    /// The run's egress allow-list (its agent's `spec.sandbox.egress`), with every connection
    /// appended to the audit log; `None` when it may reach nothing.
    fn egress(
        &self,
        run: &RunId,
        spec: Option<&(String, steward_types::AgentSpec)>,
    ) -> Result<Option<steward_sandbox::Egress>, ToolError> {
        let s = &self.0;
        let Some((agent, spec)) = spec else {
            return Ok(None);
        };
        let entries = spec
            .sandbox
            .as_ref()
            .map(|sb| sb.egress.clone())
            .unwrap_or_default();
        if entries.is_empty() {
            return Ok(None);
        }
        let allow = steward_sandbox::egress::AllowList::parse(&entries).map_err(failed)?;
        let report = crate::sandboxes::audit_egress(
            s.store.clone(),
            s.clock.clone(),
            format!("run:{run}"),
            vec![format!("agent:{agent}"), format!("run:{run}")],
            Some(run.to_string()),
        );
        Ok(Some(steward_sandbox::Egress { allow, report }))
    }

    fn sandboxes(&self) -> Result<&crate::sandboxes::SandboxService, ToolError> {
        self.0
            .sandboxes
            .as_deref()
            .ok_or_else(|| ToolError::Denied("sandboxes are not enabled on this server".into()))
    }

    /// Records what `parent` grants `child`: a link below the parent's own, when the parent was
    /// granted less than everything or grants less now. Never wider than the parent holds.
    async fn grant(
        &self,
        parent: &RunId,
        child: &RunId,
        child_agent: &str,
        grant: Option<Grant>,
    ) -> Result<(), ToolError> {
        let s = &self.0;
        let above = s
            .store
            .get_delegation(&run_link(parent))
            .await
            .map_err(failed)?;
        if grant.is_none() && above.is_none() {
            return Ok(());
        }
        let held = match &above {
            Some(l) => serde_json::from_str::<Scope>(&l.scope).map_err(failed)?,
            None => Scope {
                expires_at: i64::MAX,
                ..Scope::default()
            },
        };
        let g = grant.unwrap_or_default();
        let set = |l: Option<Vec<String>>| l.map(|l| l.into_iter().collect());
        let scope = held
            .narrow(Requested {
                tools: set(g.tools),
                models: set(g.models),
                budget_nanos: g.budget_usd.map(|b| (b * 1e9).round() as i64),
                ..Requested::default()
            })
            .map_err(|wider| {
                ToolError::Denied(format!(
                    "spawn_agent: a child may not be granted more than this run holds: {}",
                    wider.join("; ")
                ))
            })?;
        let issuer = s
            .store
            .get_run(parent)
            .await
            .map_err(failed)?
            .ok_or_else(|| failed("the parent run vanished"))?
            .agent;
        let now = s.clock.now_ms();
        let id = run_link(child);
        // The child's spending also counts against what the parent was granted, or else
        // against the parent run's own account.
        let budget = scope.budget_nanos.map(|cap| {
            let parent_account = match &above {
                Some(l) if held.budget_nanos.is_some() => format!("delegation:{}", l.id),
                _ => format!("run:{parent}"),
            };
            (format!("delegation:{id}"), parent_account, cap)
        });
        let rec = DelegationRecord {
            id: id.clone(),
            parent_id: above.map(|l| l.id),
            revocation_id: id,
            issuer: issuer.to_string(),
            holder: child_agent.to_string(),
            key_id: None,
            scope: serde_json::to_string(&scope).map_err(failed)?,
            expires_at: scope.expires_at,
            created_at: now,
            revoked_at: None,
            revoke_reason: None,
        };
        let made = match budget {
            Some((account, parent_account, cap)) => {
                s.store
                    .create_budgeted_delegation(&rec, &account, &parent_account, cap)
                    .await
            }
            None => s.store.create_delegation(&rec).await,
        };
        match made {
            // A replayed spawn finds the link its first life made.
            Ok(()) | Err(steward_store::Error::Conflict(_)) => Ok(()),
            Err(e) => Err(failed(e)),
        }
    }
}

#[async_trait::async_trait]
impl ToolHost for Host {
    async fn use_secret(
        &self,
        run: &RunId,
        name: &str,
        destination: &str,
    ) -> Result<String, ToolError> {
        self.decided_secret(run, name, destination).await
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

    async fn memory_add(
        &self,
        run: &RunId,
        seq: i64,
        args: serde_json::Value,
    ) -> Result<serde_json::Value, ToolError> {
        crate::memory_tools::add(self, run, seq, args).await
    }

    async fn memory_search(
        &self,
        run: &RunId,
        args: serde_json::Value,
    ) -> Result<serde_json::Value, ToolError> {
        crate::memory_tools::search(self, run, args).await
    }

    async fn sandbox_exec(
        &self,
        run: &RunId,
        seq: i64,
        command: &str,
        stdin: &str,
    ) -> Result<serde_json::Value, ToolError> {
        let spec = self.spec_of(run).await?;
        let egress = self.egress(run, spec.as_ref())?;
        let secrets = self.granted_secrets(run, spec.as_ref()).await?;
        let sandboxes = self.sandboxes()?;
        let before = self.follow(run, seq, true).await?;
        // Kept whatever the exec came to: a command that failed or timed out may still have
        // changed the workspace, and its outcome is journaled like any other.
        let out = sandboxes.exec(run, command, stdin, egress, secrets).await;
        self.keep(run, seq, before.as_deref()).await?;
        out
    }

    async fn workspace_write(
        &self,
        run: &RunId,
        seq: i64,
        path: &str,
        content: &[u8],
    ) -> Result<(), ToolError> {
        let sandboxes = self.sandboxes()?;
        let before = self.follow(run, seq, true).await?;
        let out = sandboxes.write(run, path, content).await;
        self.keep(run, seq, before.as_deref()).await?;
        out
    }

    async fn workspace_read(
        &self,
        run: &RunId,
        seq: i64,
        path: &str,
    ) -> Result<Vec<u8>, ToolError> {
        self.follow(run, seq, false).await?;
        self.sandboxes()?.read(run, path).await
    }

    async fn spawn_and_wait(
        &self,
        parent: &RunId,
        child: &RunId,
        agent: &str,
        input: &str,
        grant: Option<Grant>,
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
            self.grant(parent, child, name.as_str(), grant).await?;
            let new = NewRun {
                id: child.clone(),
                agent: name,
                agent_version: spec.version,
                parent_id: Some(parent.clone()),
                input: input.to_string(),
            };
            s.launch
                .create(new, crate::launch::Origin::Spawn)
                .await
                .map_err(|e| match e {
                    crate::launch::LaunchError::TooLarge { .. } => {
                        ToolError::InvalidArgs(e.to_string())
                    }
                    other => failed(other),
                })?;
        }
        let waiting = RunUpdate {
            wait_kind: Some(WAIT_CHILD.into()),
            ..RunUpdate::state(RunState::Waiting)
        };
        let claim = || {
            s.claim_of(parent)
                .ok_or_else(|| failed("this node no longer drives the run"))
        };
        if !s
            .store
            .update_run(&claim()?, &waiting, s.clock.now_ms())
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
                &claim()?,
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
