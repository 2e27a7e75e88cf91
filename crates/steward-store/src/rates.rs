//! Rate-limit windows, shared by every node.

use crate::sql::prelude::*;

/// Request and token counters in one-minute windows, for rate limits shared across nodes.
#[async_trait]
pub trait RateStore: Send + Sync {
    /// Counts one request in `window` for every scope, all or none, provided each scope is
    /// under its request and token limits `(scope, rpm, tpm)`. Returns the first scope at its
    /// limit, or `None` when the request was counted.
    async fn take_request(
        &self,
        scopes: &[(String, i64, i64)],
        window: Millis,
    ) -> Result<Option<String>>;
    /// Deletes windows that began before `before`; returns how many.
    async fn purge_windows(&self, before: Millis) -> Result<u64>;
}

macro_rules! impl_rates {
    ($store:ty) => {
        #[async_trait]
        impl RateStore for $store {
            async fn take_request(&self, scopes: &[(String, i64, i64)], window: Millis) -> Result<Option<String>> {
                let mut tx = self.begin_write().await?;
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
    };
}

impl_rates!(SqliteStore);
impl_rates!(PgStore);
