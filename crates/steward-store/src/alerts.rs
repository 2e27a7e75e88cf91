//! Alert rules, their state, the measures they are checked against, and the webhook
//! deliveries they queue.

use async_trait::async_trait;
use steward_types::Millis;

use crate::{IncidentRecord, PgStore, Result, SqliteStore};

#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct AlertRecord {
    pub name: String,
    /// The rule, as JSON (the engine's `AlertSpec`).
    pub spec: String,
    /// `ok` or `firing`.
    pub state: String,
    /// The measure when last checked.
    pub value: Option<f64>,
    /// The incident it opened when it last fired.
    pub incident_id: Option<String>,
    pub checked_at: Millis,
    pub changed_at: Millis,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct DeliveryRecord {
    pub id: String,
    pub alert: String,
    /// `alert.firing` or `alert.resolved`.
    pub event: String,
    pub body: String,
    /// `pending`, `delivered` or `failed` (given up on).
    pub state: String,
    pub attempts: i64,
    pub next_at: Millis,
    pub last_error: Option<String>,
    pub created_at: Millis,
    pub delivered_at: Option<Millis>,
}

/// A change of an alert's state, with what goes in its commit.
pub struct AlertChange<'a> {
    pub name: &'a str,
    /// The rule's `updated_at` the check was made against: a rule changed since changes nothing.
    pub rule_at: Millis,
    pub value: f64,
    pub now: Millis,
    /// Firing: the incident to open. Calming: the resolution of the incident it opened.
    pub incident: Option<&'a IncidentRecord>,
    pub resolution: &'a str,
    /// The webhook call to queue, if the rule has a webhook.
    pub delivery: Option<&'a DeliveryRecord>,
}

const ALERT: &str =
    "name, spec, state, value, incident_id, checked_at, changed_at, created_at, updated_at";
const DELIVERY: &str =
    "id, alert, event, body, state, attempts, next_at, last_error, created_at, delivered_at";

