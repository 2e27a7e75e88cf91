//! Approvals a policy asked for, and what became of them.

use crate::sql::prelude::*;

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

macro_rules! impl_approvals {
    ($store:ty) => {
        #[async_trait]
        impl ApprovalStore for $store {
            async fn request_approval(&self, a: &NewApproval, now: Millis) -> Result<ApprovalRecord> {
                let mut tx = self.begin_write().await?;
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
                let mut tx = self.begin_write().await?;
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
                let mut tx = self.begin_write().await?;
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
    };
}

impl_approvals!(SqliteStore);
impl_approvals!(PgStore);
