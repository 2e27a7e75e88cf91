//! The SQLite and PostgreSQL implementations. Both dialects accept the same SQL for almost
//! everything here (`$N` placeholders, `ON CONFLICT`, `RETURNING`), so one macro writes both
//! and the few differences are passed in. The schema is portable too (TEXT and BIGINT only),
//! so both run the migrations in `migrations/`; a backend gets a directory of its own the day
//! its schema must differ.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use steward_types::config::StoreConfig;
use steward_types::{AgentName, Millis, NodeId, RunId};
use tokio::sync::mpsc;

use crate::model::*;
use crate::{
    merkle, AgentStore, ApprovalStore, AuditStore, BreakerStore, BudgetStore, CacheStore,
    DelegationStore, Error, GatewayStore, IdentityStore, JournalStore, PolicyStore, RateStore,
    Result, RunStore, ScratchpadStore, SecretStore, Store,
};

/// Embedded storage: one file, WAL. Writes go through a single connection so writers queue
/// in-process instead of failing with `SQLITE_BUSY`; reads use a pool.
#[derive(Clone)]
pub struct SqliteStore {
    pub(crate) read: SqlitePool,
    pub(crate) write: SqlitePool,
}

/// Cluster storage: many nodes share one database.
#[derive(Clone)]
pub struct PgStore {
    pub(crate) read: PgPool,
    pub(crate) write: PgPool,
}

