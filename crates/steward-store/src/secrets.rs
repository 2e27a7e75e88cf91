//! The vault's sealed secrets.

use crate::sql::prelude::*;

/// The vault's encrypted values.
#[async_trait]
pub trait SecretStore: Send + Sync {
    async fn put_secret(&self, name: &str, sealed: &str, now: Millis) -> Result<()>;
    /// Every secret: `(name, sealed, updated_at)`, by name.
    async fn secrets(&self) -> Result<Vec<(String, String, Millis)>>;
    /// Whether there was one.
    async fn delete_secret(&self, name: &str) -> Result<bool>;
    /// The sealed signing key `name`: `sealed` is stored when there is none yet (the first
    /// node to ask creates it; the others read the same).
    async fn ensure_signing_key(&self, name: &str, sealed: &str, now: Millis) -> Result<String>;
}

macro_rules! impl_secrets {
    ($store:ty) => {
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
    };
}

impl_secrets!(SqliteStore);
impl_secrets!(PgStore);
