//! The SQLite and PostgreSQL implementations. Both dialects accept the same SQL for almost
//! everything here (`$N` placeholders, `ON CONFLICT`, `RETURNING`), so one macro writes both
//! and the few differences are passed in. The schema is portable too (TEXT and BIGINT only),
//! so both run the migrations in `migrations/`; a backend gets a directory of its own the day
//! its schema must differ.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use steward_types::config::StoreConfig;
use steward_types::Millis;
use tokio::sync::mpsc;

use crate::{Error, Result, Store};

/// Embedded storage: one file, WAL. Writes go through a single connection so writers queue
/// in-process instead of failing with `SQLITE_BUSY`; reads use a pool.
#[derive(Clone)]
pub struct SqliteStore {
    pub(crate) read: SqlitePool,
    pub(crate) write: SqlitePool,
    /// The journal's group commits, on one thread (see `sqlite_direct`).
    pub(crate) direct: std::sync::Arc<crate::sqlite_direct::DirectWriter>,
}

/// Cluster storage: many nodes share one database.
#[derive(Clone)]
pub struct PgStore {
    pub(crate) read: PgPool,
    pub(crate) write: PgPool,
}

impl SqliteStore {
    pub async fn connect(url: &str, cfg: &StoreConfig) -> Result<Self> {
        let sync = match cfg.sqlite_synchronous.as_str() {
            "full" => SqliteSynchronous::Full,
            "normal" => SqliteSynchronous::Normal,
            other => {
                return Err(Error::Config(format!(
                    "store.sqlite_synchronous: expected \"full\" or \"normal\", found {other:?}"
                )))
            }
        };
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::Config(format!("database url {url:?}: {e}")))?;
        // An in-memory database is gone when the process ends: nothing in it would be durable,
        // and connections beyond the first could not share it.
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(Error::Config(format!(
                "database url {url:?}: an in-memory SQLite database loses every run on exit; \
                 give a file, sqlite://PATH"
            )));
        }
        let path = opts.get_filename().to_path_buf();
        let opts = opts
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(sync)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // Deleted content is overwritten as it is freed: an erased memory leaves no bytes
            // behind in the file (see `memories.rs`).
            .pragma("secure_delete", "on");
        // A connection to a local file cannot go stale as a network one can: no ping (a round
        // trip to SQLite's worker thread) before each use.
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(30))
            .after_release(|conn, _| Box::pin(still_sound(conn)))
            .connect_with(opts.clone())
            .await?;
        sqlx::migrate!("./migrations").run(&write).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(cfg.max_connections.max(1))
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts.read_only(true))
            .await?;
        // The file exists now (the pools made it): pin its absolute path, so the writer's own
        // connection, opened later, opens this file whatever the working directory is by then.
        let path = std::fs::canonicalize(&path).unwrap_or(path);
        let direct = std::sync::Arc::new(crate::sqlite_direct::DirectWriter::new(
            path,
            matches!(sync, SqliteSynchronous::Full),
        ));
        Ok(SqliteStore {
            read,
            write,
            direct,
        })
    }
}

impl PgStore {
    pub async fn connect(url: &str, cfg: &StoreConfig) -> Result<Self> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| Error::Config(format!("database url {:?}: {e}", crate::redact(url))))?;
        let pool = PgPoolOptions::new()
            .max_connections(cfg.max_connections.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .after_release(|conn, _| Box::pin(still_sound(conn)))
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(PgStore {
            read: pool.clone(),
            write: pool,
        })
    }
}

/// Whether a connection going back to its pool is fit to be used again: not still inside a
/// transaction. A transaction dropped without a commit queues its rollback, which has run by
/// the time a ping comes back. One that stays "inside" — a COMMIT or ROLLBACK that failed, as
/// when SQLite finds the disk full and rolls back by itself while the driver still counts the
/// transaction as open — would turn every later transaction into a savepoint of one that never
/// commits: acknowledged writes that are never durable. Such a connection is closed, and the
/// pool opens a fresh one.
async fn still_sound<C: sqlx::Connection>(conn: &mut C) -> std::result::Result<bool, sqlx::Error> {
    if !conn.is_in_transaction() {
        return Ok(true);
    }
    conn.ping().await?;
    if conn.is_in_transaction() {
        tracing::warn!(
            "a database connection was left inside a transaction after an error; replacing it"
        );
        return Ok(false);
    }
    Ok(true)
}

pub(crate) const RUN_COLUMNS: &str = "id, agent, agent_version, parent_id, input, state, wait_kind, result, \
     error_code, error_message, cancel_reason, retry_seq, lease_owner, lease_expires, lease_epoch, created_at, updated_at";

