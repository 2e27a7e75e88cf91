//! Driving runs: the scheduler claims runs for this node, one task drives each from its
//! journal, and the heartbeat keeps the leases alive (and carries cancel requests made
//! through other nodes).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use steward_store::{Claim, RunRecord, RunUpdate, WAIT_HUMAN};
use steward_types::error::run_error;
use steward_types::{AgentName, AgentSpec, BudgetPolicy, NodeId, RecoveryPolicy, RunId, RunState};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::active::{Active, Stop};
use crate::agent_loop::{self, LoopEnd};
use crate::kernel::{step_error_text, RunCtx, StepError};
use crate::Inner;

/// Most runs claimed in one query.
const CLAIM_BATCH: usize = 256;

/// This node's hold on a run it drives, shared by the run's task (which writes under its
/// epoch and starts no step near the lease's end), the heartbeat (which extends the lease) and
/// the scheduler (which, claiming the run back after a stall, hands the task the new epoch).
pub(crate) struct Held {
    run: RunId,
    node: NodeId,
    epoch: AtomicI64,
    /// Until when the lease lasts, as last claimed or renewed (Unix ms).
    until: AtomicI64,
}

impl Held {
    fn new(run: &RunRecord, node: &NodeId) -> Arc<Held> {
        Arc::new(Held {
            run: run.id.clone(),
            node: node.clone(),
            epoch: AtomicI64::new(run.lease_epoch),
            until: AtomicI64::new(run.lease_expires.unwrap_or(i64::MAX)),
        })
    }

    /// The claim to write under now.
    pub(crate) fn claim(&self) -> Claim {
        Claim {
            run: self.run.clone(),
            node: self.node.clone(),
            epoch: self.epoch.load(Ordering::Acquire),
        }
    }

    pub(crate) fn until(&self) -> i64 {
        self.until.load(Ordering::Acquire)
    }

    fn extend(&self, until: i64) {
        self.until.store(until, Ordering::Release);
    }
}

pub(crate) async fn schedule(inner: Arc<Inner>) {
    let s = &inner.shared;
    let poll = Duration::from_millis(inner.cfg.poll_ms.max(10));
    loop {
        if inner.draining.is_cancelled() {
            return;
        }
        let free = inner
            .cfg
            .max_concurrent_runs
            .saturating_sub(active_count(&inner));
        let mut claimed_full = false;
        if free > 0 {
            let limit = free.min(CLAIM_BATCH);
            match s
                .store
                .claim_runs(
                    &s.node,
                    s.clock.now_ms(),
                    inner.cfg.lease_ttl_ms as i64,
                    limit as i64,
                )
                .await
            {
                Ok(runs) => {
                    claimed_full = runs.len() == limit;
                    for run in runs {
                        start_run(&inner, run);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "claiming runs failed; retrying"),
            }
        }
        if claimed_full {
            continue;
        }
        tokio::select! {
            _ = s.wake.notified() => {}
            _ = tokio::time::sleep(poll) => {}
            _ = inner.draining.cancelled() => return,
        }
    }
}

/// Creates the compensation run of `run`, which is ending failed or cancelled, if its agent
/// registers undo steps for tool calls it completed.
async fn plan_compensation(
    inner: &Arc<Inner>,
    run: &RunId,
    agent: &str,
    version: i64,
) -> Result<(), String> {
    let s = &inner.shared;
    let name = AgentName::parse(agent).map_err(|e| e.0)?;
    let Some(rec) = s
        .store
        .get_agent(&name, Some(version))
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(());
    };
    let spec: AgentSpec = serde_json::from_str(&rec.spec).map_err(|e| e.to_string())?;
    let created = crate::compensation::schedule(&*s.store, &s.launch, run, &name, version, &spec)
        .await
        .map_err(|e| e.to_string())?;
    if created {
        tracing::info!(run_id = %run, "the run's completed steps will be undone by its compensation run");
        s.wake.notify_one();
    }
    Ok(())
}

