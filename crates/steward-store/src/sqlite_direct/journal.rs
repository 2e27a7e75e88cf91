//! The journal's group commit on the one-thread writer.

use rusqlite::{params, OptionalExtension, Transaction};

use super::{append_audit, settle, DirectWriter};
use crate::journal::batch_time;
use crate::{Claim, Error, JournalEntry, Millis, Result};

impl DirectWriter {
    /// Appends `entries`, then — under `claims` — settles `settles` and appends the `audit`
    /// records, atomically ([`Error::Fenced`], and nothing written, if a claim no longer holds).
    pub(crate) fn append_settling(
        &self,
        entries: &[JournalEntry],
        audit: &[(Millis, String)],
        claims: &[Claim],
        settles: &[(String, i64)],
    ) -> Result<()> {
        self.transaction(|tx| {
            let mut insert = tx.prepare_cached(
                "INSERT INTO journal (run_id, seq, phase, kind, name, request_hash, idempotency_key, \
                 body, ok, tokens_in, tokens_out, at, duration_us) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?;
            for e in entries {
                insert.execute(params![
                    e.run_id,
                    e.seq,
                    e.phase,
                    e.kind,
                    e.name,
                    e.request_hash,
                    e.idempotency_key,
                    e.body,
                    e.ok,
                    e.tokens_in,
                    e.tokens_out,
                    e.at,
                    e.duration_us
                ])?;
            }
            check_claims(tx, claims)?;
            let now = batch_time(entries, audit);
            for (hold, spent) in settles {
                settle(tx, hold, *spent, now)?;
            }
            if !audit.is_empty() {
                append_audit(tx, audit)?;
            }
            Ok(())
        })
    }
}

/// Fails with [`Error::Fenced`] unless every claim still holds its run. No row locks needed:
/// the transaction holds SQLite's one write lock, so no claim can move until it ends.
fn check_claims(tx: &Transaction<'_>, claims: &[Claim]) -> Result<()> {
    let mut held = tx.prepare_cached("SELECT lease_owner, lease_epoch FROM runs WHERE id = ?1")?;
    for c in claims {
        let row: Option<(Option<String>, i64)> = held
            .query_row([c.run.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let holds =
            matches!(row, Some((Some(owner), epoch)) if owner == c.node.0 && epoch == c.epoch);
        if !holds {
            return Err(Error::Fenced(c.run.to_string()));
        }
    }
    Ok(())
}