/// States a node executes, as SQL.
pub(crate) const CLAIMABLE: &str =
    "(state IN ('queued', 'running') OR (state = 'waiting' AND wait_kind = 'child'))";

pub(crate) const TERMINAL: &str = "('succeeded', 'failed', 'cancelled')";

pub(crate) const KEY_COLUMNS: &str =
    "id, key_hash, agent, created_at, revoked_at, expires_at, revoke_reason";

pub(crate) const APPROVAL_COLUMNS: &str =
    "id, run_id, seq, approvers, action, resource, policy_ids, state, reason, \
     decided_by, created_at, expires_at, decided_at";

/// Rows per multi-row INSERT: 13 columns × 500 stays under both backends' parameter limits.
pub(crate) const JOURNAL_CHUNK: usize = 500;

/// The columns of `DelegationRecord`, in its order.
macro_rules! delegation_cols {
    () => {
        "id, parent_id, revocation_id, issuer, holder, key_id, scope, expires_at, created_at, revoked_at, revoke_reason"
    };
}
pub(crate) use delegation_cols;

/// What the aggregates' implementations (`agents.rs`, `runs.rs`, …) share: each is a macro
/// written once over SQL both backends accept and instantiated for both, with the few
/// differences (row locks) passed in. SQLite needs no row locks: a transaction that writes
/// holds the database's one write lock.
pub(crate) mod prelude {
    pub(crate) use async_trait::async_trait;
    pub(crate) use steward_types::{AgentName, Millis, NodeId, RunId};

    pub(crate) use super::{
        delegation_cols, APPROVAL_COLUMNS, CLAIMABLE, JOURNAL_CHUNK, KEY_COLUMNS, RUN_COLUMNS,
        TERMINAL,
    };
    pub(crate) use crate::model::*;
    pub(crate) use crate::{merkle, Error, PgStore, Result, SqliteStore};
}

macro_rules! impl_store {
    ($store:ty, backend = $backend:literal) => {
        #[async_trait]
        impl Store for $store {
            fn backend(&self) -> &'static str {
                $backend
            }
            async fn wakeups(&self) -> Result<Option<mpsc::Receiver<String>>> {
                self.listen().await
            }
            async fn ping(&self) -> Result<()> {
                sqlx::query("SELECT 1").execute(&self.read).await?;
                Ok(())
            }
            async fn probe_write(&self, node: &str, now: Millis) -> Result<()> {
                sqlx::query(
                    "INSERT INTO write_probes (node, at) VALUES ($1, $2) \
                     ON CONFLICT (node) DO UPDATE SET at = excluded.at",
                )
                .bind(node)
                .bind(now)
                .execute(&self.write)
                .await?;
                Ok(())
            }
        }
    };
}

/// The channel other nodes' changes are announced on (PostgreSQL `NOTIFY`).
const WAKE_CHANNEL: &str = "steward_wake";

impl SqliteStore {
    /// A write transaction, holding SQLite's write lock from its first statement. A deferred
    /// one (sqlx's default) that read before it wrote cannot wait for another connection's
    /// write to end — SQLite answers `SQLITE_BUSY` at once rather than let its snapshot go
    /// stale — so with a second process on the file its writes would fail instead of waiting.
    pub(crate) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.write.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// One process owns a SQLite file: its engine is woken in-process, nobody else to tell.
    pub(crate) async fn wake(&self, _what: &str) {}

    async fn listen(&self) -> Result<Option<mpsc::Receiver<String>>> {
        Ok(None)
    }
}

impl PgStore {
    pub(crate) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        Ok(self.write.begin().await?)
    }

    /// Tells every node listening that a run was queued (`run`) or ended (`done`). Best effort:
    /// nodes also poll, so a lost notification only costs latency.
    pub(crate) async fn wake(&self, what: &str) {
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(WAKE_CHANNEL)
            .bind(what)
            .execute(&self.write)
            .await;
        if let Err(e) = sent {
            tracing::debug!(error = %e, "NOTIFY failed; other nodes will find the change by polling");
        }
    }

    async fn listen(&self) -> Result<Option<mpsc::Receiver<String>>> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.read).await?;
        listener.listen(WAKE_CHANNEL).await?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(n) => {
                        // A full channel means wake-ups are pending anyway: drop this one.
                        if let Err(mpsc::error::TrySendError::Closed(_)) =
                            tx.try_send(n.payload().to_string())
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        // PgListener reconnects on the next recv; meanwhile nodes poll.
                        tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(Some(rx))
    }
}

impl_store!(SqliteStore, backend = "sqlite");
impl_store!(PgStore, backend = "postgres");
