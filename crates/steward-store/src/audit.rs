//! The audit log: appended in the writer's transaction, checkpointed, verified.

use crate::sql::prelude::*;

/// The audit log's rows, its Merkle head and its signed checkpoints.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends records in order — `(at, body)` each — numbering them after the last one, all in
    /// one transaction; returns the tree's size and root (hex) after them. Appenders on several
    /// nodes are serialised by the head row, so numbers never collide or skip.
    async fn append_audit(&self, entries: &[(Millis, String)]) -> Result<(i64, String)>;
    /// The tree's size and root (hex) now.
    async fn audit_head(&self) -> Result<(i64, String)>;
    async fn put_checkpoint(&self, checkpoint: &AuditCheckpoint) -> Result<()>;
    /// Every checkpoint, smallest size first.
    async fn audit_checkpoints(&self) -> Result<Vec<AuditCheckpoint>>;
    /// Up to `limit` rows from `from_seq` on, in order (whatever the table holds, tampered or
    /// not: verification reads through this).
    async fn audit_rows(&self, from_seq: i64, limit: i64) -> Result<Vec<AuditRow>>;
    /// Retention: clears the bodies of records older than `before`, keeping their leaf hashes
    /// so the tree stays verifiable. Returns how many were cleared.
    async fn prune_audit(&self, before: Millis) -> Result<u64>;
}

macro_rules! impl_audit {
    ($store:ty) => {
        #[async_trait]
        impl AuditStore for $store {
            async fn append_audit(&self, entries: &[(Millis, String)]) -> Result<(i64, String)> {
                let mut tx = self.begin_write().await?;
                let head = Self::append_audit_in(&mut tx, entries).await?;
                tx.commit().await?;
                Ok(head)
            }

            async fn audit_head(&self) -> Result<(i64, String)> {
                let (size, frontier): (i64, String) =
                    sqlx::query_as("SELECT size, frontier FROM audit_head WHERE id = 0")
                        .fetch_one(&self.read)
                        .await?;
                let tree = merkle::Frontier::from_json(size as u64, &frontier)
                    .ok_or_else(|| Error::Corrupt(format!("audit_head holds no valid frontier for size {size}")))?;
                Ok((size, merkle::hex(&tree.root())))
            }

            async fn put_checkpoint(&self, c: &AuditCheckpoint) -> Result<()> {
                sqlx::query(
                    "INSERT INTO audit_checkpoints (size, root, at, key_id, signature) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (size) DO NOTHING",
                )
                .bind(c.size)
                .bind(&c.root)
                .bind(c.at)
                .bind(&c.key_id)
                .bind(&c.signature)
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn audit_checkpoints(&self) -> Result<Vec<AuditCheckpoint>> {
                Ok(sqlx::query_as("SELECT size, root, at, key_id, signature FROM audit_checkpoints ORDER BY size")
                    .fetch_all(&self.read)
                    .await?)
            }

            async fn audit_rows(&self, from_seq: i64, limit: i64) -> Result<Vec<AuditRow>> {
                Ok(sqlx::query_as(
                    "SELECT seq, at, body, leaf_hash FROM audit_log WHERE seq >= $1 ORDER BY seq LIMIT $2",
                )
                .bind(from_seq)
                .bind(limit)
                .fetch_all(&self.read)
                .await?)
            }

            async fn prune_audit(&self, before: Millis) -> Result<u64> {
                Ok(sqlx::query("UPDATE audit_log SET body = NULL WHERE at < $1 AND body IS NOT NULL")
                    .bind(before)
                    .execute(&self.write)
                    .await?
                    .rows_affected())
            }
        }
    };
}

impl_audit!(SqliteStore);
impl_audit!(PgStore);
