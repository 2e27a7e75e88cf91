//! Group commit for task queues. Enqueues, leases and task ends are small writes, so with one
//! transaction each a commit (an fsync on SQLite) would bound the queue. One writer task takes
//! whatever is waiting, commits the enqueues in one transaction, then the leases (so they see
//! those tasks), then the ends, and answers every caller with its own result.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::{Error, LeaseRequest, Millis, NewTask, Result, Store, TaskFinish, TaskRecord};

enum Op {
    Enqueue(NewTask, Millis, oneshot::Sender<Result<(TaskRecord, bool)>>),
    Lease(LeaseRequest, oneshot::Sender<Result<Vec<TaskRecord>>>),
    Finish(TaskFinish, Millis, oneshot::Sender<Result<bool>>),
}

const MAX_BATCH: usize = 512;

/// A handle to the task writer. Cheap to clone.
#[derive(Clone)]
pub struct TaskWriter {
    tx: mpsc::Sender<Op>,
}

fn stopped<T>(_: T) -> Error {
    Error::Config("the task writer has stopped".into())
}

impl TaskWriter {
    /// Starts the writer task. It ends when every handle is dropped.
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(run(store, rx));
        TaskWriter { tx }
    }

    /// Enqueues `task` (see `TaskStore::enqueue_tasks`) once it is durable.
    pub async fn enqueue(&self, task: NewTask, now: Millis) -> Result<(TaskRecord, bool)> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Op::Enqueue(task, now, done))
            .await
            .map_err(stopped)?;
        wait.await.map_err(stopped)?
    }

    /// Leases tasks (see `TaskStore::lease_tasks`).
    pub async fn lease(&self, request: LeaseRequest) -> Result<Vec<TaskRecord>> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Op::Lease(request, done))
            .await
            .map_err(stopped)?;
        wait.await.map_err(stopped)?
    }

    /// Ends a leased task (see `TaskStore::finish_tasks`) once it is durable.
    pub async fn finish(&self, end: TaskFinish, now: Millis) -> Result<bool> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Op::Finish(end, now, done))
            .await
            .map_err(stopped)?;
        wait.await.map_err(stopped)?
    }
}

async fn run(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Op>) {
    while let Some(first) = rx.recv().await {
        let mut enqueues = Vec::new();
        let mut leases = Vec::new();
        let mut finishes = Vec::new();
        let mut next = Some(first);
        while let Some(op) = next.take() {
            match op {
                Op::Enqueue(t, now, w) => enqueues.push(((t, now), w)),
                Op::Lease(r, w) => leases.push((r, w)),
                Op::Finish(f, now, w) => finishes.push(((f, now), w)),
            }
            if enqueues.len() + leases.len() + finishes.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !enqueues.is_empty() {
            let (items, waiters): (Vec<_>, Vec<_>) = enqueues.into_iter().unzip();
            answer(&items, waiters, store.enqueue_tasks(&items).await, |one| {
                let store = store.clone();
                async move { Ok(store.enqueue_tasks(&[one]).await?.remove(0)) }
            })
            .await;
        }
        if !leases.is_empty() {
            let (items, waiters): (Vec<_>, Vec<_>) = leases.into_iter().unzip();
            answer(&items, waiters, store.lease_tasks(&items).await, |one| {
                let store = store.clone();
                async move { Ok(store.lease_tasks(&[one]).await?.remove(0)) }
            })
            .await;
        }
        if !finishes.is_empty() {
            let (items, waiters): (Vec<_>, Vec<_>) = finishes.into_iter().unzip();
            answer(&items, waiters, store.finish_tasks(&items).await, |one| {
                let store = store.clone();
                async move { Ok(store.finish_tasks(&[one]).await?.remove(0)) }
            })
            .await;
        }
    }
}

/// Gives each waiter its result; when the shared transaction failed, each item is tried on its
/// own, so one bad item (a dedup key another node took meanwhile) fails nobody else.
async fn answer<I: Clone, T, F, Fut>(
    items: &[I],
    waiters: Vec<oneshot::Sender<Result<T>>>,
    together: Result<Vec<T>>,
    alone: F,
) where
    F: Fn(I) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    match together {
        Ok(results) => {
            for (w, r) in waiters.into_iter().zip(results) {
                let _ = w.send(Ok(r));
            }
        }
        Err(_) => {
            for (w, item) in waiters.into_iter().zip(items.iter().cloned()) {
                let _ = w.send(alone(item).await);
            }
        }
    }
}
