//! Agents' identities: owner and status.

use crate::sql::prelude::*;

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

macro_rules! impl_identities {
    ($store:ty) => {
        #[async_trait]
        impl IdentityStore for $store {
            async fn get_identity(&self, agent: &str) -> Result<Option<IdentityRecord>> {
                Ok(sqlx::query_as("SELECT agent, owner, status, reason, updated_at FROM identities WHERE agent = $1")
                    .bind(agent)
                    .fetch_optional(&self.read)
                    .await?)
            }

            async fn set_identity(&self, agent: &str, status: &str, owner: Option<&str>, reason: &str, now: Millis) -> Result<IdentityRecord> {
                let mut tx = self.begin_write().await?;
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
    };
}

impl_identities!(SqliteStore);
impl_identities!(PgStore);
