//! Steps that run inside another aggregate's transaction: creating a run with its audit
//! record, taking and settling budget holds, appending to the
//! audit log, putting a run waiting on an approval back in the queue. Each is written once and
//! called from the aggregates whose commits must include it.

use crate::sql::prelude::*;

// Statements both these steps and SQLite's one-thread writer (`sqlite_direct`) run. Their
// placeholders first appear in number order, so they bind by position in either.

/// Holds `$3` on account `$5` at `$4` unless that passes its cap, starting a new period (day
/// `$1`, month `$2`) first when the current one is over: one row changed, or none if refused.
pub(crate) const HOLD_ON_ACCOUNT: &str = "UPDATE budgets SET \
     spent_nanos = CASE WHEN (period = 'day' AND period_start < $1) \
       OR (period = 'month' AND period_start < $2) THEN 0 ELSE spent_nanos END, \
     period_start = CASE WHEN period = 'day' AND period_start < $1 THEN $1 \
       WHEN period = 'month' AND period_start < $2 THEN $2 ELSE period_start END, \
     reserved_nanos = reserved_nanos + $3, updated_at = $4 \
   WHERE account = $5 AND reserved_nanos + $3 + CASE WHEN (period = 'day' AND period_start < $1) \
       OR (period = 'month' AND period_start < $2) THEN 0 ELSE spent_nanos END <= cap_nanos";
pub(crate) const INSERT_HOLD: &str =
    "INSERT INTO budget_holds (id, kind, run_id, accounts, amount, created_at) \
   VALUES ($1, $2, $3, $4, $5, $6)";
/// Deleting a hold first makes settling it once a matter of the row: a second finds nothing.
pub(crate) const TAKE_HOLD: &str =
    "DELETE FROM budget_holds WHERE id = $1 RETURNING accounts, amount";
/// Releases `$1` held on account `$4` and books `$2` to it, at `$3`.
pub(crate) const CHARGE_ACCOUNT: &str = "UPDATE budgets SET reserved_nanos = reserved_nanos - $1, \
   spent_nanos = spent_nanos + $2, updated_at = $3 WHERE account = $4";
/// Taking the head row first serialises appenders to the audit log, on one node or many.
pub(crate) const TAKE_AUDIT_HEAD: &str =
    "UPDATE audit_head SET size = size + $1 WHERE id = 0 RETURNING size, frontier";
pub(crate) const SET_AUDIT_FRONTIER: &str = "UPDATE audit_head SET frontier = $1 WHERE id = 0";