/// Acts on a run stopped as a loop, per its `liveness.onLoop`: an incident for a human, or the
/// same run started over (its id derived from this one's, so a replay starts it once).
/// Returns what was done, for the run's error message.
async fn looped(inner: &Arc<Inner>, ctx: &RunCtx, why: &str) -> Result<String, String> {
    let s = &inner.shared;
    let Some(l) = &ctx.spec.liveness else {
        return Ok(String::new());
    };
    let run = &ctx.run;
    match l.on_loop.as_str() {
        "escalate" => {
            let incident = steward_store::IncidentRecord {
                id: format!("inc_loop_{}", run.id.as_str().trim_start_matches("run_")),
                supervisor: format!("run:{}", run.id),
                reason: format!("{} ({}): {why}", run.id, run.agent),
                state: "open".into(),
                created_at: s.clock.now_ms(),
                resolved_at: None,
                resolution: None,
            };
            s.store
                .open_incident(&incident)
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!("; incident {} opened", incident.id))
        }
        "restart" => {
            // How many restarts in a row led here.
            let mut depth = 0;
            let mut cur = run.clone();
            while let Some(parent) = cur.parent_id.clone() {
                if restart_id(&parent) != cur.id {
                    break;
                }
                depth += 1;
                match s.store.get_run(&parent).await.map_err(|e| e.to_string())? {
                    Some(p) => cur = p,
                    None => break,
                }
            }
            if depth >= l.max_restarts {
                return Ok(format!(
                    "; not restarted: {depth} restarts in a row already"
                ));
            }
            let next = steward_store::NewRun {
                id: restart_id(&run.id),
                agent: AgentName::parse(&run.agent).map_err(|e| e.0)?,
                agent_version: run.agent_version,
                parent_id: Some(run.id.clone()),
                input: run.input.clone(),
            };
            let next_id = next.id.clone();
            s.launch
                .create(next, crate::launch::Origin::Restart)
                .await
                .map_err(|e| e.to_string())?;
            s.wake.notify_one();
            Ok(format!("; restarted as {next_id}"))
        }
        _ => Ok(String::new()),
    }
}

/// The run that starts `run` over after a loop.
fn restart_id(run: &RunId) -> RunId {
    let ns = uuid::Uuid::from_bytes([0x5a; 16]);
    RunId::from_uuid(uuid::Uuid::new_v5(&ns, format!("restart:{run}").as_bytes()))
}

/// The shortest interval between timed upkeep passes.
const UPKEEP_MIN_MS: u64 = 250;

/// Keeps the task queues moving: expired leases and deadlines, tasks of ended runs, tasks
/// handed to the agents that serve their queues, and schedules that are due (new runs wake
/// the scheduler).
pub(crate) async fn serve_queues(inner: Arc<Inner>) {
    let s = &inner.shared;
    // Enqueues and run ends wake it at once; the timer only finds what changed elsewhere
    // (other nodes, schedules coming due, backoffs ending). Not more often than 4 times a
    // second, however fast runs are polled for: each pass reads the store.
    let every = Duration::from_millis(inner.cfg.poll_ms.max(UPKEEP_MIN_MS));
    loop {
        match s.schedules.fire_due(&s.tasks).await {
            Ok(true) => s.wake.notify_one(),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "firing schedules failed; retrying"),
        }
        match s.tasks.upkeep().await {
            Ok(true) => s.wake.notify_one(),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "task queue upkeep failed; retrying"),
        }
        match s.supervisors.drive().await {
            Ok(true) => s.wake.notify_one(),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "supervising failed; retrying"),
        }
        if let Err(e) = s.merges.drive().await {
            tracing::warn!(error = %e, "the merge queue failed; retrying");
        }
        tokio::select! {
            _ = s.tasks.changed(every) => {}
            _ = inner.draining.cancelled() => return,
        }
    }
}

fn active_count(inner: &Inner) -> usize {
    inner
        .shared
        .active
        .lock()
        .map(|a| a.len())
        .unwrap_or(usize::MAX)
}

