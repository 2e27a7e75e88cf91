//! Delegation links, and their revocation down the tree.

use crate::sql::prelude::*;

/// Delegated credentials: the links of every chain, found by the token block that made them.
#[async_trait]
pub trait DelegationStore: Send + Sync {
    /// `Conflict` when the id or the revocation id exists already.
    async fn create_delegation(&self, rec: &DelegationRecord) -> Result<()>;
    /// As [`create_delegation`](Self::create_delegation), with the link's budget account
    /// (`account`, below `parent`, capped at `cap` in total) made or updated in the same
    /// transaction: a link never exists without its cap, and a refused link leaves no account.
    async fn create_budgeted_delegation(
        &self,
        rec: &DelegationRecord,
        account: &str,
        parent: &str,
        cap: i64,
    ) -> Result<()>;
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

macro_rules! impl_delegations {
    ($store:ty, $db:ty) => {
        impl $store {
            /// Inserts link `r` on `conn`; `Conflict` when its id or revocation id exists.
            async fn insert_delegation_in(conn: &mut <$db as sqlx::Database>::Connection, r: &DelegationRecord) -> Result<()> {
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
                .execute(&mut *conn)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(Error::Conflict(format!("delegation {} exists already", r.id)));
                }
                Ok(())
            }
        }

        #[async_trait]
        impl DelegationStore for $store {
            async fn create_delegation(&self, r: &DelegationRecord) -> Result<()> {
                let mut conn = self.write.acquire().await?;
                Self::insert_delegation_in(&mut conn, r).await
            }

            async fn create_budgeted_delegation(&self, r: &DelegationRecord, account: &str, parent: &str, cap: i64) -> Result<()> {
                let mut tx = self.begin_write().await?;
                Self::put_budget_in(&mut tx, account, Some(parent), cap, "total", r.created_at).await?;
                // A conflict drops the transaction, and the account with it.
                Self::insert_delegation_in(&mut tx, r).await?;
                tx.commit().await?;
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
                let mut tx = self.begin_write().await?;
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
    };
}

impl_delegations!(SqliteStore, sqlx::Sqlite);
impl_delegations!(PgStore, sqlx::Postgres);
