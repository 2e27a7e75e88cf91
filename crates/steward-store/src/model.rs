//! Rows as the store hands them out. Times are milliseconds since the epoch.

use steward_types::{AgentName, Millis, NodeId, RunId, RunState};

use crate::{Error, Result};

/// `runs.wait_kind` when the run waits for a child run: a node keeps driving it.
pub const WAIT_CHILD: &str = "child";
/// `runs.wait_kind` when the run waits for a human: nobody drives it until they answer.
pub const WAIT_HUMAN: &str = "human";
/// `runs.wait_kind` when the run waits for an approval a policy asked for.
pub const WAIT_APPROVAL: &str = "approval";

#[derive(Clone, Debug)]
pub struct NewAgent {
    pub name: AgentName,
    pub spec_json: String,
    pub spec_hash: String,
}

#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct AgentRecord {
    pub name: String,
    pub version: i64,
    pub spec: String,
    pub spec_hash: String,
    pub created_at: Millis,
}

#[derive(Clone, Debug)]
pub struct NewRun {
    pub id: RunId,
    pub agent: AgentName,
    pub agent_version: i64,
    pub parent_id: Option<RunId>,
    pub input: String,
}

/// How a fork departs from its source run: the source's steps before `at` are its own (copied,
/// replayed), and from step `at` on its model sees these edits (`None`: as the source had it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunFork {
    pub source: RunId,
    pub at: i64,
    /// The user's message, in place of the run's input.
    pub input: Option<String>,
    /// The system prompt, in place of the agent's.
    pub system_prompt: Option<String>,
    /// The model (an alias or `provider/model`), in place of the agent's.
    pub model: Option<String>,
}

#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct RunRow {
    pub id: String,
    pub agent: String,
    pub agent_version: i64,
    pub parent_id: Option<String>,
    pub input: String,
    pub state: String,
    pub wait_kind: Option<String>,
    pub result: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub cancel_reason: Option<String>,
    pub retry_seq: Option<i64>,
    pub lease_owner: Option<String>,
    pub lease_expires: Option<i64>,
    pub lease_epoch: i64,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A run as stored, with its state parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRecord {
    pub id: RunId,
    pub agent: String,
    pub agent_version: i64,
    pub parent_id: Option<RunId>,
    pub input: String,
    pub state: RunState,
    pub wait_kind: Option<String>,
    pub result: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub cancel_reason: Option<String>,
    pub retry_seq: Option<i64>,
    pub lease_owner: Option<String>,
    pub lease_expires: Option<i64>,
    /// Which claim of the run this is: each claim takes the next epoch (see [`Claim`]).
    pub lease_epoch: i64,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl RunRecord {
    /// The claim `node` holds on this run, as the claim that returned this record gave it.
    pub fn claim(&self, node: &NodeId) -> Claim {
        Claim {
            run: self.id.clone(),
            node: node.clone(),
            epoch: self.lease_epoch,
        }
    }
}

/// A node's hold on a run as one claim gave it. Writes made for the run under a claim —
/// journal entries, the run's state — commit only while no later claim has taken the run:
/// a node that stalled past its lease (a pause, a GC, a lost database connection) and was
/// replaced is fenced off, even if its lease has since come back to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub run: RunId,
    pub node: NodeId,
    pub epoch: i64,
}

