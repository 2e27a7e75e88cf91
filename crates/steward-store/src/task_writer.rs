//! Group commit for task queues. Enqueues, leases and task ends are small writes, so with one
//! transaction each a commit (an fsync on SQLite) would bound the queue. One writer task takes
//! whatever is waiting and commits it in one transaction — the enqueues first, then the leases
//! (so they see those tasks), then the ends — and answers every caller with its own result.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::{
    Error, LeaseRequest, Millis, NewTask, Result, Store, TaskBatch, TaskBatchResult, TaskFinish,
    TaskRecord,
};

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
        let mut batch = TaskBatch::default();
        let mut waiters = Waiters::default();
        let mut next = Some(first);
        let mut n = 0;
        while let Some(op) = next.take() {
            match op {
                Op::Enqueue(t, now, w) => {
                    batch.enqueues.push((t, now));
                    waiters.enqueues.push(w);
                }
                Op::Lease(r, w) => {
                    batch.leases.push(r);
                    waiters.leases.push(w);
                }
                Op::Finish(f, now, w) => {
                    batch.finishes.push((f, now));
                    waiters.finishes.push(w);
                }
            }
            n += 1;
            if n < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        match store.task_batch(&batch).await {
            Ok(r) => waiters.answer(r),
            // One bad item (a dedup key another node took meanwhile) must fail nobody else:
            // each item again, on its own.
            Err(_) => {
                for ((t, now), w) in batch.enqueues.into_iter().zip(waiters.enqueues) {
                    let one = TaskBatch {
                        enqueues: vec![(t, now)],
                        ..TaskBatch::default()
                    };
                    let _ = w.send(
                        store
                            .task_batch(&one)
                            .await
                            .map(|mut r| r.enqueued.remove(0)),
                    );
                }
                for (r, w) in batch.leases.into_iter().zip(waiters.leases) {
                    let one = TaskBatch {
                        leases: vec![r],
                        ..TaskBatch::default()
                    };
                    let _ = w.send(store.task_batch(&one).await.map(|mut r| r.leased.remove(0)));
                }
                for ((f, now), w) in batch.finishes.into_iter().zip(waiters.finishes) {
                    let one = TaskBatch {
                        finishes: vec![(f, now)],
                        ..TaskBatch::default()
                    };
                    let _ = w.send(
                        store
                            .task_batch(&one)
                            .await
                            .map(|mut r| r.finished.remove(0)),
                    );
                }
            }
        }
    }
}

#[derive(Default)]
struct Waiters {
    enqueues: Vec<oneshot::Sender<Result<(TaskRecord, bool)>>>,
    leases: Vec<oneshot::Sender<Result<Vec<TaskRecord>>>>,
    finishes: Vec<oneshot::Sender<Result<bool>>>,
}

impl Waiters {
    fn answer(self, r: TaskBatchResult) {
        for (w, v) in self.enqueues.into_iter().zip(r.enqueued) {
            let _ = w.send(Ok(v));
        }
        for (w, v) in self.leases.into_iter().zip(r.leased) {
            let _ = w.send(Ok(v));
        }
        for (w, v) in self.finishes.into_iter().zip(r.finished) {
            let _ = w.send(Ok(v));
        }
    }
}
