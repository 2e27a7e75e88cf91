//! Each run's journal: intents and outcomes, appended atomically.

use crate::sql::prelude::*;

/// The append-only record of every step's intent and outcome.
#[async_trait]
pub trait JournalStore: Send + Sync {
    /// Appends journal entries and audit records (`(at, body)`) in one transaction, or none:
    /// none, with [`Error::Fenced`], when any of `claims` is no longer how its run is held.
    async fn append_journal(
        &self,
        entries: &[JournalEntry],
        audit: &[(Millis, String)],
        claims: &[Claim],
    ) -> Result<()> {
        self.append_settling(entries, audit, claims, &[]).await
    }
    /// As [`append_journal`](Self::append_journal), settling budget holds in the same
    /// transaction (`(hold id, spent)`): a model step's cost is booked exactly when its outcome
    /// is recorded, so a crash leaves both undone or both done.
    async fn append_settling(
        &self,
        entries: &[JournalEntry],
        audit: &[(Millis, String)],
        claims: &[Claim],
        settles: &[(String, i64)],
    ) -> Result<()>;
    /// A run's entries with `seq > after`, in order.
    async fn load_journal(
        &self,
        run: &RunId,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<JournalEntry>>;
}

macro_rules! impl_journal {
    ($store:ty, $db:ty) => {
        #[async_trait]
        impl JournalStore for $store {
            async fn append_settling(
                &self,
                entries: &[JournalEntry],
                audit: &[(Millis, String)],
                claims: &[Claim],
                settles: &[(String, i64)],
            ) -> Result<()> {
                if entries.is_empty() && audit.is_empty() && settles.is_empty() {
                    return Ok(());
                }
                fn insert<'a>(chunk: &'a [JournalEntry]) -> sqlx::QueryBuilder<'a, $db> {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO journal (run_id, seq, phase, kind, name, request_hash, idempotency_key, \
                         body, ok, tokens_in, tokens_out, at, duration_us) ",
                    );
                    qb.push_values(chunk, |mut b, e| {
                        b.push_bind(e.run_id.as_str())
                            .push_bind(e.seq)
                            .push_bind(e.phase)
                            .push_bind(e.kind.as_str())
                            .push_bind(e.name.as_str())
                            .push_bind(e.request_hash.as_str())
                            .push_bind(e.idempotency_key.as_str())
                            .push_bind(e.body.as_str())
                            .push_bind(e.ok)
                            .push_bind(e.tokens_in)
                            .push_bind(e.tokens_out)
                            .push_bind(e.at)
                            .push_bind(e.duration_us);
                    });
                    qb
                }
                // One statement is atomic on its own: no BEGIN/COMMIT round trips for the
                // common case of an unfenced batch that fits in one INSERT.
                if audit.is_empty() && claims.is_empty() && settles.is_empty() && entries.len() <= JOURNAL_CHUNK {
                    insert(entries).build().execute(&self.write).await?;
                    return Ok(());
                }
                let mut tx = self.write.begin().await?;
                for chunk in entries.chunks(JOURNAL_CHUNK) {
                    insert(chunk).build().execute(&mut *tx).await?;
                }
                // Before the audit head is taken: every transaction that locks runs rows takes
                // them before the head, so the two never wait on each other in a cycle.
                Self::check_claims_in(&mut tx, claims).await?;
                // Budget rows after runs rows and before the audit head, as everywhere.
                let now = entries.iter().map(|e| e.at).chain(audit.iter().map(|a| a.0)).max().unwrap_or_default();
                for (hold, spent) in settles {
                    Self::settle_in(&mut tx, hold, *spent, now).await?;
                }
                if !audit.is_empty() {
                    Self::append_audit_in(&mut tx, audit).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn load_journal(&self, run: &RunId, after: Option<i64>, limit: i64) -> Result<Vec<JournalEntry>> {
                Ok(sqlx::query_as(
                    "SELECT run_id, seq, phase, kind, name, request_hash, idempotency_key, body, ok, \
                       tokens_in, tokens_out, at, duration_us \
                     FROM journal WHERE run_id = $1 AND seq > $2 ORDER BY seq, phase LIMIT $3",
                )
                .bind(run.as_str())
                .bind(after.unwrap_or(-1))
                .bind(limit)
                .fetch_all(&self.read)
                .await?)
            }
        }
    };
}

impl_journal!(SqliteStore, sqlx::Sqlite);
impl_journal!(PgStore, sqlx::Postgres);
