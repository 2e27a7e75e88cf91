//! The Kernel: the one path every effectful action of a run takes.
//!
//! 1 identify (the `RunCtx` names the run and its agent version), 2 authorize (an agent may call
//! only the tools its spec lists; Cedar policy arrives with governance), 3 reserve (budgets
//! arrive with the gateway), 4 journal the intent — durable before acting, 5 act, 6 journal the
//! outcome, 7 record (a tracing span per syscall).
//!
//! Replay: a step already in the journal returns its recorded outcome without acting. A step
//! with an intent and no outcome is in doubt: idempotent actions are retried under the same
//! idempotency key; others follow the agent's recovery policy. A request that differs from
//! the journal at the same position is a divergence and stops the run.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use steward_gov::{Decision, Policies, Query};
use steward_llm::{ChatRequest, ChatResponse, Provider, Router};
use steward_store::{HoldResult, NewHold, HOLD_STEP};
use steward_store::{JournalEntry, JournalWriter, RunRecord, PHASE_INTENT, PHASE_OUTCOME};
use steward_tools::{ToolContext, ToolHost, Tools, Wait};
use steward_types::{AgentSpec, BudgetPolicy, RecoveryPolicy, RunId};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::budgets::{Budgets, DEFAULT_MAX_OUTPUT};
use crate::clock::Clock;

/// An effectful action a run asks the Kernel to perform. Borrowed: the loop keeps its
/// conversation and the Kernel never needs a copy of it.
#[derive(Clone, Copy, Debug)]
pub enum Action<'a> {
    Model { request: &'a ChatRequest },
    Tool { name: &'a str, args: &'a Value },
}

/// What an action produced, as journaled.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Model(ChatResponse),
    /// A tool's result, or the error it reported (errors are shown to the model, not fatal).
    Tool(Result<Value, String>),
}

impl Kernel {
    /// Journals `entries` and `audit` for the run under the claim it is driven under. If this
    /// node claimed the run again while the write was on its way (it stalled and came back:
    /// its claim's epoch moved on under it, with no one else's in between), the write is made
    /// again under the new claim; a claim another node took fences it off for good.
    async fn record(
        &self,
        ctx: &RunCtx,
        entries: Vec<JournalEntry>,
        audit: Vec<(i64, String)>,
    ) -> Result<(), StepError> {
        self.record_settling(ctx, entries, audit, Vec::new()).await
    }

    /// As [`record`](Self::record), settling budget holds (`(hold id, spent)`) in the same
    /// commit.
    async fn record_settling(
        &self,
        ctx: &RunCtx,
        entries: Vec<JournalEntry>,
        audit: Vec<(i64, String)>,
        settles: Vec<(String, i64)>,
    ) -> Result<(), StepError> {
        loop {
            let claim = ctx.claim();
            match self
                .journal
                .append_audited(
                    claim.as_ref(),
                    entries.clone(),
                    audit.clone(),
                    settles.clone(),
                )
                .await
            {
                Err(steward_store::Error::Fenced(_)) if ctx.claim() != claim => continue,
                r => return r.map_err(unjournaled),
            }
        }
    }
}

/// A journal write that did not commit, as the step sees it.
fn unjournaled(e: steward_store::Error) -> StepError {
    match e {
        steward_store::Error::Fenced(_) => StepError::LeaseLost,
        e => StepError::Store(e.to_string()),
    }
}

/// Why a run cannot take its next step.
#[derive(Debug, Clone, PartialEq)]
pub enum StepError {
    /// The run asked for something other than what its journal holds at this position.
    Divergence(String),
    /// An interrupted non-idempotent step; the policy says what happens to the run.
    InDoubt {
        seq: i64,
        what: String,
        policy: RecoveryPolicy,
    },
    Model(String),
    ModelTimeout(String),
    /// The policy refused the model call (every deployment, or the call itself).
    PolicyDenied(String),
    /// The next model call's worst case does not fit a budget; the policy says what happens.
    BudgetExceeded {
        account: String,
        message: String,
        policy: BudgetPolicy,
    },
    /// A policy asked for approval of this step; the run waits until it is decided.
    AwaitingApproval {
        id: String,
        approvers: String,
        what: String,
    },
    /// The node is shutting down: stop before the next step; another life picks the run up.
    Draining,
    /// The run was claimed again since this node took it (this node stalled past its lease):
    /// nothing more is written for it here; its new holder replays it.
    LeaseLost,
    Store(String),
}

#[derive(Default, Clone)]
struct Recorded {
    intent: Option<JournalEntry>,
    outcome: Option<JournalEntry>,
}

/// Everything the Kernel knows about the run it is acting for.
pub struct RunCtx {
    pub run: RunRecord,
    pub spec: Arc<AgentSpec>,
    /// The provider the agent's route selects, resolved once per run.
    pub provider: Option<Arc<dyn Provider>>,
    conversation: ConversationHash,
    next_seq: i64,
    /// What earlier lives recorded, for replay. Steps taken in this life are not kept: the loop
    /// never asks for the same position twice.
    journal: BTreeMap<i64, Recorded>,
    /// The claim this node drives the run under (its epoch, until when its lease lasts), and
    /// how much of the lease must be left to start a step: one heartbeat interval.
    lease: Option<(Arc<crate::runs::Held>, i64)>,
}

impl RunCtx {
    /// Writes for the run under `held`'s claim, and starts steps only while its lease has at
    /// least `margin` ms left.
    pub(crate) fn hold_lease(&mut self, held: Arc<crate::runs::Held>, margin: i64) {
        self.lease = Some((held, margin));
    }

    /// Whether the lease is too near its end (or past it) to start a step: the heartbeat has
    /// not renewed it for longer than it should (a stalled process, a slow store).
    fn lease_short(&self, now: i64) -> bool {
        self.lease
            .as_ref()
            .is_some_and(|(held, margin)| held.until() - now < *margin)
    }

    /// The claim the run's journal is written under, when it is driven under a lease.
    pub(crate) fn claim(&self) -> Option<steward_store::Claim> {
        self.lease.as_ref().map(|(held, _)| held.claim())
    }

    pub fn new(run: RunRecord, spec: Arc<AgentSpec>, entries: Vec<JournalEntry>) -> Self {
        let mut journal: BTreeMap<i64, Recorded> = BTreeMap::new();
        for e in entries {
            let slot = journal.entry(e.seq).or_default();
            if e.phase == PHASE_INTENT {
                slot.intent = Some(e);
            } else {
                slot.outcome = Some(e);
            }
        }
        RunCtx {
            lease: None,
            run,
            spec,
            provider: None,
            conversation: ConversationHash::default(),
            next_seq: 0,
            journal,
        }
    }
}

