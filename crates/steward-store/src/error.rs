#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// A failure of the SQLite connection that runs the journal's commits on one thread.
    #[error("database error: {0}")]
    Sqlite(#[source] rusqlite::Error),
    /// A write made under a claim of a run that a later claim has replaced: this node no
    /// longer holds the run, and whoever does replays it from its journal.
    #[error("run {0} was claimed again since this node took it; it writes nothing more for it")]
    Fenced(String),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match e.as_database_error() {
            Some(db) if db.is_unique_violation() => Error::Conflict(db.message().to_string()),
            _ => Error::Database(e),
        }
    }
}

impl Error {
    /// Why the store cannot take writes now, when that is what went wrong — a full disk, a
    /// read-only or failing device, a database that is gone or out of connections — as opposed
    /// to a request the store refused. Such a failure is worth retrying once the cause is gone,
    /// and is answered `503`, not `500`.
    pub fn unavailable(&self) -> Option<String> {
        let e = match self {
            Error::Database(e) => e,
            Error::Sqlite(e) => return sqlite_unavailable(e),
            _ => return None,
        };
        match e {
            sqlx::Error::Io(io) => Some(format!("the database cannot be reached: {io}")),
            sqlx::Error::PoolTimedOut => {
                Some("no database connection came free in time".to_string())
            }
            sqlx::Error::PoolClosed => Some("the database pool is closed".to_string()),
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default();
                let why = match code.as_ref() {
                    // SQLite: FULL, IOERR (and its extended codes), READONLY, CANTOPEN.
                    "13" => "the disk holding the database is full",
                    c if c == "10"
                        || (c.len() > 2 && c.parse::<i64>().is_ok_and(|n| n & 0xff == 10)) =>
                    {
                        "the device holding the database fails to read or write"
                    }
                    "8" => "the database is read-only",
                    "14" => "the database file cannot be opened",
                    // PostgreSQL: insufficient resources (53xxx), shutting down (57P0x).
                    "53100" => "the disk holding the database is full",
                    c if c.starts_with("53") => "the database is out of resources",
                    c if c.starts_with("57P0") => "the database is shutting down or restarting",
                    _ => return None,
                };
                Some(format!("{why} ({})", db.message()))
            }
            _ => None,
        }
    }
}

/// [`Error::unavailable`] for the SQLite writer's errors: the same causes, by SQLite's codes.
fn sqlite_unavailable(e: &rusqlite::Error) -> Option<String> {
    use rusqlite::ErrorCode;
    let why = match e.sqlite_error_code()? {
        ErrorCode::DiskFull => "the disk holding the database is full",
        ErrorCode::SystemIoFailure => "the device holding the database fails to read or write",
        ErrorCode::ReadOnly => "the database is read-only",
        ErrorCode::CannotOpen => "the database file cannot be opened",
        _ => return None,
    };
    Some(format!("{why} ({e})"))
}

impl Error {
    /// The stable code the API answers a store failure with: a conflict is the caller's to
    /// resolve, a store that cannot write now is worth retrying later, the rest is ours.
    pub fn code(&self) -> steward_types::ErrorCode {
        use steward_types::ErrorCode;
        match self {
            Error::Conflict(_) => ErrorCode::Conflict,
            e if e.unavailable().is_some() => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use steward_types::ErrorCode;

    #[test]
    fn store_failures_answer_with_their_codes() {
        assert_eq!(Error::Conflict("x".into()).code(), ErrorCode::Conflict);
        assert_eq!(
            Error::Database(sqlx::Error::PoolTimedOut).code(),
            ErrorCode::Unavailable
        );
        assert_eq!(Error::Corrupt("x".into()).code(), ErrorCode::Internal);
        assert_eq!(Error::Fenced("r".into()).code(), ErrorCode::Internal);
    }
}
