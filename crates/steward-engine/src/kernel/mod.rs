//! The Kernel: the one path every effectful action of a run takes.
//!
//! 1 identify (the `RunCtx` names the run, its agent version and the chain it acts for),
//! 2 authorize (the agent's identity and grant, Cedar policy, approvals), 3 reserve (the
//! worst case held on every budget that governs the run), 4 journal the intent — durable before
//! acting, 5 act, 6 journal the outcome with its audit record and budget settlement in one
//! commit, 7 record (a span per syscall, metrics).
//!
//! The stages are written once, in [`Kernel::call`], over the [`Syscall`] trait; each kind of
//! syscall is one type in a module of its own ([`ModelCall`], [`ToolCall`]).
//!
//! Replay: a step already in the journal returns its recorded outcome without acting. A step
//! with an intent and no outcome is in doubt: idempotent actions are retried under the same
//! idempotency key; others follow the agent's recovery policy. A request that differs from
//! the journal at the same position is a divergence and stops the run.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};
use steward_gov::Decision;
use steward_llm::{Provider, Router};
use steward_store::{HoldResult, NewHold, HOLD_STEP};
use steward_store::{JournalEntry, JournalWriter, RunRecord, PHASE_INTENT, PHASE_OUTCOME};
use steward_tools::{ToolHost, Tools};
use steward_types::{AgentSpec, BudgetPolicy, RecoveryPolicy};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::authority::{decision_record, run_query, ActsFor, Authority};
use crate::budgets::Budgets;
use crate::clock::Clock;

mod model_call;
mod syscall;
mod tool_call;

pub use model_call::ModelCall;
pub use syscall::{Journaled, Syscall};
pub use tool_call::{ToolCall, ToolResult};

use syscall::{is_outcome, journaled_error};

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
        let carried = ctx.take_unflushed();
        let wrote_entries = !(entries.is_empty() && carried.entries.is_empty());
        loop {
            let claim = ctx.claim();
            match self
                .journal
                .append_audited(
                    claim.as_ref(),
                    [&carried.entries[..], &entries].concat(),
                    [&carried.audit[..], &audit].concat(),
                    [&carried.settles[..], &settles].concat(),
                )
                .await
            {
                Err(steward_store::Error::Fenced(_)) if ctx.claim() != claim => continue,
                Ok(()) => {
                    if wrote_entries {
                        self.journal_tick.notify_waiters();
                    }
                    return Ok(());
                }
                Err(e) => {
                    ctx.restore_unflushed(carried);
                    return Err(unjournaled(e));
                }
            }
        }
    }

    /// Commits what the run's last step left uncommitted (see [`RunCtx::unflushed`]). Every
    /// path by which a run's loop ends — an answer, a wait, a failure, a cancel, a drain —
    /// calls it before the run's state changes.
    pub(crate) async fn flush(&self, ctx: &RunCtx) -> Result<(), StepError> {
        let pending = ctx.unflushed.lock().map(|u| !u.is_empty()).unwrap_or(false);
        if !pending {
            return Ok(());
        }
        self.record(ctx, Vec::new(), Vec::new()).await
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
    /// What the run was forked from and what its model sees differently from the fork's step.
    pub fork: Option<steward_store::RunFork>,
    conversation: ConversationHash,
    next_seq: i64,
    /// What earlier lives recorded, for replay. Steps taken in this life are not kept: the loop
    /// never asks for the same position twice.
    journal: BTreeMap<i64, Recorded>,
    /// The claim this node drives the run under (its epoch, until when its lease lasts), and
    /// how much of the lease must be left to start a step: one heartbeat interval.
    lease: Option<(Arc<crate::runs::Held>, i64)>,
    /// The last step's outcome, its audit record and settlement, not yet committed: they go
    /// in the commit of whatever the run writes next — the next step's intent, as a rule — so
    /// a step costs one commit, not two. Nothing outside the run sees an outcome before that
    /// commit (the next model call, tool or run end comes after it); a crash before it leaves
    /// the step in doubt, as a crash during the step does. See [`Kernel::flush`].
    unflushed: Mutex<Unflushed>,
}

