//! Runs' workspaces as the cluster keeps them: manifests of content-addressed files, so a run
//! that moves to another node finds its workspace there (see `steward-engine`'s
//! `workspace_sync`). Blobs are shared by every run whose workspace holds the same content.

use async_trait::async_trait;
use steward_types::{Millis, RunId};

use crate::{Error, PgStore, Result, SqliteStore};

/// A workspace as one step left it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct WorkspaceState {
    pub seq: i64,
    pub hash: String,
    pub manifest: String,
}

/// A file's content: its hash and its bytes in base64.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Blob {
    pub hash: String,
    pub data: String,
}

/// Blobs asked for or sent at once.
const CHUNK: usize = 200;

#[async_trait]
pub trait WorkspaceStore: Send + Sync {
    /// The run's workspace as the last step before `seq` that saved it left it.
    async fn workspace_before(&self, run: &RunId, seq: i64) -> Result<Option<WorkspaceState>>;
    /// Which of `hashes` the store does not hold.
    async fn missing_blobs(&self, hashes: &[String]) -> Result<Vec<String>>;
    /// Saves the workspace step `state.seq` left, in one transaction: `blobs` (the content the
    /// store lacked) and `uses`, every hash the manifest names. Fails with a conflict, saving
    /// nothing, if a blob it relies on is gone (swept since `missing_blobs`): send it again.
    async fn save_workspace(
        &self,
        run: &RunId,
        state: &WorkspaceState,
        uses: &[String],
        blobs: &[Blob],
        now: Millis,
    ) -> Result<()>;
    async fn load_blobs(&self, hashes: &[String]) -> Result<Vec<Blob>>;
    /// Forgets the workspaces of runs that ended before `ended_before`, and blobs no run uses
    /// that no save relied on since `unused_since`. Returns how many states and blobs went.
    async fn sweep_workspaces(
        &self,
        ended_before: Millis,
        unused_since: Millis,
    ) -> Result<(u64, u64)>;
}

macro_rules! impl_workspaces {
    ($store:ty, $db:ty) => {
        #[async_trait]
        impl WorkspaceStore for $store {
            async fn workspace_before(&self, run: &RunId, seq: i64) -> Result<Option<WorkspaceState>> {
                Ok(sqlx::query_as(
                    "SELECT seq, hash, manifest FROM workspace_states \
                     WHERE run_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT 1",
                )
                .bind(run.as_str())
                .bind(seq)
                .fetch_optional(&self.read)
                .await?)
            }

            async fn missing_blobs(&self, hashes: &[String]) -> Result<Vec<String>> {
                let mut missing = Vec::new();
                for chunk in hashes.chunks(CHUNK) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new("SELECT hash FROM workspace_blobs WHERE hash IN (");
                    let mut sep = qb.separated(", ");
                    for h in chunk {
                        sep.push_bind(h.clone());
                    }
                    qb.push(")");
                    let held: Vec<(String,)> = qb.build_query_as().fetch_all(&self.read).await?;
                    missing.extend(chunk.iter().filter(|h| !held.iter().any(|(x,)| x == *h)).cloned());
                }
                Ok(missing)
            }

            async fn save_workspace(
                &self,
                run: &RunId,
                state: &WorkspaceState,
                uses: &[String],
                blobs: &[Blob],
                now: Millis,
            ) -> Result<()> {
                let mut tx = self.begin_write().await?;
                for chunk in blobs.chunks(CHUNK) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new("INSERT INTO workspace_blobs (hash, data, size, last_used) ");
                    qb.push_values(chunk, |mut b, blob| {
                        b.push_bind(blob.hash.as_str())
                            .push_bind(blob.data.as_str())
                            .push_bind(blob.data.len() as i64 / 4 * 3)
                            .push_bind(now);
                    });
                    qb.push(" ON CONFLICT (hash) DO UPDATE SET last_used = excluded.last_used");
                    qb.build().execute(&mut *tx).await?;
                }
                // Touching a blob keeps the sweep off it (the sweep takes only blobs untouched
                // for a while); one that is gone must be sent again.
                for chunk in uses.chunks(CHUNK) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new("UPDATE workspace_blobs SET last_used = ");
                    qb.push_bind(now).push(" WHERE hash IN (");
                    let mut sep = qb.separated(", ");
                    for h in chunk {
                        sep.push_bind(h.clone());
                    }
                    qb.push(")");
                    let touched = qb.build().execute(&mut *tx).await?.rows_affected();
                    if touched != chunk.len() as u64 {
                        return Err(Error::Conflict("a workspace blob was swept while it was being saved; save again".into()));
                    }
                    let mut qb = sqlx::QueryBuilder::<$db>::new("INSERT INTO workspace_refs (run_id, hash) ");
                    qb.push_values(chunk, |mut b, h| {
                        b.push_bind(run.as_str()).push_bind(h.as_str());
                    });
                    qb.push(" ON CONFLICT (run_id, hash) DO NOTHING");
                    qb.build().execute(&mut *tx).await?;
                }
                sqlx::query(
                    "INSERT INTO workspace_states (run_id, seq, hash, manifest, at) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (run_id, seq) DO UPDATE SET hash = excluded.hash, manifest = excluded.manifest, at = excluded.at",
                )
                .bind(run.as_str())
                .bind(state.seq)
                .bind(&state.hash)
                .bind(&state.manifest)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn load_blobs(&self, hashes: &[String]) -> Result<Vec<Blob>> {
                let mut out = Vec::with_capacity(hashes.len());
                for chunk in hashes.chunks(CHUNK) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new("SELECT hash, data FROM workspace_blobs WHERE hash IN (");
                    let mut sep = qb.separated(", ");
                    for h in chunk {
                        sep.push_bind(h.clone());
                    }
                    qb.push(")");
                    out.extend(qb.build_query_as::<Blob>().fetch_all(&self.read).await?);
                }
                Ok(out)
            }

            async fn sweep_workspaces(&self, ended_before: Millis, unused_since: Millis) -> Result<(u64, u64)> {
                let mut tx = self.begin_write().await?;
                let ended = "SELECT id FROM runs WHERE state IN ('succeeded', 'failed', 'cancelled') AND updated_at < $1";
                let states = sqlx::query(&format!("DELETE FROM workspace_states WHERE run_id IN ({ended})"))
                    .bind(ended_before)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                sqlx::query(&format!("DELETE FROM workspace_refs WHERE run_id IN ({ended})"))
                    .bind(ended_before)
                    .execute(&mut *tx)
                    .await?;
                let blobs = sqlx::query(
                    "DELETE FROM workspace_blobs WHERE last_used < $1 \
                     AND NOT EXISTS (SELECT 1 FROM workspace_refs r WHERE r.hash = workspace_blobs.hash)",
                )
                .bind(unused_since)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
                Ok((states, blobs))
            }
        }
    };
}

impl_workspaces!(SqliteStore, sqlx::Sqlite);
impl_workspaces!(PgStore, sqlx::Postgres);
