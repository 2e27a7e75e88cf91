//! Verification of the audit log as the database holds it now: every row's body against its
//! leaf hash, the numbering for gaps, the rebuilt tree against every signed checkpoint, and the
//! checkpoints' signatures against the trusted keys. Each problem names the records it concerns.

use ed25519_dalek::VerifyingKey;
use serde::Serialize;
use steward_store::merkle::{hex, leaf_hash, unhex, Frontier};
use steward_store::Store;

use crate::audit_key::check_signature;

/// Rows read per page: the log is streamed, never held whole.
const PAGE: i64 = 10_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The first record concerned, and the last (the same for one record).
    pub first_seq: i64,
    pub last_seq: i64,
    pub what: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub records: i64,
    /// Of them, records whose body retention has cleared (their leaf hashes remain).
    pub pruned: i64,
    pub checkpoints: usize,
    /// The largest size a valid signature covers.
    pub signed_size: i64,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, first_seq: i64, last_seq: i64, what: String) {
        self.problems.push(Problem {
            first_seq,
            last_seq,
            what,
        });
    }
}

pub async fn verify_log(
    store: &dyn Store,
    trusted: &[VerifyingKey],
) -> steward_store::Result<Report> {
    let mut report = Report::default();
    let checkpoints = store.audit_checkpoints().await?;
    report.checkpoints = checkpoints.len();
    let mut good = Vec::with_capacity(checkpoints.len());
    for c in checkpoints {
        match check_signature(&c, trusted) {
            Ok(()) => good.push(c),
            Err(why) => report.problem(
                0,
                (c.size - 1).max(0),
                format!("the checkpoint at size {} is not valid: {why}", c.size),
            ),
        }
    }
    let (head_size, _) = store.audit_head().await?;
    let mut tree = Frontier::default();
    let mut next_seq = 0i64;
    // The tree can be rebuilt only while no record is missing.
    let mut whole = true;
    // The first record whose change would explain a root mismatch.
    let mut last_matched = 0i64;
    let mut named_since_match = false;
    let mut cp = good.iter().peekable();
    loop {
        let rows = store.audit_rows(next_seq, PAGE).await?;
        let full_page = rows.len() as i64 == PAGE;
        for row in rows {
            if row.seq != next_seq {
                report.problem(
                    next_seq,
                    row.seq - 1,
                    format!(
                        "records {}..={} are missing (deleted from the database)",
                        next_seq,
                        row.seq - 1
                    ),
                );
                whole = false;
            }
            let stored = unhex(&row.leaf_hash);
            let leaf = match (&row.body, stored) {
                (Some(body), stored) => {
                    let computed = leaf_hash(row.seq, body.as_bytes());
                    if stored != Some(computed) {
                        report.problem(
                            row.seq,
                            row.seq,
                            format!(
                                "record {} was changed: its body no longer hashes to its leaf",
                                row.seq
                            ),
                        );
                        named_since_match = true;
                    }
                    computed
                }
                (None, Some(stored)) => {
                    report.pruned += 1;
                    stored
                }
                (None, None) => {
                    report.problem(
                        row.seq,
                        row.seq,
                        format!(
                            "record {} has neither a body nor a valid leaf hash",
                            row.seq
                        ),
                    );
                    named_since_match = true;
                    [0u8; 32]
                }
            };
            report.records += 1;
            next_seq = row.seq + 1;
            if !whole {
                continue;
            }
            tree.push(leaf);
            while let Some(c) = cp.next_if(|c| c.size as u64 <= tree.size()) {
                if c.size as u64 != tree.size() {
                    continue;
                }
                if hex(&tree.root()) == c.root {
                    report.signed_size = c.size;
                    last_matched = c.size;
                    named_since_match = false;
                } else if !named_since_match {
                    // Rows rewritten consistently (body and leaf hash) show only here.
                    report.problem(
                        last_matched,
                        c.size - 1,
                        format!(
                            "the records {}..={} do not match the checkpoint signed at size {}: one or more of them were altered, inserted or reordered",
                            last_matched,
                            c.size - 1,
                            c.size
                        ),
                    );
                }
            }
        }
        if !full_page {
            break;
        }
    }
    if let Some(c) = good.last() {
        if next_seq < c.size {
            report.problem(
                next_seq,
                c.size - 1,
                format!(
                    "records {}..={} are missing: the checkpoint signed at size {} covers them",
                    next_seq,
                    c.size - 1,
                    c.size
                ),
            );
        }
    }
    if next_seq > head_size {
        report.problem(
            head_size,
            next_seq - 1,
            format!(
                "records {}..={} were not appended by Steward: the log's head ends at {}",
                head_size,
                next_seq - 1,
                head_size
            ),
        );
    }
    Ok(report)
}
