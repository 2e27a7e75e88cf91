//! A run's scratchpad: keys and values only it sees.

use crate::sql::prelude::*;

/// The run-scoped key-value scratchpad.
#[async_trait]
pub trait ScratchpadStore: Send + Sync {
    async fn scratch_put(&self, run: &RunId, key: &str, value: &str, now: Millis) -> Result<()>;
    async fn scratch_get(&self, run: &RunId, key: &str) -> Result<Option<String>>;
}

macro_rules! impl_scratchpad {
    ($store:ty) => {
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
    };
}

impl_scratchpad!(SqliteStore);
impl_scratchpad!(PgStore);