impl SqliteStore {
    pub async fn connect(url: &str, cfg: &StoreConfig) -> Result<Self> {
        let sync = match cfg.sqlite_synchronous.as_str() {
            "full" => SqliteSynchronous::Full,
            "normal" => SqliteSynchronous::Normal,
            other => {
                return Err(Error::Config(format!(
                    "store.sqlite_synchronous: expected \"full\" or \"normal\", found {other:?}"
                )))
            }
        };
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::Config(format!("database url {url:?}: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(sync)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .after_release(|conn, _| Box::pin(still_sound(conn)))
            .connect_with(opts.clone())
            .await?;
        sqlx::migrate!("./migrations").run(&write).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(cfg.max_connections.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts.read_only(true))
            .await?;
        Ok(SqliteStore { read, write })
    }
}

impl PgStore {
    pub async fn connect(url: &str, cfg: &StoreConfig) -> Result<Self> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| Error::Config(format!("database url {:?}: {e}", crate::redact(url))))?;
        let pool = PgPoolOptions::new()
            .max_connections(cfg.max_connections.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .after_release(|conn, _| Box::pin(still_sound(conn)))
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(PgStore {
            read: pool.clone(),
            write: pool,
        })
    }
}

/// Whether a connection going back to its pool is fit to be used again: not still inside a
/// transaction. A transaction dropped without a commit queues its rollback, which has run by
/// the time a ping comes back. One that stays "inside" — a COMMIT or ROLLBACK that failed, as
/// when SQLite finds the disk full and rolls back by itself while the driver still counts the
/// transaction as open — would turn every later transaction into a savepoint of one that never
/// commits: acknowledged writes that are never durable. Such a connection is closed, and the
/// pool opens a fresh one.
async fn still_sound<C: sqlx::Connection>(conn: &mut C) -> std::result::Result<bool, sqlx::Error> {
    if !conn.is_in_transaction() {
        return Ok(true);
    }
    conn.ping().await?;
    if conn.is_in_transaction() {
        tracing::warn!(
            "a database connection was left inside a transaction after an error; replacing it"
        );
        return Ok(false);
    }
    Ok(true)
}

const RUN_COLUMNS: &str = "id, agent, agent_version, parent_id, input, state, wait_kind, result, \
     error_code, error_message, cancel_reason, retry_seq, lease_owner, lease_expires, lease_epoch, created_at, updated_at";

/// States a node executes, as SQL.
const CLAIMABLE: &str =
    "(state IN ('queued', 'running') OR (state = 'waiting' AND wait_kind = 'child'))";

const TERMINAL: &str = "('succeeded', 'failed', 'cancelled')";

const KEY_COLUMNS: &str = "id, key_hash, agent, created_at, revoked_at, expires_at, revoke_reason";

const APPROVAL_COLUMNS: &str =
    "id, run_id, seq, approvers, action, resource, policy_ids, state, reason, \
     decided_by, created_at, expires_at, decided_at";

/// Rows per multi-row INSERT: 13 columns × 500 stays under both backends' parameter limits.
const JOURNAL_CHUNK: usize = 500;

/// The columns of `DelegationRecord`, in its order.
macro_rules! delegation_cols {
    () => {
        "id, parent_id, revocation_id, issuer, holder, key_id, scope, expires_at, created_at, revoked_at, revoke_reason"
    };
}

macro_rules! impl_store {
    ($store:ty, $db:ty, backend = $backend:literal, lock = $lock:literal, row_lock = $row_lock:literal, share = $share:literal) => {
        #[async_trait]
        impl AgentStore for $store {
            async fn put_agents(&self, specs: &[NewAgent], now: Millis) -> Result<Vec<(AgentRecord, bool)>> {
                let mut tx = self.write.begin().await?;
                let mut out = Vec::with_capacity(specs.len());
                for s in specs {
                    let latest: Option<AgentRecord> = sqlx::query_as(
                        "SELECT name, version, spec, spec_hash, created_at FROM agents \
                         WHERE name = $1 ORDER BY version DESC LIMIT 1",
                    )
                    .bind(s.name.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                    match latest {
                        Some(a) if a.spec_hash == s.spec_hash => out.push((a, false)),
                        prev => {
                            let version = prev.map_or(1, |a| a.version + 1);
                            let rec: AgentRecord = sqlx::query_as(
                                "INSERT INTO agents (name, version, spec, spec_hash, created_at) \
                                 VALUES ($1, $2, $3, $4, $5) \
                                 RETURNING name, version, spec, spec_hash, created_at",
                            )
                            .bind(s.name.as_str())
                            .bind(version)
                            .bind(&s.spec_json)
                            .bind(&s.spec_hash)
                            .bind(now)
                            .fetch_one(&mut *tx)
                            .await?;
                            out.push((rec, true));
                        }
                    }
                }
                tx.commit().await?;
                Ok(out)
            }

            async fn get_agent(&self, name: &AgentName, version: Option<i64>) -> Result<Option<AgentRecord>> {
                let q = match version {
                    Some(v) => sqlx::query_as(
                        "SELECT name, version, spec, spec_hash, created_at FROM agents \
                         WHERE name = $1 AND version = $2",
                    )
                    .bind(name.as_str())
                    .bind(v),
                    None => sqlx::query_as(
                        "SELECT name, version, spec, spec_hash, created_at FROM agents \
                         WHERE name = $1 ORDER BY version DESC LIMIT 1",
                    )
                    .bind(name.as_str()),
                };
                Ok(q.fetch_optional(&self.read).await?)
            }

            async fn list_agents(&self) -> Result<Vec<AgentRecord>> {
                Ok(sqlx::query_as(
                    "SELECT a.name, a.version, a.spec, a.spec_hash, a.created_at FROM agents a \
                     WHERE a.version = (SELECT MAX(b.version) FROM agents b WHERE b.name = a.name) \
                     ORDER BY a.name",
                )
                .fetch_all(&self.read)
                .await?)
            }
        }

        #[async_trait]
        impl RunStore for $store {
            async fn create_run(&self, run: &NewRun, now: Millis) -> Result<(RunRecord, bool)> {
                self.create_run_with(run, None, now).await
            }

            async fn create_run_audited(&self, run: &NewRun, audit: &str, now: Millis) -> Result<(RunRecord, bool)> {
                self.create_run_with(run, Some(audit), now).await
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
                let mut tx = self.write.begin().await?;
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
                let mut tx = self.write.begin().await?;
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

        #[async_trait]
        impl JournalStore for $store {
            async fn append_settling(
                &self,
                entries: &[JournalEntry],
                audit: &[(Millis, String)],
                claims: &[Claim],
                settles: &[(String, i64)],
            ) -> Result<()> {
                if entries.is_empty() && audit.is_empty() && settles.is_empty() {
                    return Ok(());
                }
                fn insert<'a>(chunk: &'a [JournalEntry]) -> sqlx::QueryBuilder<'a, $db> {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO journal (run_id, seq, phase, kind, name, request_hash, idempotency_key, \
                         body, ok, tokens_in, tokens_out, at, duration_us) ",
                    );
                    qb.push_values(chunk, |mut b, e| {
                        b.push_bind(e.run_id.as_str())
                            .push_bind(e.seq)
                            .push_bind(e.phase)
                            .push_bind(e.kind.as_str())
                            .push_bind(e.name.as_str())
                            .push_bind(e.request_hash.as_str())
                            .push_bind(e.idempotency_key.as_str())
                            .push_bind(e.body.as_str())
                            .push_bind(e.ok)
                            .push_bind(e.tokens_in)
                            .push_bind(e.tokens_out)
                            .push_bind(e.at)
                            .push_bind(e.duration_us);
                    });
                    qb
                }
                // One statement is atomic on its own: no BEGIN/COMMIT round trips for the
                // common case of an unfenced batch that fits in one INSERT.
                if audit.is_empty() && claims.is_empty() && settles.is_empty() && entries.len() <= JOURNAL_CHUNK {
                    insert(entries).build().execute(&self.write).await?;
                    return Ok(());
                }
                let mut tx = self.write.begin().await?;
                for chunk in entries.chunks(JOURNAL_CHUNK) {
                    insert(chunk).build().execute(&mut *tx).await?;
                }
                // Before the audit head is taken: every transaction that locks runs rows takes
                // them before the head, so the two never wait on each other in a cycle.
                Self::check_claims_in(&mut tx, claims).await?;
                // Budget rows after runs rows and before the audit head, as everywhere.
                let now = entries.iter().map(|e| e.at).chain(audit.iter().map(|a| a.0)).max().unwrap_or_default();
                for (hold, spent) in settles {
                    Self::settle_in(&mut tx, hold, *spent, now).await?;
                }
                if !audit.is_empty() {
                    Self::append_audit_in(&mut tx, audit).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn load_journal(&self, run: &RunId, after: Option<i64>, limit: i64) -> Result<Vec<JournalEntry>> {
                Ok(sqlx::query_as(
                    "SELECT run_id, seq, phase, kind, name, request_hash, idempotency_key, body, ok, \
                       tokens_in, tokens_out, at, duration_us \
                     FROM journal WHERE run_id = $1 AND seq > $2 ORDER BY seq, phase LIMIT $3",
                )
                .bind(run.as_str())
                .bind(after.unwrap_or(-1))
                .bind(limit)
                .fetch_all(&self.read)
                .await?)
            }
        }

        #[async_trait]
        impl ScratchpadStore for $store {
            async fn scratch_put(&self, run: &RunId, key: &str, value: &str, now: Millis) -> Result<()> {
                sqlx::query(
                    "INSERT INTO scratchpad (run_id, key, value, updated_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                )
                .bind(run.as_str())
                .bind(key)
                .bind(value)
                .bind(now)
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn scratch_get(&self, run: &RunId, key: &str) -> Result<Option<String>> {
                let row: Option<(String,)> = sqlx::query_as("SELECT value FROM scratchpad WHERE run_id = $1 AND key = $2")
                    .bind(run.as_str())
                    .bind(key)
                    .fetch_optional(&self.read)
                    .await?;
                Ok(row.map(|r| r.0))
            }
        }

        #[async_trait]
        impl GatewayStore for $store {
            async fn create_key(&self, id: &str, key_hash: &str, agent: &AgentName, expires_at: Option<Millis>, now: Millis) -> Result<ApiKeyRecord> {
                Ok(sqlx::query_as(&format!(
                    "INSERT INTO api_keys (id, key_hash, agent, created_at, expires_at) VALUES ($1, $2, $3, $4, $5) \
                     RETURNING {KEY_COLUMNS}"
                ))
                .bind(id)
                .bind(key_hash)
                .bind(agent.as_str())
                .bind(now)
                .bind(expires_at)
                .fetch_one(&self.write)
                .await?)
            }

            async fn find_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>> {
                Ok(sqlx::query_as(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = $1"))
                    .bind(key_hash)
                    .fetch_optional(&self.read)
                    .await?)
            }

            async fn get_key(&self, id: &str) -> Result<Option<ApiKeyRecord>> {
                Ok(sqlx::query_as(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.read)
                    .await?)
            }

            async fn list_keys(&self, agent: Option<&str>) -> Result<Vec<ApiKeyRecord>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys WHERE ($1 IS NULL OR agent = $1) ORDER BY created_at DESC, id"
                ))
                .bind(agent)
                .fetch_all(&self.read)
                .await?)
            }

            async fn revoke_key(&self, id: &str, reason: &str, now: Millis) -> Result<Option<ApiKeyRecord>> {
                let mut tx = self.write.begin().await?;
                let n = sqlx::query("UPDATE api_keys SET revoked_at = $1, revoke_reason = $2 WHERE id = $3 AND revoked_at IS NULL")
                    .bind(now)
                    .bind(reason)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let rec: Option<ApiKeyRecord> = sqlx::query_as(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                tx.commit().await?;
                match rec {
                    Some(_) if n == 0 => Err(Error::Conflict(format!("key {id} is revoked already"))),
                    r => Ok(r),
                }
            }

            async fn begin_call(&self, c: &NewCall, accounts: &[String], amount: i64, now: Millis) -> Result<Option<String>> {
                let mut tx = self.write.begin().await?;
                if !accounts.is_empty() {
                    let hold = NewHold { id: &c.id, kind: HOLD_CALL, run_id: c.run_id.as_deref(), accounts, amount };
                    if let Some(account) = Self::hold_in(&mut tx, &hold, now).await? {
                        tx.rollback().await?;
                        return Ok(Some(account));
                    }
                }
                sqlx::query(
                    "INSERT INTO gateway_calls (id, agent, run_id, model, status, stream, tokens_in, tokens_out, \
                       started_at, duration_us) VALUES ($1, $2, $3, $4, 'started', $5, 0, 0, $6, 0)",
                )
                .bind(&c.id)
                .bind(&c.agent)
                .bind(&c.run_id)
                .bind(&c.model)
                .bind(i64::from(c.stream))
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(None)
            }

            async fn end_calls(&self, ends: &[CallEnd]) -> Result<()> {
                let mut tx = self.write.begin().await?;
                let audit: Vec<(Millis, String)> =
                    ends.iter().filter_map(|e| Some((e.at, e.audit.clone()?))).collect();
                if !audit.is_empty() {
                    Self::append_audit_in(&mut tx, &audit).await?;
                }
                for e in ends {
                    Self::settle_in(&mut tx, &e.id, e.spent, e.at).await?;
                    let o = &e.outcome;
                    sqlx::query(
                        "UPDATE gateway_calls SET deployment = $1, status = $2, error = $3, tokens_in = $4, \
                           tokens_out = $5, duration_us = $6 WHERE id = $7",
                    )
                    .bind(&o.deployment)
                    .bind(&o.status)
                    .bind(&o.error)
                    .bind(o.tokens_in)
                    .bind(o.tokens_out)
                    .bind(o.duration_us)
                    .bind(&e.id)
                    .execute(&mut *tx)
                    .await?;
                    let tokens = o.tokens_in + o.tokens_out;
                    for scope in e.rate_scopes.iter().filter(|_| tokens > 0) {
                        sqlx::query("UPDATE rate_windows SET tokens = tokens + $1 WHERE scope = $2 AND window_start = $3")
                            .bind(tokens)
                            .bind(scope)
                            .bind(e.rate_window)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                tx.commit().await?;
                Ok(())
            }

            async fn list_calls(&self, agent: Option<&str>, limit: i64) -> Result<Vec<CallRecord>> {
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "SELECT id, agent, run_id, model, deployment, status, error, stream, tokens_in, tokens_out, \
                       started_at, duration_us FROM gateway_calls WHERE 1 = 1",
                );
                if let Some(a) = agent {
                    qb.push(" AND agent = ").push_bind(a.to_string());
                }
                qb.push(" ORDER BY started_at DESC, id DESC LIMIT ").push_bind(limit.clamp(1, 10_000));
                Ok(qb.build_query_as().fetch_all(&self.read).await?)
            }

            async fn usage(&self, since: Millis) -> Result<Vec<UsageRow>> {
                Ok(sqlx::query_as(
                    "SELECT j.kind AS kind, r.agent AS agent, j.name AS model, j.run_id AS run_id, \
                       r.task_id AS task_id, t.state AS task_state, COALESCE(r.verdict, r.state) AS run_state, j.at / 86400000 AS day, \
                       COUNT(*) AS calls, CAST(SUM(j.tokens_in) AS BIGINT) AS tokens_in, \
                       CAST(SUM(j.tokens_out) AS BIGINT) AS tokens_out, CAST(0 AS BIGINT) AS booked_nanos \
                     FROM journal j JOIN runs r ON r.id = j.run_id LEFT JOIN tasks t ON t.id = r.task_id \
                     WHERE j.phase = 1 AND j.kind IN ('model', 'tool') AND j.at >= $1 \
                     GROUP BY j.kind, r.agent, j.name, j.run_id, r.task_id, t.state, r.state, r.verdict, j.at / 86400000 \
                     UNION ALL \
                     SELECT 'model', g.agent, COALESCE(g.deployment, g.model), g.run_id, r.task_id, t.state, COALESCE(r.verdict, r.state), \
                       g.started_at / 86400000, COUNT(*), CAST(SUM(g.tokens_in) AS BIGINT), CAST(SUM(g.tokens_out) AS BIGINT), \
                       CAST(SUM(COALESCE(g.booked_nanos, 0)) AS BIGINT) \
                     FROM gateway_calls g LEFT JOIN runs r ON r.id = g.run_id LEFT JOIN tasks t ON t.id = r.task_id \
                     WHERE g.status <> 'started' AND g.started_at >= $1 \
                     GROUP BY g.agent, COALESCE(g.deployment, g.model), g.run_id, r.task_id, t.state, r.state, r.verdict, g.started_at / 86400000 \
                     UNION ALL \
                     SELECT 'model', r.agent, i.name, i.run_id, r.task_id, t.state, COALESCE(r.verdict, r.state), i.at / 86400000, \
                       COUNT(*), CAST(0 AS BIGINT), CAST(0 AS BIGINT), CAST(SUM(i.booked_nanos) AS BIGINT) \
                     FROM interrupted_steps i JOIN runs r ON r.id = i.run_id LEFT JOIN tasks t ON t.id = r.task_id \
                     WHERE i.at >= $1 \
                     GROUP BY r.agent, i.name, i.run_id, r.task_id, t.state, r.state, r.verdict, i.at / 86400000",
                )
                .bind(since)
                .fetch_all(&self.read)
                .await?)
            }
        }

        impl $store {
            /// Creates a run unless its id exists, with `audit` (for a new one) in the same commit.
            async fn create_run_with(&self, run: &NewRun, audit: Option<&str>, now: Millis) -> Result<(RunRecord, bool)> {
                let mut tx = self.write.begin().await?;
                let inserted = sqlx::query(
                    "INSERT INTO runs (id, agent, agent_version, parent_id, input, state, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, 'queued', $6, $6) ON CONFLICT (id) DO NOTHING",
                )
                .bind(run.id.as_str())
                .bind(run.agent.as_str())
                .bind(run.agent_version)
                .bind(run.parent_id.as_ref().map(|p| p.as_str().to_string()))
                .bind(&run.input)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                let row: RunRow = sqlx::query_as(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"))
                    .bind(run.id.as_str())
                    .fetch_one(&mut *tx)
                    .await?;
                if let (1, Some(record)) = (inserted, audit) {
                    Self::append_audit_in(&mut tx, &[(now, record.to_string())]).await?;
                }
                tx.commit().await?;
                if inserted == 1 {
                    self.wake(WAKE_RUN).await;
                }
                Ok((row.try_into()?, inserted == 1))
            }

            /// Holds `h.amount` on every account of the hold (leaf to root) and records the hold,
            /// inside `tx`. Returns the account whose cap the hold would pass; the caller then
            /// rolls back.
            async fn hold_in(tx: &mut sqlx::Transaction<'static, $db>, h: &NewHold<'_>, now: Millis) -> Result<Option<String>> {
                let periods = PeriodStarts::at(now);
                // Leaf to root, always in that order, so concurrent holds on a shared ancestor
                // take their row locks in the same order and cannot deadlock.
                for account in h.accounts {
                    // One statement checks the cap and takes the hold — exact under any
                    // concurrency — and starts a new period when the current one is over.
                    let held = sqlx::query(
                        "UPDATE budgets SET \
                           spent_nanos = CASE WHEN (period = 'day' AND period_start < $1) \
                             OR (period = 'month' AND period_start < $2) THEN 0 ELSE spent_nanos END, \
                           period_start = CASE WHEN period = 'day' AND period_start < $1 THEN $1 \
                             WHEN period = 'month' AND period_start < $2 THEN $2 ELSE period_start END, \
                           reserved_nanos = reserved_nanos + $3, updated_at = $4 \
                         WHERE account = $5 AND reserved_nanos + $3 + CASE WHEN (period = 'day' AND period_start < $1) \
                             OR (period = 'month' AND period_start < $2) THEN 0 ELSE spent_nanos END <= cap_nanos",
                    )
                    .bind(periods.day)
                    .bind(periods.month)
                    .bind(h.amount)
                    .bind(now)
                    .bind(account)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected();
                    if held == 0 {
                        return Ok(Some(account.clone()));
                    }
                }
                let accounts = serde_json::to_string(h.accounts).map_err(|e| Error::Corrupt(e.to_string()))?;
                sqlx::query(
                    "INSERT INTO budget_holds (id, kind, run_id, accounts, amount, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(h.id)
                .bind(h.kind)
                .bind(h.run_id)
                .bind(accounts)
                .bind(h.amount)
                .bind(now)
                .execute(&mut **tx)
                .await?;
                Ok(None)
            }

            /// Fails with [`Error::Fenced`] unless every run of `claims` is still held under it.
            /// The rows are locked (shared, in id order) until `tx` ends, so a claim cannot take
            /// a run between this check and the commit: whoever claims next sees what `tx`
            /// wrote.
            async fn check_claims_in(tx: &mut sqlx::Transaction<'static, $db>, claims: &[Claim]) -> Result<()> {
                if claims.is_empty() {
                    return Ok(());
                }
                let mut qb = sqlx::QueryBuilder::<$db>::new("SELECT id, lease_owner, lease_epoch FROM runs WHERE id IN (");
                let mut sep = qb.separated(", ");
                for c in claims {
                    sep.push_bind(c.run.as_str().to_string());
                }
                qb.push(format!(") ORDER BY id {}", $share));
                let rows: Vec<(String, Option<String>, i64)> = qb.build_query_as().fetch_all(&mut **tx).await?;
                for c in claims {
                    let held = rows.iter().any(|(id, owner, epoch)| {
                        id == c.run.as_str() && owner.as_deref() == Some(c.node.0.as_str()) && *epoch == c.epoch
                    });
                    if !held {
                        return Err(Error::Fenced(c.run.to_string()));
                    }
                }
                Ok(())
            }

            /// Appends audit records inside `tx`, numbering them after the last; returns the
            /// tree's size and root after them.
            async fn append_audit_in(tx: &mut sqlx::Transaction<'static, $db>, entries: &[(Millis, String)]) -> Result<(i64, String)> {
                // Taking the head row first serialises appenders, on one node or many.
                let (size, frontier): (i64, String) = sqlx::query_as(
                    "UPDATE audit_head SET size = size + $1 WHERE id = 0 RETURNING size, frontier",
                )
                .bind(entries.len() as i64)
                .fetch_one(&mut **tx)
                .await?;
                let first = size - entries.len() as i64;
                let mut tree = merkle::Frontier::from_json(first as u64, &frontier)
                    .ok_or_else(|| Error::Corrupt(format!("audit_head holds no valid frontier for size {first}")))?;
                let leaves: Vec<String> = entries
                    .iter()
                    .enumerate()
                    .map(|(i, (_, body))| {
                        let leaf = merkle::leaf_hash(first + i as i64, body.as_bytes());
                        tree.push(leaf);
                        merkle::hex(&leaf)
                    })
                    .collect();
                // 4 values a row, under SQLite's 32,766 bound variables a statement.
                for (c, chunk) in entries.chunks(1000).enumerate() {
                    let mut qb = sqlx::QueryBuilder::<$db>::new("INSERT INTO audit_log (seq, at, body, leaf_hash) ");
                    qb.push_values(chunk.iter().enumerate(), |mut b, (i, (at, body))| {
                        let n = c * 1000 + i;
                        b.push_bind(first + n as i64).push_bind(*at).push_bind(body).push_bind(&leaves[n]);
                    });
                    qb.build().execute(&mut **tx).await?;
                }
                sqlx::query("UPDATE audit_head SET frontier = $1 WHERE id = 0")
                    .bind(tree.to_json())
                    .execute(&mut **tx)
                    .await?;
                Ok((size, merkle::hex(&tree.root())))
            }

            /// Puts a run waiting for an approval back in the queue, inside `tx`: its step is
            /// decided again, and finds the approval's answer.
            async fn requeue_approval_wait(tx: &mut sqlx::Transaction<'static, $db>, run: &str, now: Millis) -> Result<()> {
                sqlx::query(
                    "UPDATE runs SET state = 'queued', wait_kind = NULL, error_code = NULL, error_message = NULL, \
                       updated_at = $1 WHERE id = $2 AND state = 'waiting' AND wait_kind = 'approval'",
                )
                .bind(now)
                .bind(run)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            /// Records, for the cost report, a model call booked at `booked` without its tokens.
            async fn note_interrupted_in(
                tx: &mut sqlx::Transaction<'static, $db>,
                run: &str,
                seq: i64,
                name: &str,
                booked: i64,
                now: Millis,
            ) -> Result<()> {
                sqlx::query(
                    "INSERT INTO interrupted_steps (id, run_id, seq, name, booked_nanos, at) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(uuid::Uuid::now_v7().simple().to_string())
                .bind(run)
                .bind(seq)
                .bind(name)
                .bind(booked)
                .bind(now)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            /// Settles hold `id`, if there is one: releases what it held and books `spent` on
            /// the same accounts, inside `tx`.
            async fn settle_in(tx: &mut sqlx::Transaction<'static, $db>, id: &str, spent: i64, now: Millis) -> Result<()> {
                // Deleting first makes settling once a matter of the row: a second settle finds
                // nothing.
                let row: Option<(String, i64)> =
                    sqlx::query_as("DELETE FROM budget_holds WHERE id = $1 RETURNING accounts, amount")
                        .bind(id)
                        .fetch_optional(&mut **tx)
                        .await?;
                let Some((accounts, amount)) = row else { return Ok(()) };
                let accounts: Vec<String> = serde_json::from_str(&accounts)
                    .map_err(|e| Error::Corrupt(format!("budget hold {id}: {e}")))?;
                for account in &accounts {
                    sqlx::query(
                        "UPDATE budgets SET reserved_nanos = reserved_nanos - $1, spent_nanos = spent_nanos + $2, \
                           updated_at = $3 WHERE account = $4",
                    )
                    .bind(amount)
                    .bind(spent)
                    .bind(now)
                    .bind(account)
                    .execute(&mut **tx)
                    .await?;
                }
                Ok(())
            }
        }

        #[async_trait]
        impl BudgetStore for $store {
            async fn hold(&self, h: &NewHold<'_>, now: Millis) -> Result<HoldResult> {
                let mut tx = self.write.begin().await?;
                let exists: Option<(i64,)> = sqlx::query_as("SELECT amount FROM budget_holds WHERE id = $1")
                    .bind(h.id)
                    .fetch_optional(&mut *tx)
                    .await?;
                if exists.is_some() {
                    return Ok(HoldResult::AlreadyHeld);
                }
                if let Some(account) = Self::hold_in(&mut tx, h, now).await? {
                    tx.rollback().await?;
                    return Ok(HoldResult::Exceeded(account));
                }
                tx.commit().await?;
                Ok(HoldResult::Held)
            }

            async fn settle(&self, id: &str, spent: i64, now: Millis) -> Result<()> {
                let mut tx = self.write.begin().await?;
                Self::settle_in(&mut tx, id, spent, now).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn release_stale_holds(&self, calls_before: Millis, now: Millis) -> Result<u64> {
                let stale: Vec<(String, String, i64, Option<String>)> = sqlx::query_as(
                    "SELECT h.id, h.kind, h.amount, h.run_id FROM budget_holds h LEFT JOIN runs r ON r.id = h.run_id \
                     WHERE (h.kind = 'call' AND h.created_at < $1) \
                        OR (h.kind = 'step' AND (r.id IS NULL OR r.state IN ('succeeded', 'failed', 'cancelled')))",
                )
                .bind(calls_before)
                .fetch_all(&self.read)
                .await?;
                for (id, kind, amount, run_id) in &stale {
                    let mut tx = self.write.begin().await?;
                    Self::settle_in(&mut tx, id, *amount, now).await?;
                    if kind == HOLD_CALL {
                        sqlx::query(
                            "UPDATE gateway_calls SET status = 'error', booked_nanos = $2, \
                               error = 'interrupted: the node stopped before the call ended' \
                             WHERE id = $1 AND status = 'started'",
                        )
                        .bind(id)
                        .bind(amount)
                        .execute(&mut *tx)
                        .await?;
                    } else if let Some(run) = run_id {
                        Self::note_interrupted_in(&mut tx, run, -1, "(interrupted step)", *amount, now).await?;
                    }
                    tx.commit().await?;
                }
                Ok(stale.len() as u64)
            }

            async fn book_interrupted(&self, run: &RunId, seq: i64, name: &str, hold: &str, worst_case: i64, now: Millis) -> Result<i64> {
                let mut tx = self.write.begin().await?;
                let open: Option<(i64,)> = sqlx::query_as("SELECT amount FROM budget_holds WHERE id = $1")
                    .bind(hold)
                    .fetch_optional(&mut *tx)
                    .await?;
                let booked = match open {
                    Some((amount,)) => {
                        Self::settle_in(&mut tx, hold, amount, now).await?;
                        amount
                    }
                    None => worst_case,
                };
                Self::note_interrupted_in(&mut tx, run.as_str(), seq, name, booked, now).await?;
                tx.commit().await?;
                Ok(booked)
            }

            async fn put_budget(&self, account: &str, parent: Option<&str>, cap: i64, period: &str, now: Millis) -> Result<BudgetRecord> {
                Ok(sqlx::query_as(
                    "INSERT INTO budgets (account, parent, cap_nanos, period, period_start, spent_nanos, reserved_nanos, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, 0, 0, $5) \
                     ON CONFLICT (account) DO UPDATE SET parent = excluded.parent, cap_nanos = excluded.cap_nanos, \
                       period = excluded.period, updated_at = excluded.updated_at \
                     RETURNING account, parent, cap_nanos, period, period_start, spent_nanos, reserved_nanos, updated_at",
                )
                .bind(account)
                .bind(parent)
                .bind(cap)
                .bind(period)
                .bind(now)
                .fetch_one(&self.write)
                .await?)
            }

            async fn get_budget(&self, account: &str) -> Result<Option<BudgetRecord>> {
                Ok(sqlx::query_as(
                    "SELECT account, parent, cap_nanos, period, period_start, spent_nanos, reserved_nanos, updated_at \
                     FROM budgets WHERE account = $1",
                )
                .bind(account)
                .fetch_optional(&self.read)
                .await?)
            }

            async fn list_budgets(&self) -> Result<Vec<BudgetRecord>> {
                Ok(sqlx::query_as(
                    "SELECT account, parent, cap_nanos, period, period_start, spent_nanos, reserved_nanos, updated_at \
                     FROM budgets ORDER BY account",
                )
                .fetch_all(&self.read)
                .await?)
            }
        }

        #[async_trait]
        impl RateStore for $store {
            async fn take_request(&self, scopes: &[(String, i64, i64)], window: Millis) -> Result<Option<String>> {
                let mut tx = self.write.begin().await?;
                for (scope, rpm, tpm) in scopes {
                    // Counting and checking in one statement keeps the limit exact across nodes.
                    let counted: Option<(i64,)> = sqlx::query_as(
                        "INSERT INTO rate_windows (scope, window_start, requests, tokens) VALUES ($1, $2, 1, 0) \
                         ON CONFLICT (scope, window_start) DO UPDATE SET requests = rate_windows.requests + 1 \
                         WHERE rate_windows.requests < $3 AND rate_windows.tokens < $4 \
                         RETURNING requests",
                    )
                    .bind(scope)
                    .bind(window)
                    .bind(rpm)
                    .bind(tpm)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if counted.is_none() || *rpm < 1 {
                        tx.rollback().await?;
                        return Ok(Some(scope.clone()));
                    }
                }
                tx.commit().await?;
                Ok(None)
            }

            async fn purge_windows(&self, before: Millis) -> Result<u64> {
                Ok(sqlx::query("DELETE FROM rate_windows WHERE window_start < $1")
                    .bind(before)
                    .execute(&self.write)
                    .await?
                    .rows_affected())
            }
        }

        #[async_trait]
        impl BreakerStore for $store {
            async fn share_breaker(&self, deployment: &str, open_until: Millis, node: &NodeId, now: Millis) -> Result<()> {
                sqlx::query(
                    "INSERT INTO breakers (deployment, open_until, opened_by, updated_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (deployment) DO UPDATE SET open_until = excluded.open_until, \
                       opened_by = excluded.opened_by, updated_at = excluded.updated_at \
                     WHERE breakers.open_until < excluded.open_until",
                )
                .bind(deployment)
                .bind(open_until)
                .bind(&node.0)
                .bind(now)
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn open_breakers(&self, now: Millis) -> Result<Vec<BreakerRecord>> {
                Ok(sqlx::query_as(
                    "SELECT deployment, open_until, opened_by FROM breakers WHERE open_until > $1 ORDER BY deployment",
                )
                .bind(now)
                .fetch_all(&self.read)
                .await?)
            }
        }

        #[async_trait]
        impl AuditStore for $store {
            async fn append_audit(&self, entries: &[(Millis, String)]) -> Result<(i64, String)> {
                let mut tx = self.write.begin().await?;
                let head = Self::append_audit_in(&mut tx, entries).await?;
                tx.commit().await?;
                Ok(head)
            }

            async fn audit_head(&self) -> Result<(i64, String)> {
                let (size, frontier): (i64, String) =
                    sqlx::query_as("SELECT size, frontier FROM audit_head WHERE id = 0")
                        .fetch_one(&self.read)
                        .await?;
                let tree = merkle::Frontier::from_json(size as u64, &frontier)
                    .ok_or_else(|| Error::Corrupt(format!("audit_head holds no valid frontier for size {size}")))?;
                Ok((size, merkle::hex(&tree.root())))
            }

            async fn put_checkpoint(&self, c: &AuditCheckpoint) -> Result<()> {
                sqlx::query(
                    "INSERT INTO audit_checkpoints (size, root, at, key_id, signature) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (size) DO NOTHING",
                )
                .bind(c.size)
                .bind(&c.root)
                .bind(c.at)
                .bind(&c.key_id)
                .bind(&c.signature)
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn audit_checkpoints(&self) -> Result<Vec<AuditCheckpoint>> {
                Ok(sqlx::query_as("SELECT size, root, at, key_id, signature FROM audit_checkpoints ORDER BY size")
                    .fetch_all(&self.read)
                    .await?)
            }

            async fn audit_rows(&self, from_seq: i64, limit: i64) -> Result<Vec<AuditRow>> {
                Ok(sqlx::query_as(
                    "SELECT seq, at, body, leaf_hash FROM audit_log WHERE seq >= $1 ORDER BY seq LIMIT $2",
                )
                .bind(from_seq)
                .bind(limit)
                .fetch_all(&self.read)
                .await?)
            }

            async fn prune_audit(&self, before: Millis) -> Result<u64> {
                Ok(sqlx::query("UPDATE audit_log SET body = NULL WHERE at < $1 AND body IS NOT NULL")
                    .bind(before)
                    .execute(&self.write)
                    .await?
                    .rows_affected())
            }
        }

        #[async_trait]
        impl ApprovalStore for $store {
            async fn request_approval(&self, a: &NewApproval, now: Millis) -> Result<ApprovalRecord> {
                let mut tx = self.write.begin().await?;
                sqlx::query(
                    "INSERT INTO approvals (id, run_id, seq, approvers, action, resource, policy_ids, state, \
                       created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $9) \
                     ON CONFLICT (run_id, seq) DO NOTHING",
                )
                .bind(&a.id)
                .bind(&a.run_id)
                .bind(a.seq)
                .bind(&a.approvers)
                .bind(&a.action)
                .bind(&a.resource)
                .bind(&a.policy_ids)
                .bind(now)
                .bind(a.expires_at)
                .execute(&mut *tx)
                .await?;
                let rec: ApprovalRecord = sqlx::query_as(&format!("SELECT {APPROVAL_COLUMNS} FROM approvals WHERE run_id = $1 AND seq = $2"))
                    .bind(&a.run_id)
                    .bind(a.seq)
                    .fetch_one(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(rec)
            }

            async fn approval_for(&self, run_id: &str, seq: i64) -> Result<Option<ApprovalRecord>> {
                Ok(sqlx::query_as(&format!("SELECT {APPROVAL_COLUMNS} FROM approvals WHERE run_id = $1 AND seq = $2"))
                    .bind(run_id)
                    .bind(seq)
                    .fetch_optional(&self.read)
                    .await?)
            }

            async fn get_approval(&self, id: &str) -> Result<Option<ApprovalRecord>> {
                Ok(sqlx::query_as(&format!("SELECT {APPROVAL_COLUMNS} FROM approvals WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.read)
                    .await?)
            }

            async fn list_approvals(&self, state: Option<&str>, limit: i64) -> Result<Vec<ApprovalRecord>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE ($1 IS NULL OR state = $1) \
                     ORDER BY created_at DESC, id LIMIT $2"
                ))
                .bind(state)
                .bind(limit)
                .fetch_all(&self.read)
                .await?)
            }

            async fn decide_approval(&self, id: &str, approve: bool, reason: &str, by: &str, now: Millis) -> Result<Option<ApprovalRecord>> {
                let mut tx = self.write.begin().await?;
                let n = sqlx::query(
                    "UPDATE approvals SET state = $1, reason = $2, decided_by = $3, decided_at = $4 \
                     WHERE id = $5 AND state = 'pending'",
                )
                .bind(if approve { "approved" } else { "denied" })
                .bind(reason)
                .bind(by)
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                let rec: Option<ApprovalRecord> = sqlx::query_as(&format!("SELECT {APPROVAL_COLUMNS} FROM approvals WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(rec) = rec else {
                    return Ok(None);
                };
                if n == 0 {
                    return Err(Error::Conflict(format!("approval {id} is {} already", rec.state)));
                }
                Self::requeue_approval_wait(&mut tx, &rec.run_id, now).await?;
                tx.commit().await?;
                self.wake(WAKE_RUN).await;
                Ok(Some(rec))
            }

            async fn expire_approvals(&self, now: Millis) -> Result<u64> {
                let mut tx = self.write.begin().await?;
                let expired: Vec<(String,)> = sqlx::query_as(
                    "UPDATE approvals SET state = 'expired', decided_at = $1, reason = 'no approver decided in time' \
                     WHERE state = 'pending' AND expires_at <= $1 RETURNING run_id",
                )
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
                for (run,) in &expired {
                    Self::requeue_approval_wait(&mut tx, run, now).await?;
                }
                tx.commit().await?;
                if !expired.is_empty() {
                    self.wake(WAKE_RUN).await;
                }
                Ok(expired.len() as u64)
            }
        }

        #[async_trait]
        impl IdentityStore for $store {
            async fn get_identity(&self, agent: &str) -> Result<Option<IdentityRecord>> {
                Ok(sqlx::query_as("SELECT agent, owner, status, reason, updated_at FROM identities WHERE agent = $1")
                    .bind(agent)
                    .fetch_optional(&self.read)
                    .await?)
            }

            async fn set_identity(&self, agent: &str, status: &str, owner: Option<&str>, reason: &str, now: Millis) -> Result<IdentityRecord> {
                let mut tx = self.write.begin().await?;
                let current: Option<IdentityRecord> =
                    sqlx::query_as("SELECT agent, owner, status, reason, updated_at FROM identities WHERE agent = $1")
                        .bind(agent)
                        .fetch_optional(&mut *tx)
                        .await?;
                match current.as_ref().map(|c| c.status.as_str()) {
                    Some("deleted") => {
                        return Err(Error::Conflict(format!("agent {agent} was deleted; a deleted identity stays deleted")));
                    }
                    Some("revoked") if status != "deleted" => {
                        return Err(Error::Conflict(format!("agent {agent} was revoked; a revoked identity stays revoked")));
                    }
                    _ => {}
                }
                let rec: IdentityRecord = sqlx::query_as(
                    "INSERT INTO identities (agent, owner, status, reason, updated_at) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (agent) DO UPDATE SET owner = COALESCE(excluded.owner, identities.owner), \
                       status = excluded.status, reason = excluded.reason, updated_at = excluded.updated_at \
                     RETURNING agent, owner, status, reason, updated_at",
                )
                .bind(agent)
                .bind(owner)
                .bind(status)
                .bind(reason)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(rec)
            }
        }

        #[async_trait]
        impl DelegationStore for $store {
            async fn create_delegation(&self, r: &DelegationRecord) -> Result<()> {
                let done = sqlx::query(
                    "INSERT INTO delegations (id, parent_id, revocation_id, issuer, holder, key_id, scope, expires_at, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
                )
                .bind(&r.id)
                .bind(&r.parent_id)
                .bind(&r.revocation_id)
                .bind(&r.issuer)
                .bind(&r.holder)
                .bind(&r.key_id)
                .bind(&r.scope)
                .bind(r.expires_at)
                .bind(r.created_at)
                .execute(&self.write)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(Error::Conflict(format!("delegation {} exists already", r.id)));
                }
                Ok(())
            }

            async fn get_delegation(&self, id: &str) -> Result<Option<DelegationRecord>> {
                Ok(sqlx::query_as(concat!("SELECT ", delegation_cols!(), " FROM delegations WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.read)
                    .await?)
            }

            async fn delegation_by_revocation(&self, rid: &str) -> Result<Option<DelegationRecord>> {
                Ok(sqlx::query_as(concat!("SELECT ", delegation_cols!(), " FROM delegations WHERE revocation_id = $1"))
                    .bind(rid)
                    .fetch_optional(&self.read)
                    .await?)
            }

            async fn list_delegations(&self, limit: i64) -> Result<Vec<DelegationRecord>> {
                Ok(sqlx::query_as(concat!("SELECT ", delegation_cols!(), " FROM delegations ORDER BY created_at DESC, id DESC LIMIT $1"))
                    .bind(limit)
                    .fetch_all(&self.read)
                    .await?)
            }

            async fn revoke_delegation(&self, id: &str, reason: &str, now: Millis) -> Result<Option<Vec<String>>> {
                let mut tx = self.write.begin().await?;
                let exists: Option<(String,)> = sqlx::query_as("SELECT id FROM delegations WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                if exists.is_none() {
                    return Ok(None);
                }
                let revoked: Vec<(String,)> = sqlx::query_as(
                    "WITH RECURSIVE below(id) AS ( \
                       SELECT id FROM delegations WHERE id = $1 \
                       UNION SELECT d.id FROM delegations d JOIN below b ON d.parent_id = b.id) \
                     UPDATE delegations SET revoked_at = $2, revoke_reason = $3 \
                     WHERE id IN (SELECT id FROM below) AND revoked_at IS NULL RETURNING id",
                )
                .bind(id)
                .bind(now)
                .bind(reason)
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                let mut ids: Vec<String> = revoked.into_iter().map(|(i,)| i).collect();
                ids.sort();
                Ok(Some(ids))
            }
        }

        #[async_trait]
        impl SecretStore for $store {
            async fn put_secret(&self, name: &str, sealed: &str, now: Millis) -> Result<()> {
                sqlx::query(
                    "INSERT INTO secrets (name, sealed, updated_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at",
                )
                .bind(name)
                .bind(sealed)
                .bind(now)
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn ensure_signing_key(&self, name: &str, sealed: &str, now: Millis) -> Result<String> {
                sqlx::query("INSERT INTO signing_keys (name, sealed, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING")
                    .bind(name)
                    .bind(sealed)
                    .bind(now)
                    .execute(&self.write)
                    .await?;
                let (stored,): (String,) = sqlx::query_as("SELECT sealed FROM signing_keys WHERE name = $1")
                    .bind(name)
                    .fetch_one(&self.write)
                    .await?;
                Ok(stored)
            }

            async fn secrets(&self) -> Result<Vec<(String, String, Millis)>> {
                Ok(sqlx::query_as("SELECT name, sealed, updated_at FROM secrets ORDER BY name")
                    .fetch_all(&self.read)
                    .await?)
            }

            async fn delete_secret(&self, name: &str) -> Result<bool> {
                Ok(sqlx::query("DELETE FROM secrets WHERE name = $1")
                    .bind(name)
                    .execute(&self.write)
                    .await?
                    .rows_affected()
                    > 0)
            }
        }

        #[async_trait]
        impl PolicyStore for $store {
            async fn put_policy_set(&self, hash: &str, text: &str, now: Millis) -> Result<PolicySetRecord> {
                let mut tx = self.write.begin().await?;
                let latest: Option<PolicySetRecord> = sqlx::query_as(
                    "SELECT version, hash, text, created_at FROM policy_sets ORDER BY version DESC LIMIT 1",
                )
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(l) = latest.as_ref().filter(|l| l.hash == hash) {
                    tx.commit().await?;
                    return Ok(l.clone());
                }
                // Two writers racing for the same version: the primary key lets one win.
                let rec: PolicySetRecord = sqlx::query_as(
                    "INSERT INTO policy_sets (version, hash, text, created_at) VALUES ($1, $2, $3, $4) \
                     RETURNING version, hash, text, created_at",
                )
                .bind(latest.map_or(1, |l| l.version + 1))
                .bind(hash)
                .bind(text)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(rec)
            }

            async fn latest_policy_set(&self) -> Result<Option<PolicySetRecord>> {
                Ok(sqlx::query_as(
                    "SELECT version, hash, text, created_at FROM policy_sets ORDER BY version DESC LIMIT 1",
                )
                .fetch_optional(&self.read)
                .await?)
            }
        }

        #[async_trait]
        impl CacheStore for $store {
            async fn cache_get(&self, key: &str, now: Millis) -> Result<Option<(String, String)>> {
                Ok(sqlx::query_as("SELECT body, deployment FROM response_cache WHERE cache_key = $1 AND expires_at > $2")
                    .bind(key)
                    .bind(now)
                    .fetch_optional(&self.read)
                    .await?)
            }

            async fn cache_put(&self, key: &str, body: &str, deployment: &str, expires_at: Millis) -> Result<()> {
                sqlx::query(
                    "INSERT INTO response_cache (cache_key, body, deployment, expires_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (cache_key) DO UPDATE SET body = excluded.body, deployment = excluded.deployment, \
                       expires_at = excluded.expires_at",
                )
                .bind(key)
                .bind(body)
                .bind(deployment)
                .bind(expires_at)
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn purge_cache(&self, now: Millis) -> Result<u64> {
                Ok(sqlx::query("DELETE FROM response_cache WHERE expires_at <= $1")
                    .bind(now)
                    .execute(&self.write)
                    .await?
                    .rows_affected())
            }
        }

        #[async_trait]
        impl Store for $store {
            fn backend(&self) -> &'static str {
                $backend
            }
            async fn wakeups(&self) -> Result<Option<mpsc::Receiver<String>>> {
                self.listen().await
            }
            async fn ping(&self) -> Result<()> {
                sqlx::query("SELECT 1").execute(&self.read).await?;
                Ok(())
            }
            async fn probe_write(&self, node: &str, now: Millis) -> Result<()> {
                sqlx::query(
                    "INSERT INTO write_probes (node, at) VALUES ($1, $2) \
                     ON CONFLICT (node) DO UPDATE SET at = excluded.at",
                )
                .bind(node)
                .bind(now)
                .execute(&self.write)
                .await?;
                Ok(())
            }
        }
    };
}

/// The channel other nodes' changes are announced on (PostgreSQL `NOTIFY`).
const WAKE_CHANNEL: &str = "steward_wake";

impl SqliteStore {
    /// One process owns a SQLite file: its engine is woken in-process, nobody else to tell.
    pub(crate) async fn wake(&self, _what: &str) {}

    async fn listen(&self) -> Result<Option<mpsc::Receiver<String>>> {
        Ok(None)
    }
}

impl PgStore {
    /// Tells every node listening that a run was queued (`run`) or ended (`done`). Best effort:
    /// nodes also poll, so a lost notification only costs latency.
    pub(crate) async fn wake(&self, what: &str) {
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(WAKE_CHANNEL)
            .bind(what)
            .execute(&self.write)
            .await;
        if let Err(e) = sent {
            tracing::debug!(error = %e, "NOTIFY failed; other nodes will find the change by polling");
        }
    }

    async fn listen(&self) -> Result<Option<mpsc::Receiver<String>>> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.read).await?;
        listener.listen(WAKE_CHANNEL).await?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(n) => {
                        // A full channel means wake-ups are pending anyway: drop this one.
                        if let Err(mpsc::error::TrySendError::Closed(_)) =
                            tx.try_send(n.payload().to_string())
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        // PgListener reconnects on the next recv; meanwhile nodes poll.
                        tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(Some(rx))
    }
}

// SQLite needs no row locks: a transaction that writes holds the database's one write lock.
impl_store!(
    SqliteStore,
    sqlx::Sqlite,
    backend = "sqlite",
    lock = "",
    row_lock = "",
    share = ""
);
impl_store!(
    PgStore,
    sqlx::Postgres,
    backend = "postgres",
    lock = "FOR UPDATE SKIP LOCKED",
    row_lock = "FOR UPDATE",
    share = "FOR SHARE"
);