fn start_run(inner: &Arc<Inner>, run: RunRecord) {
    let s = &inner.shared;
    let token = CancellationToken::new();
    let stop = Arc::new(Mutex::new(None));
    let held = Held::new(&run, &s.node);
    if let Ok(mut a) = s.active.lock() {
        if let Some(existing) = a.get_mut(&run.id) {
            // This node stalled past the run's lease (a pause, a late heartbeat, a lost
            // database connection) and claimed it back while its task still drives it. A
            // second task would drive the run twice.
            if run.lease_epoch == existing.held.epoch.load(Ordering::Acquire) + 1 {
                // No one claimed it in between, so no one wrote for it: the task goes on,
                // under the new claim.
                existing
                    .held
                    .epoch
                    .store(run.lease_epoch, Ordering::Release);
                existing.held.extend(run.lease_expires.unwrap_or(i64::MAX));
                tracing::info!(run_id = %run.id, "reclaimed a run this node still drives; its task goes on");
            } else {
                // Another node held it in between and may have taken steps the task does not
                // know of: the task (fenced off already) stops, and the run starts afresh
                // from its journal when it has.
                tracing::warn!(run_id = %run.id, "reclaimed a run another node held since this node's task took it; restarting it from the journal");
                if let Ok(mut st) = existing.stop.lock() {
                    st.get_or_insert(Stop::LeaseLost);
                }
                existing.token.cancel();
                existing.successor = Some(run);
            }
            return;
        }
        a.insert(
            run.id.clone(),
            Active {
                token: token.clone(),
                stop: stop.clone(),
                held: held.clone(),
                successor: None,
            },
        );
    }
    let inner2 = inner.clone();
    let span = tracing::info_span!("run", run_id = %run.id, agent = %run.agent);
    inner.tracker.spawn(async move {
        let id = run.id.clone();
        let (agent, version) = (run.agent.clone(), run.agent_version);
        let compensates = crate::compensation::steps_of(&run).is_some();
        let update = execute(&inner2, run, &token, &stop, held.clone()).await;
        let s = &inner2.shared;
        // Undo steps are planned before the failure is recorded: a crash in between plans the
        // same compensation run again, never a second one. If planning fails, the end is not
        // recorded: the lease lapses and the run replays.
        let update = match update {
            Some(u) if matches!(u.state, RunState::Failed | RunState::Cancelled) && !compensates => {
                match plan_compensation(&inner2, &id, &agent, version).await {
                    Ok(()) => Some(u),
                    Err(e) => {
                        tracing::warn!(run_id = %id, error = %e, "planning the run's compensation failed; the run is left to replay");
                        None
                    }
                }
            }
            other => other,
        };
        if let Some(u) = update {
            match s.store.update_run(&held.claim(), &u, s.clock.now_ms()).await {
                Ok(true) => {
                    tracing::info!(run_id = %id, state = %u.state, "run ended its turn on this node");
                    if let Some((state, detail)) = crate::tasks::ended(&u) {
                        // If this fails (or the node dies first), upkeep finishes the task.
                        if let Err(e) = s.tasks.finish_run(&id, state, &detail).await {
                            tracing::warn!(run_id = %id, error = %e, "finishing the run's task failed; upkeep will");
                        }
                    }
                }
                Ok(false) => tracing::warn!(run_id = %id, "the run was claimed again before its state was saved; its new holder replays it"),
                Err(e) => tracing::warn!(run_id = %id, error = %e, "saving the run's state failed; the lease will expire and the run replays"),
            }
        }
        let successor = match s.active.lock() {
            Ok(mut a) => a.remove(&id).and_then(|e| e.successor),
            Err(_) => None,
        };
        if let Some(next) = successor {
            start_run(&inner2, next);
        }
        s.finished.notify_waiters();
        s.wake.notify_one();
    }.instrument(span));
}

fn fail(code: &str, message: String) -> Option<RunUpdate> {
    Some(RunUpdate {
        error_code: Some(code.to_string()),
        error_message: Some(message),
        ..RunUpdate::state(RunState::Failed)
    })
}

fn cancelled(reason: String) -> Option<RunUpdate> {
    Some(RunUpdate {
        error_code: Some("cancelled".into()),
        error_message: Some(reason),
        ..RunUpdate::state(RunState::Cancelled)
    })
}

