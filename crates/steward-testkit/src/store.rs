//! A fresh database for each test: a new SQLite file in a temporary directory, or a new schema
//! on the PostgreSQL at `STEWARD_TEST_PG_URL` (default `postgres://127.0.0.1:5432/test`), so
//! tests running side by side never see each other's rows.

use std::path::Path;
use std::sync::Arc;

use steward_store::Store;
use steward_types::config::StoreConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The test database server's URL.
pub fn pg_base() -> String {
    std::env::var("STEWARD_TEST_PG_URL").unwrap_or_else(|_| "postgres://127.0.0.1:5432/test".into())
}

/// A URL naming a database nobody has used: SQLite's file in `dir`, or a new PostgreSQL
/// schema.
///
/// # Panics
/// When PostgreSQL is asked for and does not answer: the tests need it running.
pub async fn fresh_url(backend: Backend, dir: &Path) -> String {
    match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.join("steward.db").display()),
        Backend::Postgres => match steward_store::pg_schema::new_schema(&pg_base(), "t").await {
            Ok((_, url)) => url,
            Err(e) => panic!(
                "PostgreSQL must be running at STEWARD_TEST_PG_URL ({}): {e}",
                steward_store::redact(&pg_base())
            ),
        },
    }
}

/// An open store on a fresh database, with what keeps it alive.
pub struct FreshStore {
    pub store: Arc<dyn Store>,
    pub url: String,
    /// SQLite's file lives here; also a scratch directory for the test (keys, files).
    pub dir: tempfile::TempDir,
}

impl FreshStore {
    /// # Panics
    /// When the database cannot be made or opened: a test cannot go on without it.
    pub async fn open(backend: Backend) -> FreshStore {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("a temporary directory: {e}"),
        };
        let url = fresh_url(backend, dir.path()).await;
        match steward_store::open(&url, &StoreConfig::default()).await {
            Ok(store) => FreshStore { store, url, dir },
            Err(e) => panic!("opening {}: {e}", steward_store::redact(&url)),
        }
    }

    pub async fn sqlite() -> FreshStore {
        Self::open(Backend::Sqlite).await
    }

    pub async fn postgres() -> FreshStore {
        Self::open(Backend::Postgres).await
    }
}
