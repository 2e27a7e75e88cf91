//! Persistence. One trait per aggregate, a SQLite and a PostgreSQL implementation sharing
//! their SQL where the dialects agree, and one conformance suite (`tests/conformance.rs`)
//! run against both. The store is the only durable state.

mod error;
mod group_commit;
mod merges;
pub mod merkle;
mod model;
pub mod pg_schema;
mod responses;
mod schedules;
mod settle_writer;
mod sql;
mod supervisors;
mod task_writer;
mod tasks;
mod workspaces;

use async_trait::async_trait;
use steward_types::{AgentName, Millis, NodeId, RunId};

pub use error::{Error, Result};
pub use group_commit::JournalWriter;
pub use merges::{overlaps, MergeStore, PathLease, RepoRecord, SubmissionRecord};
pub use model::*;
pub use responses::{ResponseStore, StoredResponse};
pub use schedules::{ScheduleRecord, ScheduleStore};
pub use settle_writer::SettleWriter;
pub use sql::{PgStore, SqliteStore};
pub use supervisors::{IncidentRecord, SupervisorRecord, SupervisorStore};
pub use task_writer::TaskWriter;
pub use tasks::*;
pub use workspaces::{Blob, WorkspaceState, WorkspaceStore};

/// Versioned agent definitions.
#[async_trait]
pub trait AgentStore: Send + Sync {
    /// Stores every spec in one transaction. An unchanged spec keeps its version; a changed one
    /// gets the next. Returns each agent's current record and whether it changed.
    async fn put_agents(&self, specs: &[NewAgent], now: Millis)
        -> Result<Vec<(AgentRecord, bool)>>;
    /// A given version, or the latest when `version` is `None`.
    async fn get_agent(
        &self,
        name: &AgentName,
        version: Option<i64>,
    ) -> Result<Option<AgentRecord>>;
    /// The latest version of every agent.
    async fn list_agents(&self) -> Result<Vec<AgentRecord>>;
}

/// Runs, their states and their leases.
#[async_trait]
pub trait RunStore: Send + Sync {
    /// Creates a run unless one with its id exists; returns the stored run and whether it is new.
    async fn create_run(&self, run: &NewRun, now: Millis) -> Result<(RunRecord, bool)>;
    /// As `create_run`, with an audit record of a run created now in the same commit.
    async fn create_run_audited(
        &self,
        run: &NewRun,
        audit: &str,
        now: Millis,
    ) -> Result<(RunRecord, bool)>;
    async fn get_run(&self, id: &RunId) -> Result<Option<RunRecord>>;
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>>;
    /// Leases up to `limit` runs that need a node: queued, running or waiting on a child, whose
    /// lease is absent or expired. Claimed runs move to `running` unless waiting on a child.
    /// Each claim gives its run the next `lease_epoch` (see [`Claim`]).
    async fn claim_runs(
        &self,
        node: &NodeId,
        now: Millis,
        ttl_ms: i64,
        limit: i64,
    ) -> Result<Vec<RunRecord>>;
    /// Extends this node's leases on `ids`; returns the ids it still holds, each with its cancel
    /// request if one was made (possibly through another node).
    async fn renew_leases(
        &self,
        node: &NodeId,
        ids: &[RunId],
        now: Millis,
        ttl_ms: i64,
    ) -> Result<Vec<(RunId, Option<String>)>>;
    /// Drops every lease `node` holds (at start: nothing of a previous life is running).
    async fn release_node(&self, node: &NodeId) -> Result<u64>;
    /// Changes a run's state if it is still held under `claim`. Terminal and human-wait states
    /// release the lease. Returns false when the claim was replaced (the run was claimed again).
    async fn update_run(&self, claim: &Claim, update: &RunUpdate, now: Millis) -> Result<bool>;
    /// Records a cancel request. A run nobody is executing (queued, waiting for a human, or with an
    /// expired lease) is cancelled at once; a leased one is stopped by its node.
    async fn request_cancel(
        &self,
        id: &RunId,
        reason: &str,
        now: Millis,
    ) -> Result<Option<RunRecord>>;
    /// A human's answer to a run waiting on an in-doubt step: retry it (`retry_seq`) or fail the run.
    async fn resolve_waiting(
        &self,
        id: &RunId,
        retry: bool,
        now: Millis,
    ) -> Result<Option<RunRecord>>;
}