/// Drives one run as far as it goes in this life. Returns the state to save, or `None` to
/// leave the run as it is for whoever holds it next.
async fn execute(
    inner: &Arc<Inner>,
    run: RunRecord,
    token: &CancellationToken,
    stop: &Mutex<Option<Stop>>,
    held: Arc<Held>,
) -> Option<RunUpdate> {
    let s = &inner.shared;
    if let Some(reason) = run.cancel_reason.clone() {
        return cancelled(reason);
    }
    let name = match AgentName::parse(&run.agent) {
        Ok(n) => n,
        Err(e) => return fail(run_error::INTERNAL, e.0),
    };
    let spec: AgentSpec = match s.store.get_agent(&name, Some(run.agent_version)).await {
        Ok(Some(a)) => match serde_json::from_str(&a.spec) {
            Ok(spec) => spec,
            Err(e) => {
                return fail(
                    run_error::INTERNAL,
                    format!("stored spec of {name} v{} is unreadable: {e}", a.version),
                )
            }
        },
        Ok(None) => {
            return fail(
                run_error::INTERNAL,
                format!("agent {name} v{} is missing", run.agent_version),
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "loading the agent failed; the run will be retried");
            return None;
        }
    };
    let entries = match s.store.load_journal(&run.id, None, i64::MAX).await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "loading the journal failed; the run will be retried");
            return None;
        }
    };
    // A fork's edits, applied again at the same step in every life of the run.
    let fork = match s.store.run_fork(&run.id).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "loading the run's fork failed; the run will be retried");
            return None;
        }
    };
    let replaying = entries.len();
    let deadline = run.created_at.saturating_add(spec.run_timeout as i64);
    let remaining = deadline - s.clock.now_ms();
    if remaining <= 0 {
        return fail(
            run_error::RUN_TIMEOUT,
            format!("the run passed its runTimeout ({} ms)", spec.run_timeout),
        );
    }
    if replaying > 0 {
        tracing::info!(run_id = %run.id, entries = replaying, "resuming from the journal");
    }
    let run_timeout = spec.run_timeout;
    let mut ctx = RunCtx::new(run, Arc::new(spec), entries);
    ctx.fork = fork;
    ctx.hold_lease(held, inner.cfg.heartbeat_ms as i64);
    let update = drive(inner, &mut ctx, token, stop, remaining, run_timeout).await;
    // The last step's outcome is committed before the run's state moves on, whichever way
    // its loop ended; if it cannot be, the run is left for replay.
    match inner.kernel.flush(&ctx).await {
        Ok(()) => update,
        Err(e) => {
            tracing::warn!(run_id = %ctx.run.id, error = ?e, "the last step's outcome could not be committed; the run replays");
            None
        }
    }
}