/// Writes a run has made and not committed yet (see [`RunCtx::unflushed`]).
#[derive(Default)]
struct Unflushed {
    entries: Vec<JournalEntry>,
    audit: Vec<(i64, String)>,
    settles: Vec<(String, i64)>,
}

impl Unflushed {
    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.audit.is_empty() && self.settles.is_empty()
    }
}

impl RunCtx {
    /// Takes what the run has not committed yet, to write it with what it writes next.
    fn take_unflushed(&self) -> Unflushed {
        self.unflushed
            .lock()
            .map(|mut u| std::mem::take(&mut *u))
            .unwrap_or_default()
    }

    /// Leaves `writes` for the run's next commit.
    fn defer(&self, writes: Unflushed) {
        if let Ok(mut u) = self.unflushed.lock() {
            u.entries.extend(writes.entries);
            u.audit.extend(writes.audit);
            u.settles.extend(writes.settles);
        }
    }

    /// Puts back what a failed write carried, for the next write (or the final flush).
    fn restore_unflushed(&self, carried: Unflushed) {
        let later = self.take_unflushed();
        if let Ok(mut u) = self.unflushed.lock() {
            *u = carried;
        }
        self.defer(later);
    }

    /// The position of the run's next step.
    pub(crate) fn next_seq(&self) -> i64 {
        self.next_seq
    }

    /// The conversation changed before its end (a fork's edits): its hash starts over.
    pub(crate) fn conversation_rewritten(&mut self) {
        self.conversation = ConversationHash::default();
    }

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
            fork: None,
            conversation: ConversationHash::default(),
            next_seq: 0,
            journal,
            unflushed: Mutex::default(),
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
    /// Approvals a policy asked for, one per step.
    pub(crate) approvals: Arc<dyn steward_store::ApprovalStore>,
    /// The policy, identities and grants every decision on a run's action consults.
    pub(crate) authority: Authority,
    /// What metered resources (sandbox CPU) cost, for the tools that use them.
    pub(crate) meters: crate::meters::Meters,
    /// How long an approval may stay pending before it counts as denied.
    pub(crate) approval_timeout_ms: i64,
    pub(crate) tools: Tools,
    /// Argument checks and per-minute limits every tool call passes.
    pub(crate) tool_plane: Arc<crate::tool_plane::ToolPlane>,
    pub(crate) host: Arc<dyn ToolHost>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) draining: CancellationToken,
    pub(crate) stats: Option<Arc<StepStats>>,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// Signalled after every journal append, for live followers of runs on this node.
    pub(crate) journal_tick: Arc<tokio::sync::Notify>,
}

/// A running SHA-256 over the messages of a run's conversation.
#[derive(Clone, Default)]
pub struct ConversationHash {
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
    /// Takes one step of the run: `call`, governed, journaled and audited — or its outcome
    /// replayed from the journal when an earlier life of the run already took it.
    pub async fn call<S: Syscall>(
        &self,
        ctx: &mut RunCtx,
        call: S,
    ) -> Result<S::Outcome, StepError> {
        let seq = ctx.next_seq;
        ctx.next_seq += 1;
        // Named and attributed per the OpenTelemetry GenAI conventions, for trace export.
        let span = call.span(ctx, seq);
        self.call_inner(ctx, seq, &call).instrument(span).await
    }

