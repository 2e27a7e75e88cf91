//! SQLite's hottest transactions run whole on one thread: the journal's group commit (entries,
//! the audit records and budget settlements that go with them, under their runs' claims), the
//! gateway's call starts and ends (holds, records, audit), and the task queue's batches.
//! Through sqlx every statement is a round trip to the connection's worker thread (a journal
//! commit: begin, insert, claim check, audit head, audit rows, frontier, commit — seven
//! hand-offs and wake-ups). Here the statements run back to back on a connection of their own,
//! prepared once and kept, on the thread of the writer that asks (`writes_on_calling_thread`):
//! the only hand-offs left are the request and the answers.
//!
//! SQLite has one writer. The store's other writes go through its one-connection sqlx write
//! pool, so this writer takes that connection from the pool for the length of its transaction:
//! the two never contend for the write lock within a process (other processes on the same
//! file are waited for, as by every connection, up to the busy timeout).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{
    params, Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior,
};

use crate::in_tx::{CHARGE_ACCOUNT, SET_AUDIT_FRONTIER, TAKE_AUDIT_HEAD, TAKE_HOLD};
use crate::{merkle, Error, Millis, Result};

mod calls;
mod journal;
mod tasks;

/// The connection, opened when first needed and again after a failure left it unusable.
pub(crate) struct DirectWriter {
    path: PathBuf,
    synchronous_full: bool,
    conn: Mutex<Option<Connection>>,
}

impl DirectWriter {
    pub(crate) fn new(path: PathBuf, synchronous_full: bool) -> Self {
        DirectWriter {
            path,
            synchronous_full,
            conn: Mutex::new(None),
        }
    }

    fn open(&self) -> Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // The same settings as the store's other connections: WAL is the file's (set when it
        // was made); durability, keys and zeroing what is deleted are the connection's.
        let sync = if self.synchronous_full {
            "FULL"
        } else {
            "NORMAL"
        };
        conn.execute_batch(&format!(
            "PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON; PRAGMA secure_delete = ON;"
        ))?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(conn)
    }

    /// Runs `work` in one immediate transaction and commits it. A connection a failure left
    /// inside a transaction (a COMMIT the disk refused) is closed, never used again.
    fn transaction<T>(&self, work: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut slot = self.conn.lock().unwrap_or_else(|poisoned| {
            // A panic mid-transaction: whatever state it left, start on a fresh connection.
            let mut slot = poisoned.into_inner();
            *slot = None;
            self.conn.clear_poison();
            slot
        });
        let conn = match &mut *slot {
            Some(conn) => conn,
            empty => empty.insert(self.open()?),
        };
        let result = (|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = work(&tx)?;
            tx.commit()?;
            Ok(value)
        })();
        if result.is_err() && !conn.is_autocommit() && conn.execute_batch("ROLLBACK").is_err() {
            tracing::warn!(
                "the SQLite writer was left inside a transaction after an error; replacing it"
            );
            *slot = None;
        }
        result
    }
}

/// Settles a budget hold once: releases what it held on each account and books `spent`.
fn settle(tx: &Transaction<'_>, id: &str, spent: i64, now: Millis) -> Result<()> {
    let row: Option<(String, i64)> = tx
        .prepare_cached(TAKE_HOLD)?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((accounts, amount)) = row else {
        return Ok(());
    };
    for account in hold_accounts(id, &accounts)? {
        charge(tx, &account, amount, spent, now)?;
    }
    Ok(())
}

/// The accounts a hold row names, leaf to root.
fn hold_accounts(id: &str, accounts: &str) -> Result<Vec<String>> {
    serde_json::from_str(accounts).map_err(|e| Error::Corrupt(format!("budget hold {id}: {e}")))
}

/// Releases `released` held on `account` and books `spent` to it.
fn charge(
    tx: &Transaction<'_>,
    account: &str,
    released: i64,
    spent: i64,
    now: Millis,
) -> Result<()> {
    tx.prepare_cached(CHARGE_ACCOUNT)?
        .execute(params![released, spent, now, account])?;
    Ok(())
}

/// Appends audit records after the last, extending the Merkle tree's frontier.
fn append_audit(tx: &Transaction<'_>, entries: &[(Millis, String)]) -> Result<()> {
    let (size, frontier): (i64, String) = tx
        .prepare_cached(TAKE_AUDIT_HEAD)?
        .query_row([entries.len() as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let first = size - entries.len() as i64;
    let mut tree = merkle::Frontier::from_json(first as u64, &frontier).ok_or_else(|| {
        Error::Corrupt(format!(
            "audit_head holds no valid frontier for size {first}"
        ))
    })?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO audit_log (seq, at, body, leaf_hash) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (i, (at, body)) in entries.iter().enumerate() {
        let seq = first + i as i64;
        let leaf = merkle::leaf_hash(seq, body.as_bytes());
        tree.push(leaf);
        insert.execute(params![seq, at, body, merkle::hex(&leaf)])?;
    }
    tx.prepare_cached(SET_AUDIT_FRONTIER)?
        .execute([tree.to_json()])?;
    Ok(())
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ffi::{SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_CONSTRAINT_UNIQUE};
        match &e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.extended_code == SQLITE_CONSTRAINT_UNIQUE
                    || f.extended_code == SQLITE_CONSTRAINT_PRIMARYKEY =>
            {
                Error::Conflict(e.to_string())
            }
            _ => Error::Sqlite(e),
        }
    }
}
