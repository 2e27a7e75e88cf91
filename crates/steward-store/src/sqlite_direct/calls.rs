//! Gateway calls' starts and ends on the one-thread writer: what the
//! [`CallWriter`](crate::CallWriter) commits, each start on the caller's path.

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension, Transaction};

use super::{append_audit, charge, hold_accounts, DirectWriter};
use crate::gateway_calls::end_records;
use crate::in_tx::{HOLD_ON_ACCOUNT, INSERT_HOLD, TAKE_HOLD};
use crate::{CallBegin, CallEnd, Millis, PeriodStarts, Result, HOLD_CALL};

impl DirectWriter {
    /// Ends `ends` (their audit records appended, holds settled, outcomes and tokens recorded),
    /// then begins `begins` at `now` (each hold taken or refused on its own; a refused one
    /// writes nothing), in one transaction. Returns, per start, the account that refused it.
    pub(crate) fn write_calls(
        &self,
        ends: &[CallEnd],
        begins: &[CallBegin],
        now: Millis,
    ) -> Result<Vec<Option<String>>> {
        self.transaction(|tx| {
            // Ends first: a settled hold frees what a call begun in the same commit may take.
            let audit = end_records(ends);
            if !audit.is_empty() {
                append_audit(tx, &audit)?;
            }
            end_calls(tx, ends)?;
            let mut refused = Vec::with_capacity(begins.len());
            for c in begins {
                if let Some(account) = hold(tx, c, now)? {
                    refused.push(Some(account));
                    continue;
                }
                tx.prepare_cached(
                    "INSERT INTO gateway_calls (id, agent, run_id, model, status, stream, tokens_in, \
                     tokens_out, started_at, duration_us) VALUES (?1, ?2, ?3, ?4, 'started', ?5, 0, 0, ?6, 0)",
                )?
                .execute(params![
                    c.call.id,
                    c.call.agent,
                    c.call.run_id,
                    c.call.model,
                    i64::from(c.call.stream),
                    now
                ])?;
                refused.push(None);
            }
            Ok(refused)
        })
    }
}

/// Takes a call's hold on every account (leaf to root) and records it; returns the account
/// whose cap it would pass, having undone what it took on the accounts before.
fn hold(tx: &Transaction<'_>, c: &CallBegin, now: Millis) -> Result<Option<String>> {
    if c.accounts.is_empty() {
        return Ok(None);
    }
    let periods = PeriodStarts::at(now);
    // A refusal on the first account changed nothing; one further up must undo the accounts
    // below it, so those holds go inside a savepoint (no round trips here: it is cheap).
    let nested = c.accounts.len() > 1;
    if nested {
        tx.execute_batch("SAVEPOINT call_hold")?;
    }
    let mut take = tx.prepare_cached(HOLD_ON_ACCOUNT)?;
    for account in &c.accounts {
        let held = take.execute(params![periods.day, periods.month, c.amount, now, account])?;
        if held == 0 {
            if nested {
                tx.execute_batch("ROLLBACK TO call_hold; RELEASE call_hold")?;
            }
            return Ok(Some(account.clone()));
        }
    }
    if nested {
        tx.execute_batch("RELEASE call_hold")?;
    }
    let accounts =
        serde_json::to_string(&c.accounts).map_err(|e| crate::Error::Corrupt(e.to_string()))?;
    tx.prepare_cached(INSERT_HOLD)?.execute(params![
        c.call.id,
        HOLD_CALL,
        c.call.run_id,
        accounts,
        c.amount,
        now
    ])?;
    Ok(None)
}

/// Ends calls: each hold deleted (one already settled is found gone and charged nothing), each
/// account charged once for all of them in name order, outcomes recorded, tokens counted.
fn end_calls(tx: &Transaction<'_>, ends: &[CallEnd]) -> Result<()> {
    let Some(at) = ends.iter().map(|e| e.at).max() else {
        return Ok(());
    };
    let mut charges: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut take = tx.prepare_cached(TAKE_HOLD)?;
    for e in ends {
        let held: Option<(String, i64)> = take
            .query_row([&e.id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((accounts, amount)) = held {
            for account in hold_accounts(&e.id, &accounts)? {
                let c = charges.entry(account).or_default();
                c.0 += amount;
                c.1 += e.spent;
            }
        }
    }
    for (account, (released, spent)) in &charges {
        charge(tx, account, *released, *spent, at)?;
    }
    let mut record = tx.prepare_cached(
        "UPDATE gateway_calls SET deployment = ?2, status = ?3, error = ?4, tokens_in = ?5, \
         tokens_out = ?6, duration_us = ?7 WHERE id = ?1",
    )?;
    let mut count = tx.prepare_cached(
        "UPDATE rate_windows SET tokens = tokens + ?1 WHERE scope = ?2 AND window_start = ?3",
    )?;
    for e in ends {
        let o = &e.outcome;
        record.execute(params![
            e.id,
            o.deployment,
            o.status,
            o.error,
            o.tokens_in,
            o.tokens_out,
            o.duration_us
        ])?;
        let tokens = o.tokens_in + o.tokens_out;
        if tokens > 0 {
            for scope in &e.rate_scopes {
                count.execute(params![tokens, scope, e.rate_window])?;
            }
        }
    }
    Ok(())
}
