//! Versioned Cedar policy sets.

use crate::sql::prelude::*;

/// Versions of the policy set.
#[async_trait]
pub trait PolicyStore: Send + Sync {
    /// Records `text` as the next version, unless it is the latest already; returns the
    /// latest version.
    async fn put_policy_set(&self, hash: &str, text: &str, now: Millis) -> Result<PolicySetRecord>;
    async fn latest_policy_set(&self) -> Result<Option<PolicySetRecord>>;
}

macro_rules! impl_policies {
    ($store:ty) => {
        #[async_trait]
        impl PolicyStore for $store {
            async fn put_policy_set(&self, hash: &str, text: &str, now: Millis) -> Result<PolicySetRecord> {
                let mut tx = self.begin_write().await?;
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
    };
}

impl_policies!(SqliteStore);
impl_policies!(PgStore);