/// Per-step overhead samples (Kernel time minus the action's own time), in microseconds.
#[derive(Default)]
pub struct StepStats {
    samples: Mutex<Vec<u32>>,
}

impl StepStats {
    fn record(&self, us: u64) {
        if let Ok(mut s) = self.samples.lock() {
            s.push(us.min(u32::MAX as u64) as u32);
        }
    }
    pub fn take(&self) -> Vec<u32> {
        self.samples
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default()
    }
}

pub struct Kernel {
    pub(crate) journal: JournalWriter,
    pub(crate) router: Arc<Router>,
    pub(crate) budgets: Budgets,
    pub(crate) policies: Arc<Policies>,
    pub(crate) identities: Arc<crate::identities::Identities>,
    /// What metered resources (sandbox CPU) cost, for the tools that use them.
    pub(crate) meters: crate::meters::Meters,
    /// What child runs were granted by the runs that spawned them.
    pub(crate) delegations: Arc<crate::delegations::Delegations>,
    /// How long an approval may stay pending before it counts as denied.
    pub(crate) approval_timeout_ms: i64,
    pub(crate) tools: Tools,
    pub(crate) host: Arc<dyn ToolHost>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) draining: CancellationToken,
    pub(crate) stats: Option<Arc<StepStats>>,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// Signalled after every journal append, for live followers of runs on this node.
    pub(crate) journal_tick: Arc<tokio::sync::Notify>,
}

/// Who a run's step acts for, outermost first: its agent's owner, the run that spawned it (if
/// any), its agent, the run.
fn run_chain(ctx: &RunCtx, owner: Option<&str>) -> Vec<String> {
    let mut chain = Vec::with_capacity(4);
    if let Some(o) = owner {
        chain.push(format!("user:{o}"));
    }
    if let Some(p) = &ctx.run.parent_id {
        chain.push(format!("run:{p}"));
    }
    chain.push(format!("agent:{}", ctx.run.agent));
    chain.push(format!("run:{}", ctx.run.id));
    chain
}

fn kind_and_name<'a>(action: &Action<'a>) -> (&'static str, &'a str) {
    match action {
        Action::Model { request } => ("model", request.model.as_str()),
        Action::Tool { name, .. } => ("tool", name),
    }
}

