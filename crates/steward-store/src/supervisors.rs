//! Supervisors and incidents: each supervisor's spec and state kept as JSON, changed only by
//! compare-and-set on its version.

use async_trait::async_trait;
use steward_types::Millis;

use crate::{PgStore, Result, SqliteStore};

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct SupervisorRecord {
    pub name: String,
    pub spec: String,
    pub state: String,
    /// `running`, `completed` or `failed` (it gave up).
    pub status: String,
    pub version: i64,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct IncidentRecord {
    pub id: String,
    pub supervisor: String,
    pub reason: String,
    /// `open` or `resolved`.
    pub state: String,
    pub created_at: Millis,
    pub resolved_at: Option<Millis>,
    pub resolution: Option<String>,
}

const SUP: &str = "name, spec, state, status, version, created_at, updated_at";
const INC: &str = "id, supervisor, reason, state, created_at, resolved_at, resolution";

#[async_trait]
pub trait SupervisorStore: Send + Sync {
    /// Creates supervisor `name`, or replaces its spec and state (a new version).
    async fn put_supervisor(
        &self,
        name: &str,
        spec: &str,
        state: &str,
        status: &str,
        now: Millis,
    ) -> Result<SupervisorRecord>;
    async fn get_supervisor(&self, name: &str) -> Result<Option<SupervisorRecord>>;
    async fn list_supervisors(&self) -> Result<Vec<SupervisorRecord>>;
    /// Writes a new state if the stored version is still `version`; false when another node
    /// changed it first. An incident, when given, is opened in the same transaction.
    async fn update_supervisor(
        &self,
        name: &str,
        version: i64,
        state: &str,
        status: &str,
        incident: Option<&IncidentRecord>,
        now: Millis,
    ) -> Result<bool>;
    async fn list_incidents(&self, state: Option<&str>) -> Result<Vec<IncidentRecord>>;
    /// Opens an incident that no supervisor state goes with (a merge conflict for a human).
    async fn open_incident(&self, i: &IncidentRecord) -> Result<()>;
    /// Marks an open incident resolved; `None` when there is no open incident `id`.
    async fn resolve_incident(
        &self,
        id: &str,
        resolution: &str,
        now: Millis,
    ) -> Result<Option<IncidentRecord>>;
    /// Records an evaluator's verdict on a run's result: `accepted` or `rejected`.
    async fn set_run_verdict(&self, run: &str, verdict: &str) -> Result<()>;
}

/// An open incident; one with its id already there stays as it is (a replay opens it once).
fn insert_incident<DB: sqlx::Database>(
    i: &IncidentRecord,
) -> sqlx::query::Query<'_, DB, <DB as sqlx::Database>::Arguments<'_>>
where
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    sqlx::query(
        "INSERT INTO incidents (id, supervisor, reason, state, created_at) VALUES ($1, $2, $3, 'open', $4) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(i.id.clone())
    .bind(i.supervisor.clone())
    .bind(i.reason.clone())
    .bind(i.created_at)
}

macro_rules! impl_supervisors {
    ($store:ty) => {
        #[async_trait]
        impl SupervisorStore for $store {
            async fn put_supervisor(&self, name: &str, spec: &str, state: &str, status: &str, now: Millis) -> Result<SupervisorRecord> {
                Ok(sqlx::query_as(&format!(
                    "INSERT INTO supervisors (name, spec, state, status, version, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, 1, $5, $5) \
                     ON CONFLICT (name) DO UPDATE SET spec = $2, state = $3, status = $4, \
                       version = supervisors.version + 1, updated_at = $5 \
                     RETURNING {SUP}"
                ))
                .bind(name)
                .bind(spec)
                .bind(state)
                .bind(status)
                .bind(now)
                .fetch_one(&self.write)
                .await?)
            }

            async fn get_supervisor(&self, name: &str) -> Result<Option<SupervisorRecord>> {
                Ok(sqlx::query_as(&format!("SELECT {SUP} FROM supervisors WHERE name = $1"))
                    .bind(name)
                    .fetch_optional(&self.read)
                    .await?)
            }

            async fn list_supervisors(&self) -> Result<Vec<SupervisorRecord>> {
                Ok(sqlx::query_as(&format!("SELECT {SUP} FROM supervisors ORDER BY name"))
                    .fetch_all(&self.read)
                    .await?)
            }

            async fn update_supervisor(
                &self,
                name: &str,
                version: i64,
                state: &str,
                status: &str,
                incident: Option<&IncidentRecord>,
                now: Millis,
            ) -> Result<bool> {
                let mut tx = self.begin_write().await?;
                let n = sqlx::query(
                    "UPDATE supervisors SET state = $1, status = $2, version = version + 1, updated_at = $3 \
                     WHERE name = $4 AND version = $5",
                )
                .bind(state)
                .bind(status)
                .bind(now)
                .bind(name)
                .bind(version)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if n != 1 {
                    return Ok(false);
                }
                if let Some(i) = incident {
                    insert_incident(i).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn list_incidents(&self, state: Option<&str>) -> Result<Vec<IncidentRecord>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {INC} FROM incidents WHERE $1 IS NULL OR state = $1 ORDER BY created_at DESC LIMIT 500"
                ))
                .bind(state)
                .fetch_all(&self.read)
                .await?)
            }

            async fn open_incident(&self, i: &IncidentRecord) -> Result<()> {
                insert_incident(i).execute(&self.write).await?;
                Ok(())
            }

            async fn resolve_incident(&self, id: &str, resolution: &str, now: Millis) -> Result<Option<IncidentRecord>> {
                Ok(sqlx::query_as(&format!(
                    "UPDATE incidents SET state = 'resolved', resolved_at = $1, resolution = $2 \
                     WHERE id = $3 AND state = 'open' RETURNING {INC}"
                ))
                .bind(now)
                .bind(resolution)
                .bind(id)
                .fetch_optional(&self.write)
                .await?)
            }

            async fn set_run_verdict(&self, run: &str, verdict: &str) -> Result<()> {
                sqlx::query("UPDATE runs SET verdict = $1 WHERE id = $2")
                    .bind(verdict)
                    .bind(run)
                    .execute(&self.write)
                    .await?;
                Ok(())
            }
        }
    };
}

impl_supervisors!(SqliteStore);
impl_supervisors!(PgStore);