    async fn call_inner<S: Syscall>(
        &self,
        ctx: &mut RunCtx,
        seq: i64,
        call: &S,
    ) -> Result<S::Outcome, StepError> {
        let started = Instant::now();
        let kind = S::KIND;
        let name = call.name().to_string();
        let request_hash = call.request_hash(&mut ctx.conversation);
        let idempotency_key = format!("{}:{seq}", ctx.run.id);
        // Taken, not cloned: this life never asks for the same position twice.
        let recorded = ctx.journal.remove(&seq).unwrap_or_default();

        if let Some(intent) = &recorded.intent {
            if intent.request_hash != request_hash || intent.kind != kind {
                let asked = if intent.kind == kind && intent.name == name {
                    format!("the same {kind} {name:?} with another request (a changed conversation or arguments)")
                } else {
                    format!("{kind} {name:?}")
                };
                return Err(StepError::Divergence(format!(
                    "step {seq}: the journal holds {} {:?} but the run now asks for {asked}",
                    intent.kind, intent.name
                )));
            }
            if let Some(out) = &recorded.outcome {
                return S::replayed(out); // completed: never act again
            }
            // In doubt: the process died between intent and outcome.
            let idempotent = call.idempotent(self);
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
        let estimate = call.worst_case(self, ctx, &idempotency_key);
        // Authorize: the policy decides; the decision is audited with the step's outcome.
        let cost = estimate.as_ref().and_then(|e| e.as_ref().ok()).copied();
        let acts = self.acts_for(ctx).await?;
        let (decision, approval_note) = self
            .authorize(ctx, call, cost.unwrap_or(0), seq, &acts)
            .await?;
        // The intent is journaled and the outcome is not: an earlier life of this run made
        // this model call and ended before recording its answer. The upstream may have
        // answered (and billed) it, so it is booked as a call of its own — its hold in full,
        // or its worst case — before this life makes it again under a new hold.
        if S::BILLED_WHEN_INTERRUPTED && recorded.intent.is_some() {
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
                body: call.intent_body().to_string(),
                ok: 1,
                tokens_in: 0,
                tokens_out: 0,
                at: self.clock.now_ms(),
                duration_us: 0,
            };
            self.record(ctx, vec![intent], Vec::new()).await?;
        }

        let act_started = Instant::now();
        let acted = if decision.allow {
            call.act(self, ctx, seq, &idempotency_key).await
        } else {
            call.denied(&denial_reason(&decision, approval_note.as_deref()))
                .map(|o| (o, 0))
        };
        let (result, spent) = match acted {
            Err(e) if is_outcome(&e) => (Err(e), 0),
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

        let journaled = match &result {
            Ok(o) => S::journaled(o),
            Err(e) => journaled_error(e),
        };
        let Journaled {
            body,
            ok,
            tokens_in,
            tokens_out,
        } = journaled;
        let ok = i64::from(ok);
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
        let (action, _) = call.decided_as(ctx);
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
                acts.chain,
                action,
                &entry.name,
            )
            .in_run(Some(entry.run_id.clone()), Some(seq.to_string()))
            .decided(verdict, Some(&decision))
        }
        .to_json();
        // Committed with whatever the run writes next (see `RunCtx::unflushed`).
        ctx.defer(Unflushed {
            entries: vec![entry],
            audit: vec![(self.clock.now_ms(), audit)],
            settles,
        });
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

    /// Whom a step of the run acts for (see [`Authority::acts_for`]).
    async fn acts_for(&self, ctx: &RunCtx) -> Result<ActsFor, StepError> {
        self.authority.acts_for(&ctx.run).await.map_err(store_error)
    }

