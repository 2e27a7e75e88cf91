//! Versioned agent definitions.

use crate::sql::prelude::*;

/// Versioned agent definitions.
#[async_trait]
pub trait AgentStore: Send + Sync {
    /// Stores every spec in one transaction. An unchanged spec keeps its version; a changed one
    /// gets the next. Returns each agent's current record and whether it changed.
    async fn put_agents(&self, specs: &[NewAgent], now: Millis)
        -> Result<Vec<(AgentRecord, bool)>>;
    /// A given version, or the latest when `version` is `None`.
    async fn get_agent(
        &self,
        name: &AgentName,
        version: Option<i64>,
    ) -> Result<Option<AgentRecord>>;
    /// The latest version of every agent.
    async fn list_agents(&self) -> Result<Vec<AgentRecord>>;
}

macro_rules! impl_agents {
    ($store:ty) => {
        #[async_trait]
        impl AgentStore for $store {
            async fn put_agents(&self, specs: &[NewAgent], now: Millis) -> Result<Vec<(AgentRecord, bool)>> {
                let mut tx = self.begin_write().await?;
                let mut out = Vec::with_capacity(specs.len());
                for s in specs {
                    let latest: Option<AgentRecord> = sqlx::query_as(
                        "SELECT name, version, spec, spec_hash, created_at FROM agents \
                         WHERE name = $1 ORDER BY version DESC LIMIT 1",
                    )
                    .bind(s.name.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                    match latest {
                        Some(a) if a.spec_hash == s.spec_hash => out.push((a, false)),
                        prev => {
                            let version = prev.map_or(1, |a| a.version + 1);
                            let rec: AgentRecord = sqlx::query_as(
                                "INSERT INTO agents (name, version, spec, spec_hash, created_at) \
                                 VALUES ($1, $2, $3, $4, $5) \
                                 RETURNING name, version, spec, spec_hash, created_at",
                            )
                            .bind(s.name.as_str())
                            .bind(version)
                            .bind(&s.spec_json)
                            .bind(&s.spec_hash)
                            .bind(now)
                            .fetch_one(&mut *tx)
                            .await?;
                            out.push((rec, true));
                        }
                    }
                }
                tx.commit().await?;
                Ok(out)
            }

            async fn get_agent(&self, name: &AgentName, version: Option<i64>) -> Result<Option<AgentRecord>> {
                let q = match version {
                    Some(v) => sqlx::query_as(
                        "SELECT name, version, spec, spec_hash, created_at FROM agents \
                         WHERE name = $1 AND version = $2",
                    )
                    .bind(name.as_str())
                    .bind(v),
                    None => sqlx::query_as(
                        "SELECT name, version, spec, spec_hash, created_at FROM agents \
                         WHERE name = $1 ORDER BY version DESC LIMIT 1",
                    )
                    .bind(name.as_str()),
                };
                Ok(q.fetch_optional(&self.read).await?)
            }

            async fn list_agents(&self) -> Result<Vec<AgentRecord>> {
                Ok(sqlx::query_as(
                    "SELECT a.name, a.version, a.spec, a.spec_hash, a.created_at FROM agents a \
                     WHERE a.version = (SELECT MAX(b.version) FROM agents b WHERE b.name = a.name) \
                     ORDER BY a.name",
                )
                .fetch_all(&self.read)
                .await?)
            }
        }
    };
}

impl_agents!(SqliteStore);
impl_agents!(PgStore);
