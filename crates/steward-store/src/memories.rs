//! Agent memory: versions of facts, bi-temporal, never overwritten; erased on request with
//! every version and a tombstone of ids only. The search index is derived from these rows by
//! `steward-memory` and follows them through `updated_at` and the tombstones.

use crate::sql::prelude::*;

/// One version of a memory, as stored.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct MemoryRecord {
    pub id: String,
    /// The first version's id: every version of one fact shares it.
    pub lineage: String,
    pub scope: String,
    pub text: String,
    pub subject: Option<String>,
    /// JSON array of strings.
    pub tags: String,
    /// JSON object, as the writer gave it.
    pub metadata: String,
    /// JSON provenance, when there is any.
    pub source: Option<String>,
    pub written_by: String,
    pub valid_from: Millis,
    pub valid_to: Option<Millis>,
    pub created_at: Millis,
    pub expired_at: Option<Millis>,
    pub superseded_by: Option<String>,
    pub expires_at: Option<Millis>,
    pub updated_at: Millis,
}

/// What to erase: every version of each fact selected (a time to live, version by version).
#[derive(Clone, Debug)]
pub enum MemoryErase {
    /// The facts these versions belong to, in `scope`.
    Ids { scope: String, ids: Vec<String> },
    /// Everything in a scope.
    Scope(String),
    /// Every fact about a subject, in a scope.
    Subject { scope: String, subject: String },
    /// Versions whose time to live ran out by `now` (any scope).
    Expired,
}

/// A version erased: its id, its fact and its scope.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct ErasedMemory {
    pub id: String,
    pub lineage: String,
    pub scope: String,
}

/// A version's embedding: which model made it, the vector as stored (base64 of little-endian
/// f32s), and when it was stored.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct MemoryVector {
    pub id: String,
    pub model: String,
    pub vector: String,
    pub updated_at: Millis,
}

const COLUMNS: &str = "id, lineage, scope, text, subject, tags, metadata, source, written_by, \
     valid_from, valid_to, created_at, expired_at, superseded_by, expires_at, updated_at";

/// Memories, their history and their erasure.
#[async_trait]
pub trait MemoryStore: Send + Sync {
    /// Records a new version, with `audit` appended to the audit log in the same commit. With
    /// `supersedes`, the current version of that fact in the same scope is closed in the same
    /// commit — its `valid_to` set to the new version's `valid_from` unless already earlier,
    /// `expired_at` and `superseded_by` set — and returned; `Conflict` if there is no such
    /// current version (already superseded, erased, or another scope's), and nothing is written.
    async fn add_memory(
        &self,
        m: &MemoryRecord,
        supersedes: Option<&str>,
        audit: Option<(Millis, String)>,
    ) -> Result<Option<MemoryRecord>>;
    async fn memory(&self, id: &str) -> Result<Option<MemoryRecord>>;
    /// Every version of a fact, oldest first.
    async fn memory_versions(&self, lineage: &str) -> Result<Vec<MemoryRecord>>;
    /// Up to `limit` versions changed at `since` or later, in (`updated_at`, `id`) order,
    /// starting after (`since`, `after_id`): what an index follows, or rebuilds from with 0.
    async fn memories_changed(
        &self,
        since: Millis,
        after_id: &str,
        limit: i64,
    ) -> Result<Vec<MemoryRecord>>;
    /// Up to `limit` versions of `scope` after (`created_at`, `id`) in that order: what an
    /// export reads.
    async fn scope_memories(
        &self,
        scope: &str,
        after: (Millis, &str),
        limit: i64,
    ) -> Result<Vec<MemoryRecord>>;
    /// Writes versions as they are (ids, facts, times, links kept), all in one commit with
    /// `audit`: a version whose id is stored already must be identical to it (counted as
    /// unchanged) or nothing is written (`Conflict`). Returns (written, unchanged).
    async fn import_memories(
        &self,
        versions: &[MemoryRecord],
        audit: Option<(Millis, String)>,
    ) -> Result<(u64, u64)>;
    /// Stores embeddings of versions that still exist (a version erased meanwhile gets
    /// none), replacing any earlier one; how many were stored.
    async fn put_memory_vectors(&self, vectors: &[MemoryVector]) -> Result<u64>;
    /// Up to `limit` embeddings stored at `since` or later, after (`since`, `after_id`).
    async fn memory_vectors_changed(
        &self,
        since: Millis,
        after_id: &str,
        limit: i64,
    ) -> Result<Vec<MemoryVector>>;
    /// Up to `limit` versions recorded after (`created_at`, `id`) `after` with no embedding by
    /// `model` yet, oldest first: what is left to embed, paged so a pass reads each row once.
    async fn memories_to_embed(
        &self,
        model: &str,
        after: (Millis, &str),
        limit: i64,
    ) -> Result<Vec<MemoryRecord>>;
    /// Ids erased at `since` or later.
    async fn memory_erasures(&self, since: Millis) -> Result<Vec<(String, Millis)>>;
    /// Erases what `what` selects — every version of each fact — leaving only the ids in
    /// `memory_erasures`, with `audit` appended in the same commit (the audit record names
    /// ids, never content), their embeddings with them. On SQLite the freed space is zeroed (`secure_delete`) and the
    /// write-ahead log truncated afterwards, so the text is left nowhere in the files.
    async fn erase_memories(
        &self,
        what: &MemoryErase,
        now: Millis,
        audit: Option<(Millis, String)>,
    ) -> Result<Vec<ErasedMemory>>;
}

