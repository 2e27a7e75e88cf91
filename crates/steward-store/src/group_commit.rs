//! Group commit for the journal. Every step waits for its journal entry to be durable before
//! it acts, so with one transaction per entry an fsync would bound the whole engine. Instead
//! one writer task takes whatever entries are waiting, commits them in one transaction, then
//! answers every waiter: the fsync is shared by all the steps that arrived together. Audit
//! records that go with the entries (a syscall's outcome, a policy decision) share that
//! transaction: auditing costs no commit of its own. A request made under a run's claim is
//! committed only while the claim holds (checked in the same transaction).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::{Claim, Error, JournalEntry, JournalStore, Millis, Result};

type Waiter = oneshot::Sender<Result<()>>;
type Audit = Vec<(Millis, String)>;
/// Budget holds to settle with the entries: `(hold id, spent)`.
type Settles = Vec<(String, i64)>;

struct Request {
    entries: Vec<JournalEntry>,
    audit: Audit,
    claim: Option<Claim>,
    settles: Settles,
    done: Waiter,
}

/// A handle to the journal's group-commit writer. Cheap to clone.
#[derive(Clone)]
pub struct JournalWriter {
    tx: mpsc::Sender<Request>,
}

impl JournalWriter {
    /// Starts the writer. It ends when every handle is dropped.
    pub fn start(store: Arc<dyn JournalStore>, max_batch: usize) -> Self {
        let (tx, rx) = mpsc::channel(max_batch.max(1) * 4);
        let max_batch = max_batch.max(1);
        if store.writes_on_calling_thread() {
            // A store that commits on the calling thread (SQLite) gets a thread of its own, so
            // its fsyncs never hold up one of the runtime's workers.
            let spawned = std::thread::Builder::new()
                .name("journal-writer".into())
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(run(store, rx, max_batch)),
                        // Every append then fails: "the journal writer has stopped".
                        Err(e) => tracing::error!("the journal writer cannot start: {e}"),
                    }
                });
            if let Err(e) = spawned {
                tracing::error!("the journal writer's thread cannot start: {e}");
            }
        } else {
            tokio::spawn(run(store, rx, max_batch));
        }
        JournalWriter { tx }
    }

    /// Appends entries and returns once they are durable.
    pub async fn append(&self, claim: Option<&Claim>, entries: Vec<JournalEntry>) -> Result<()> {
        self.append_audited(claim, entries, Vec::new(), Vec::new())
            .await
    }

    /// Appends entries, the audit records that go with them — `(at, body)` — and the
    /// settlement of budget holds — `(hold id, spent)` — atomically, and returns once all are
    /// durable; with a `claim`, only while its run is held under it ([`Error::Fenced`]
    /// otherwise, and nothing is written).
    pub async fn append_audited(
        &self,
        claim: Option<&Claim>,
        entries: Vec<JournalEntry>,
        audit: Audit,
        settles: Settles,
    ) -> Result<()> {
        let (done, wait) = oneshot::channel();
        let request = Request {
            entries,
            audit,
            claim: claim.cloned(),
            settles,
            done,
        };
        self.tx
            .send(request)
            .await
            .map_err(|_| Error::Config("the journal writer has stopped".into()))?;
        wait.await
            .map_err(|_| Error::Config("the journal writer stopped before committing".into()))?
    }
}

async fn run(store: Arc<dyn JournalStore>, mut rx: mpsc::Receiver<Request>, max_batch: usize) {
    let mut pending: Vec<Request> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut count = first.entries.len();
        pending.push(first);
        while count < max_batch {
            match rx.try_recv() {
                Ok(next) => {
                    count += next.entries.len();
                    pending.push(next);
                }
                Err(_) => break,
            }
        }
        let batch: Vec<JournalEntry> = pending
            .iter()
            .flat_map(|r| r.entries.iter().cloned())
            .collect();
        let audit: Audit = pending
            .iter()
            .flat_map(|r| r.audit.iter().cloned())
            .collect();
        let settles: Settles = pending
            .iter()
            .flat_map(|r| r.settles.iter().cloned())
            .collect();
        let mut claims: Vec<Claim> = pending.iter().filter_map(|r| r.claim.clone()).collect();
        claims.sort_by(|a, b| a.run.as_str().cmp(b.run.as_str()));
        claims.dedup();
        match store
            .append_settling(&batch, &audit, &claims, &settles)
            .await
        {
            Ok(()) => {
                for r in pending.drain(..) {
                    let _ = r.done.send(Ok(()));
                }
            }
            // One bad request (a step a stale node already recorded, a claim since replaced)
            // must not fail the others that shared its transaction: retry each on its own.
            Err(_) => {
                for r in pending.drain(..) {
                    let claims: Vec<Claim> = r.claim.into_iter().collect();
                    let result = store
                        .append_settling(&r.entries, &r.audit, &claims, &r.settles)
                        .await;
                    let _ = r.done.send(result);
                }
            }
        }
    }
}

/// Runs a writer's loop: on a thread of its own (with a runtime of its own for its timers and
/// channels) when its store blocks the thread it writes on, else as a task. A writer that
/// cannot start is logged; its handles then fail every request ("the writer has stopped").
pub(crate) fn spawn_writer(
    name: &str,
    own_thread: bool,
    work: impl std::future::Future<Output = ()> + Send + 'static,
) {
    if !own_thread {
        tokio::spawn(work);
        return;
    }
    let what = name.to_string();
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(work),
                Err(e) => tracing::error!("the {what} cannot start: {e}"),
            }
        });
    if let Err(e) = spawned {
        tracing::error!("the {name}'s thread cannot start: {e}");
    }
}
