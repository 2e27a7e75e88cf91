//! Open circuits, shared by every node.

use crate::sql::prelude::*;

/// Circuit breakers shared by the nodes on one database.
#[async_trait]
pub trait BreakerStore: Send + Sync {
    /// Records that `node` opened `deployment`'s circuit until `open_until`; a later
    /// `open_until` already recorded is kept.
    async fn share_breaker(
        &self,
        deployment: &str,
        open_until: Millis,
        node: &NodeId,
        now: Millis,
    ) -> Result<()>;
    /// Circuits still open at `now`, whoever opened them.
    async fn open_breakers(&self, now: Millis) -> Result<Vec<BreakerRecord>>;
}

macro_rules! impl_breakers {
    ($store:ty) => {
        #[async_trait]
        impl BreakerStore for $store {
            async fn share_breaker(&self, deployment: &str, open_until: Millis, node: &NodeId, now: Millis) -> Result<()> {
                sqlx::query(
                    "INSERT INTO breakers (deployment, open_until, opened_by, updated_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (deployment) DO UPDATE SET open_until = excluded.open_until, \
                       opened_by = excluded.opened_by, updated_at = excluded.updated_at \
                     WHERE breakers.open_until < excluded.open_until",
                )
                .bind(deployment)
                .bind(open_until)
                .bind(&node.0)
                .bind(now)
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn open_breakers(&self, now: Millis) -> Result<Vec<BreakerRecord>> {
                Ok(sqlx::query_as(
                    "SELECT deployment, open_until, opened_by FROM breakers WHERE open_until > $1 ORDER BY deployment",
                )
                .bind(now)
                .fetch_all(&self.read)
                .await?)
            }
        }
    };
}

impl_breakers!(SqliteStore);
impl_breakers!(PgStore);
