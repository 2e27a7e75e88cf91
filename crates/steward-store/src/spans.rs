//! Trace spans: Steward's own and those external agents send over OTLP, kept by trace.

use crate::sql::prelude::*;

/// A span as kept: ids in lowercase hex, times in nanoseconds since the epoch, attributes,
/// events and the sender's resource as JSON text.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct SpanRecord {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub name: String,
    /// `internal`, `server`, `client`, `producer`, `consumer` (`unspecified` when not said).
    pub kind: String,
    /// The sender's `service.name`.
    pub service: Option<String>,
    /// Who sent it: `agent:NAME` for an API key, `steward` for Steward's own.
    pub sent_by: String,
    pub start_ns: i64,
    pub end_ns: i64,
    /// `unset`, `ok` or `error`.
    pub status: String,
    pub status_message: Option<String>,
    pub attributes: String,
    pub events: String,
    pub resource: String,
    pub received_at: Millis,
    /// The session (thread of runs and calls) it belongs to: its `session.id` attribute.
    pub session_id: Option<String>,
    /// The end user it was for: its `user.id` attribute.
    pub end_user: Option<String>,
}

/// A trace in a list: when it ran, how many spans, and whose it was.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct TraceSummary {
    pub trace_id: String,
    pub start_ns: i64,
    pub end_ns: i64,
    pub spans: i64,
    pub session_id: Option<String>,
    pub end_user: Option<String>,
    pub sent_by: String,
}

/// Which traces to list: all of a session, or of an end user; newest first.
#[derive(Clone, Debug, Default)]
pub struct TraceFilter {
    pub session_id: Option<String>,
    pub end_user: Option<String>,
    pub limit: i64,
}

const SPAN_COLUMNS: &str = "trace_id, span_id, parent_span_id, name, kind, service, sent_by, \
     start_ns, end_ns, status, status_message, attributes, events, resource, received_at, \
     session_id, end_user";

/// Most spans one statement inserts (17 values each, under PostgreSQL's 65,535 bound ones).
const ROWS_PER_INSERT: usize = 500;

#[async_trait]
pub trait SpanStore: Send + Sync {
    /// Keeps `spans` in one transaction; a span already kept (same trace and span id) is left
    /// as it was. How many were new.
    async fn put_spans(&self, spans: &[SpanRecord]) -> Result<u64>;
    /// Every span of a trace, by start time.
    async fn trace_spans(&self, trace_id: &str) -> Result<Vec<SpanRecord>>;
    /// Traces with a span of the session or end user asked (all without either), the latest
    /// to start first, at most `limit`.
    async fn list_traces(&self, filter: &TraceFilter) -> Result<Vec<TraceSummary>>;
    /// Deletes up to `limit` spans received before `before` (a transaction of bounded size);
    /// how many.
    async fn sweep_spans(&self, before: Millis, limit: i64) -> Result<u64>;
}

macro_rules! impl_spans {
    ($store:ty, $db:ty) => {
        #[async_trait]
        impl SpanStore for $store {
            async fn put_spans(&self, spans: &[SpanRecord]) -> Result<u64> {
                if spans.is_empty() {
                    return Ok(0);
                }
                let mut tx = self.begin_write().await?;
                let mut kept = 0;
                for chunk in spans.chunks(ROWS_PER_INSERT) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(format!(
                        "INSERT INTO spans ({SPAN_COLUMNS}) "
                    ));
                    qb.push_values(chunk, |mut row, s| {
                        row.push_bind(s.trace_id.clone())
                            .push_bind(s.span_id.clone())
                            .push_bind(s.parent_span_id.clone())
                            .push_bind(s.name.clone())
                            .push_bind(s.kind.clone())
                            .push_bind(s.service.clone())
                            .push_bind(s.sent_by.clone())
                            .push_bind(s.start_ns)
                            .push_bind(s.end_ns)
                            .push_bind(s.status.clone())
                            .push_bind(s.status_message.clone())
                            .push_bind(s.attributes.clone())
                            .push_bind(s.events.clone())
                            .push_bind(s.resource.clone())
                            .push_bind(s.received_at)
                            .push_bind(s.session_id.clone())
                            .push_bind(s.end_user.clone());
                    });
                    qb.push(" ON CONFLICT DO NOTHING");
                    kept += qb.build().execute(&mut *tx).await?.rows_affected();
                }
                tx.commit().await?;
                Ok(kept)
            }

            async fn trace_spans(&self, trace_id: &str) -> Result<Vec<SpanRecord>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {SPAN_COLUMNS} FROM spans WHERE trace_id = $1 ORDER BY start_ns, span_id"
                ))
                .bind(trace_id)
                .fetch_all(&self.read)
                .await?)
            }

            async fn list_traces(&self, f: &TraceFilter) -> Result<Vec<TraceSummary>> {
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "SELECT trace_id, MIN(start_ns) AS start_ns, MAX(end_ns) AS end_ns, \
                     COUNT(*) AS spans, MAX(session_id) AS session_id, MAX(end_user) AS end_user, \
                     MIN(sent_by) AS sent_by FROM spans WHERE trace_id IN (SELECT trace_id FROM spans WHERE 1 = 1",
                );
                if let Some(sid) = &f.session_id {
                    qb.push(" AND session_id = ").push_bind(sid.clone());
                }
                if let Some(u) = &f.end_user {
                    qb.push(" AND end_user = ").push_bind(u.clone());
                }
                qb.push(") GROUP BY trace_id ORDER BY MIN(start_ns) DESC, trace_id LIMIT ")
                    .push_bind(f.limit.clamp(1, 1_000));
                Ok(qb.build_query_as().fetch_all(&self.read).await?)
            }

            async fn sweep_spans(&self, before: Millis, limit: i64) -> Result<u64> {
                let mut tx = self.begin_write().await?;
                let gone = sqlx::query(
                    "DELETE FROM spans WHERE (trace_id, span_id) IN \
                     (SELECT trace_id, span_id FROM spans WHERE received_at < $1 LIMIT $2)",
                )
                .bind(before)
                .bind(limit)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                Ok(gone)
            }
        }
    };
}

impl_spans!(SqliteStore, sqlx::Sqlite);
impl_spans!(PgStore, sqlx::Postgres);
