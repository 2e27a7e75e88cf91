//! Group commit for task queues. Enqueues, leases and task ends are small writes, so with one
//! transaction each a commit (an fsync on SQLite) would bound the queue. One writer task takes
//! whatever is waiting and commits it in one transaction — the enqueues first, then the leases
//! (so they see those tasks), then the ends — and answers every caller with its own result.
//!
//! A lease request that finds nothing waits here, parked, for up to its `wait`: it joins every
//! cycle that enqueues on its queue or ends a task (which may free room under the queue's
//! limits), and a cycle every `RECHECK` (tasks from other nodes, delayed tasks coming due). A
//! task enqueued for a waiting worker is so leased in the very transaction that enqueues it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::{
    Error, LeaseRequest, Millis, NewTask, Result, TaskBatch, TaskFinish, TaskRecord, TaskStore,
};

type LeaseReply = oneshot::Sender<Result<Vec<TaskRecord>>>;

enum Op {
    Enqueue(NewTask, Millis, oneshot::Sender<Result<(TaskRecord, bool)>>),
    Lease(LeaseRequest, Duration, LeaseReply),
    Finish(TaskFinish, Millis, oneshot::Sender<Result<bool>>),
    /// Look again for every parked request now (queue settings changed, leases swept).
    Recheck,
}

const MAX_BATCH: usize = 512;
/// How often parked lease requests look again when nothing on this node wakes them.
const RECHECK: Duration = Duration::from_millis(100);

/// A lease request waiting for tasks.
struct Parked {
    request: LeaseRequest,
    /// When it was asked, by the caller's clock and by this process's.
    asked: (Millis, Instant),
    until: Instant,
    reply: LeaseReply,
}

impl Parked {
    /// The request as of now: leases it takes run from now.
    fn now(&self) -> LeaseRequest {
        let mut r = self.request.clone();
        r.now = self.asked.0 + self.asked.1.elapsed().as_millis() as Millis;
        r
    }
}

/// A handle to the task writer. Cheap to clone.
#[derive(Clone)]
pub struct TaskWriter {
    tx: mpsc::Sender<Op>,
    /// Set when the server shuts down: no request waits any more.
    draining: Arc<AtomicBool>,
}

fn stopped<T>(_: T) -> Error {
    Error::Config("the task writer has stopped".into())
}

impl TaskWriter {
    /// Starts the writer. It ends when every handle is dropped.
    pub fn start(store: Arc<dyn TaskStore>) -> Self {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        let draining = Arc::new(AtomicBool::new(false));
        let own_thread = store.writes_on_calling_thread();
        crate::group_commit::spawn_writer(
            "task-writer",
            own_thread,
            run(store, rx, draining.clone()),
        );
        TaskWriter { tx, draining }
    }

    /// Shutting down: waiting lease requests are answered with what there is (often nothing)
    /// at once, and new ones do not wait, so no long poll holds the server open.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.recheck();
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

    /// Leases tasks (see `TaskStore::lease_tasks`), waiting up to `wait` for some.
    pub async fn lease(&self, request: LeaseRequest, wait: Duration) -> Result<Vec<TaskRecord>> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Op::Lease(request, wait, done))
            .await
            .map_err(stopped)?;
        answer.await.map_err(stopped)?
    }

    /// Makes every waiting lease request look again at once.
    pub fn recheck(&self) {
        // A full channel means a cycle is coming anyway.
        let _ = self.tx.try_send(Op::Recheck);
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

async fn run(store: Arc<dyn TaskStore>, mut rx: mpsc::Receiver<Op>, draining: Arc<AtomicBool>) {
    let mut parked: Vec<Parked> = Vec::new();
    let mut last_recheck = Instant::now();
    loop {
        // Work, or — while requests wait — the next time to look again for them.
        let first = if parked.is_empty() {
            match rx.recv().await {
                Some(op) => Some(op),
                None => break,
            }
        } else {
            let next = (last_recheck + RECHECK)
                .min(parked.iter().map(|p| p.until).min().unwrap_or(last_recheck));
            match tokio::time::timeout_at(next, rx.recv()).await {
                Ok(Some(op)) => Some(op),
                Ok(None) => break,
                Err(_) => None,
            }
        };
        let mut batch = TaskBatch::default();
        let mut waiters = Waiters::default();
        let mut fresh: Vec<(LeaseRequest, Duration, LeaseReply)> = Vec::new();
        let mut recheck = first.is_none() || last_recheck.elapsed() >= RECHECK;
        let mut next = first;
        let mut n = 0;
        while let Some(op) = next.take() {
            match op {
                Op::Enqueue(t, now, w) => {
                    batch.enqueues.push((t, now));
                    waiters.enqueues.push(w);
                }
                Op::Lease(r, wait, w) => fresh.push((r, wait, w)),
                Op::Finish(f, now, w) => {
                    batch.finishes.push((f, now));
                    waiters.finishes.push(w);
                }
                Op::Recheck => recheck = true,
            }
            n += 1;
            if n < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        // Parked requests go first (they asked first), when this cycle may have tasks for them.
        let enqueued: HashSet<String> = batch
            .enqueues
            .iter()
            .map(|(t, _)| t.queue.clone())
            .collect();
        let freed = !batch.finishes.is_empty();
        if recheck {
            last_recheck = Instant::now();
        }
        let (joining, waiting): (Vec<Parked>, Vec<Parked>) = std::mem::take(&mut parked)
            .into_iter()
            .filter(|p| !p.reply.is_closed())
            .partition(|p| recheck || freed || enqueued.contains(&p.request.queue));
        parked = waiting;
        let at = Instant::now();
        for p in &joining {
            batch.leases.push(p.now());
        }
        let mut leasers: Vec<Parked> = joining;
        for (r, wait, reply) in fresh {
            batch.leases.push(r.clone());
            leasers.push(Parked {
                asked: (r.now, at),
                request: r,
                until: at + wait,
                reply,
            });
        }
        match store.task_batch(&batch).await {
            Ok(r) => {
                let wait = !draining.load(Ordering::SeqCst);
                for (p, leased) in leasers.into_iter().zip(r.leased) {
                    if wait && leased.is_empty() && Instant::now() < p.until {
                        parked.push(p);
                    } else {
                        let _ = p.reply.send(Ok(leased));
                    }
                }
                waiters.answer(r.enqueued, r.finished);
            }
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
                for p in leasers {
                    let one = TaskBatch {
                        leases: vec![p.now()],
                        ..TaskBatch::default()
                    };
                    match store.task_batch(&one).await {
                        Ok(mut r)
                            if r.leased[0].is_empty()
                                && Instant::now() < p.until
                                && !draining.load(Ordering::SeqCst) =>
                        {
                            drop(r.leased.remove(0));
                            parked.push(p);
                        }
                        other => {
                            let _ = p.reply.send(other.map(|mut r| r.leased.remove(0)));
                        }
                    }
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
    // Shutting down: whoever still waits hears that nothing came.
    for p in parked {
        let _ = p.reply.send(Ok(Vec::new()));
    }
}

#[derive(Default)]
struct Waiters {
    enqueues: Vec<oneshot::Sender<Result<(TaskRecord, bool)>>>,
    finishes: Vec<oneshot::Sender<Result<bool>>>,
}

impl Waiters {
    fn answer(self, enqueued: Vec<(TaskRecord, bool)>, finished: Vec<bool>) {
        for (w, v) in self.enqueues.into_iter().zip(enqueued) {
            let _ = w.send(Ok(v));
        }
        for (w, v) in self.finishes.into_iter().zip(finished) {
            let _ = w.send(Ok(v));
        }
    }
}