#[async_trait]
pub trait AlertStore: Send + Sync {
    /// Creates rule `name` (state `ok`) or replaces its spec, keeping its state.
    async fn put_alert(&self, name: &str, spec: &str, now: Millis) -> Result<AlertRecord>;
    async fn list_alerts(&self) -> Result<Vec<AlertRecord>>;
    /// Removes rule `name` and its deliveries; whether it was there.
    async fn delete_alert(&self, name: &str) -> Result<bool>;
    /// `ok` → `firing`: opens `change.incident` and queues `change.delivery` in the same
    /// commit. False when another node made the change first, or the rule changed.
    async fn fire_alert(&self, change: &AlertChange<'_>) -> Result<bool>;
    /// `firing` → `ok`: resolves the incident it opened and queues `change.delivery`.
    async fn calm_alert(&self, change: &AlertChange<'_>) -> Result<bool>;
    /// Records the measure of a check that changed nothing.
    async fn note_alert(&self, name: &str, value: f64, now: Millis) -> Result<()>;
    /// Runs created since `since` (of `agent`, if given) that ended: how many, how many
    /// failed, and how many of those were stopped as looping.
    async fn runs_ended_since(&self, since: Millis, agent: Option<&str>)
        -> Result<(i64, i64, i64)>;
    /// How long the gateway's latest calls since `since` took, in microseconds (at most `limit`).
    async fn gateway_durations_since(
        &self,
        since: Millis,
        agent: Option<&str>,
        limit: i64,
    ) -> Result<Vec<i64>>;
    /// Takes the next delivery due at `now`: its attempts counted, and not due again for
    /// `lease_ms` (another node's claim of it fails meanwhile).
    async fn claim_delivery(&self, now: Millis, lease_ms: i64) -> Result<Option<DeliveryRecord>>;
    /// Records how an attempt ended: delivered, due again at `retry_at`, or given up on.
    async fn settle_delivery(
        &self,
        id: &str,
        outcome: DeliveryOutcome<'_>,
        now: Millis,
    ) -> Result<()>;
    /// Rule `alert`'s latest deliveries, newest first.
    async fn list_deliveries(&self, alert: &str, limit: i64) -> Result<Vec<DeliveryRecord>>;
}

pub enum DeliveryOutcome<'a> {
    Delivered,
    Retry { at: Millis, error: &'a str },
    GiveUp { error: &'a str },
}

fn insert_delivery<DB: sqlx::Database>(
    d: &DeliveryRecord,
) -> sqlx::query::Query<'_, DB, <DB as sqlx::Database>::Arguments<'_>>
where
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    sqlx::query(
        "INSERT INTO alert_deliveries (id, alert, event, body, state, attempts, next_at, created_at) \
         VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5)",
    )
    .bind(d.id.clone())
    .bind(d.alert.clone())
    .bind(d.event.clone())
    .bind(d.body.clone())
    .bind(d.created_at)
}

macro_rules! impl_alerts {
    ($store:ty) => {
        #[async_trait]
        impl AlertStore for $store {
            async fn put_alert(&self, name: &str, spec: &str, now: Millis) -> Result<AlertRecord> {
                Ok(sqlx::query_as(&format!(
                    "INSERT INTO alerts (name, spec, state, checked_at, changed_at, created_at, updated_at) \
                     VALUES ($1, $2, 'ok', $3, $3, $3, $3) \
                     ON CONFLICT (name) DO UPDATE SET spec = $2, \
                       updated_at = CASE WHEN alerts.updated_at >= $3 THEN alerts.updated_at + 1 ELSE $3 END \
                     RETURNING {ALERT}"
                ))
                .bind(name)
                .bind(spec)
                .bind(now)
                .fetch_one(&self.write)
                .await?)
            }

            async fn list_alerts(&self) -> Result<Vec<AlertRecord>> {
                Ok(sqlx::query_as(&format!("SELECT {ALERT} FROM alerts ORDER BY name"))
                    .fetch_all(&self.read)
                    .await?)
            }

            async fn delete_alert(&self, name: &str) -> Result<bool> {
                let mut tx = self.begin_write().await?;
                let n = sqlx::query("DELETE FROM alerts WHERE name = $1")
                    .bind(name)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                sqlx::query("DELETE FROM alert_deliveries WHERE alert = $1")
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(n == 1)
            }

            async fn fire_alert(&self, c: &AlertChange<'_>) -> Result<bool> {
                let mut tx = self.begin_write().await?;
                let n = sqlx::query(
                    "UPDATE alerts SET state = 'firing', value = $1, incident_id = $2, checked_at = $3, changed_at = $3 \
                     WHERE name = $4 AND state = 'ok' AND updated_at = $5",
                )
                .bind(c.value)
                .bind(c.incident.map(|i| i.id.clone()))
                .bind(c.now)
                .bind(c.name)
                .bind(c.rule_at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if n != 1 {
                    return Ok(false);
                }
                if let Some(i) = c.incident {
                    sqlx::query(
                        "INSERT INTO incidents (id, supervisor, reason, state, created_at) VALUES ($1, $2, $3, 'open', $4) \
                         ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(&i.id)
                    .bind(&i.supervisor)
                    .bind(&i.reason)
                    .bind(i.created_at)
                    .execute(&mut *tx)
                    .await?;
                }
                if let Some(d) = c.delivery {
                    insert_delivery(d).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn calm_alert(&self, c: &AlertChange<'_>) -> Result<bool> {
                let mut tx = self.begin_write().await?;
                let incident: Option<(Option<String>,)> = sqlx::query_as(
                    "UPDATE alerts SET state = 'ok', value = $1, checked_at = $2, changed_at = $2 \
                     WHERE name = $3 AND state = 'firing' AND updated_at = $4 RETURNING incident_id",
                )
                .bind(c.value)
                .bind(c.now)
                .bind(c.name)
                .bind(c.rule_at)
                .fetch_optional(&mut *tx)
                .await?;
                let Some((incident,)) = incident else {
                    return Ok(false);
                };
                if let Some(id) = incident {
                    sqlx::query(
                        "UPDATE incidents SET state = 'resolved', resolved_at = $1, resolution = $2 \
                         WHERE id = $3 AND state = 'open'",
                    )
                    .bind(c.now)
                    .bind(c.resolution)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                }
                if let Some(d) = c.delivery {
                    insert_delivery(d).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn note_alert(&self, name: &str, value: f64, now: Millis) -> Result<()> {
                sqlx::query("UPDATE alerts SET value = $1, checked_at = $2 WHERE name = $3")
                    .bind(value)
                    .bind(now)
                    .bind(name)
                    .execute(&self.write)
                    .await?;
                Ok(())
            }

            async fn runs_ended_since(&self, since: Millis, agent: Option<&str>) -> Result<(i64, i64, i64)> {
                let (ended, failed, looped): (i64, i64, i64) = sqlx::query_as(
                    "SELECT COUNT(*), \
                       COALESCE(SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END), 0), \
                       COALESCE(SUM(CASE WHEN error_code = 'loop_detected' THEN 1 ELSE 0 END), 0) \
                     FROM runs WHERE created_at >= $1 AND state IN ('succeeded', 'failed', 'cancelled') \
                       AND ($2 IS NULL OR agent = $2)",
                )
                .bind(since)
                .bind(agent)
                .fetch_one(&self.read)
                .await?;
                Ok((ended, failed, looped))
            }

            async fn gateway_durations_since(&self, since: Millis, agent: Option<&str>, limit: i64) -> Result<Vec<i64>> {
                let rows: Vec<(i64,)> = sqlx::query_as(
                    "SELECT duration_us FROM gateway_calls WHERE started_at >= $1 AND status <> 'started' \
                       AND ($2 IS NULL OR agent = $2) ORDER BY started_at DESC LIMIT $3",
                )
                .bind(since)
                .bind(agent)
                .bind(limit)
                .fetch_all(&self.read)
                .await?;
                Ok(rows.into_iter().map(|(d,)| d).collect())
            }

            async fn claim_delivery(&self, now: Millis, lease_ms: i64) -> Result<Option<DeliveryRecord>> {
                let due: Option<(String, Millis)> = sqlx::query_as(
                    "SELECT id, next_at FROM alert_deliveries WHERE state = 'pending' AND next_at <= $1 \
                     ORDER BY next_at LIMIT 1",
                )
                .bind(now)
                .fetch_optional(&self.read)
                .await?;
                let Some((id, next_at)) = due else {
                    return Ok(None);
                };
                Ok(sqlx::query_as(&format!(
                    "UPDATE alert_deliveries SET attempts = attempts + 1, next_at = $1 \
                     WHERE id = $2 AND state = 'pending' AND next_at = $3 RETURNING {DELIVERY}"
                ))
                .bind(now + lease_ms)
                .bind(&id)
                .bind(next_at)
                .fetch_optional(&self.write)
                .await?)
            }

            async fn settle_delivery(&self, id: &str, outcome: DeliveryOutcome<'_>, now: Millis) -> Result<()> {
                let q = match outcome {
                    DeliveryOutcome::Delivered => sqlx::query(
                        "UPDATE alert_deliveries SET state = 'delivered', delivered_at = $1, last_error = NULL WHERE id = $2",
                    )
                    .bind(now)
                    .bind(id),
                    DeliveryOutcome::Retry { at, error } => sqlx::query(
                        "UPDATE alert_deliveries SET next_at = $1, last_error = $2 WHERE id = $3",
                    )
                    .bind(at)
                    .bind(error.to_string())
                    .bind(id),
                    DeliveryOutcome::GiveUp { error } => sqlx::query(
                        "UPDATE alert_deliveries SET state = 'failed', last_error = $1 WHERE id = $2",
                    )
                    .bind(error.to_string())
                    .bind(id),
                };
                q.execute(&self.write).await?;
                Ok(())
            }

            async fn list_deliveries(&self, alert: &str, limit: i64) -> Result<Vec<DeliveryRecord>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {DELIVERY} FROM alert_deliveries WHERE alert = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
                ))
                .bind(alert)
                .bind(limit)
                .fetch_all(&self.read)
                .await?)
            }
        }
    };
}

impl_alerts!(SqliteStore);
impl_alerts!(PgStore);