/// Runs the run's loop (or its compensation) to its end, and what the run becomes.
async fn drive(
    inner: &Arc<Inner>,
    ctx: &mut RunCtx,
    token: &CancellationToken,
    stop: &Mutex<Option<Stop>>,
    remaining: i64,
    run_timeout: u64,
) -> Option<RunUpdate> {
    let s = &inner.shared;
    if let Some(steps) = crate::compensation::steps_of(&ctx.run) {
        return crate::compensation::execute(&inner.kernel, &*s.store, ctx, steps).await;
    }
    let outcome = tokio::select! {
        r = tokio::time::timeout(Duration::from_millis(remaining as u64), agent_loop::run(&inner.kernel, ctx)) => r,
        _ = token.cancelled() => {
            let why = stop.lock().ok().and_then(|s| s.clone());
            return match why {
                Some(Stop::Cancel(reason)) => cancelled(reason),
                Some(Stop::LeaseLost) | None => None,
            };
        }
    };
    match outcome {
        Err(_) => fail(run_error::RUN_TIMEOUT, format!("the run passed its runTimeout ({run_timeout} ms)")),
        Ok(LoopEnd::Answer(a)) => Some(RunUpdate { result: Some(a), ..RunUpdate::state(RunState::Succeeded) }),
        Ok(LoopEnd::MaxSteps(n)) => fail(run_error::MAX_STEPS, format!("no final answer within maxSteps ({n}) model turns")),
        Ok(LoopEnd::Looping { tool, times }) => {
            let why = format!("the model asked for the same {tool} call {times} times in a row (liveness.maxRepeats); stopped instead of making it again");
            // The run's journal is complete before anything acts on it.
            if let Err(e) = inner.kernel.flush(ctx).await {
                tracing::warn!(error = ?e, "the last step's outcome could not be committed; the run replays");
                return None;
            }
            match looped(inner, ctx, &why).await {
                Ok(more) => fail(run_error::LOOP_DETECTED, format!("{why}{more}")),
                Err(e) => {
                    tracing::warn!(error = %e, "acting on a loop failed; the run replays");
                    None
                }
            }
        }
        Ok(LoopEnd::Step(e)) => match &e {
            StepError::Draining => None,
            StepError::LeaseLost => {
                tracing::warn!("the run was claimed again since this node took it; stopping here, its new holder replays it");
                None
            }
            StepError::Store(m) => {
                tracing::warn!(error = %m, "storage failed mid-run; the lease will expire and the run replays");
                None
            }
            StepError::Divergence(m) => fail(run_error::DIVERGENCE, m.clone()),
            StepError::PolicyDenied(m) => fail(run_error::POLICY_DENIED, m.clone()),
            StepError::Model(m) => fail(run_error::MODEL_ERROR, m.clone()),
            StepError::ModelTimeout(m) => fail(run_error::STEP_TIMEOUT, m.clone()),
            StepError::InDoubt { policy: RecoveryPolicy::WaitForHuman, .. } => Some(RunUpdate {
                wait_kind: Some(WAIT_HUMAN.into()),
                error_code: Some(run_error::IN_DOUBT.into()),
                error_message: Some(format!(
                    "{}; waiting for a human: POST /api/v1/runs/{}/resolve with {{\"action\":\"retry\"}} or {{\"action\":\"fail\"}}",
                    step_error_text(&e),
                    ctx.run.id
                )),
                ..RunUpdate::state(RunState::Waiting)
            }),
            StepError::InDoubt { .. } => fail(run_error::IN_DOUBT, step_error_text(&e)),
            StepError::BudgetExceeded { policy: BudgetPolicy::WaitForHuman, message, .. } => Some(RunUpdate {
                wait_kind: Some(WAIT_HUMAN.into()),
                error_code: Some(run_error::BUDGET_EXCEEDED.into()),
                error_message: Some(format!(
                    "{message}; waiting for a human: raise the budget (PUT /api/v1/budgets/{{account}}) and POST /api/v1/runs/{}/resolve with {{\"action\":\"retry\"}}, or {{\"action\":\"fail\"}}",
                    ctx.run.id
                )),
                ..RunUpdate::state(RunState::Waiting)
            }),
            StepError::BudgetExceeded { message, .. } => fail(run_error::BUDGET_EXCEEDED, message.clone()),
            StepError::AwaitingApproval { .. } => Some(RunUpdate {
                wait_kind: Some(steward_store::WAIT_APPROVAL.into()),
                error_code: Some(run_error::AWAITING_APPROVAL.into()),
                error_message: Some(step_error_text(&e)),
                ..RunUpdate::state(RunState::Waiting)
            }),
        },
    }
}

/// Renews this node's leases; stops runs whose lease was lost or whose cancel was requested
/// through another node.
pub(crate) async fn heartbeat(inner: Arc<Inner>) {
    let s = &inner.shared;
    let every = Duration::from_millis(inner.cfg.heartbeat_ms.max(10));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = inner.draining.cancelled() => {
                // Keep renewing while in-flight steps finish, then stop with the tracker.
                if inner.tracker.is_empty() { return; }
                tokio::time::sleep(every.min(Duration::from_millis(200))).await;
            }
        }
        let ids: Vec<RunId> = match s.active.lock() {
            Ok(a) => a.keys().cloned().collect(),
            Err(_) => continue,
        };
        if ids.is_empty() {
            continue;
        }
        let now = s.clock.now_ms();
        let ttl = inner.cfg.lease_ttl_ms as i64;
        match s.store.renew_leases(&s.node, &ids, now, ttl).await {
            Ok(held) => {
                let held_ids: std::collections::HashSet<&RunId> =
                    held.iter().map(|(id, _)| id).collect();
                let Ok(active) = s.active.lock() else {
                    continue;
                };
                for id in &held_ids {
                    if let Some(a) = active.get(*id) {
                        a.held.extend(now + ttl);
                    }
                }
                for id in &ids {
                    if !held_ids.contains(id) {
                        if let Some(a) = active.get(id) {
                            tracing::warn!(run_id = %id, "lease lost to another node; stopping here");
                            if let Ok(mut st) = a.stop.lock() {
                                st.get_or_insert(Stop::LeaseLost);
                            }
                            a.token.cancel();
                        }
                    }
                }
                for (id, reason) in held {
                    if let (Some(reason), Some(a)) = (reason, active.get(&id)) {
                        if let Ok(mut st) = a.stop.lock() {
                            st.get_or_insert(Stop::Cancel(reason));
                        }
                        a.token.cancel();
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "renewing leases failed"),
        }
    }
}
