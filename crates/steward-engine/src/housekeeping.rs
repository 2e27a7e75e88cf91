//! Every `engine.housekeeping_ms` (a minute), this node clears what nothing will come back for: budget holds whose owner is
//! gone (a gateway call cut off by a crash, a step of a run that ended — without this a hold
//! would count against its accounts forever), rate-limit windows long past, expired cached
//! answers, the bodies of audit records past their retention, the kept workspaces of runs
//! long ended, stored Responses API responses past 30 days, and trace spans past
//! `engine.trace_retention_ms`. Every statement is idempotent, so nodes sharing a database may all run it.

use std::sync::Arc;
use std::time::Duration;

use steward_llm::Router;
use steward_store::{BreakerStore, PolicyStore, Store};
use steward_types::NodeId;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;

/// Rate windows are one minute long; the one before the current one is kept for reading.
const KEEP_WINDOWS_MS: i64 = 120_000;
/// How long an ended run's kept workspace, and content no run uses, stay in the store.
const KEEP_WORKSPACES_MS: i64 = 3_600_000;
/// How long a stored response can be read or continued (`previous_response_id`): 30 days, as
/// the Responses API keeps them.
const KEEP_RESPONSES_MS: i64 = 30 * 86_400_000;

/// The one component that takes the whole store: its job is to sweep every aggregate.
pub(crate) async fn run(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    every: Duration,
    stale_call_ms: i64,
    audit_retention_ms: Option<i64>,
    trace_retention_ms: i64,
    stop: CancellationToken,
) {
    loop {
        let now = clock.now_ms();
        if let Some(keep) = audit_retention_ms {
            match store.prune_audit(now - keep).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    cleared = n,
                    "cleared the bodies of audit records past retention"
                ),
                Err(e) => tracing::warn!(error = %e, "could not apply audit retention; will retry"),
            }
        }
        match store.release_stale_holds(now - stale_call_ms, now).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                released = n,
                "released budget holds whose call or run is gone"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not release stale budget holds; will retry")
            }
        }
        match store.expire_approvals(now).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                expired = n,
                "approvals nobody decided in time count as denied"
            ),
            Err(e) => tracing::warn!(error = %e, "could not expire approvals; will retry"),
        }
        if let Err(e) = store.purge_windows(now - KEEP_WINDOWS_MS).await {
            tracing::warn!(error = %e, "could not purge old rate-limit windows; will retry");
        }
        if let Err(e) = store.purge_cache(now).await {
            tracing::warn!(error = %e, "could not purge expired cached answers; will retry");
        }
        let keep = now - KEEP_WORKSPACES_MS;
        match store.sweep_workspaces(keep, keep).await {
            Ok((0, 0)) => {}
            Ok((states, blobs)) => tracing::info!(
                states,
                blobs,
                "forgot the kept workspaces of runs long ended"
            ),
            Err(e) => tracing::warn!(error = %e, "could not sweep kept workspaces; will retry"),
        }
        match store.sweep_responses(now - KEEP_RESPONSES_MS).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "deleted stored responses past 30 days"),
            Err(e) => tracing::warn!(error = %e, "could not sweep stored responses; will retry"),
        }
        sweep_spans(&*store, now - trace_retention_ms).await;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Deletes trace spans received before `before`, a bounded batch per transaction, so a large
/// backlog never holds the writer for long.
async fn sweep_spans(store: &dyn Store, before: i64) {
    const BATCH: i64 = 10_000;
    let mut deleted = 0;
    loop {
        match store.sweep_spans(before, BATCH).await {
            Ok(n) => {
                deleted += n;
                if (n as i64) < BATCH {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not sweep old trace spans; will retry");
                break;
            }
        }
    }
    if deleted > 0 {
        tracing::info!(deleted, "deleted trace spans past their retention");
    }
}

/// Shares circuit breakers across the nodes on one database, every `every`: the circuits this
/// node opened go to the store, and those other nodes opened are applied here, so a deployment
/// one node found failing is skipped fleet-wide until its cooldown ends.
pub(crate) async fn share_breakers(
    store: Arc<dyn BreakerStore>,
    router: Arc<Router>,
    clock: Arc<dyn Clock>,
    node: NodeId,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let (now, now_ms) = (std::time::Instant::now(), clock.now_ms());
        for (label, until) in router.breakers().take_opened() {
            let until_ms = now_ms + until.saturating_duration_since(now).as_millis() as i64;
            if let Err(e) = store.share_breaker(&label, until_ms, &node, now_ms).await {
                tracing::warn!(deployment = %label, error = %e, "could not share an open circuit with the fleet");
            }
        }
        match store.open_breakers(now_ms).await {
            Ok(open) => {
                for b in open.into_iter().filter(|b| b.opened_by != node.0) {
                    let left = Duration::from_millis((b.open_until - now_ms).max(0) as u64);
                    router.breakers().open_elsewhere(&b.deployment, now + left);
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read the fleet's open circuits"),
        }
    }
}

/// Puts a stored policy set in force here, unless it is already. A stored set is taken as it
/// was stored (it passed every check then); one that no longer parses is an error, and the
/// caller decides: at start the server refuses to start, later the set in force stays.
pub(crate) fn apply_policy_set(
    policies: &steward_gov::Policies,
    rec: &steward_store::PolicySetRecord,
) -> Result<(), steward_gov::PolicyError> {
    if policies.active().hash == rec.hash {
        return Ok(());
    }
    let loaded = policies.load(&rec.text)?;
    tracing::info!(version = rec.version, hash = %rec.hash, "policy set in force");
    policies.activate(loaded);
    Ok(())
}

/// Follows the database's latest policy set and the vault's secrets, so a set put in force or
/// a key rotated through one node applies on every node within `every`.
pub(crate) async fn follow_policies(
    store: Arc<dyn PolicyStore>,
    policies: Arc<steward_gov::Policies>,
    vault: Option<Arc<crate::vault::Vault>>,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        // Secrets another node set or rotated.
        if let Some(v) = &vault {
            if let Err(e) = v.refresh().await {
                tracing::warn!(error = %e, "could not re-read the vault");
            }
        }
        match store.latest_policy_set().await {
            Ok(Some(rec)) => {
                if let Err(e) = apply_policy_set(&policies, &rec) {
                    tracing::error!(version = rec.version, error = %e, "the stored policy set does not load here; the set in force stays");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "could not read the policy set in force"),
        }
    }
}
