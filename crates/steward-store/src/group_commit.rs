//! Group commit for the journal. Every step waits for its journal entry to be durable before
//! it acts, so with one transaction per entry an fsync would bound the whole engine. Instead
//! one writer task takes whatever entries are waiting, commits them in one transaction, then
//! answers every waiter: the fsync is shared by all the steps that arrived together. Audit
//! records that go with the entries (a syscall's outcome, a policy decision) share that
//! transaction: auditing costs no commit of its own. A request made under a run's claim is
//! committed only while the claim holds (checked in the same transaction).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::{Claim, Error, JournalEntry, Millis, Result, Store};

type Waiter = oneshot::Sender<Result<()>>;
type Audit = Vec<(Millis, String)>;
type Request = (Vec<JournalEntry>, Audit, Option<Claim>, Waiter);

/// A handle to the journal's group-commit writer. Cheap to clone.
#[derive(Clone)]
pub struct JournalWriter {
    tx: mpsc::Sender<Request>,
}

impl JournalWriter {
    /// Starts the writer task. It ends when every handle is dropped.
    pub fn start(store: Arc<dyn Store>, max_batch: usize) -> Self {
        let (tx, rx) = mpsc::channel(max_batch.max(1) * 4);
        tokio::spawn(run(store, rx, max_batch.max(1)));
        JournalWriter { tx }
    }

    /// Appends entries and returns once they are durable.
    pub async fn append(&self, claim: Option<&Claim>, entries: Vec<JournalEntry>) -> Result<()> {
        self.append_audited(claim, entries, Vec::new()).await
    }

    /// Appends entries and the audit records that go with them — `(at, body)` — atomically,
    /// and returns once both are durable; with a `claim`, only while its run is held under it
    /// ([`Error::Fenced`] otherwise, and nothing is written).
    pub async fn append_audited(
        &self,
        claim: Option<&Claim>,
        entries: Vec<JournalEntry>,
        audit: Audit,
    ) -> Result<()> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((entries, audit, claim.cloned(), done))
            .await
            .map_err(|_| Error::Config("the journal writer has stopped".into()))?;
        wait.await
            .map_err(|_| Error::Config("the journal writer stopped before committing".into()))?
    }
}

async fn run(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Request>, max_batch: usize) {
    let mut pending: Vec<Request> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut count = first.0.len();
        pending.push(first);
        while count < max_batch {
            match rx.try_recv() {
                Ok(next) => {
                    count += next.0.len();
                    pending.push(next);
                }
                Err(_) => break,
            }
        }
        let batch: Vec<JournalEntry> = pending
            .iter()
            .flat_map(|(e, _, _, _)| e.iter().cloned())
            .collect();
        let audit: Audit = pending
            .iter()
            .flat_map(|(_, a, _, _)| a.iter().cloned())
            .collect();
        let mut claims: Vec<Claim> = pending
            .iter()
            .filter_map(|(_, _, c, _)| c.clone())
            .collect();
        claims.sort_by(|a, b| a.run.as_str().cmp(b.run.as_str()));
        claims.dedup();
        match store.append_journal(&batch, &audit, &claims).await {
            Ok(()) => {
                for (_, _, _, w) in pending.drain(..) {
                    let _ = w.send(Ok(()));
                }
            }
            // One bad request (a step a stale node already recorded, a claim since replaced)
            // must not fail the others that shared its transaction: retry each on its own.
            Err(_) => {
                for (entries, audit, claim, w) in pending.drain(..) {
                    let claims: Vec<Claim> = claim.into_iter().collect();
                    let _ = w.send(store.append_journal(&entries, &audit, &claims).await);
                }
            }
        }
    }
}