/// The request's fingerprint, serialized straight into the hasher. A model request's
/// conversation only grows, so its messages are hashed once each into a running state kept in
/// the `RunCtx` (`conversation`): the cost of a step does not grow with the run's length.
fn hash(action: &Action, conversation: &mut ConversationHash) -> String {
    let (kind, name) = kind_and_name(action);
    let mut h = match action {
        Action::Model { request } => conversation.absorb(&request.messages),
        Action::Tool { .. } => Sha256::new(),
    };
    h.update(kind.as_bytes());
    h.update([0]);
    h.update(name.as_bytes());
    h.update([0]);
    let written = match action {
        Action::Model { request } => {
            serde_json::to_writer(&mut h, &(&request.tools, request.max_tokens))
        }
        Action::Tool { args, .. } => serde_json::to_writer(&mut h, args),
    };
    if written.is_err() {
        h.update(b"unserializable");
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A running SHA-256 over the messages of a run's conversation.
#[derive(Clone, Default)]
pub(crate) struct ConversationHash {
    state: Sha256,
    absorbed: usize,
}

impl ConversationHash {
    /// Absorbs the messages not seen yet and returns a hasher continuing from them.
    fn absorb(&mut self, messages: &[steward_llm::Message]) -> Sha256 {
        if messages.len() < self.absorbed {
            *self = ConversationHash::default(); // a conversation that shrank: start over
        }
        for m in &messages[self.absorbed..] {
            if serde_json::to_writer(&mut self.state, m).is_err() {
                self.state.update(b"unserializable");
            }
            self.state.update([0x1e]);
        }
        self.absorbed = messages.len();
        self.state.clone()
    }
}

impl Kernel {
    pub async fn call(&self, ctx: &mut RunCtx, action: Action<'_>) -> Result<Outcome, StepError> {
        let seq = ctx.next_seq;
        ctx.next_seq += 1;
        let (kind, name) = kind_and_name(&action);
        // Named and attributed per the OpenTelemetry GenAI conventions, for trace export.
        let span = match action {
            Action::Model { .. } => tracing::info_span!(
                "syscall",
                "otel.name" = %format_args!("chat {}", ctx.spec.model),
                run_id = %ctx.run.id,
                seq,
                kind,
                "gen_ai.operation.name" = "chat",
                "gen_ai.request.model" = %ctx.spec.model,
                "gen_ai.provider.name" = tracing::field::Empty,
                "gen_ai.usage.input_tokens" = tracing::field::Empty,
                "gen_ai.usage.output_tokens" = tracing::field::Empty,
            ),
            Action::Tool { .. } => tracing::info_span!(
                "syscall",
                "otel.name" = %format_args!("execute_tool {name}"),
                run_id = %ctx.run.id,
                seq,
                kind,
                "gen_ai.operation.name" = "execute_tool",
                "gen_ai.tool.name" = %name,
            ),
        };
        self.call_inner(ctx, seq, action).instrument(span).await
    }

    async fn call_inner(
        &self,
        ctx: &mut RunCtx,
        seq: i64,
        action: Action<'_>,
    ) -> Result<Outcome, StepError> {
        let started = Instant::now();
        let (kind, name) = kind_and_name(&action);
        let name = name.to_string();
        let request_hash = hash(&action, &mut ctx.conversation);
        let idempotency_key = format!("{}:{seq}", ctx.run.id);
        // Taken, not cloned: this life never asks for the same position twice.
        let recorded = ctx.journal.remove(&seq).unwrap_or_default();

        if let Some(intent) = &recorded.intent {
            if intent.request_hash != request_hash || intent.kind != kind {
                return Err(StepError::Divergence(format!(
                    "step {seq}: the journal holds {} {:?} but the run now asks for {kind} {name:?}",
                    intent.kind, intent.name
                )));
            }
            if let Some(out) = &recorded.outcome {
                return decode_outcome(kind, out); // completed: never act again
            }
            // In doubt: the process died between intent and outcome.
            let idempotent = self.idempotent(&action);
            let human_said_retry = ctx.run.retry_seq == Some(seq);
            if !(idempotent || human_said_retry || ctx.spec.recovery == RecoveryPolicy::Retry) {
                return Err(StepError::InDoubt {
                    seq,
                    what: format!("{kind} {name}"),
                    policy: ctx.spec.recovery,
                });
            }
            tracing::info!(
                seq,
                "retrying an in-doubt step under idempotency key {idempotency_key}"
            );
        } else if self.draining.is_cancelled() {
            return Err(StepError::Draining);
        } else if ctx.lease_short(self.clock.now_ms()) {
            // Another node may hold the run by now: act no further; whoever holds the lease
            // replays from the journal.
            tracing::warn!(run_id = %ctx.run.id, seq, "the run's lease is nearly gone and not renewed; stopping before the next step");
            return Err(StepError::Draining);
        }
        let estimate = match (&action, &ctx.provider) {
            (Action::Model { request }, None) => {
                Some(self.estimate(ctx, request, &idempotency_key))
            }
            // A metered tool (sandbox CPU, when charged): the call's worst case is held like a
            // model call's.
            (Action::Tool { name, .. }, _) => self
                .tools
                .get(name)
                .and_then(|t| t.meter())
                .and_then(|m| self.meters.worst_case_nanos(m.name))
                .map(Ok),
            _ => None,
        };
        // Authorize: the policy decides; the decision is audited with the step's outcome.
        let cost = estimate.as_ref().and_then(|e| e.as_ref().ok()).copied();
        let owner = self
            .identities
            .owner(&ctx.run.agent)
            .await
            .map_err(|e| StepError::Store(e.to_string()))?;
        let chain = run_chain(ctx, owner.as_deref());
        let (decision, approval_note) = self
            .authorize(
                ctx,
                &action,
                cost.unwrap_or(0),
                seq,
                &chain,
                owner.as_deref(),
            )
            .await?;
        // The intent is journaled and the outcome is not: an earlier life of this run made
        // this model call and ended before recording its answer. The upstream may have
        // answered (and billed) it, so it is booked as a call of its own — its hold in full,
        // or its worst case — before this life makes it again under a new hold.
        if kind == "model" && recorded.intent.is_some() {
            let booked = self
                .budgets
                .store
                .book_interrupted(
                    &ctx.run.id,
                    seq,
                    &name,
                    &idempotency_key,
                    cost.unwrap_or(0),
                    self.clock.now_ms(),
                )
                .await
                .map_err(|e| StepError::Store(e.to_string()))?;
            tracing::warn!(run_id = %ctx.run.id, seq, booked_nanos = booked, "a model call cut off before its answer was recorded is made again; the first is booked at its worst case");
        }
        // Reserve: before the intent, so a call the budget refuses leaves no trace to replay.
        let held = match estimate {
            Some(e) if decision.allow => self.hold(ctx, e, &idempotency_key).await?,
            _ => false,
        };
        if recorded.intent.is_none() {
            let intent = JournalEntry {
                run_id: ctx.run.id.to_string(),
                seq,
                phase: PHASE_INTENT,
                kind: kind.to_string(),
                name: name.clone(),
                request_hash: request_hash.clone(),
                idempotency_key: idempotency_key.clone(),
                body: intent_body(&action).to_string(),
                ok: 1,
                tokens_in: 0,
                tokens_out: 0,
                at: self.clock.now_ms(),
                duration_us: 0,
            };
            self.record(ctx, vec![intent], Vec::new()).await?;
            self.journal_tick.notify_waiters();
        }

        let act_started = Instant::now();
        let acted = if decision.allow {
            self.act(ctx, seq, &idempotency_key, action).await
        } else {
            denied(&decision, approval_note.as_deref(), &action)
        };
        let (result, spent) = match acted {
            Err(
                e @ (StepError::Model(_) | StepError::ModelTimeout(_) | StepError::PolicyDenied(_)),
            ) => (Err(e), 0),
            // The hold stays open: the step is replayed and finds it.
            Err(other) => return Err(other),
            Ok((o, spent)) => (Ok(o), spent),
        };
        let act_us = act_started.elapsed().as_micros() as i64;
        // Settled in the commit that records the outcome: a crash before it leaves the hold
        // open, and the step made again books this call in full (see above).
        let settles = match held {
            true => vec![(idempotency_key.clone(), spent)],
            false => Vec::new(),
        };

        if let Ok(Outcome::Model(r)) = &result {
            let span = tracing::Span::current();
            span.record("gen_ai.provider.name", r.provider.as_str());
            // As i64: exporters carry u64 as strings.
            span.record("gen_ai.usage.input_tokens", r.usage.input_tokens as i64);
            span.record("gen_ai.usage.output_tokens", r.usage.output_tokens as i64);
        }
        let (body, ok, tokens_in, tokens_out) = match &result {
            Ok(Outcome::Model(r)) => (
                serde_json::to_string(r).unwrap_or_default(),
                1,
                r.usage.input_tokens as i64,
                r.usage.output_tokens as i64,
            ),
            Ok(Outcome::Tool(Ok(v))) => (json!({ "ok": v }).to_string(), 1, 0, 0),
            Ok(Outcome::Tool(Err(e))) => (json!({ "error": e }).to_string(), 0, 0, 0),
            Err(StepError::ModelTimeout(e)) => {
                (json!({ "error": e, "timeout": true }).to_string(), 0, 0, 0)
            }
            Err(StepError::PolicyDenied(e)) => {
                (json!({ "error": e, "denied": true }).to_string(), 0, 0, 0)
            }
            Err(e) => (json!({ "error": step_error_text(e) }).to_string(), 0, 0, 0),
        };
        let entry = JournalEntry {
            run_id: ctx.run.id.to_string(),
            seq,
            phase: PHASE_OUTCOME,
            kind: kind.to_string(),
            name,
            request_hash,
            idempotency_key,
            body,
            ok,
            tokens_in,
            tokens_out,
            at: self.clock.now_ms(),
            duration_us: act_us,
        };
        // The outcome and its audit record are durable together, in one commit.
        let action = match kind {
            "model" => "llm.call",
            _ => "tool.call",
        };
        let verdict = if decision.allow { "allow" } else { "deny" };
        let audit = steward_gov::AuditRecord {
            approval: approval_note.clone().filter(|_| decision.allow),
            outcome: Some(if entry.ok == 1 { "ok" } else { "error" }.into()),
            error: approval_note.filter(|_| !decision.allow),
            tokens_in,
            tokens_out,
            cost_nanos: spent,
            trace_id: crate::trace_id(),
            ..steward_gov::AuditRecord::new(
                steward_gov::AuditEvent::Syscall,
                entry.at,
                format!("run:{}", ctx.run.id),
                chain,
                action,
                &entry.name,
            )
            .in_run(Some(entry.run_id.clone()), Some(seq.to_string()))
            .decided(verdict, Some(&decision))
        }
        .to_json();
        self.record_settling(
            ctx,
            vec![entry],
            vec![(self.clock.now_ms(), audit)],
            settles,
        )
        .await?;
        self.journal_tick.notify_waiters();
        let added_us = (started.elapsed().as_micros() as u64).saturating_sub(act_us as u64);
        self.metrics
            .step_added
            .get_or_create(&crate::metrics::StepLabels { kind })
            .observe(added_us as f64 / 1e6);
        if let Some(stats) = &self.stats {
            stats.record(added_us);
        }
        result
    }

    /// Why this step is outside the grant its run was spawned with, if it is.
    async fn outside_grant(
        &self,
        ctx: &RunCtx,
        act: &str,
        resource: &str,
        now: i64,
    ) -> Result<Option<String>, StepError> {
        let Some(link) = self
            .delegations
            .link(&crate::host::run_link(&ctx.run.id))
            .await
            .map_err(|e| StepError::Store(format!("{e:?}")))?
        else {
            return Ok(None);
        };
        let by = ctx.run.parent_id.as_ref().map_or("", |p| p.as_str());
        if link.revoked_at.is_some() {
            return Ok(Some(format!(
                "the grant run {by} gave this run was revoked: {}",
                link.revoke_reason.unwrap_or_default()
            )));
        }
        if link.expires_at <= now {
            return Ok(Some(format!(
                "the grant run {by} gave this run has expired"
            )));
        }
        let scope = crate::delegations::scope_of(&link).map_err(StepError::Store)?;
        let within = |list: &Option<std::collections::BTreeSet<String>>, what: &str| {
            list.as_ref().is_none_or(|l| l.contains(what))
        };
        let allowed = within(&scope.actions, act)
            && match act {
                "llm.call" => within(&scope.models, resource),
                "tool.call" => within(&scope.tools, resource),
                _ => true,
            };
        Ok((!allowed)
            .then(|| format!("{act} {resource} is outside what run {by} granted this run")))
    }

    fn idempotent(&self, action: &Action<'_>) -> bool {
        match action {
            // A model call has no effect beyond its cost; re-asking is safe.
            Action::Model { .. } => true,
            Action::Tool { name, args } => self.tools.get(name).is_some_and(|t| t.idempotent(args)),
        }
    }

    /// Holds the worst case of a model call on every budget account that governs the run
    /// (creating the run's own account from `spec.budget.perRunUsd` on first use). The hold's
    /// id is the step's idempotency key, so a replayed step keeps its first hold. Returns
    /// whether a hold was taken.
    /// The most a model call can cost — its size in tokens plus its output limit, at the
    /// dearest deployment its route may reach — or why that cannot be known (a deployment
    /// without a price). For the policy's context and the budget hold alike.
    fn estimate(&self, ctx: &RunCtx, request: &ChatRequest, key: &str) -> Result<i64, String> {
        let plan = self
            .router
            .plan(&ctx.spec.model, key)
            .map_err(|e| e.to_string())?;
        let (tokens_in, tokens_out) = crate::budgets::bounds_of(request);
        self.budgets.worst_case(&plan, tokens_in, tokens_out)
    }

    /// Asks the policy whether the run may take this step (the decision is audited with the
    /// step's outcome). A permit that asks for approval makes the run wait for it: the
    /// approval is requested once per step, and the step, decided again when the run resumes,
    /// acts if it was approved and is denied if it was denied or expired.
    async fn authorize(
        &self,
        ctx: &RunCtx,
        action: &Action<'_>,
        cost_nanos: i64,
        seq: i64,
        chain: &[String],
        owner: Option<&str>,
    ) -> Result<(Decision, Option<String>), StepError> {
        let (act, resource) = match action {
            Action::Model { .. } => ("llm.call", ctx.spec.model.as_str()),
            Action::Tool { name, .. } => ("tool.call", *name),
        };
        let now = self.clock.now_ms();
        let query = |action, resource| Query {
            agent: &ctx.run.agent,
            run: Some(ctx.run.id.as_str()),
            action,
            resource,
            cost_nanos,
            time_ms: now,
            chain,
            owner,
            // A managed run acts for its agent's owner.
            on_behalf_of: owner,
            destination: None,
        };
        let mut d = self.policies.decide(&query(act, resource));
        // What the tool does besides (starting another agent is also `agent.spawn` on that
        // agent, running code is also `sandbox.exec` on the run's sandbox): both decisions
        // must allow it.
        let also = match action {
            Action::Tool { name, args } => self
                .tools
                .get(name)
                .and_then(|t| t.also_decided(&ctx.run.id, args)),
            Action::Model { .. } => None,
        };
        if let (true, Some(also)) = (d.allow, &also) {
            let second = self.policies.decide(&query(also.action, &also.resource));
            if second.allow {
                d.policy_ids.extend(second.policy_ids);
                d.approval = d.approval.or(second.approval);
            } else {
                d = second;
            }
        }
        let record = |d: &Decision, verdict: &str, approval: Option<String>| {
            steward_gov::AuditRecord {
                approval,
                cost_nanos,
                ..run_decision(ctx, chain, seq, (act, resource), now).decided(verdict, Some(d))
            }
            .to_json()
        };
        let mut note = None;
        // A suspended or revoked agent may not act, whatever the policy says.
        if let Some(why) = self
            .identities
            .barred(&ctx.run.agent)
            .await
            .map_err(|e| StepError::Store(e.to_string()))?
        {
            d.allow = false;
            note = Some(why);
        }
        // A child run may do only what the run that spawned it granted, while the grant stands.
        if d.allow && ctx.run.parent_id.is_some() {
            if let Some(why) = self.outside_grant(ctx, act, resource, now).await? {
                d.allow = false;
                note = Some(why);
            }
        }
        if let (true, Some(group)) = (d.allow, d.approval.clone()) {
            let store = &self.budgets.store;
            let store_err = |e: steward_store::Error| StepError::Store(e.to_string());
            let run = ctx.run.id.as_str();
            let existing = store.approval_for(run, seq).await.map_err(store_err)?;
            match existing {
                Some(a) if a.state == "approved" => {
                    note = Some(format!(
                        "approval {} approved by {}: {}",
                        a.id,
                        a.decided_by.unwrap_or_default(),
                        a.reason.unwrap_or_default()
                    ));
                }
                Some(a) if a.state != "pending" => {
                    d.allow = false;
                    note = Some(format!(
                        "approval {} {}{}: {}",
                        a.id,
                        a.state,
                        a.decided_by.map(|b| format!(" by {b}")).unwrap_or_default(),
                        a.reason.unwrap_or_default()
                    ));
                }
                existing => {
                    let a = match existing {
                        Some(a) => a,
                        None => {
                            let new = steward_store::NewApproval {
                                id: self.clock.new_id("apr"),
                                run_id: run.to_string(),
                                seq,
                                approvers: group.clone(),
                                action: act.to_string(),
                                resource: resource.to_string(),
                                policy_ids: serde_json::to_string(&d.policy_ids)
                                    .unwrap_or_default(),
                                expires_at: now + self.approval_timeout_ms,
                            };
                            store.request_approval(&new, now).await.map_err(store_err)?
                        }
                    };
                    let r = record(&d, "approval_required", Some(a.id.clone()));
                    self.record(ctx, Vec::new(), vec![(now, r)]).await?;
                    return Err(StepError::AwaitingApproval {
                        id: a.id,
                        approvers: group,
                        what: format!("{act} {resource}"),
                    });
                }
            }
        }
        Ok((d, note))
    }

    async fn hold(
        &self,
        ctx: &RunCtx,
        estimate: Result<i64, String>,
        key: &str,
    ) -> Result<bool, StepError> {
        let store_err = |e: steward_store::Error| StepError::Store(e.to_string());
        let store = &self.budgets.store;
        let now = self.clock.now_ms();
        let agent_account = format!("agent:{}", ctx.run.agent);
        if let Some(usd) = ctx.spec.budget.as_ref().and_then(|b| b.per_run_usd) {
            let account = format!("run:{}", ctx.run.id);
            if store
                .get_budget(&account)
                .await
                .map_err(store_err)?
                .is_none()
            {
                let parent = store.get_budget(&agent_account).await.map_err(store_err)?;
                let cap = (usd * 1e9).round() as i64;
                store
                    .put_budget(
                        &account,
                        parent.map(|_| agent_account.as_str()),
                        cap,
                        "total",
                        now,
                    )
                    .await
                    .map_err(store_err)?;
            }
        }
        let mut starts = vec![format!("run:{}", ctx.run.id), agent_account];
        if ctx.run.parent_id.is_some() {
            // A grant's budget holds the child and everything it spawns.
            starts.push(format!("delegation:{}", crate::host::run_link(&ctx.run.id)));
        }
        let accounts = self.budgets.chain_from(starts).await.map_err(store_err)?;
        if accounts.is_empty() {
            return Ok(false);
        }
        let amount = estimate.map_err(StepError::Model)?;
        let hold = NewHold {
            id: key,
            kind: HOLD_STEP,
            run_id: Some(ctx.run.id.as_str()),
            accounts: &accounts,
            amount,
        };
        match store.hold(&hold, now).await.map_err(store_err)? {
            HoldResult::Held | HoldResult::AlreadyHeld => Ok(true),
            HoldResult::Exceeded(account) => Err(StepError::BudgetExceeded {
                message: format!(
                    "budget exceeded on account {account:?}: the next model call's worst case (${:.6}) does not fit what is left",
                    amount as f64 / 1e9
                ),
                account,
                policy: ctx.spec.budget.as_ref().map(|b| b.on_exceeded).unwrap_or_default(),
            }),
        }
    }

    /// Performs the action; for a model call also returns what it cost, in nano-dollars.
    async fn act(
        &self,
        ctx: &RunCtx,
        seq: i64,
        key: &str,
        action: Action<'_>,
    ) -> Result<(Outcome, i64), StepError> {
        let step_timeout = Duration::from_millis(ctx.spec.step_timeout);
        match action {
            Action::Model { request } => {
                // What is actually called is decided, not only the name the spec gives.
                let plan = match &ctx.provider {
                    Some(_) => None,
                    None => Some(self.permitted_plan(ctx, key, seq).await?),
                };
                // The scripted provider plays its script; every real model goes through the
                // router (fallbacks, retries, breakers), the same path as the gateway's.
                let attempt = async {
                    match &ctx.provider {
                        Some(p) => p.chat(request).await.map(|r| (r, 0)),
                        None => {
                            // The hold assumed at most DEFAULT_MAX_OUTPUT tokens when the agent
                            // set no limit: the upstream is held to it too.
                            let bounded;
                            let request = if request.max_tokens.is_none() {
                                bounded = ChatRequest {
                                    max_tokens: Some(DEFAULT_MAX_OUTPUT as u32),
                                    ..request.clone()
                                };
                                &bounded
                            } else {
                                request
                            };
                            let plan = plan.as_ref().ok_or_else(|| {
                                steward_llm::Error::Route("no plan for the model call".into())
                            })?;
                            let (r, label) = self.router.chat_planned(key, plan, request).await?;
                            let spent = self.budgets.cost(
                                &label,
                                r.usage.input_tokens as i64,
                                r.usage.output_tokens as i64,
                            );
                            Ok((r, spent.unwrap_or(0)))
                        }
                    }
                };
                match tokio::time::timeout(step_timeout, attempt).await {
                    Ok(Ok((r, spent))) => Ok((Outcome::Model(r), spent)),
                    Ok(Err(e)) => Err(StepError::Model(e.to_string())),
                    Err(_) => Err(StepError::ModelTimeout(format!(
                        "the model call did not finish within the agent's stepTimeout ({} ms)",
                        ctx.spec.step_timeout
                    ))),
                }
            }
            Action::Tool { name, args } => {
                // Authorize: an agent calls only the tools its spec lists.
                if !ctx.spec.tools.iter().any(|t| t == name) {
                    return Ok((
                        Outcome::Tool(Err(format!("tool {name:?} is not available to this agent"))),
                        0,
                    ));
                }
                let Some(tool) = self.tools.get(name) else {
                    return Ok((
                        Outcome::Tool(Err(format!("no tool named {name:?} exists"))),
                        0,
                    ));
                };
                let tctx = ToolContext {
                    run_id: ctx.run.id.clone(),
                    seq,
                    idempotency_key: key.to_string(),
                    host: self.host.clone(),
                };
                let result = if let Some(p) = ctx.spec.tool_policies.get(name as &str) {
                    self.resilient_tool(ctx, name, args, &tctx, p, step_timeout)
                        .await?
                } else if tool.wait() == Wait::UntilDone {
                    // Waiting on work of its own (a child run, bounded by its own timeout) is
                    // abandoned on shutdown without an outcome: such a tool is idempotent, so
                    // the next life calls it again and finds the same work.
                    tokio::select! {
                        r = tool.call(&tctx, args.clone()) => r.map_err(|e| e.to_string()),
                        _ = self.draining.cancelled() => return Err(StepError::Draining),
                    }
                } else {
                    match tokio::time::timeout(step_timeout, tool.call(&tctx, args.clone())).await {
                        Ok(r) => r.map_err(|e| e.to_string()),
                        Err(_) => Err(format!(
                            "the tool did not finish within stepTimeout ({} ms)",
                            ctx.spec.step_timeout
                        )),
                    }
                };
                // A metered tool is charged at what the call used.
                let spent = match (&result, tool.meter()) {
                    (Ok(v), Some(m)) => self.meters.cost_nanos(m.name, (m.used)(v)),
                    _ => 0,
                };
                Ok((Outcome::Tool(result), spent))
            }
        }
    }
}

impl Kernel {
    /// A tool call under its agent's `toolPolicies` entry: each attempt bounded by the policy's
    /// timeout, failures of the classes it names retried with the router's backoff, the
    /// fleet-wide circuit breaker `tool:<name>` consulted and fed, and the fallback tool tried
    /// with the same arguments when all that still fails, then the fallback agent. All within
    /// the one journaled step.
    async fn resilient_tool(
        &self,
        ctx: &RunCtx,
        name: &str,
        args: &Value,
        tctx: &ToolContext,
        p: &steward_types::manifest::ToolPolicy,
        step_timeout: Duration,
    ) -> Result<Result<Value, String>, StepError> {
        let timeout = p
            .timeout_ms
            .map_or(step_timeout, |t| Duration::from_millis(t).min(step_timeout));
        let attempts = p.retry.as_ref().map_or(1, |r| r.max_attempts.max(1));
        let retried = |class: &str| {
            p.retry
                .as_ref()
                .is_some_and(|r| r.on.iter().any(|c| c == class))
        };
        let label = format!("tool:{name}");
        let breakers = self.router.breakers();
        let mut last = Err(format!("tool {name:?} was not called"));
        for attempt in 0..attempts {
            if p.breaker && !breakers.allow(&label, Instant::now()) {
                last = Err(format!(
                    "tool {name:?}: its circuit is open after repeated failures across the fleet; not called"
                ));
                break;
            }
            let Some(tool) = self.tools.get(name) else {
                return Ok(Err(format!("no tool named {name:?} exists")));
            };
            let (result, class) =
                match tokio::time::timeout(timeout, tool.call(tctx, args.clone())).await {
                    Ok(Ok(v))
                        if v.get("status")
                            .and_then(Value::as_u64)
                            .is_some_and(|s| s >= 500) =>
                    {
                        (Ok(v), Some("5xx"))
                    }
                    Ok(Ok(v)) => (Ok(v), None),
                    Ok(Err(e)) => (Err(e.to_string()), Some("error")),
                    Err(_) => (
                        Err(format!(
                            "the tool did not finish within {} ms",
                            timeout.as_millis()
                        )),
                        Some("timeout"),
                    ),
                };
            last = result;
            let Some(class) = class else {
                if p.breaker {
                    breakers.success(&label);
                }
                return Ok(last);
            };
            if p.breaker {
                breakers.failure(&label, Instant::now());
            }
            if !retried(class) || attempt + 1 == attempts {
                break;
            }
            let initial = p.retry.as_ref().map_or(200, |r| r.initial_ms);
            let seed = ctx.run.id.as_str().bytes().fold(tctx.seq as u64, |h, b| {
                h.wrapping_mul(31).wrapping_add(u64::from(b))
            });
            tokio::time::sleep(steward_llm::resilience::retry_delay(
                attempt,
                Duration::from_millis(initial),
                None,
                seed,
            ))
            .await;
        }
        let failed = |r: &Result<Value, String>| match r {
            Err(_) => true,
            Ok(v) => v
                .get("status")
                .and_then(Value::as_u64)
                .is_some_and(|s| s >= 500),
        };
        if let (true, Some(other)) = (failed(&last), &p.fallback) {
            // The fallback is a tool call of its own: listed, decided and audited like the
            // first, never run on the first one's permit.
            if let Some(refused) = self.may_fallback(ctx, other, args, tctx.seq).await? {
                let why = match &last {
                    Err(e) => e.clone(),
                    Ok(v) => format!("the tool answered with status {}", v["status"]),
                };
                return Ok(Err(format!(
                    "{why}; the fallback tool {other:?} was not called: {refused}"
                )));
            }
            if let Some(tool) = self.tools.get(other) {
                last = match tokio::time::timeout(step_timeout, tool.call(tctx, args.clone())).await
                {
                    Ok(r) => r.map_err(|e| format!("fallback {other:?} failed too: {e}")),
                    Err(_) => Err(format!(
                        "fallback {other:?} did not finish within stepTimeout"
                    )),
                };
            }
        }
        match (failed(&last), &p.fallback_agent) {
            (true, Some(agent)) => {
                let why = match &last {
                    Err(e) => e.clone(),
                    Ok(v) => format!("the tool answered with status {}", v["status"]),
                };
                self.fallback_agent(ctx, name, args, tctx.seq, agent, &why)
                    .await
            }
            _ => Ok(last),
        }
    }

    /// Hands a failed tool call to the policy's fallback agent: a child run (id derived from
    /// the step, so a replayed step finds it again), started only if `agent.spawn` on that
    /// agent is allowed — the decision audited like any other — whose answer is the result.
    async fn fallback_agent(
        &self,
        ctx: &RunCtx,
        tool: &str,
        args: &Value,
        seq: i64,
        agent: &str,
        why: &str,
    ) -> Result<Result<Value, String>, StepError> {
        if let Some(refused) = self.may_spawn(ctx, agent, seq).await? {
            return Ok(Err(format!(
                "{why}; the fallback agent {agent:?} was not started: {refused}"
            )));
        }
        let child = RunId::child_of(&ctx.run.id, seq);
        let input = json!({ "tool": tool, "arguments": args, "error": why }).to_string();
        // Waiting is abandoned on shutdown; the next life finds the same child and waits again.
        let waited = tokio::select! {
            r = self.host.spawn_and_wait(&ctx.run.id, &child, agent, &input, None) => r,
            _ = self.draining.cancelled() => return Err(StepError::Draining),
        };
        Ok(match waited {
            Ok(o) if o.state == "succeeded" => {
                Ok(json!({ "fallback_agent": agent, "run_id": o.run_id, "result": o.result }))
            }
            Ok(o) => Err(format!(
                "{why}; the fallback agent {agent:?} (run {}) {}: {}",
                o.run_id,
                o.state,
                o.error.unwrap_or_default()
            )),
            Err(e) => Err(format!("{why}; the fallback agent {agent:?}: {e}")),
        })
    }

    /// The plan for this run's model call with every deployment the policy refuses left out
    /// (`llm.call` on `provider/model`, decided beside the one on the name the spec gives): a
    /// forbidden deployment is never reached through an alias. Refusals are audited; a call
    /// none of whose deployments may be called is denied.
    async fn permitted_plan(
        &self,
        ctx: &RunCtx,
        key: &str,
        seq: i64,
    ) -> Result<steward_llm::Plan, StepError> {
        let model = ctx.spec.model.as_str();
        let mut plan = self
            .router
            .plan(model, key)
            .map_err(|e| StepError::Model(e.to_string()))?;
        let labels: std::collections::BTreeSet<String> = plan
            .all()
            .map(|d| d.label.clone())
            .filter(|l| l != model)
            .collect();
        if labels.is_empty() {
            return Ok(plan);
        }
        let store_err = |e: steward_store::Error| StepError::Store(e.to_string());
        let owner = self
            .identities
            .owner(&ctx.run.agent)
            .await
            .map_err(store_err)?;
        let chain = run_chain(ctx, owner.as_deref());
        let now = self.clock.now_ms();
        let mut refused: Vec<(String, Decision)> = Vec::new();
        let mut records = Vec::new();
        for label in labels {
            let d = self.policies.decide(&Query {
                agent: &ctx.run.agent,
                run: Some(ctx.run.id.as_str()),
                action: "llm.call",
                resource: &label,
                cost_nanos: 0,
                time_ms: now,
                chain: &chain,
                owner: owner.as_deref(),
                on_behalf_of: owner.as_deref(),
                destination: None,
            });
            if d.allow && d.approval.is_none() {
                continue;
            }
            records.push((
                now,
                steward_gov::AuditRecord {
                    error: Some(format!("deployment of {model} left out of the call")),
                    ..run_decision(ctx, &chain, seq, ("llm.call", &label), now)
                        .decided("deny", Some(&d))
                }
                .to_json(),
            ));
            refused.push((label, d));
        }
        if refused.is_empty() {
            return Ok(plan);
        }
        self.record(ctx, Vec::new(), records).await?;
        if !plan.retain_allowed(|l| refused.iter().any(|(r, _)| r == l)) {
            return Err(StepError::PolicyDenied(format!(
                "the model call was denied by policy: every deployment {model} routes to is refused: {}",
                crate::gateway::refused_deployments(refused.iter().map(|(l, d)| (l.as_str(), d)))
            )));
        }
        Ok(plan)
    }

    /// Whether this run may start `agent` as a child other than by a tool call (a fallback):
    /// the policy's `agent.spawn` decision and the run's own grant, audited. A permit that asks
    /// for approval counts as no: a fallback does not wait for a human.
    async fn may_spawn(
        &self,
        ctx: &RunCtx,
        agent: &str,
        seq: i64,
    ) -> Result<Option<String>, StepError> {
        self.may_act_unattended(ctx, "agent.spawn", agent, seq)
            .await
    }

    /// Whether the fallback tool `tool` may be called with `args` in place of a failed one:
    /// it must be one of the agent's tools, and `tool.call` on it — and what the tool does
    /// besides (`agent.spawn`, `sandbox.exec`) — must be allowed without an approval.
    async fn may_fallback(
        &self,
        ctx: &RunCtx,
        tool: &str,
        args: &Value,
        seq: i64,
    ) -> Result<Option<String>, StepError> {
        if !ctx.spec.tools.iter().any(|t| t == tool) {
            return Ok(Some(
                "it is not one of this agent's tools (spec.tools)".to_string(),
            ));
        }
        if let Some(refused) = self.may_act_unattended(ctx, "tool.call", tool, seq).await? {
            return Ok(Some(refused));
        }
        let also = self
            .tools
            .get(tool)
            .and_then(|t| t.also_decided(&ctx.run.id, args));
        match also {
            Some(also) => {
                self.may_act_unattended(ctx, also.action, &also.resource, seq)
                    .await
            }
            None => Ok(None),
        }
    }

    /// Whether this run may do `action` on `resource` where no one can be asked (a fallback):
    /// the policy's decision and the run's own grant, audited. A permit that asks for
    /// approval counts as no.
    async fn may_act_unattended(
        &self,
        ctx: &RunCtx,
        action: &str,
        resource: &str,
        seq: i64,
    ) -> Result<Option<String>, StepError> {
        let store_err = |e: steward_store::Error| StepError::Store(e.to_string());
        let owner = self
            .identities
            .owner(&ctx.run.agent)
            .await
            .map_err(store_err)?;
        let chain = run_chain(ctx, owner.as_deref());
        let now = self.clock.now_ms();
        let d = self.policies.decide(&Query {
            agent: &ctx.run.agent,
            run: Some(ctx.run.id.as_str()),
            action,
            resource,
            cost_nanos: 0,
            time_ms: now,
            chain: &chain,
            owner: owner.as_deref(),
            on_behalf_of: owner.as_deref(),
            destination: None,
        });
        let mut refused = if !d.allow {
            Some(if d.policy_ids.is_empty() {
                format!("no policy permits {action} on it")
            } else {
                format!("forbidden by {}", d.policy_ids.join(", "))
            })
        } else if d.approval.is_some() {
            Some(format!(
                "{action} on it needs approval, which a fallback does not wait for"
            ))
        } else {
            None
        };
        if refused.is_none() {
            if let Some(why) = self
                .identities
                .barred(&ctx.run.agent)
                .await
                .map_err(store_err)?
            {
                refused = Some(why);
            }
        }
        if refused.is_none() && ctx.run.parent_id.is_some() {
            refused = self.outside_grant(ctx, action, resource, now).await?;
        }
        let verdict = if refused.is_none() { "allow" } else { "deny" };
        let record = steward_gov::AuditRecord {
            error: refused.clone(),
            ..run_decision(ctx, &chain, seq, (action, resource), now).decided(verdict, Some(&d))
        }
        .to_json();
        self.record(ctx, Vec::new(), vec![(now, record)]).await?;
        Ok(refused)
    }
}

/// The record of a decision on step `seq` of the run: `action` on `resource`, by the run, with
/// the authority of `chain`, in the step's trace.
fn run_decision(
    ctx: &RunCtx,
    chain: &[String],
    seq: i64,
    (action, resource): (&str, &str),
    at: i64,
) -> steward_gov::AuditRecord {
    steward_gov::AuditRecord {
        trace_id: crate::trace_id(),
        ..steward_gov::AuditRecord::new(
            steward_gov::AuditEvent::Decision,
            at,
            format!("run:{}", ctx.run.id),
            chain.to_vec(),
            action,
            resource,
        )
        .in_run(Some(ctx.run.id.to_string()), Some(seq.to_string()))
    }
}

/// The outcome of a step the policy denied: a tool call's error is shown to the model (it may
/// do something else); a model call ends the run.
fn denied(
    d: &Decision,
    approval: Option<&str>,
    action: &Action<'_>,
) -> Result<(Outcome, i64), StepError> {
    let by = match approval {
        Some(why) => why.to_string(),
        None if d.policy_ids.is_empty() => "no policy permits it".to_string(),
        None => format!("forbidden by {}", d.policy_ids.join(", ")),
    };
    match action {
        Action::Tool { name, .. } => Ok((
            Outcome::Tool(Err(format!("tool {name:?} denied by policy: {by}"))),
            0,
        )),
        Action::Model { .. } => Err(StepError::PolicyDenied(format!(
            "the model call was denied by policy: {by}"
        ))),
    }
}

/// How journals written before denials were marked (`"denied": true`) told one: by this prefix
/// on the error's text. Read only to replay those journals.
const LEGACY_DENIAL_PREFIX: &str = "policy_denied:";

/// What the journal keeps of a request: enough to read the timeline. The hash covers the whole.
fn intent_body(action: &Action<'_>) -> Value {
    match action {
        Action::Model { request } => json!({
            "model": request.model,
            "messages": request.messages.len(),
            "last": request.messages.last().and_then(|m| m.content.clone()),
            "tools": request.tools.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
        }),
        Action::Tool { args, .. } => (*args).clone(),
    }
}

fn decode_outcome(kind: &str, e: &JournalEntry) -> Result<Outcome, StepError> {
    let v: Value = serde_json::from_str(&e.body)
        .map_err(|err| StepError::Store(format!("journal entry {} is corrupt: {err}", e.seq)))?;
    if kind == "model" {
        if let Some(err) = v.get("error") {
            let msg = err.as_str().unwrap_or_default().to_string();
            return Err(if v.get("timeout").is_some() {
                StepError::ModelTimeout(msg)
            } else if v.get("denied").is_some() {
                StepError::PolicyDenied(msg)
            } else if let Some(rest) = msg.strip_prefix(LEGACY_DENIAL_PREFIX) {
                StepError::PolicyDenied(rest.trim_start().to_string())
            } else {
                StepError::Model(msg)
            });
        }
        serde_json::from_value(v)
            .map(Outcome::Model)
            .map_err(|err| StepError::Store(format!("journal entry {} is corrupt: {err}", e.seq)))
    } else if let Some(err) = v.get("error") {
        Ok(Outcome::Tool(Err(err
            .as_str()
            .unwrap_or_default()
            .to_string())))
    } else {
        Ok(Outcome::Tool(Ok(v
            .get("ok")
            .cloned()
            .unwrap_or(Value::Null))))
    }
}

pub(crate) fn step_error_text(e: &StepError) -> String {
    match e {
        StepError::Divergence(m)
        | StepError::Model(m)
        | StepError::ModelTimeout(m)
        | StepError::PolicyDenied(m)
        | StepError::Store(m) => m.clone(),
        StepError::InDoubt { seq, what, policy } => format!(
            "step {seq} ({what}) was interrupted by a crash before its outcome was recorded and is not idempotent; recovery policy: {}",
            policy.as_str()
        ),
        StepError::BudgetExceeded { message, .. } => message.clone(),
        StepError::AwaitingApproval { id, approvers, what } => format!(
            "{what} needs approval from {approvers}: steward approve {id} --reason … (or deny)"
        ),
        StepError::Draining => "the node is shutting down".into(),
        StepError::LeaseLost => "the run was claimed again since this node took it".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_llm::{Message, Role};

    fn req(messages: &[Message]) -> ChatRequest {
        ChatRequest {
            model: "m".into(),
            messages: messages.to_vec(),
            tools: vec![],
            max_tokens: None,
        }
    }

    fn model_outcome(body: Value) -> JournalEntry {
        JournalEntry {
            run_id: "run_1".into(),
            seq: 3,
            phase: PHASE_OUTCOME,
            kind: "model".into(),
            name: "smart".into(),
            request_hash: String::new(),
            idempotency_key: String::new(),
            body: body.to_string(),
            ok: 0,
            tokens_in: 0,
            tokens_out: 0,
            at: 0,
            duration_us: 0,
        }
    }

    #[test]
    fn a_journaled_denial_replays_as_a_denial_in_either_format() {
        let replay = |body: Value| decode_outcome("model", &model_outcome(body)).err().unwrap();
        // Written now: marked.
        let e = replay(json!({"error": "the model call was denied by policy: x", "denied": true}));
        assert!(
            matches!(&e, StepError::PolicyDenied(m) if m == "the model call was denied by policy: x")
        );
        // Written before the marker: the text's prefix.
        let e = replay(json!({"error": "policy_denied: the model call was denied by policy: x"}));
        assert!(
            matches!(&e, StepError::PolicyDenied(m) if m == "the model call was denied by policy: x")
        );
        // Any other model error stays one, whatever it says.
        let e = replay(json!({"error": "upstream said policy_denied"}));
        assert!(matches!(e, StepError::Model(_)));
        let e = replay(json!({"error": "slow", "timeout": true}));
        assert!(matches!(e, StepError::ModelTimeout(_)));
    }

    #[test]
    fn a_conversation_hashed_step_by_step_matches_one_hashed_at_once() {
        let msgs = [
            Message::text(Role::User, "a"),
            Message::text(Role::Assistant, "b"),
            Message::text(Role::User, "c"),
        ];
        let mut live = ConversationHash::default();
        let _ = hash(
            &Action::Model {
                request: &req(&msgs[..2]),
            },
            &mut live,
        );
        let stepwise = hash(
            &Action::Model {
                request: &req(&msgs),
            },
            &mut live,
        );
        let replayed = hash(
            &Action::Model {
                request: &req(&msgs),
            },
            &mut ConversationHash::default(),
        );
        assert_eq!(
            stepwise, replayed,
            "a replay from scratch computes the same hashes"
        );
        let other = [
            Message::text(Role::User, "a"),
            Message::text(Role::Assistant, "B"),
            Message::text(Role::User, "c"),
        ];
        assert_ne!(
            stepwise,
            hash(
                &Action::Model {
                    request: &req(&other)
                },
                &mut ConversationHash::default()
            )
        );
        let args = serde_json::json!({"x": 1});
        let tool = hash(
            &Action::Tool {
                name: "echo",
                args: &args,
            },
            &mut live,
        );
        assert_ne!(
            tool,
            hash(
                &Action::Tool {
                    name: "echo2",
                    args: &args
                },
                &mut live
            )
        );
    }
}
