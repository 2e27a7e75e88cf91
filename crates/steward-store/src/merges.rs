//! The merge queue's records: repositories, submissions in order, path leases.

use async_trait::async_trait;
use steward_types::Millis;

use crate::{PgStore, Result, SqliteStore};

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct RepoRecord {
    pub name: String,
    /// A git repository on this host (every node must see it at the same path).
    pub path: String,
    /// The branch submissions land on.
    pub target: String,
    /// The command that must pass on the merged tree (`/bin/sh -c`, in a sandbox).
    pub check_cmd: String,
    /// The agent conflicts are routed to; none: a human, through an incident.
    pub resolver: Option<String>,
    /// `rebase` (the branch's commits replayed onto the target) or `merge` (a merge commit).
    pub strategy: String,
}

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct SubmissionRecord {
    pub id: String,
    pub repo: String,
    pub branch: String,
    pub submitter: String,
    /// `queued`, `checking`, `landed`, `conflict` or `failed`.
    pub state: String,
    pub detail: Option<String>,
    /// What the target pointed at once this landed: the rebased tip or the merge commit.
    pub merged: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Checks begun: the one in progress is the `attempts`-th (its fencing token).
    pub attempts: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct PathLease {
    pub repo: String,
    pub path: String,
    pub holder: String,
    pub expires_at: Millis,
}

const SUB: &str =
    "id, repo, branch, submitter, state, detail, merged, created_at, updated_at, attempts";

#[async_trait]
pub trait MergeStore: Send + Sync {
    async fn put_repo(&self, r: &RepoRecord, now: Millis) -> Result<()>;
    async fn get_repo(&self, name: &str) -> Result<Option<RepoRecord>>;
    async fn list_repos(&self) -> Result<Vec<RepoRecord>>;
    async fn add_submission(&self, s: &SubmissionRecord) -> Result<()>;
    async fn get_submission(&self, id: &str) -> Result<Option<SubmissionRecord>>;
    async fn list_submissions(&self, repo: &str) -> Result<Vec<SubmissionRecord>>;
    /// The oldest queued submission of `repo`, now `checking` under a lease to `node` until
    /// `until` (its `attempts` one more) — unless one is being checked already (one at a time
    /// per repository, across nodes). A check whose lease ran out goes back to the queue first.
    async fn claim_submission(
        &self,
        repo: &str,
        node: &str,
        now: Millis,
        until: Millis,
    ) -> Result<Option<SubmissionRecord>>;
    /// Extends `node`'s lease on check `attempt` of submission `id`; false when it is lost.
    async fn renew_check(&self, id: &str, node: &str, attempt: i64, until: Millis) -> Result<bool>;
    /// Ends check `attempt` of `id`, if `node` still holds it: `state` (`landed`, `conflict`,
    /// `failed`, or `queued` to try again). False: the check was lost, nothing recorded.
    #[allow(clippy::too_many_arguments)]
    async fn finish_submission(
        &self,
        id: &str,
        node: &str,
        attempt: i64,
        state: &str,
        detail: &str,
        merged: Option<&str>,
        now: Millis,
    ) -> Result<bool>;
    /// Checks `node` was running when it stopped go back to the queue (it is starting again);
    /// returns how many.
    async fn release_checks(&self, node: &str, now: Millis) -> Result<u64>;
    /// Takes `paths` of `repo` for `holder` until `expires_at`, all or none; returns the
    /// leases of others in the way (then nothing was taken). A path covers the paths below it.
    async fn lease_paths(
        &self,
        repo: &str,
        holder: &str,
        paths: &[String],
        expires_at: Millis,
        now: Millis,
    ) -> Result<Vec<PathLease>>;
    /// Releases `holder`'s leases on `repo`; returns how many.
    async fn release_paths(&self, repo: &str, holder: &str) -> Result<u64>;
    async fn path_leases(&self, repo: &str, now: Millis) -> Result<Vec<PathLease>>;
}

/// Whether two repository paths overlap: one is the other or lies below it.
pub fn overlaps(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_end_matches('/'), b.trim_end_matches('/'));
    a == b
        || a.is_empty()
        || b.is_empty()
        || b.starts_with(&format!("{a}/"))
        || a.starts_with(&format!("{b}/"))
}