/// The WHERE clause selecting what `what` erases, with its binds after `$1` (`now`).
fn erase_filter(what: &MemoryErase) -> (String, Vec<String>) {
    match what {
        MemoryErase::Ids { scope, ids } => {
            let marks: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 3)).collect();
            (
                format!(
                    "scope = $2 AND lineage IN (SELECT lineage FROM memories WHERE scope = $2 AND id IN ({}))",
                    marks.join(", ")
                ),
                std::iter::once(scope.clone()).chain(ids.iter().cloned()).collect(),
            )
        }
        MemoryErase::Scope(scope) => ("scope = $2".into(), vec![scope.clone()]),
        MemoryErase::Subject { scope, subject } => (
            "scope = $2 AND subject = $3".into(),
            vec![scope.clone(), subject.clone()],
        ),
        MemoryErase::Expired => ("expires_at IS NOT NULL AND expires_at <= $1".into(), vec![]),
    }
}

macro_rules! impl_memories {
    ($store:ty) => {
        #[async_trait]
        impl MemoryStore for $store {
            async fn add_memory(
                &self,
                m: &MemoryRecord,
                supersedes: Option<&str>,
                audit: Option<(Millis, String)>,
            ) -> Result<Option<MemoryRecord>> {
                let mut tx = self.begin_write().await?;
                let closed = match supersedes {
                    None => None,
                    Some(old) => {
                        let closed: Option<MemoryRecord> = sqlx::query_as(&format!(
                            "UPDATE memories SET expired_at = $1, superseded_by = $2, updated_at = $1, \
                             valid_to = CASE WHEN valid_to IS NOT NULL AND valid_to < $3 THEN valid_to ELSE $3 END \
                             WHERE id = $4 AND scope = $5 AND expired_at IS NULL RETURNING {COLUMNS}"
                        ))
                        .bind(m.created_at)
                        .bind(&m.id)
                        .bind(m.valid_from)
                        .bind(old)
                        .bind(&m.scope)
                        .fetch_optional(&mut *tx)
                        .await?;
                        match closed {
                            Some(c) if c.lineage == m.lineage => Some(c),
                            Some(c) => {
                                return Err(Error::Corrupt(format!(
                                    "memory {} is of fact {}, not {}",
                                    c.id, c.lineage, m.lineage
                                )))
                            }
                            None => {
                                return Err(Error::Conflict(format!(
                                    "memory {old} is not a current memory of scope {}: it was superseded or erased, or is another scope's",
                                    m.scope
                                )))
                            }
                        }
                    }
                };
                sqlx::query(&format!(
                    "INSERT INTO memories ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
                ))
                .bind(&m.id)
                .bind(&m.lineage)
                .bind(&m.scope)
                .bind(&m.text)
                .bind(&m.subject)
                .bind(&m.tags)
                .bind(&m.metadata)
                .bind(&m.source)
                .bind(&m.written_by)
                .bind(m.valid_from)
                .bind(m.valid_to)
                .bind(m.created_at)
                .bind(m.expired_at)
                .bind(&m.superseded_by)
                .bind(m.expires_at)
                .bind(m.updated_at)
                .execute(&mut *tx)
                .await?;
                if let Some(record) = audit {
                    Self::append_audit_in(&mut tx, &[record]).await?;
                }
                tx.commit().await?;
                Ok(closed)
            }

            async fn memory(&self, id: &str) -> Result<Option<MemoryRecord>> {
                Ok(sqlx::query_as(&format!("SELECT {COLUMNS} FROM memories WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.read)
                    .await?)
            }

            async fn memory_versions(&self, lineage: &str) -> Result<Vec<MemoryRecord>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {COLUMNS} FROM memories WHERE lineage = $1 ORDER BY created_at, id"
                ))
                .bind(lineage)
                .fetch_all(&self.read)
                .await?)
            }

            async fn memories_changed(&self, since: Millis, after_id: &str, limit: i64) -> Result<Vec<MemoryRecord>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {COLUMNS} FROM memories WHERE updated_at > $1 OR (updated_at = $1 AND id > $2) \
                     ORDER BY updated_at, id LIMIT $3"
                ))
                .bind(since)
                .bind(after_id)
                .bind(limit)
                .fetch_all(&self.read)
                .await?)
            }

            async fn scope_memories(&self, scope: &str, after: (Millis, &str), limit: i64) -> Result<Vec<MemoryRecord>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {COLUMNS} FROM memories WHERE scope = $1 AND (created_at > $2 OR (created_at = $2 AND id > $3)) \
                     ORDER BY created_at, id LIMIT $4"
                ))
                .bind(scope)
                .bind(after.0)
                .bind(after.1)
                .bind(limit)
                .fetch_all(&self.read)
                .await?)
            }

            async fn import_memories(
                &self,
                versions: &[MemoryRecord],
                audit: Option<(Millis, String)>,
            ) -> Result<(u64, u64)> {
                let mut tx = self.begin_write().await?;
                let (mut written, mut unchanged) = (0, 0);
                for m in versions {
                    let done = sqlx::query(&format!(
                        "INSERT INTO memories ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
                         ON CONFLICT (id) DO NOTHING"
                    ))
                    .bind(&m.id)
                    .bind(&m.lineage)
                    .bind(&m.scope)
                    .bind(&m.text)
                    .bind(&m.subject)
                    .bind(&m.tags)
                    .bind(&m.metadata)
                    .bind(&m.source)
                    .bind(&m.written_by)
                    .bind(m.valid_from)
                    .bind(m.valid_to)
                    .bind(m.created_at)
                    .bind(m.expired_at)
                    .bind(&m.superseded_by)
                    .bind(m.expires_at)
                    .bind(m.updated_at)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if done == 1 {
                        written += 1;
                        continue;
                    }
                    let stored: MemoryRecord = sqlx::query_as(&format!("SELECT {COLUMNS} FROM memories WHERE id = $1"))
                        .bind(&m.id)
                        .fetch_one(&mut *tx)
                        .await?;
                    // What changes as a copy moves between stores is when it last changed.
                    let same = MemoryRecord { updated_at: m.updated_at, ..stored } == *m;
                    if !same {
                        return Err(Error::Conflict(format!(
                            "memory {} is stored already with other content; nothing was imported",
                            m.id
                        )));
                    }
                    unchanged += 1;
                }
                if let Some(record) = audit {
                    Self::append_audit_in(&mut tx, &[record]).await?;
                }
                tx.commit().await?;
                Ok((written, unchanged))
            }

            async fn put_memory_vectors(&self, vectors: &[MemoryVector]) -> Result<u64> {
                let mut tx = self.begin_write().await?;
                let mut stored = 0;
                for v in vectors {
                    stored += sqlx::query(
                        "INSERT INTO memory_vectors (id, model, vector, updated_at) \
                         SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM memories WHERE id = $1) \
                         ON CONFLICT (id) DO UPDATE SET model = excluded.model, vector = excluded.vector, updated_at = excluded.updated_at",
                    )
                    .bind(&v.id)
                    .bind(&v.model)
                    .bind(&v.vector)
                    .bind(v.updated_at)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                }
                tx.commit().await?;
                Ok(stored)
            }

            async fn memory_vectors_changed(&self, since: Millis, after_id: &str, limit: i64) -> Result<Vec<MemoryVector>> {
                Ok(sqlx::query_as(
                    "SELECT id, model, vector, updated_at FROM memory_vectors \
                     WHERE updated_at > $1 OR (updated_at = $1 AND id > $2) ORDER BY updated_at, id LIMIT $3",
                )
                .bind(since)
                .bind(after_id)
                .bind(limit)
                .fetch_all(&self.read)
                .await?)
            }

            async fn memories_to_embed(&self, model: &str, after: (Millis, &str), limit: i64) -> Result<Vec<MemoryRecord>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {} FROM memories m LEFT JOIN memory_vectors v ON v.id = m.id \
                     WHERE (m.created_at > $2 OR (m.created_at = $2 AND m.id > $3)) AND (v.id IS NULL OR v.model <> $1) \
                     ORDER BY m.created_at, m.id LIMIT $4",
                    COLUMNS.split(", ").map(|c| format!("m.{c}")).collect::<Vec<_>>().join(", ")
                ))
                .bind(model)
                .bind(after.0)
                .bind(after.1)
                .bind(limit)
                .fetch_all(&self.read)
                .await?)
            }

            async fn memory_erasures(&self, since: Millis) -> Result<Vec<(String, Millis)>> {
                Ok(sqlx::query_as(
                    "SELECT id, erased_at FROM memory_erasures WHERE erased_at >= $1 ORDER BY erased_at, id",
                )
                .bind(since)
                .fetch_all(&self.read)
                .await?)
            }

            async fn erase_memories(
                &self,
                what: &MemoryErase,
                now: Millis,
                audit: Option<(Millis, String)>,
            ) -> Result<Vec<ErasedMemory>> {
                let (filter, binds) = erase_filter(what);
                let sql = format!("DELETE FROM memories WHERE {filter} RETURNING id, lineage, scope");
                let mut tx = self.begin_write().await?;
                let mut q = sqlx::query_as::<_, ErasedMemory>(&sql).bind(now);
                for b in &binds {
                    q = q.bind(b);
                }
                let erased = q.fetch_all(&mut *tx).await?;
                for e in &erased {
                    sqlx::query("DELETE FROM memory_vectors WHERE id = $1")
                        .bind(&e.id)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(
                        "INSERT INTO memory_erasures (id, erased_at) VALUES ($1, $2) \
                         ON CONFLICT (id) DO UPDATE SET erased_at = excluded.erased_at",
                    )
                    .bind(&e.id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                if let Some(record) = audit {
                    Self::append_audit_in(&mut tx, &[record]).await?;
                }
                tx.commit().await?;
                if !erased.is_empty() {
                    self.scrub().await;
                }
                Ok(erased)
            }
        }
    };
}

impl_memories!(SqliteStore);
impl_memories!(PgStore);

impl SqliteStore {
    /// After an erasure: the deleted rows' bytes were zeroed as they were freed (every
    /// connection has `secure_delete` on); the write-ahead log still holds older copies of
    /// their pages until a checkpoint moves the current pages into the file and truncates it.
    /// A checkpoint that readers keep from finishing is retried by the next erasure; the
    /// log's frames are overwritten as it is reused meanwhile.
    async fn scrub(&self) {
        let done: std::result::Result<(i64, i64, i64), _> =
            sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&self.write)
                .await;
        match done {
            Ok((0, _, _)) => {}
            Ok(_) => tracing::warn!("the write-ahead log could not be truncated after an erasure (readers kept it busy); the next erasure tries again"),
            Err(e) => tracing::warn!(error = %e, "checkpointing the write-ahead log after an erasure failed"),
        }
    }
}

impl PgStore {
    /// PostgreSQL frees deleted rows' space at its next vacuum; nothing to do in the commit.
    async fn scrub(&self) {}
}