impl TryFrom<RunRow> for RunRecord {
    type Error = Error;
    fn try_from(r: RunRow) -> Result<Self> {
        let state = RunState::parse(&r.state).ok_or_else(|| {
            Error::Corrupt(format!("run {} has unknown state {:?}", r.id, r.state))
        })?;
        let id = RunId::parse(&r.id).map_err(|e| Error::Corrupt(e.0))?;
        let parent_id = match r.parent_id {
            Some(p) => Some(RunId::parse(&p).map_err(|e| Error::Corrupt(e.0))?),
            None => None,
        };
        Ok(RunRecord {
            id,
            agent: r.agent,
            agent_version: r.agent_version,
            parent_id,
            input: r.input,
            state,
            wait_kind: r.wait_kind,
            result: r.result,
            error_code: r.error_code,
            error_message: r.error_message,
            cancel_reason: r.cancel_reason,
            retry_seq: r.retry_seq,
            lease_owner: r.lease_owner,
            lease_expires: r.lease_expires,
            lease_epoch: r.lease_epoch,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    pub state: Option<RunState>,
    pub agent: Option<String>,
    pub parent: Option<RunId>,
    pub limit: i64,
}

/// A state change. `None` fields are cleared, so every update states the whole outcome.
#[derive(Clone, Debug)]
pub struct RunUpdate {
    pub state: RunState,
    pub wait_kind: Option<String>,
    pub result: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
}

impl RunUpdate {
    pub fn state(state: RunState) -> Self {
        RunUpdate {
            state,
            wait_kind: None,
            result: None,
            error_code: None,
            error_message: None,
        }
    }
}

/// Wake-up payloads: a run became claimable, or a run ended.
pub const WAKE_RUN: &str = "run";
pub const WAKE_DONE: &str = "done";
/// Prefix of a cancel request's announcement; the run's id follows.
pub const WAKE_CANCEL: &str = "cancel:";

pub const PHASE_INTENT: i64 = 0;
pub const PHASE_OUTCOME: i64 = 1;

#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct JournalEntry {
    pub run_id: String,
    pub seq: i64,
    /// `PHASE_INTENT` or `PHASE_OUTCOME`.
    pub phase: i64,
    /// `model` or `tool`.
    pub kind: String,
    /// The model route or tool name.
    pub name: String,
    pub request_hash: String,
    pub idempotency_key: String,
    /// JSON: the request on an intent, the response (or error) on an outcome.
    pub body: String,
    /// 1 when the outcome succeeded; 1 on intents.
    pub ok: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub at: Millis,
    pub duration_us: i64,
}

#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct ApiKeyRecord {
    pub id: String,
    pub key_hash: String,
    pub agent: String,
    pub created_at: Millis,
    pub revoked_at: Option<Millis>,
    /// A short-lived key stops working at this time.
    pub expires_at: Option<Millis>,
    pub revoke_reason: Option<String>,
}

/// An agent's identity. `status` is `active`, `suspended` (may be resumed), `revoked` (for
/// good) or `deleted` (for good, its keys revoked; the row stays as the record of it).
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct IdentityRecord {
    pub agent: String,
    pub owner: Option<String>,
    pub status: String,
    pub reason: Option<String>,
    pub updated_at: Millis,
}

/// One link of a delegation chain (see migration 0013).
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct DelegationRecord {
    pub id: String,
    pub parent_id: Option<String>,
    pub revocation_id: String,
    pub issuer: String,
    pub holder: String,
    pub key_id: Option<String>,
    pub scope: String,
    pub expires_at: Millis,
    pub created_at: Millis,
    pub revoked_at: Option<Millis>,
    pub revoke_reason: Option<String>,
}

/// A gateway call as first recorded, before the upstream is asked.
#[derive(Clone, Debug)]
pub struct NewCall {
    pub id: String,
    pub agent: String,
    pub run_id: Option<String>,
    pub model: String,
    pub stream: bool,
}

/// How a gateway call ended.
#[derive(Clone, Debug)]
pub struct CallOutcome {
    pub deployment: Option<String>,
    /// `ok` or `error`.
    pub status: String,
    pub error: Option<String>,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub duration_us: i64,
}

/// A gateway call to record as started, with the hold it takes first (no accounts: none).
#[derive(Clone, Debug)]
pub struct CallBegin {
    pub call: NewCall,
    pub accounts: Vec<String>,
    pub amount: i64,
}

/// How a gateway call ended, to settle and record.
#[derive(Clone, Debug)]
pub struct CallEnd {
    pub id: String,
    pub outcome: CallOutcome,
    /// What it cost, in nano-dollars, booked on the accounts its hold was on.
    pub spent: i64,
    /// The rate-limit scopes and window it was counted in, to add its tokens to.
    pub rate_scopes: Vec<String>,
    pub rate_window: Millis,
    pub at: Millis,
    /// The call's audit record, appended with it.
    pub audit: Option<String>,
}

#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct CallRecord {
    pub id: String,
    pub agent: String,
    pub run_id: Option<String>,
    pub model: String,
    pub deployment: Option<String>,
    /// `started` until it ends, then `ok` or `error`.
    pub status: String,
    pub error: Option<String>,
    pub stream: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub started_at: Millis,
    pub duration_us: i64,
}

/// Token usage summed per agent, model, run and hour, from managed runs' model steps and from
/// gateway calls alike.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct UsageRow {
    /// `model` (a model call) or `tool` (a managed run's tool call).
    pub kind: String,
    pub agent: String,
    /// The model name of a managed step (the tool's name for a tool call); the deployment label
    /// (`provider/model`) of a gateway call.
    pub model: String,
    pub run_id: Option<String>,
    /// The task the run served, its state, and the run's state.
    pub task_id: Option<String>,
    pub task_state: Option<String>,
    /// The run's state, or an evaluator's verdict on it (`accepted`, `rejected`) when it had one.
    pub run_state: Option<String>,
    /// Hours since the Unix epoch (UTC).
    pub hour: i64,
    pub calls: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    /// Nano-dollars booked for calls whose tokens are unknown (cut off before their answer
    /// was recorded): their full hold, or their worst case.
    pub booked_nanos: i64,
}

