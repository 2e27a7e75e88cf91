//! Budget accounts and their holds.

use crate::sql::prelude::*;

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

macro_rules! impl_budgets {
    ($store:ty) => {
        #[async_trait]
        impl BudgetStore for $store {
            async fn hold(&self, h: &NewHold<'_>, now: Millis) -> Result<HoldResult> {
                let mut tx = self.begin_write().await?;
                let exists: Option<(i64,)> = sqlx::query_as("SELECT amount FROM budget_holds WHERE id = $1")
                    .bind(h.id)
                    .fetch_optional(&mut *tx)
                    .await?;
                if exists.is_some() {
                    return Ok(HoldResult::AlreadyHeld);
                }
                if let Some(account) = Self::hold_in(&mut *tx, h, now).await? {
                    tx.rollback().await?;
                    return Ok(HoldResult::Exceeded(account));
                }
                tx.commit().await?;
                Ok(HoldResult::Held)
            }

            async fn settle(&self, id: &str, spent: i64, now: Millis) -> Result<()> {
                let mut tx = self.begin_write().await?;
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
                    let mut tx = self.begin_write().await?;
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
                let mut tx = self.begin_write().await?;
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
                let mut conn = self.write.acquire().await?;
                Self::put_budget_in(&mut conn, account, parent, cap, period, now).await
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
    };
}

impl_budgets!(SqliteStore);
impl_budgets!(PgStore);