/// The append-only record of every step's intent and outcome.
#[async_trait]
pub trait JournalStore: Send + Sync {
    /// Appends journal entries and audit records (`(at, body)`) in one transaction, or none:
    /// none, with [`Error::Fenced`], when any of `claims` is no longer how its run is held.
    async fn append_journal(
        &self,
        entries: &[JournalEntry],
        audit: &[(Millis, String)],
        claims: &[Claim],
    ) -> Result<()> {
        self.append_settling(entries, audit, claims, &[]).await
    }
    /// As [`append_journal`](Self::append_journal), settling budget holds in the same
    /// transaction (`(hold id, spent)`): a model step's cost is booked exactly when its outcome
    /// is recorded, so a crash leaves both undone or both done.
    async fn append_settling(
        &self,
        entries: &[JournalEntry],
        audit: &[(Millis, String)],
        claims: &[Claim],
        settles: &[(String, i64)],
    ) -> Result<()>;
    /// A run's entries with `seq > after`, in order.
    async fn load_journal(
        &self,
        run: &RunId,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<JournalEntry>>;
}

/// The run-scoped key-value scratchpad.
#[async_trait]
pub trait ScratchpadStore: Send + Sync {
    async fn scratch_put(&self, run: &RunId, key: &str, value: &str, now: Millis) -> Result<()>;
    async fn scratch_get(&self, run: &RunId, key: &str) -> Result<Option<String>>;
}

/// API keys and the record of gateway calls.
#[async_trait]
pub trait GatewayStore: Send + Sync {
    async fn create_key(
        &self,
        id: &str,
        key_hash: &str,
        agent: &AgentName,
        expires_at: Option<Millis>,
        now: Millis,
    ) -> Result<ApiKeyRecord>;
    /// The key with this hash, revoked or expired included (the caller says which).
    async fn find_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>>;
    async fn get_key(&self, id: &str) -> Result<Option<ApiKeyRecord>>;
    /// Newest first; `agent` filters.
    async fn list_keys(&self, agent: Option<&str>) -> Result<Vec<ApiKeyRecord>>;
    /// Revokes a live key; `None` when there is no such key, `Conflict` when it was revoked.
    async fn revoke_key(&self, id: &str, reason: &str, now: Millis)
        -> Result<Option<ApiKeyRecord>>;
    /// Holds `amount` on every account in `accounts` (none: no hold; the hold's id is the
    /// call's) and records the call as started — one transaction, one commit. Returns the
    /// account whose cap the hold would pass, in which case nothing is written.
    async fn begin_call(
        &self,
        call: &NewCall,
        accounts: &[String],
        amount: i64,
        now: Millis,
    ) -> Result<Option<String>>;
    /// Ends calls — each: settles its hold, if it has one (releasing it, booking `spent`),
    /// records its outcome, and adds its tokens to its rate windows — all in one transaction,
    /// one commit. Usually through the [`SettleWriter`], which batches them.
    async fn end_calls(&self, ends: &[CallEnd]) -> Result<()>;
    /// Most recent first; `agent` filters.
    async fn list_calls(&self, agent: Option<&str>, limit: i64) -> Result<Vec<CallRecord>>;
    /// Usage of models since a time, managed runs and gateway calls together.
    async fn usage(&self, since: Millis) -> Result<Vec<UsageRow>>;
}

/// Budget accounts. Holds and settlements are taken with the call they belong to
/// (`GatewayStore::begin_call`, `GatewayStore::end_call`).
#[async_trait]
pub trait BudgetStore: Send + Sync {
    /// Creates or changes an account's cap, period and parent; spending so far is kept.
    async fn put_budget(
        &self,
        account: &str,
        parent: Option<&str>,
        cap_nanos: i64,
        period: &str,
        now: Millis,
    ) -> Result<BudgetRecord>;
    async fn get_budget(&self, account: &str) -> Result<Option<BudgetRecord>>;
    async fn list_budgets(&self) -> Result<Vec<BudgetRecord>>;
    /// Holds `hold.amount` on each of its accounts unless that would pass a cap — one
    /// statement per account, exact under concurrency. A hold whose id is already open is
    /// left as it is (a replayed step keeps the hold its first life took).
    async fn hold(&self, hold: &NewHold<'_>, now: Millis) -> Result<HoldResult>;
    /// Releases hold `id` and books `spent` on its accounts; nothing if it is not open.
    async fn settle(&self, id: &str, spent: i64, now: Millis) -> Result<()>;
    /// Settles holds whose owner is gone — gateway calls started before `calls_before` (no
    /// call outlives its timeout; those are marked interrupted) and steps of runs that ended —
    /// booking each in full: whether the upstream charged is unknown, and a budget must never
    /// be under-counted.
    async fn release_stale_holds(&self, calls_before: Millis, now: Millis) -> Result<u64>;
    /// Books a model call of step `seq` of `run` that was made without its answer being
    /// recorded (the upstream may have billed it): hold `hold`, if open, settled at its full
    /// amount, else `worst_case`; recorded for the cost report. Returns what was booked.
    async fn book_interrupted(
        &self,
        run: &RunId,
        seq: i64,
        name: &str,
        hold: &str,
        worst_case: i64,
        now: Millis,
    ) -> Result<i64>;
}

/// Request and token counters in one-minute windows, for rate limits shared across nodes.
#[async_trait]
pub trait RateStore: Send + Sync {
    /// Counts one request in `window` for every scope, all or none, provided each scope is
    /// under its request and token limits `(scope, rpm, tpm)`. Returns the first scope at its
    /// limit, or `None` when the request was counted.
    async fn take_request(
        &self,
        scopes: &[(String, i64, i64)],
        window: Millis,
    ) -> Result<Option<String>>;
    /// Deletes windows that began before `before`; returns how many.
    async fn purge_windows(&self, before: Millis) -> Result<u64>;
}

/// Circuit breakers shared by the nodes on one database.
#[async_trait]
pub trait BreakerStore: Send + Sync {
    /// Records that `node` opened `deployment`'s circuit until `open_until`; a later
    /// `open_until` already recorded is kept.
    async fn share_breaker(
        &self,
        deployment: &str,
        open_until: Millis,
        node: &NodeId,
        now: Millis,
    ) -> Result<()>;
    /// Circuits still open at `now`, whoever opened them.
    async fn open_breakers(&self, now: Millis) -> Result<Vec<BreakerRecord>>;
}

/// The audit log's rows, its Merkle head and its signed checkpoints.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends records in order — `(at, body)` each — numbering them after the last one, all in
    /// one transaction; returns the tree's size and root (hex) after them. Appenders on several
    /// nodes are serialised by the head row, so numbers never collide or skip.
    async fn append_audit(&self, entries: &[(Millis, String)]) -> Result<(i64, String)>;
    /// The tree's size and root (hex) now.
    async fn audit_head(&self) -> Result<(i64, String)>;
    async fn put_checkpoint(&self, checkpoint: &AuditCheckpoint) -> Result<()>;
    /// Every checkpoint, smallest size first.
    async fn audit_checkpoints(&self) -> Result<Vec<AuditCheckpoint>>;
    /// Up to `limit` rows from `from_seq` on, in order (whatever the table holds, tampered or
    /// not: verification reads through this).
    async fn audit_rows(&self, from_seq: i64, limit: i64) -> Result<Vec<AuditRow>>;
    /// Retention: clears the bodies of records older than `before`, keeping their leaf hashes
    /// so the tree stays verifiable. Returns how many were cleared.
    async fn prune_audit(&self, before: Millis) -> Result<u64>;
}

/// Approvals policies ask for.
#[async_trait]
pub trait ApprovalStore: Send + Sync {
    /// Asks for an approval, unless one exists for the same step; returns the step's approval.
    async fn request_approval(&self, a: &NewApproval, now: Millis) -> Result<ApprovalRecord>;
    async fn approval_for(&self, run_id: &str, seq: i64) -> Result<Option<ApprovalRecord>>;
    async fn get_approval(&self, id: &str) -> Result<Option<ApprovalRecord>>;
    /// Newest first; `state` filters.
    async fn list_approvals(&self, state: Option<&str>, limit: i64) -> Result<Vec<ApprovalRecord>>;
    /// Approves or denies a pending approval and requeues its run — one transaction. `None`
    /// when there is no such approval; `Conflict` when it was decided already.
    async fn decide_approval(
        &self,
        id: &str,
        approve: bool,
        reason: &str,
        by: &str,
        now: Millis,
    ) -> Result<Option<ApprovalRecord>>;
    /// Marks pending approvals past their expiry `expired` (a denial) and requeues their runs.
    async fn expire_approvals(&self, now: Millis) -> Result<u64>;
}

/// Agents' identities: owner and status.
#[async_trait]
pub trait IdentityStore: Send + Sync {
    async fn get_identity(&self, agent: &str) -> Result<Option<IdentityRecord>>;
    /// Sets the status (with its reason) and, when given, the owner. A revoked identity may
    /// only be deleted, and a deleted one changes no more: `Conflict`.
    async fn set_identity(
        &self,
        agent: &str,
        status: &str,
        owner: Option<&str>,
        reason: &str,
        now: Millis,
    ) -> Result<IdentityRecord>;
}

/// Delegated credentials: the links of every chain, found by the token block that made them.
#[async_trait]
pub trait DelegationStore: Send + Sync {
    /// `Conflict` when the id or the revocation id exists already.
    async fn create_delegation(&self, rec: &DelegationRecord) -> Result<()>;
    async fn get_delegation(&self, id: &str) -> Result<Option<DelegationRecord>>;
    async fn delegation_by_revocation(
        &self,
        revocation_id: &str,
    ) -> Result<Option<DelegationRecord>>;
    /// Newest first, at most `limit`.
    async fn list_delegations(&self, limit: i64) -> Result<Vec<DelegationRecord>>;
    /// Revokes link `id` and every link below it that is still open, in one transaction;
    /// returns the ids revoked now (empty when all were revoked before), `None` without it.
    async fn revoke_delegation(
        &self,
        id: &str,
        reason: &str,
        now: Millis,
    ) -> Result<Option<Vec<String>>>;
}

/// The vault's encrypted values.
#[async_trait]
pub trait SecretStore: Send + Sync {
    async fn put_secret(&self, name: &str, sealed: &str, now: Millis) -> Result<()>;
    /// Every secret: `(name, sealed, updated_at)`, by name.
    async fn secrets(&self) -> Result<Vec<(String, String, Millis)>>;
    /// Whether there was one.
    async fn delete_secret(&self, name: &str) -> Result<bool>;
    /// The sealed signing key `name`: `sealed` is stored when there is none yet (the first
    /// node to ask creates it; the others read the same).
    async fn ensure_signing_key(&self, name: &str, sealed: &str, now: Millis) -> Result<String>;
}

/// Versions of the policy set.
#[async_trait]
pub trait PolicyStore: Send + Sync {
    /// Records `text` as the next version, unless it is the latest already; returns the
    /// latest version.
    async fn put_policy_set(&self, hash: &str, text: &str, now: Millis) -> Result<PolicySetRecord>;
    async fn latest_policy_set(&self) -> Result<Option<PolicySetRecord>>;
}

/// Cached gateway responses.
#[async_trait]
pub trait CacheStore: Send + Sync {
    /// The cached body and the deployment that produced it, unless absent or expired.
    async fn cache_get(&self, key: &str, now: Millis) -> Result<Option<(String, String)>>;
    async fn cache_put(
        &self,
        key: &str,
        body: &str,
        deployment: &str,
        expires_at: Millis,
    ) -> Result<()>;
    /// Deletes entries expired by `now`; returns how many.
    async fn purge_cache(&self, now: Millis) -> Result<u64>;
}

/// Everything durable, behind one handle.
#[async_trait]
pub trait Store:
    AgentStore
    + RunStore
    + JournalStore
    + ScratchpadStore
    + GatewayStore
    + BudgetStore
    + BreakerStore
    + AuditStore
    + PolicyStore
    + ApprovalStore
    + SecretStore
    + IdentityStore
    + DelegationStore
    + RateStore
    + CacheStore
    + TaskStore
    + ScheduleStore
    + SupervisorStore
    + MergeStore
    + WorkspaceStore
    + ResponseStore
{
    fn backend(&self) -> &'static str;
    /// Changes made by other nodes, as they happen (`WAKE_RUN`, `WAKE_DONE`), where the backend
    /// can announce them (PostgreSQL `LISTEN/NOTIFY`); `None` for a single-process store.
    async fn wakeups(&self) -> Result<Option<tokio::sync::mpsc::Receiver<String>>>;
    async fn ping(&self) -> Result<()>;
    /// Commits one small row for `node`: whether the store takes writes now.
    async fn probe_write(&self, node: &str, now: Millis) -> Result<()>;
}

/// Opens (creating if needed) and migrates the store a URL names:
/// `postgres://…` or `sqlite://PATH`.
pub async fn open(
    url: &str,
    cfg: &steward_types::config::StoreConfig,
) -> Result<std::sync::Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(PgStore::connect(url, cfg).await?))
    } else if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(SqliteStore::connect(url, cfg).await?))
    } else {
        Err(Error::Config(format!(
            "database url {:?}: expected postgres://… or sqlite://PATH",
            redact(url)
        )))
    }
}

/// A URL with any password removed, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_string(),
    }
}
