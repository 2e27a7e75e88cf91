//! Runs: created once, leased to one node at a time, ended once.

use crate::sql::prelude::*;

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
    /// Creates `run` as `fork` of its source in one commit: the source's journal entries before
    /// step `fork.at` copied as the new run's, the fork's edits, and `audit`.
    async fn fork_run_audited(
        &self,
        run: &NewRun,
        fork: &RunFork,
        audit: &str,
        now: Millis,
    ) -> Result<RunRecord>;
    /// What run `id` was forked from, if it is a fork.
    async fn run_fork(&self, id: &RunId) -> Result<Option<RunFork>>;
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

macro_rules! impl_runs {
    ($store:ty, $db:ty, lock = $lock:literal, row_lock = $row_lock:literal) => {
        #[async_trait]
        impl RunStore for $store {
            async fn create_run(&self, run: &NewRun, now: Millis) -> Result<(RunRecord, bool)> {
                self.create_run_with(run, None, now).await
            }

            async fn create_run_audited(&self, run: &NewRun, audit: &str, now: Millis) -> Result<(RunRecord, bool)> {
                self.create_run_with(run, Some(audit), now).await
            }

            async fn fork_run_audited(&self, run: &NewRun, fork: &RunFork, audit: &str, now: Millis) -> Result<RunRecord> {
                let mut tx = self.begin_write().await?;
                sqlx::query(
                    "INSERT INTO runs (id, agent, agent_version, parent_id, input, state, created_at, updated_at) \
                     VALUES ($1, $2, $3, NULL, $4, 'queued', $5, $5)",
                )
                .bind(run.id.as_str())
                .bind(run.agent.as_str())
                .bind(run.agent_version)
                .bind(&run.input)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO journal (run_id, seq, phase, kind, name, request_hash, idempotency_key, body, ok, tokens_in, tokens_out, at, duration_us) \
                     SELECT $1, seq, phase, kind, name, request_hash, idempotency_key, body, ok, tokens_in, tokens_out, at, duration_us \
                     FROM journal WHERE run_id = $2 AND seq < $3",
                )
                .bind(run.id.as_str())
                .bind(fork.source.as_str())
                .bind(fork.at)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO run_forks (run_id, source_id, at_seq, input, system_prompt, model, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(run.id.as_str())
                .bind(fork.source.as_str())
                .bind(fork.at)
                .bind(&fork.input)
                .bind(&fork.system_prompt)
                .bind(&fork.model)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                Self::append_audit_in(&mut tx, &[(now, audit.to_string())]).await?;
                let row: RunRow = sqlx::query_as(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"))
                    .bind(run.id.as_str())
                    .fetch_one(&mut *tx)
                    .await?;
                tx.commit().await?;
                self.wake(WAKE_RUN).await;
                row.try_into()
            }

            async fn run_fork(&self, id: &RunId) -> Result<Option<RunFork>> {
                let row: Option<(String, i64, Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
                    "SELECT source_id, at_seq, input, system_prompt, model FROM run_forks WHERE run_id = $1",
                )
                .bind(id.as_str())
                .fetch_optional(&self.read)
                .await?;
                row.map(|(source, at, input, system_prompt, model)| {
                    Ok(RunFork {
                        source: RunId::parse(&source).map_err(|e| Error::Corrupt(e.0))?,
                        at,
                        input,
                        system_prompt,
                        model,
                    })
                })
                .transpose()
            }

            async fn get_run(&self, id: &RunId) -> Result<Option<RunRecord>> {
                let row: Option<RunRow> = sqlx::query_as(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"))
                    .bind(id.as_str())
                    .fetch_optional(&self.read)
                    .await?;
                row.map(TryInto::try_into).transpose()
            }

            async fn list_runs(&self, f: &RunFilter) -> Result<Vec<RunRecord>> {
                let mut qb = sqlx::QueryBuilder::<$db>::new(format!("SELECT {RUN_COLUMNS} FROM runs WHERE 1 = 1"));
                if let Some(s) = f.state {
                    qb.push(" AND state = ").push_bind(s.as_str());
                }
                if let Some(a) = &f.agent {
                    qb.push(" AND agent = ").push_bind(a.clone());
                }
                if let Some(p) = &f.parent {
                    qb.push(" AND parent_id = ").push_bind(p.as_str().to_string());
                }
                let limit = if f.limit <= 0 { 100 } else { f.limit.min(10_000) };
                qb.push(" ORDER BY created_at DESC, id DESC LIMIT ").push_bind(limit);
                let rows: Vec<RunRow> = qb.build_query_as().fetch_all(&self.read).await?;
                rows.into_iter().map(TryInto::try_into).collect()
            }

            async fn claim_runs(&self, node: &NodeId, now: Millis, ttl_ms: i64, limit: i64) -> Result<Vec<RunRecord>> {
                let rows: Vec<RunRow> = sqlx::query_as(&format!(
                    "UPDATE runs SET lease_owner = $1, lease_expires = $2, updated_at = $3, \
                       lease_epoch = lease_epoch + 1, \
                       state = CASE WHEN state = 'queued' THEN 'running' ELSE state END \
                     WHERE id IN (SELECT id FROM runs WHERE {CLAIMABLE} \
                       AND (lease_expires IS NULL OR lease_expires < $3) \
                       ORDER BY created_at LIMIT $4 {lock}) \
                     RETURNING {RUN_COLUMNS}",
                    lock = $lock
                ))
                .bind(&node.0)
                .bind(now + ttl_ms)
                .bind(now)
                .bind(limit)
                .fetch_all(&self.write)
                .await?;
                rows.into_iter().map(TryInto::try_into).collect()
            }

            async fn renew_leases(&self, node: &NodeId, ids: &[RunId], now: Millis, ttl_ms: i64) -> Result<Vec<(RunId, Option<String>)>> {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let mut held = Vec::with_capacity(ids.len());
                for chunk in ids.chunks(500) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new("UPDATE runs SET lease_expires = ");
                    qb.push_bind(now + ttl_ms);
                    // Rows locked in id order, as journal writes lock them (`check_claims_in`):
                    // two transactions that lock rows in one order never wait on each other.
                    qb.push(" WHERE id IN (SELECT id FROM runs WHERE lease_owner = ").push_bind(node.0.clone());
                    qb.push(" AND id IN (");
                    let mut sep = qb.separated(", ");
                    for id in chunk {
                        sep.push_bind(id.as_str().to_string());
                    }
                    qb.push(format!(") ORDER BY id {}) RETURNING id, cancel_reason", $row_lock));
                    let rows: Vec<(String, Option<String>)> = qb.build_query_as().fetch_all(&self.write).await?;
                    for (id, cancel) in rows {
                        held.push((RunId::parse(&id).map_err(|e| Error::Corrupt(e.0))?, cancel));
                    }
                }
                Ok(held)
            }

            async fn release_node(&self, node: &NodeId) -> Result<u64> {
                Ok(sqlx::query("UPDATE runs SET lease_owner = NULL, lease_expires = NULL WHERE lease_owner = $1")
                    .bind(&node.0)
                    .execute(&self.write)
                    .await?
                    .rows_affected())
            }

            async fn update_run(&self, claim: &Claim, u: &RunUpdate, now: Millis) -> Result<bool> {
                let release = u.state.is_terminal()
                    || matches!(u.wait_kind.as_deref(), Some(WAIT_HUMAN | WAIT_APPROVAL));
                let sql = format!(
                    "UPDATE runs SET state = $1, wait_kind = $2, result = $3, error_code = $4, \
                       error_message = $5, updated_at = $6{} \
                     WHERE id = $7 AND lease_owner = $8 AND lease_epoch = $9",
                    if release { ", lease_owner = NULL, lease_expires = NULL, retry_seq = NULL" } else { "" }
                );
                let n = sqlx::query(&sql)
                    .bind(u.state.as_str())
                    .bind(&u.wait_kind)
                    .bind(&u.result)
                    .bind(&u.error_code)
                    .bind(&u.error_message)
                    .bind(now)
                    .bind(claim.run.as_str())
                    .bind(&claim.node.0)
                    .bind(claim.epoch)
                    .execute(&self.write)
                    .await?
                    .rows_affected();
                if n == 1 && u.state.is_terminal() {
                    self.wake(WAKE_DONE).await;
                }
                Ok(n == 1)
            }

            async fn request_cancel(&self, id: &RunId, reason: &str, now: Millis) -> Result<Option<RunRecord>> {
                let mut tx = self.begin_write().await?;
                sqlx::query(&format!(
                    "UPDATE runs SET cancel_reason = COALESCE(cancel_reason, $1), updated_at = $2 \
                     WHERE id = $3 AND state NOT IN {TERMINAL}"
                ))
                .bind(reason)
                .bind(now)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
                sqlx::query(&format!(
                    "UPDATE runs SET state = 'cancelled', wait_kind = NULL, lease_owner = NULL, lease_expires = NULL, \
                       error_code = 'cancelled', error_message = cancel_reason \
                     WHERE id = $1 AND state NOT IN {TERMINAL} \
                       AND (state = 'queued' OR wait_kind IN ('human', 'approval') OR lease_owner IS NULL OR lease_expires < $2)"
                ))
                .bind(id.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
                let row: Option<RunRow> = sqlx::query_as(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"))
                    .bind(id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                tx.commit().await?;
                let run: Option<RunRecord> = row.map(TryInto::try_into).transpose()?;
                // A node drives it still: tell that node now rather than at its next heartbeat.
                if run.as_ref().is_some_and(|r| !r.state.is_terminal() && r.lease_owner.is_some()) {
                    self.wake(&format!("{WAKE_CANCEL}{id}")).await;
                }
                Ok(run)
            }

            async fn resolve_waiting(&self, id: &RunId, retry: bool, now: Millis) -> Result<Option<RunRecord>> {
                let mut tx = self.begin_write().await?;
                let n = if retry {
                    sqlx::query(
                        "UPDATE runs SET state = 'queued', wait_kind = NULL, error_code = NULL, error_message = NULL, \
                           retry_seq = (SELECT MAX(seq) FROM journal WHERE run_id = $1), updated_at = $2 \
                         WHERE id = $1 AND state = 'waiting' AND wait_kind = 'human'",
                    )
                } else {
                    sqlx::query(
                        "UPDATE runs SET state = 'failed', wait_kind = NULL, error_code = COALESCE(error_code, 'in_doubt'), \
                           error_message = 'a human chose to fail the run: ' || COALESCE(error_message, 'it was waiting'), \
                           updated_at = $2 \
                         WHERE id = $1 AND state = 'waiting' AND wait_kind = 'human'",
                    )
                }
                .bind(id.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                let row: Option<RunRow> = sqlx::query_as(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"))
                    .bind(id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                tx.commit().await?;
                match row {
                    None => Ok(None),
                    Some(r) if n == 0 => Err(Error::Conflict(format!(
                        "run {} is {}, not waiting for a human",
                        r.id, r.state
                    ))),
                    Some(r) => {
                        self.wake(WAKE_RUN).await;
                        Ok(Some(r.try_into()?))
                    }
                }
            }
        }
    };
}

impl_runs!(SqliteStore, sqlx::Sqlite, lock = "", row_lock = "");
impl_runs!(
    PgStore,
    sqlx::Postgres,
    lock = "FOR UPDATE SKIP LOCKED",
    row_lock = "FOR UPDATE"
);