#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct BudgetRecord {
    pub account: String,
    pub parent: Option<String>,
    pub cap_nanos: i64,
    /// `total` (never resets), `day` (resets at 00:00 UTC) or `month` (resets on the 1st, UTC).
    pub period: String,
    pub period_start: Millis,
    pub spent_nanos: i64,
    pub reserved_nanos: i64,
    pub updated_at: Millis,
}

/// A hold's kinds: a `/v1` gateway call, or a managed run's step.
pub const HOLD_CALL: &str = "call";
pub const HOLD_STEP: &str = "step";

/// A budget hold to take: `amount` nano-dollars on each account, leaf to root.
#[derive(Clone, Debug)]
pub struct NewHold<'a> {
    /// The call's id, or a step's idempotency key (`run:seq`).
    pub id: &'a str,
    pub kind: &'a str,
    pub run_id: Option<&'a str>,
    pub accounts: &'a [String],
    pub amount: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HoldResult {
    Held,
    /// A hold with this id is open already (a replayed step).
    AlreadyHeld,
    /// The hold would pass this account's cap; nothing was held.
    Exceeded(String),
}

/// Where the current budget periods began (UTC), in Unix milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeriodStarts {
    pub day: Millis,
    pub month: Millis,
}

impl PeriodStarts {
    pub fn at(now: Millis) -> Self {
        const DAY: Millis = 86_400_000;
        let days = now.div_euclid(DAY);
        // Civil date from days since 1970-01-01 (proleptic Gregorian), H. Hinnant's algorithm.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day_of_month = doy - (153 * mp + 2) / 5; // 0-based
        PeriodStarts {
            day: days * DAY,
            month: (days - day_of_month) * DAY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PeriodStarts;

    #[test]
    fn periods_begin_at_midnight_and_on_the_first() {
        // 2026-11-21T07:30:00Z
        let p = PeriodStarts::at(1_795_246_200_000);
        assert_eq!(p.day, 1_795_219_200_000); // 2026-11-21T00:00:00Z
        assert_eq!(p.month, 1_793_491_200_000); // 2026-11-01T00:00:00Z
                                                // 2024-03-01T00:00:00Z, just after a leap day: the month begins that very instant.
        let p = PeriodStarts::at(1_709_251_200_000);
        assert_eq!((p.day, p.month), (1_709_251_200_000, 1_709_251_200_000));
        // One millisecond earlier is still February.
        assert_eq!(PeriodStarts::at(1_709_251_199_999).month, 1_706_745_600_000);
    }
}

/// A circuit some node opened.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct BreakerRecord {
    pub deployment: String,
    pub open_until: Millis,
    pub opened_by: String,
}

/// One row of the audit log as stored. `body` is `None` once retention cleared it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditRow {
    pub seq: i64,
    pub at: Millis,
    pub body: Option<String>,
    pub leaf_hash: String,
}

/// The audit tree's root at a size, signed by a node's audit key.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditCheckpoint {
    pub size: i64,
    /// Hex SHA-256.
    pub root: String,
    pub at: Millis,
    /// Hex of the ed25519 public key that signed.
    pub key_id: String,
    /// Hex ed25519 signature over the checkpoint's signed text.
    pub signature: String,
}

/// One version of the policy set.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct PolicySetRecord {
    pub version: i64,
    pub hash: String,
    pub text: String,
    pub created_at: Millis,
}

/// An approval to ask for.
#[derive(Clone, Debug)]
pub struct NewApproval {
    pub id: String,
    pub run_id: String,
    pub seq: i64,
    /// The group the policy names (`@approval("finance")`).
    pub approvers: String,
    pub action: String,
    pub resource: String,
    /// JSON array of the policy ids that asked.
    pub policy_ids: String,
    pub expires_at: Millis,
}

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct ApprovalRecord {
    pub id: String,
    pub run_id: String,
    pub seq: i64,
    pub approvers: String,
    pub action: String,
    pub resource: String,
    pub policy_ids: String,
    /// `pending`, `approved`, `denied` or `expired`.
    pub state: String,
    pub reason: Option<String>,
    pub decided_by: Option<String>,
    pub created_at: Millis,
    pub expires_at: Millis,
    pub decided_at: Option<Millis>,
}
