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
    /// Whether [`append_settling`](Self::append_settling) does its work — fsync included — on
    /// the thread that polls it rather than awaiting another: its caller should then give it
    /// a thread of its own instead of a runtime worker.
    fn writes_on_calling_thread(&self) -> bool {
        false
    }
    /// A run's entries with `seq > after`, in order.
    async fn load_journal(
        &self,
        run: &RunId,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<JournalEntry>>;
}

/// The time a journal batch's budget settlements are booked at: its latest entry or record.
pub(crate) fn batch_time(entries: &[JournalEntry], audit: &[(Millis, String)]) -> Millis {
    entries
        .iter()
        .map(|e| e.at)
        .chain(audit.iter().map(|a| a.0))
        .max()
        .unwrap_or_default()
}

#[async_trait]
impl JournalStore for SqliteStore {
    fn writes_on_calling_thread(&self) -> bool {
        true
    }

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
        // The store's one write connection, held for the length of the transaction: the
        // writer below never contends with the store's other writes for SQLite's write lock.
        let _writing = self.write.acquire().await?;
        // On the calling thread: the journal's writer has a thread of its own for this (see
        // `writes_on_calling_thread`), and a hand-off to another thread per commit is what
        // this path exists to avoid.
        self.direct.append_settling(entries, audit, claims, settles)
    }

    async fn load_journal(
        &self,
        run: &RunId,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<JournalEntry>> {
        load_journal!(self, run, after, limit)
    }
}

#[async_trait]
impl JournalStore for PgStore {
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
        fn insert<'a>(
            prefix: &str,
            chunk: &'a [JournalEntry],
        ) -> sqlx::QueryBuilder<'a, sqlx::Postgres> {
            let mut qb = sqlx::QueryBuilder::<sqlx::Postgres>::new(format!(
                "{prefix}INSERT INTO journal (run_id, seq, phase, kind, name, request_hash, idempotency_key, \
                 body, ok, tokens_in, tokens_out, at, duration_us) ",
            ));
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
        // One statement is atomic on its own: no BEGIN/COMMIT round trips for the common case
        // of an unfenced batch that fits in one INSERT.
        if audit.is_empty()
            && claims.is_empty()
            && settles.is_empty()
            && entries.len() <= JOURNAL_CHUNK
        {
            insert("", entries).build().execute(&self.write).await?;
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        let chunks: Vec<&[JournalEntry]> = entries.chunks(JOURNAL_CHUNK).collect();
        let (last, earlier) = match chunks.split_last() {
            Some((last, earlier)) => (Some(*last), earlier),
            None => (None, &[][..]),
        };
        for chunk in earlier {
            insert("", chunk).build().execute(&mut *tx).await?;
        }
        // Before the audit head is taken: every transaction that locks runs rows takes them
        // before the head, so the two never wait on each other in a cycle. The last entries
        // ride in the same statement as the claims' check: one round trip fewer.
        if claims.is_empty() {
            if let Some(last) = last {
                insert("", last).build().execute(&mut *tx).await?;
            }
        } else {
            let with = last.map(|last| insert("WITH entries AS (", last));
            Self::check_claims_in(&mut tx, claims, with).await?;
        }
        // Budget rows after runs rows and before the audit head, as everywhere.
        let now = batch_time(entries, audit);
        for (hold, spent) in settles {
            Self::settle_in(&mut tx, hold, *spent, now).await?;
        }
        if !audit.is_empty() {
            Self::append_audit_in(&mut tx, audit).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn load_journal(
        &self,
        run: &RunId,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<JournalEntry>> {
        load_journal!(self, run, after, limit)
    }
}

/// A run's entries after `after`, the same SQL on both backends.
macro_rules! load_journal {
    ($store:expr, $run:expr, $after:expr, $limit:expr) => {
        Ok(sqlx::query_as(
            "SELECT run_id, seq, phase, kind, name, request_hash, idempotency_key, body, ok, \
               tokens_in, tokens_out, at, duration_us \
             FROM journal WHERE run_id = $1 AND seq > $2 ORDER BY seq, phase LIMIT $3",
        )
        .bind($run.as_str())
        .bind($after.unwrap_or(-1))
        .bind($limit)
        .fetch_all(&$store.read)
        .await?)
    };
}
use load_journal;

impl PgStore {
    /// Fails with [`Error::Fenced`] unless every run of `claims` is still held under it. The
    /// rows are locked (shared, in id order) until `tx` ends, so a claim cannot take a run
    /// between this check and the commit: whoever claims next sees what `tx` wrote.
    /// With `insert` (`WITH entries AS (INSERT INTO journal …`, left open), the entries are
    /// written by the same statement as the check.
    async fn check_claims_in(
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        claims: &[Claim],
        insert: Option<sqlx::QueryBuilder<'_, sqlx::Postgres>>,
    ) -> Result<()> {
        if claims.is_empty() {
            return Ok(());
        }
        let mut qb = match insert {
            Some(mut with) => {
                with.push(") SELECT id, lease_owner, lease_epoch FROM runs WHERE id IN (");
                with
            }
            None => sqlx::QueryBuilder::<sqlx::Postgres>::new(
                "SELECT id, lease_owner, lease_epoch FROM runs WHERE id IN (",
            ),
        };
        let mut sep = qb.separated(", ");
        for c in claims {
            sep.push_bind(c.run.as_str().to_string());
        }
        qb.push(") ORDER BY id FOR SHARE");
        let rows: Vec<(String, Option<String>, i64)> =
            qb.build_query_as().fetch_all(&mut **tx).await?;
        for c in claims {
            let held = rows.iter().any(|(id, owner, epoch)| {
                id == c.run.as_str()
                    && owner.as_deref() == Some(c.node.0.as_str())
                    && *epoch == c.epoch
            });
            if !held {
                return Err(Error::Fenced(c.run.to_string()));
            }
        }
        Ok(())
    }
}