    /// Asks the policy whether the run may take this step (the decision is audited with the
    /// step's outcome). A permit that asks for approval makes the run wait for it: the
    /// approval is requested once per step, and the step, decided again when the run resumes,
    /// acts if it was approved and is denied if it was denied or expired.
    async fn authorize<S: Syscall>(
        &self,
        ctx: &RunCtx,
        call: &S,
        cost_nanos: i64,
        seq: i64,
        acts: &ActsFor,
    ) -> Result<(Decision, Option<String>), StepError> {
        let (act, resource) = call.decided_as(ctx);
        let now = self.clock.now_ms();
        let query =
            |action, resource| run_query(&ctx.run, acts, now, (action, resource), cost_nanos);
        let mut d = self.authority.decide(&query(act, resource));
        // What the tool does besides (starting another agent is also `agent.spawn` on that
        // agent, running code is also `sandbox.exec` on the run's sandbox): both decisions
        // must allow it.
        let also = call.also_decided(self, ctx);
        if let (true, Some(also)) = (d.allow, &also) {
            let second = self.authority.decide(&query(also.action, &also.resource));
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
                ..decision_record(&ctx.run, &acts.chain, Some(seq), (act, resource), now)
                    .decided(verdict, Some(d))
            }
            .to_json()
        };
        let mut note = None;
        // A suspended or revoked agent may not act, whatever the policy says.
        if let Some(why) = self.authority.barred(&ctx.run).await.map_err(store_error)? {
            d.allow = false;
            note = Some(why);
        }
        // A child run may do only what the run that spawned it granted, while the grant stands.
        if d.allow {
            if let Some(why) = self
                .authority
                .outside_grant(&ctx.run, act, resource, now)
                .await
                .map_err(store_error)?
            {
                d.allow = false;
                note = Some(why);
            }
        }
        if let (true, Some(group)) = (d.allow, d.approval.clone()) {
            let store = &self.approvals;
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
        let acts = self.acts_for(ctx).await?;
        let now = self.clock.now_ms();
        let u = self
            .authority
            .unattended(&ctx.run, &acts, (action, resource), None, now)
            .await
            .map_err(store_error)?;
        let verdict = if u.refused.is_none() { "allow" } else { "deny" };
        let record = steward_gov::AuditRecord {
            error: u.refused.clone(),
            ..decision_record(&ctx.run, &acts.chain, Some(seq), (action, resource), now)
                .decided(verdict, Some(&u.decision))
        }
        .to_json();
        self.record(ctx, Vec::new(), vec![(now, record)]).await?;
        Ok(u.refused)
    }
}

fn store_error(e: steward_store::Error) -> StepError {
    StepError::Store(e.to_string())
}

/// Why the policy denied a step, as its outcome says.
fn denial_reason(d: &Decision, approval: Option<&str>) -> String {
    match approval {
        Some(why) => why.to_string(),
        None if d.policy_ids.is_empty() => "no policy permits it".to_string(),
        None => format!("forbidden by {}", d.policy_ids.join(", ")),
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
    use serde_json::{json, Value};
    use steward_llm::{ChatRequest, Message, Role};

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
        let replay = |body: Value| ModelCall::replayed(&model_outcome(body)).err().unwrap();
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
    fn every_outcome_replays_as_it_was_journaled() {
        let entry = |j: Journaled| JournalEntry {
            body: j.body,
            ok: i64::from(j.ok),
            ..model_outcome(Value::Null)
        };
        for e in [
            StepError::Model("upstream 500".into()),
            StepError::ModelTimeout("slow".into()),
            StepError::PolicyDenied("no".into()),
        ] {
            assert!(is_outcome(&e));
            let back = ModelCall::replayed(&entry(journaled_error(&e))).err();
            assert_eq!(back, Some(e));
        }
        for r in [
            Ok(json!({"a": [1, 2]})),
            Ok(Value::Null),
            Err("boom".to_string()),
        ] {
            let back = ToolCall::replayed(&entry(ToolCall::journaled(&r))).unwrap();
            assert_eq!(back, r);
        }
        assert!(!is_outcome(&StepError::Draining));
        let corrupt = JournalEntry {
            body: "{not json".into(),
            ..model_outcome(Value::Null)
        };
        assert!(matches!(
            ToolCall::replayed(&corrupt),
            Err(StepError::Store(_))
        ));
    }

    #[test]
    fn a_conversation_hashed_step_by_step_matches_one_hashed_at_once() {
        let msgs = [
            Message::text(Role::User, "a"),
            Message::text(Role::Assistant, "b"),
            Message::text(Role::User, "c"),
        ];
        let hash =
            |r: &ChatRequest, c: &mut ConversationHash| ModelCall { request: r }.request_hash(c);
        let mut live = ConversationHash::default();
        let _ = hash(&req(&msgs[..2]), &mut live);
        let stepwise = hash(&req(&msgs), &mut live);
        let replayed = hash(&req(&msgs), &mut ConversationHash::default());
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
            hash(&req(&other), &mut ConversationHash::default())
        );
        let args = serde_json::json!({"x": 1});
        let mut tool = |name| ToolCall { name, args: &args }.request_hash(&mut live);
        let (a, b) = (tool("echo"), tool("echo2"));
        assert_ne!(a, b);
    }
}
