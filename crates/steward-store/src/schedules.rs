//! Schedules: durable timers that enqueue a task or start a run when due.

use async_trait::async_trait;
use steward_types::Millis;

use crate::{PgStore, Result, SqliteStore};

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct ScheduleRecord {
    pub name: String,
    /// A cron pattern (UTC); none: the schedule fires once, at `next_at`.
    pub cron: Option<String>,
    /// What it fires: a task on `queue`, or a run of `agent`.
    pub queue: Option<String>,
    pub agent: Option<String>,
    pub payload: String,
    /// `skip`, `once` or `all`: times missed while no node ran.
    pub missed: String,
    /// When it is next due; none once a one-shot schedule has fired.
    pub next_at: Option<Millis>,
    pub last_fired_at: Option<Millis>,
    /// How many times it has fired.
    pub fired: i64,
    pub created_at: Millis,
}

const COLUMNS: &str =
    "name, cron, queue, agent, payload, missed, next_at, last_fired_at, fired, created_at";

#[async_trait]
pub trait ScheduleStore: Send + Sync {
    /// Creates or replaces schedule `s.name`.
    async fn put_schedule(&self, s: &ScheduleRecord, now: Millis) -> Result<()>;
    async fn get_schedule(&self, name: &str) -> Result<Option<ScheduleRecord>>;
    async fn list_schedules(&self) -> Result<Vec<ScheduleRecord>>;
    /// Whether there was one.
    async fn delete_schedule(&self, name: &str) -> Result<bool>;
    /// Schedules due by `now`.
    async fn due_schedules(&self, now: Millis, limit: i64) -> Result<Vec<ScheduleRecord>>;
    /// Moves schedule `name` on from `due` (its `next_at` when read) to `next`, counting
    /// `fired` firings; false when another node moved it first (or it was replaced).
    async fn advance_schedule(
        &self,
        name: &str,
        due: Millis,
        next: Option<Millis>,
        fired: i64,
        now: Millis,
    ) -> Result<bool>;
}

macro_rules! impl_schedules {
    ($store:ty) => {
        #[async_trait]
        impl ScheduleStore for $store {
            async fn put_schedule(&self, s: &ScheduleRecord, now: Millis) -> Result<()> {
                sqlx::query(
                    "INSERT INTO schedules (name, cron, queue, agent, payload, missed, next_at, fired, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $8) \
                     ON CONFLICT (name) DO UPDATE SET cron = $2, queue = $3, agent = $4, payload = $5, \
                       missed = $6, next_at = $7, updated_at = $8",
                )
                .bind(&s.name)
                .bind(&s.cron)
                .bind(&s.queue)
                .bind(&s.agent)
                .bind(&s.payload)
                .bind(&s.missed)
                .bind(s.next_at)
                .bind(now)
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn get_schedule(&self, name: &str) -> Result<Option<ScheduleRecord>> {
                Ok(sqlx::query_as(&format!("SELECT {COLUMNS} FROM schedules WHERE name = $1"))
                    .bind(name)
                    .fetch_optional(&self.read)
                    .await?)
            }

            async fn list_schedules(&self) -> Result<Vec<ScheduleRecord>> {
                Ok(sqlx::query_as(&format!("SELECT {COLUMNS} FROM schedules ORDER BY name"))
                    .fetch_all(&self.read)
                    .await?)
            }

            async fn delete_schedule(&self, name: &str) -> Result<bool> {
                Ok(sqlx::query("DELETE FROM schedules WHERE name = $1")
                    .bind(name)
                    .execute(&self.write)
                    .await?
                    .rows_affected()
                    == 1)
            }

            async fn due_schedules(&self, now: Millis, limit: i64) -> Result<Vec<ScheduleRecord>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {COLUMNS} FROM schedules WHERE next_at IS NOT NULL AND next_at <= $1 \
                     ORDER BY next_at LIMIT $2"
                ))
                .bind(now)
                .bind(limit)
                .fetch_all(&self.read)
                .await?)
            }

            async fn advance_schedule(
                &self,
                name: &str,
                due: Millis,
                next: Option<Millis>,
                fired: i64,
                now: Millis,
            ) -> Result<bool> {
                Ok(sqlx::query(
                    "UPDATE schedules SET next_at = $1, fired = fired + $2, \
                       last_fired_at = CASE WHEN $2 > 0 THEN $3 ELSE last_fired_at END, updated_at = $3 \
                     WHERE name = $4 AND next_at = $5",
                )
                .bind(next)
                .bind(fired)
                .bind(now)
                .bind(name)
                .bind(due)
                .execute(&self.write)
                .await?
                .rows_affected()
                    == 1)
            }
        }
    };
}

impl_schedules!(SqliteStore);
impl_schedules!(PgStore);