macro_rules! impl_merges {
    ($store:ty) => {
        #[async_trait]
        impl MergeStore for $store {
            async fn put_repo(&self, r: &RepoRecord, now: Millis) -> Result<()> {
                sqlx::query(
                    "INSERT INTO repos (name, path, target, check_cmd, updated_at, resolver, strategy) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (name) DO UPDATE SET path = $2, target = $3, check_cmd = $4, updated_at = $5, resolver = $6, strategy = $7",
                )
                .bind(&r.name)
                .bind(&r.path)
                .bind(&r.target)
                .bind(&r.check_cmd)
                .bind(now)
                .bind(&r.resolver)
                .bind(&r.strategy)
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn get_repo(&self, name: &str) -> Result<Option<RepoRecord>> {
                Ok(sqlx::query_as("SELECT name, path, target, check_cmd, resolver, strategy FROM repos WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&self.read)
                    .await?)
            }

            async fn list_repos(&self) -> Result<Vec<RepoRecord>> {
                Ok(sqlx::query_as("SELECT name, path, target, check_cmd, resolver, strategy FROM repos ORDER BY name")
                    .fetch_all(&self.read)
                    .await?)
            }

            async fn add_submission(&self, s: &SubmissionRecord) -> Result<()> {
                sqlx::query(&format!(
                    "INSERT INTO submissions ({SUB}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
                ))
                .bind(&s.id)
                .bind(&s.repo)
                .bind(&s.branch)
                .bind(&s.submitter)
                .bind(&s.state)
                .bind(&s.detail)
                .bind(&s.merged)
                .bind(s.created_at)
                .bind(s.updated_at)
                .bind(s.attempts)
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn get_submission(&self, id: &str) -> Result<Option<SubmissionRecord>> {
                Ok(sqlx::query_as(&format!("SELECT {SUB} FROM submissions WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.read)
                    .await?)
            }

            async fn list_submissions(&self, repo: &str) -> Result<Vec<SubmissionRecord>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {SUB} FROM submissions WHERE repo = $1 ORDER BY created_at, id"
                ))
                .bind(repo)
                .fetch_all(&self.read)
                .await?)
            }

            async fn claim_submission(&self, repo: &str, node: &str, now: Millis, until: Millis) -> Result<Option<SubmissionRecord>> {
                let mut tx = self.begin_write().await?;
                sqlx::query(
                    "UPDATE submissions SET state = 'queued', checker = NULL, check_until = NULL, updated_at = $1 \
                     WHERE repo = $2 AND state = 'checking' AND (check_until IS NULL OR check_until < $1)",
                )
                .bind(now)
                .bind(repo)
                .execute(&mut *tx)
                .await?;
                // `state = 'queued'` again outside the sub-select: a node that waited on the
                // row's lock while another claimed it re-checks this, and takes nothing.
                let claimed: Option<SubmissionRecord> = sqlx::query_as(&format!(
                    "UPDATE submissions SET state = 'checking', checker = $3, check_until = $4, \
                       attempts = attempts + 1, updated_at = $1 \
                     WHERE id = (SELECT id FROM submissions WHERE repo = $2 AND state = 'queued' \
                                 ORDER BY created_at, id LIMIT 1) \
                       AND state = 'queued' \
                       AND NOT EXISTS (SELECT 1 FROM submissions WHERE repo = $2 AND state = 'checking') \
                     RETURNING {SUB}"
                ))
                .bind(now)
                .bind(repo)
                .bind(node)
                .bind(until)
                .fetch_optional(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(claimed)
            }

            async fn renew_check(&self, id: &str, node: &str, attempt: i64, until: Millis) -> Result<bool> {
                let n = sqlx::query(
                    "UPDATE submissions SET check_until = $1 \
                     WHERE id = $2 AND state = 'checking' AND checker = $3 AND attempts = $4",
                )
                .bind(until)
                .bind(id)
                .bind(node)
                .bind(attempt)
                .execute(&self.write)
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            #[allow(clippy::too_many_arguments)]
            async fn finish_submission(
                &self,
                id: &str,
                node: &str,
                attempt: i64,
                state: &str,
                detail: &str,
                merged: Option<&str>,
                now: Millis,
            ) -> Result<bool> {
                let n = sqlx::query(
                    "UPDATE submissions SET state = $1, detail = $2, merged = $3, updated_at = $4, \
                       checker = NULL, check_until = NULL \
                     WHERE id = $5 AND state = 'checking' AND checker = $6 AND attempts = $7",
                )
                .bind(state)
                .bind(detail)
                .bind(merged)
                .bind(now)
                .bind(id)
                .bind(node)
                .bind(attempt)
                .execute(&self.write)
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn release_checks(&self, node: &str, now: Millis) -> Result<u64> {
                Ok(sqlx::query(
                    "UPDATE submissions SET state = 'queued', checker = NULL, check_until = NULL, updated_at = $1 \
                     WHERE state = 'checking' AND checker = $2",
                )
                .bind(now)
                .bind(node)
                .execute(&self.write)
                .await?
                .rows_affected())
            }

            async fn lease_paths(&self, repo: &str, holder: &str, paths: &[String], expires_at: Millis, now: Millis) -> Result<Vec<PathLease>> {
                let mut tx = self.begin_write().await?;
                sqlx::query("DELETE FROM path_leases WHERE repo = $1 AND expires_at <= $2")
                    .bind(repo)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                // On PostgreSQL two nodes leasing at once serialize on the repository's row.
                sqlx::query("UPDATE repos SET updated_at = updated_at WHERE name = $1")
                    .bind(repo)
                    .execute(&mut *tx)
                    .await?;
                let held: Vec<PathLease> = sqlx::query_as(
                    "SELECT repo, path, holder, expires_at FROM path_leases WHERE repo = $1 AND holder <> $2",
                )
                .bind(repo)
                .bind(holder)
                .fetch_all(&mut *tx)
                .await?;
                let in_way: Vec<PathLease> = held
                    .into_iter()
                    .filter(|l| paths.iter().any(|p| overlaps(p, &l.path)))
                    .collect();
                if !in_way.is_empty() {
                    return Ok(in_way);
                }
                for p in paths {
                    sqlx::query(
                        "INSERT INTO path_leases (repo, path, holder, expires_at) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (repo, path) DO UPDATE SET holder = $3, expires_at = $4",
                    )
                    .bind(repo)
                    .bind(p.trim_end_matches('/'))
                    .bind(holder)
                    .bind(expires_at)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(Vec::new())
            }

            async fn release_paths(&self, repo: &str, holder: &str) -> Result<u64> {
                Ok(sqlx::query("DELETE FROM path_leases WHERE repo = $1 AND holder = $2")
                    .bind(repo)
                    .bind(holder)
                    .execute(&self.write)
                    .await?
                    .rows_affected())
            }

            async fn path_leases(&self, repo: &str, now: Millis) -> Result<Vec<PathLease>> {
                Ok(sqlx::query_as(
                    "SELECT repo, path, holder, expires_at FROM path_leases WHERE repo = $1 AND expires_at > $2 ORDER BY path",
                )
                .bind(repo)
                .bind(now)
                .fetch_all(&self.read)
                .await?)
            }
        }
    };
}

impl_merges!(SqliteStore);
impl_merges!(PgStore);