/// `ctes`: whether the dialect takes data-modifying statements in `WITH` (PostgreSQL does,
/// SQLite does not).
macro_rules! impl_in_tx {
    ($store:ty, $db:ty, ctes = $ctes:literal) => {
        impl $store {
            /// Creates a run unless its id exists, with `audit` (for a new one) in the same commit.
            pub(crate) async fn create_run_with(&self, run: &NewRun, audit: Option<&str>, now: Millis) -> Result<(RunRecord, bool)> {
                let mut tx = self.begin_write().await?;
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

            /// Makes budget account `account` (below `parent`, capped at `cap` per `period`), or
            /// changes its parent, cap and period, keeping what it has spent; on `conn`.
            pub(crate) async fn put_budget_in(conn: &mut <$db as sqlx::Database>::Connection, account: &str, parent: Option<&str>, cap: i64, period: &str, now: Millis) -> Result<BudgetRecord> {
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
                .fetch_one(&mut *conn)
                .await?)
            }

            /// Holds `h.amount` on every account of the hold (leaf to root) and records the hold,
            /// on `conn`, inside the caller's transaction (or savepoint). Returns the account
            /// whose cap the hold would pass; the caller then rolls back.
            pub(crate) async fn hold_in(conn: &mut <$db as sqlx::Database>::Connection, h: &NewHold<'_>, now: Millis) -> Result<Option<String>> {
                let periods = PeriodStarts::at(now);
                // Leaf to root, always in that order, so concurrent holds on a shared ancestor
                // take their row locks in the same order and cannot deadlock.
                for account in h.accounts {
                    // One statement checks the cap and takes the hold — exact under any
                    // concurrency — and starts a new period when the current one is over.
                    let held = sqlx::query(
                        HOLD_ON_ACCOUNT,
                    )
                    .bind(periods.day)
                    .bind(periods.month)
                    .bind(h.amount)
                    .bind(now)
                    .bind(account)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                    if held == 0 {
                        return Ok(Some(account.clone()));
                    }
                }
                let accounts = serde_json::to_string(h.accounts).map_err(|e| Error::Corrupt(e.to_string()))?;
                sqlx::query(
                    INSERT_HOLD,
                )
                .bind(h.id)
                .bind(h.kind)
                .bind(h.run_id)
                .bind(accounts)
                .bind(h.amount)
                .bind(now)
                .execute(&mut *conn)
                .await?;
                Ok(None)
            }

            /// Appends audit records inside `tx`, numbering them after the last; returns the
            /// tree's size and root after them.
            pub(crate) async fn append_audit_in(tx: &mut sqlx::Transaction<'static, $db>, entries: &[(Millis, String)]) -> Result<(i64, String)> {
                // Taking the head row first serialises appenders, on one node or many.
                let (size, frontier): (i64, String) = sqlx::query_as(
                    TAKE_AUDIT_HEAD,
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
                let chunks = entries.chunks(1000).count();
                for (c, chunk) in entries.chunks(1000).enumerate() {
                    // Where the dialect can, the last rows and the new frontier go in one
                    // statement: one round trip to the server fewer.
                    let with_frontier = $ctes && c + 1 == chunks;
                    let mut qb = sqlx::QueryBuilder::<$db>::new(if with_frontier {
                        "WITH rows AS (INSERT INTO audit_log (seq, at, body, leaf_hash) "
                    } else {
                        "INSERT INTO audit_log (seq, at, body, leaf_hash) "
                    });
                    qb.push_values(chunk.iter().enumerate(), |mut b, (i, (at, body))| {
                        let n = c * 1000 + i;
                        b.push_bind(first + n as i64).push_bind(*at).push_bind(body).push_bind(&leaves[n]);
                    });
                    if with_frontier {
                        qb.push(") UPDATE audit_head SET frontier = ").push_bind(tree.to_json()).push(" WHERE id = 0");
                    }
                    qb.build().execute(&mut **tx).await?;
                }
                if !$ctes || chunks == 0 {
                    sqlx::query(SET_AUDIT_FRONTIER)
                        .bind(tree.to_json())
                        .execute(&mut **tx)
                        .await?;
                }
                Ok((size, merkle::hex(&tree.root())))
            }

            /// Puts a run waiting for an approval back in the queue, inside `tx`: its step is
            /// decided again, and finds the approval's answer.
            pub(crate) async fn requeue_approval_wait(tx: &mut sqlx::Transaction<'static, $db>, run: &str, now: Millis) -> Result<()> {
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
            pub(crate) async fn note_interrupted_in(
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
            pub(crate) async fn settle_in(tx: &mut sqlx::Transaction<'static, $db>, id: &str, spent: i64, now: Millis) -> Result<()> {
                // Deleting first makes settling once a matter of the row: a second settle finds
                // nothing.
                let row: Option<(String, i64)> =
                    sqlx::query_as(TAKE_HOLD)
                        .bind(id)
                        .fetch_optional(&mut **tx)
                        .await?;
                let Some((accounts, amount)) = row else { return Ok(()) };
                let accounts: Vec<String> = serde_json::from_str(&accounts)
                    .map_err(|e| Error::Corrupt(format!("budget hold {id}: {e}")))?;
                for account in &accounts {
                    Self::charge_in(tx, account, amount, spent, now).await?;
                }
                Ok(())
            }

            /// Releases `released` held on `account` and books `spent` to it, inside `tx`.
            pub(crate) async fn charge_in(tx: &mut sqlx::Transaction<'static, $db>, account: &str, released: i64, spent: i64, now: Millis) -> Result<()> {
                sqlx::query(
                    CHARGE_ACCOUNT,
                )
                .bind(released)
                .bind(spent)
                .bind(now)
                .bind(account)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }
        }
    };
}

impl_in_tx!(SqliteStore, sqlx::Sqlite, ctes = false);
impl_in_tx!(PgStore, sqlx::Postgres, ctes = true);
