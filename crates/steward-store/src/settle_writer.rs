//! Group commit for the ends of gateway calls. A call's answer goes to its client as soon as the
//! upstream gives it; settling its budget hold, recording its outcome and counting its tokens
//! follow here, many calls to one transaction. Until a call is settled its hold counts in full,
//! so no cap is ever passed; a hold a crash leaves unsettled is booked in full by the stale-hold
//! sweep, so spend is never under-counted.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::{CallEnd, Store};

enum Msg {
    End(CallEnd),
    /// Answered once everything queued before it is durable.
    Flush(oneshot::Sender<()>),
}

/// A handle to the settle writer. Cheap to clone.
#[derive(Clone)]
pub struct SettleWriter {
    tx: mpsc::Sender<Msg>,
}

const MAX_BATCH: usize = 256;
/// A batch that keeps failing is retried this many times before it is left to the sweep.
const ATTEMPTS: u32 = 5;

impl SettleWriter {
    /// Starts the writer task. It ends when every handle is dropped.
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 16);
        tokio::spawn(run(store, rx));
        SettleWriter { tx }
    }

    /// Queues a call's end. Waits only when the queue is full (backpressure).
    pub async fn settle(&self, end: CallEnd) {
        if self.tx.send(Msg::End(end)).await.is_err() {
            tracing::error!("the settle writer has stopped; the call's hold is left to the sweep");
        }
    }

    /// Returns once every call end queued before it is durable.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn run(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Msg>) {
    let mut ends: Vec<CallEnd> = Vec::new();
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::End(e) => ends.push(e),
                Msg::Flush(f) => flushes.push(f),
            }
            if ends.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !ends.is_empty() {
            write(&*store, &ends).await;
            ends.clear();
        }
        for f in flushes.drain(..) {
            let _ = f.send(());
        }
    }
}

async fn write(store: &dyn Store, ends: &[CallEnd]) {
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
