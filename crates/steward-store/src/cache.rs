//! The gateway's response cache.

use crate::sql::prelude::*;

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

macro_rules! impl_cache {
    ($store:ty) => {
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
    };
}

impl_cache!(SqliteStore);
impl_cache!(PgStore);
