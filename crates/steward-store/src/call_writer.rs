//! Group commit for gateway calls, their starts and their ends in the same transactions.
//!
//! A call's budget hold and its `started` record must be durable before any upstream is asked,
//! so the start is on the caller's path: calls that arrive together share one transaction and
//! one fsync, each hold still taken or refused on its own. A call's end (its hold settled, its
//! outcome recorded, its tokens counted) is not: the answer has gone to the client already, and
//! until the end is written the hold counts in full, so no cap is ever passed. Ends therefore
//! wait a moment to ride along with the next starts instead of taking a commit of their own —
//! which a start would otherwise queue behind on SQLite's one writer. A hold a crash leaves
//! unsettled is booked in full by the stale-hold sweep, so spend is never under-counted.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::{CallBegin, CallEnd, Error, GatewayStore, Millis, Result};

struct Begin {
    begin: CallBegin,
    now: Millis,
    done: oneshot::Sender<Result<Option<String>>>,
}

enum Msg {
    Begin(Begin),
    End(CallEnd),
    /// Answered once everything queued before it is durable.
    Flush(oneshot::Sender<()>),
}

/// A handle to the call writer. Cheap to clone.
#[derive(Clone)]
pub struct CallWriter {
    tx: mpsc::Sender<Msg>,
}

const MAX_BEGINS: usize = 128;
const MAX_ENDS: usize = 256;
/// How long ends with no start to ride along with wait for one before they are written alone.
const ENDS_WAIT: Duration = Duration::from_millis(5);
/// Ends that keep failing are retried this many times before they are left to the sweep.
const ATTEMPTS: u32 = 5;

impl CallWriter {
    /// Starts the writer. It ends when every handle is dropped.
    pub fn start(store: Arc<dyn GatewayStore>) -> Self {
        let (tx, rx) = mpsc::channel((MAX_BEGINS + MAX_ENDS) * 4);
        let own_thread = store.writes_on_calling_thread();
        crate::group_commit::spawn_writer("call-writer", own_thread, run(store, rx));
        CallWriter { tx }
    }

    /// Takes the call's hold and records it as started, returning once both are durable — or
    /// the account whose cap the hold would pass, with nothing written.
    pub async fn begin(&self, begin: CallBegin, now: Millis) -> Result<Option<String>> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Msg::Begin(Begin { begin, now, done }))
            .await
            .map_err(|_| Error::Config("the call writer has stopped".into()))?;
        wait.await
            .map_err(|_| Error::Config("the call writer stopped before committing".into()))?
    }

    /// Queues a call's end. Waits only when the queue is full (backpressure).
    pub async fn settle(&self, end: CallEnd) {
        if self.tx.send(Msg::End(end)).await.is_err() {
            tracing::error!("the call writer has stopped; the call's hold is left to the sweep");
        }
    }

    /// Returns once every call start and end queued before it is durable.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

#[derive(Default)]
struct Batch {
    begins: Vec<Begin>,
    ends: Vec<CallEnd>,
    flushes: Vec<oneshot::Sender<()>>,
}

impl Batch {
    fn add(&mut self, msg: Msg) {
        match msg {
            Msg::Begin(b) => self.begins.push(b),
            Msg::End(e) => self.ends.push(e),
            Msg::Flush(f) => self.flushes.push(f),
        }
    }

    fn full(&self) -> bool {
        self.begins.len() >= MAX_BEGINS || self.ends.len() >= MAX_ENDS
    }

    /// Whether someone waits on this batch: a start, or a flush.
    fn awaited(&self) -> bool {
        !self.begins.is_empty() || !self.flushes.is_empty()
    }

    /// Takes in what is queued already, without waiting.
    fn gather(&mut self, rx: &mut mpsc::Receiver<Msg>) {
        while !self.full() {
            match rx.try_recv() {
                Ok(msg) => self.add(msg),
                Err(_) => break,
            }
        }
    }
}

async fn run(store: Arc<dyn GatewayStore>, mut rx: mpsc::Receiver<Msg>) {
    while let Some(first) = rx.recv().await {
        let mut batch = Batch::default();
        batch.add(first);
        batch.gather(&mut rx);
        if !batch.awaited() && !batch.full() {
            // Only ends: give a start a moment to come and carry them.
            if let Ok(Some(msg)) = tokio::time::timeout(ENDS_WAIT, rx.recv()).await {
                batch.add(msg);
                batch.gather(&mut rx);
            }
        }
        write(&*store, &mut batch).await;
    }
}

async fn write(store: &dyn GatewayStore, batch: &mut Batch) {
    let begins: Vec<CallBegin> = batch.begins.iter().map(|b| b.begin.clone()).collect();
    // The starts are written at the latest of their calls' times.
    let now = batch.begins.iter().map(|b| b.now).max().unwrap_or_default();
    match store.write_calls(&batch.ends, &begins, now).await {
        Ok(refused) if refused.len() == batch.begins.len() => {
            for (b, refused) in batch.begins.drain(..).zip(refused) {
                let _ = b.done.send(Ok(refused));
            }
        }
        // One bad start (an id already recorded) must not fail what shared its transaction:
        // the ends are written on their own, and each start alone.
        _ => {
            write_ends(store, &batch.ends).await;
            for b in batch.begins.drain(..) {
                let c = &b.begin;
                let result = store
                    .begin_call(&c.call, &c.accounts, c.amount, b.now)
                    .await;
                let _ = b.done.send(result);
            }
        }
    }
    for f in batch.flushes.drain(..) {
        let _ = f.send(());
    }
}

async fn write_ends(store: &dyn GatewayStore, ends: &[CallEnd]) {
    if ends.is_empty() {
        return;
    }
    for attempt in 1..=ATTEMPTS {
        match store.end_calls(ends).await {
            Ok(()) => return,
            Err(e) if attempt < ATTEMPTS => {
                tracing::warn!(error = %e, attempt, calls = ends.len(), "settling calls failed; retrying");
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
            Err(e) => {
                tracing::error!(error = %e, calls = ends.len(), "settling calls failed; their holds are left to the stale-hold sweep, which books them in full")
            }
        }
    }
}
