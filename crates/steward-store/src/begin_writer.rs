//! Group commit for the starts of gateway calls. A call's budget hold and its `started` record
//! must be durable before any upstream is asked; with one transaction per call, every call
//! waited for an fsync of its own. Calls that arrive together share one transaction and one
//! fsync here, each hold still taken or refused on its own.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::{CallBegin, Error, Millis, Result, Store};

struct Request {
    begin: CallBegin,
    now: Millis,
    done: oneshot::Sender<Result<Option<String>>>,
}

/// A handle to the begin writer. Cheap to clone.
#[derive(Clone)]
pub struct BeginWriter {
    tx: mpsc::Sender<Request>,
}

const MAX_BATCH: usize = 128;

impl BeginWriter {
    /// Starts the writer task. It ends when every handle is dropped.
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(run(store, rx));
        BeginWriter { tx }
    }

    /// Takes the call's hold and records it as started, returning once both are durable — or
    /// the account whose cap the hold would pass, with nothing written.
    pub async fn begin(&self, begin: CallBegin, now: Millis) -> Result<Option<String>> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Request { begin, now, done })
            .await
            .map_err(|_| Error::Config("the call writer has stopped".into()))?;
        wait.await
            .map_err(|_| Error::Config("the call writer stopped before committing".into()))?
    }
}

async fn run(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Request>) {
    let mut pending: Vec<Request> = Vec::new();
    while let Some(first) = rx.recv().await {
        pending.push(first);
        while pending.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => pending.push(next),
                Err(_) => break,
            }
        }
        let begins: Vec<CallBegin> = pending.iter().map(|r| r.begin.clone()).collect();
        // The batch is written at the latest of its calls' times.
        let now = pending.iter().map(|r| r.now).max().unwrap_or_default();
        match store.begin_calls(&begins, now).await {
            Ok(refused) if refused.len() == pending.len() => {
                for (r, refused) in pending.drain(..).zip(refused) {
                    let _ = r.done.send(Ok(refused));
                }
            }
            // One bad call (an id already recorded) must not fail the others that shared its
            // transaction: each is tried on its own.
            _ => {
                for r in pending.drain(..) {
                    let c = &r.begin;
                    let result = store
                        .begin_call(&c.call, &c.accounts, c.amount, r.now)
                        .await;
                    let _ = r.done.send(result);
                }
            }
        }
    }
}
