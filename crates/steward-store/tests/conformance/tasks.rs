//! Task queues.

use crate::support::*;

on_both_backends!(
    tenants_take_turns_across_batches,
    only_the_lease_holder_reports,
    queues_keep_their_settings_and_dead_tasks_can_be_requeued,
    a_task_leased_to_a_run_is_found_by_its_run_and_when_it_ends
);

/// Tasks of several tenants enqueued in one batch, then another, are numbered per tenant in
/// order, and leased each tenant's n-th before anyone's (n+1)-th.
async fn tenants_take_turns_across_batches(s: &dyn Store) {
    let task = |id: &str, tenant: &str| {
        (
            NewTask {
                id: id.into(),
                queue: "turns".into(),
                tenant: tenant.into(),
                priority: 0,
                payload: "{}".into(),
                dedup_key: None,
                run_at: 0,
                deadline: None,
            },
            1,
        )
    };
    let first = TaskBatch {
        enqueues: vec![
            task("a1", "a"),
            task("a2", "a"),
            task("b1", "b"),
            task("a3", "a"),
        ],
        ..TaskBatch::default()
    };
    let r = s.task_batch(&first).await.unwrap();
    let seqs: Vec<i64> = r.enqueued.iter().map(|(t, _)| t.tenant_seq).collect();
    assert_eq!(seqs, [1, 2, 1, 3]);
    let second = TaskBatch {
        enqueues: vec![task("b2", "b"), task("c1", "c"), task("a4", "a")],
        leases: vec![LeaseRequest {
            queue: "turns".into(),
            worker: "w".into(),
            max: 10,
            now: 2,
        }],
        ..TaskBatch::default()
    };
    let r = s.task_batch(&second).await.unwrap();
    let seqs: Vec<i64> = r.enqueued.iter().map(|(t, _)| t.tenant_seq).collect();
    assert_eq!(seqs, [2, 1, 4]);
    let order: Vec<&str> = r.leased[0].iter().map(|t| t.id.as_str()).collect();
    assert_eq!(order.len(), 7);
    let place = |id: &str| order.iter().position(|o| *o == id).unwrap();
    for (before, after) in [
        ("a1", "a2"),
        ("b1", "a2"),
        ("c1", "a2"),
        ("a2", "a3"),
        ("b2", "a3"),
        ("a3", "a4"),
    ] {
        assert!(
            place(before) < place(after),
            "{before} before {after}: {order:?}"
        );
    }
}

/// Whatever else a batch holds, only the report matching the task's current lease counts: a
/// stale worker's report, before or after the holder's, neither wins nor hides it; a report or
/// heartbeat after the lease's time is refused even before the sweep has run.
async fn only_the_lease_holder_reports(s: &dyn Store) {
    let lease_ms = steward_store::QueueConfig::named("holders").lease_ms;
    let enqueue = |id: &str| TaskBatch {
        enqueues: vec![(new_task(id, "holders", 0), 0)],
        ..TaskBatch::default()
    };
    let lease = |worker: &str, now: i64| TaskBatch {
        leases: vec![LeaseRequest {
            queue: "holders".into(),
            worker: worker.into(),
            max: 10,
            now,
        }],
        ..TaskBatch::default()
    };
    let done = |id: &str, worker: &str, attempt: i64, now: i64| {
        (
            TaskFinish {
                id: id.into(),
                worker: worker.into(),
                attempt,
                end: TaskEnd::Done {
                    result: format!("\"{worker}\""),
                },
            },
            now,
        )
    };
    let failed = |id: &str, worker: &str, attempt: i64, now: i64| {
        (
            TaskFinish {
                id: id.into(),
                worker: worker.into(),
                attempt,
                end: TaskEnd::Failed {
                    error: "boom".into(),
                    retry_at: Some(now),
                },
            },
            now,
        )
    };
    // Each task: leased by "old", lost (swept), leased by "new" as attempt 2.
    let t0 = 1_000;
    let expired = t0 + lease_ms + 1;
    for id in ["k1", "k2", "k3", "k4", "k5"] {
        s.task_batch(&enqueue(id)).await.unwrap();
        assert_eq!(
            s.task_batch(&lease("old", t0)).await.unwrap().leased[0].len(),
            1
        );
        assert_eq!(s.sweep_tasks(expired).await.unwrap(), 1);
        let again = s.task_batch(&lease("new", expired)).await.unwrap();
        assert_eq!(again.leased[0][0].attempts, 2, "{id}");
    }
    let now = expired + 10;
    let batch = TaskBatch {
        finishes: vec![
            // The stale report first, then the holder's.
            done("k1", "old", 1, now),
            done("k1", "new", 2, now),
            // The holder's first, then the stale one.
            done("k2", "new", 2, now),
            done("k2", "old", 1, now),
            // The holder's twice: the second finds the lease gone.
            done("k3", "new", 2, now),
            done("k3", "new", 2, now),
            // A stale completion beside the holder's failure.
            done("k4", "old", 1, now),
            failed("k4", "new", 2, now),
            // A stale failure beside the holder's completion.
            failed("k5", "old", 1, now),
            done("k5", "new", 2, now),
        ],
        ..TaskBatch::default()
    };
    let r = s.task_batch(&batch).await.unwrap();
    assert_eq!(
        r.finished,
        [false, true, true, false, true, false, false, true, false, true]
    );
    for id in ["k1", "k2", "k3", "k5"] {
        let t = s.get_task(id).await.unwrap().unwrap();
        assert_eq!(
            (t.state.as_str(), t.result.as_deref()),
            ("done", Some("\"new\"")),
            "{id}"
        );
    }
    let k4 = s.get_task("k4").await.unwrap().unwrap();
    assert_eq!(
        (k4.state.as_str(), k4.error.as_deref()),
        ("pending", Some("boom"))
    );

    // A lease whose time has run out, not yet swept: its heartbeat and reports are refused,
    // and the sweep then hands the task on.
    s.task_batch(&enqueue("late")).await.unwrap();
    let t1 = now + 1;
    let got = s.task_batch(&lease("slow", t1)).await.unwrap();
    let late = got.leased[0].iter().find(|t| t.id == "late").unwrap();
    let until = late.lease_until.unwrap();
    assert!(
        s.heartbeat_task("late", "slow", 1, until).await.unwrap(),
        "in time"
    );
    let until = s
        .get_task("late")
        .await
        .unwrap()
        .unwrap()
        .lease_until
        .unwrap();
    assert!(!s
        .heartbeat_task("late", "slow", 1, until + 1)
        .await
        .unwrap());
    let r = s
        .task_batch(&TaskBatch {
            finishes: vec![
                done("late", "slow", 1, until + 1),
                failed("late", "slow", 1, until + 1),
            ],
            ..TaskBatch::default()
        })
        .await
        .unwrap();
    assert_eq!(r.finished, [false, false]);
    assert_eq!(s.get_task("late").await.unwrap().unwrap().state, "leased");
    assert!(s.sweep_tasks(until + 1).await.unwrap() >= 1);
    assert_eq!(s.get_task("late").await.unwrap().unwrap().state, "pending");
}

fn depths(rows: Vec<(String, i64)>) -> std::collections::BTreeMap<String, i64> {
    rows.into_iter().filter(|(_, n)| *n > 0).collect()
}

async fn queues_keep_their_settings_and_dead_tasks_can_be_requeued(s: &dyn Store) {
    assert_eq!(
        s.queue("q").await.unwrap(),
        QueueConfig::named("q"),
        "a queue never configured has the defaults"
    );
    let cfg = QueueConfig {
        max_attempts: 1,
        max_in_flight: Some(5),
        ..QueueConfig::named("q")
    };
    s.put_queue(&cfg, 1).await.unwrap();
    let cfg = QueueConfig {
        per_worker: Some(2),
        ..cfg
    };
    s.put_queue(&cfg, 2).await.unwrap();
    assert_eq!(s.queue("q").await.unwrap(), cfg, "a second put replaces");
    assert_eq!(s.queues().await.unwrap(), std::slice::from_ref(&cfg));

    let batch = TaskBatch {
        enqueues: vec![
            (new_task("t1", "q", 0), 10),
            (new_task("t2", "q", 0), 20),
            (new_task("later", "q", 1_000), 30),
            (new_task("elsewhere", "unconfigured", 0), 30),
        ],
        ..TaskBatch::default()
    };
    s.task_batch(&batch).await.unwrap();
    assert_eq!(
        s.queues().await.unwrap(),
        [cfg.clone(), QueueConfig::named("unconfigured")],
        "a queue known only from its tasks is listed with the defaults"
    );
    assert_eq!(s.oldest_ready("q", 100).await.unwrap(), Some(10));
    assert_eq!(s.oldest_ready("other", 100).await.unwrap(), None);
    assert_eq!(
        depths(s.queue_depths("q").await.unwrap()),
        [(TASK_PENDING.into(), 3)].into()
    );

    let lease = TaskBatch {
        leases: vec![LeaseRequest {
            queue: "q".into(),
            worker: "w".into(),
            max: 1,
            now: 100,
        }],
        ..TaskBatch::default()
    };
    let leased = s.task_batch(&lease).await.unwrap().leased[0][0].clone();
    let failed = TaskBatch {
        finishes: vec![(
            TaskFinish {
                id: leased.id.clone(),
                worker: "w".into(),
                attempt: 1,
                end: TaskEnd::Failed {
                    error: "boom".into(),
                    retry_at: None,
                },
            },
            110,
        )],
        ..TaskBatch::default()
    };
    s.task_batch(&failed).await.unwrap();
    assert_eq!(
        s.get_task(&leased.id).await.unwrap().unwrap().state,
        TASK_DEAD
    );
    assert_eq!(
        depths(s.queue_depths("q").await.unwrap()),
        [(TASK_DEAD.into(), 1), (TASK_PENDING.into(), 2)].into()
    );
    let dead = s
        .list_tasks(&TaskFilter {
            queue: Some("q".into()),
            state: Some(TASK_DEAD.into()),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(dead.iter().map(|t| &t.id).collect::<Vec<_>>(), [&leased.id]);

    let back = s.requeue_task(&leased.id, 200).await.unwrap().unwrap();
    assert_eq!((back.state.as_str(), back.attempts), (TASK_PENDING, 0));
    assert!(
        s.requeue_task(&leased.id, 201).await.unwrap().is_none(),
        "only a dead task is requeued"
    );
    assert!(s.requeue_task("nope", 201).await.unwrap().is_none());
    assert_eq!(
        depths(s.queue_depths("q").await.unwrap()),
        [(TASK_PENDING.into(), 3)].into()
    );
}

/// A task leased to a new run is found by that run; once the run has ended it is among the
/// tasks to finish, and finishing it takes it off that list.
async fn a_task_leased_to_a_run_is_found_by_its_run_and_when_it_ends(s: &dyn Store) {
    with_agent(s).await;
    let batch = TaskBatch {
        enqueues: vec![(new_task("job", "agents", 0), 1)],
        ..TaskBatch::default()
    };
    s.task_batch(&batch).await.unwrap();
    let leased = s
        .lease_tasks_to_runs("agents", &name("a"), 1, 5, 2)
        .await
        .unwrap();
    assert_eq!(leased.len(), 1);
    let run = s
        .list_runs(&RunFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(run.len(), 1, "one run for the one task");
    let run = &run[0];
    assert_eq!(s.task_of_run(&run.id).await.unwrap().unwrap().id, "job");
    assert!(s.tasks_of_ended_runs(10).await.unwrap().is_empty());

    let n = NodeId("n".into());
    let claim = s.claim_runs(&n, 1, 60_000, 3).await.unwrap()[0].claim(&n);
    s.update_run(&claim, &RunUpdate::state(RunState::Succeeded), 4)
        .await
        .unwrap();
    let ended = s.tasks_of_ended_runs(10).await.unwrap();
    assert_eq!(ended.len(), 1);
    assert_eq!(
        (ended[0].0.id.as_str(), ended[0].1.as_str()),
        ("job", "succeeded")
    );

    let done = TaskEnd::Done {
        result: "\"ok\"".into(),
    };
    let finished = s.finish_run_task(&run.id, &done, 5).await.unwrap().unwrap();
    assert_eq!(
        (finished.id.as_str(), finished.state.as_str()),
        ("job", TASK_DONE)
    );
    assert!(s.tasks_of_ended_runs(10).await.unwrap().is_empty());
    assert!(
        s.finish_run_task(&run.id, &done, 6)
            .await
            .unwrap()
            .is_none(),
        "finished once"
    );
}

/// Two nodes on one database, each with its task writer: producers on both enqueue while
/// workers on both lease and complete. Every task is done exactly once — none lost, none
/// leased twice — though the writers race each other (and on SQLite, each its own store's
/// other writes) for the database.
async fn two_nodes_task_writers_hand_out_each_task_once(url: &str, a: Arc<dyn Store>) {
    let b = open(url, &StoreConfig::default()).await.unwrap();
    const PER_NODE: usize = 150;
    let writers = [TaskWriter::start(a.clone()), TaskWriter::start(b.clone())];
    let mut producers = Vec::new();
    for (n, w) in writers.iter().enumerate() {
        let w = w.clone();
        producers.push(tokio::spawn(async move {
            for i in 0..PER_NODE {
                w.enqueue(new_task(&format!("n{n}-{i}"), "q", 0), 1)
                    .await
                    .unwrap();
            }
        }));
    }
    let done = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for (n, w) in writers.iter().enumerate() {
        for k in 0..3 {
            let (w, done) = (w.clone(), done.clone());
            workers.push(tokio::spawn(async move {
                let worker = format!("w{n}-{k}");
                let mut idle = 0;
                while idle < 20 {
                    let request = LeaseRequest {
                        queue: "q".into(),
                        worker: worker.clone(),
                        max: 4,
                        now: 2,
                    };
                    let leased = w
                        .lease(request, std::time::Duration::from_millis(20))
                        .await
                        .unwrap();
                    if leased.is_empty() {
                        idle += 1;
                        continue;
                    }
                    idle = 0;
                    for t in leased {
                        let end = TaskFinish {
                            id: t.id.clone(),
                            worker: worker.clone(),
                            attempt: t.attempts,
                            end: TaskEnd::Done {
                                result: "ok".into(),
                            },
                        };
                        assert!(
                            w.finish(end, 3).await.unwrap(),
                            "{} was done under its lease",
                            t.id
                        );
                        done.lock().unwrap().push(t.id);
                    }
                }
            }));
        }
    }
    for p in producers {
        p.await.unwrap();
    }
    for w in workers {
        w.await.unwrap();
    }
    let mut done = done.lock().unwrap().clone();
    done.sort();
    let before = done.len();
    done.dedup();
    assert_eq!(before, done.len(), "a task was done twice");
    assert_eq!(done.len(), 2 * PER_NODE, "every task is done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_two_nodes_task_writers_hand_out_each_task_once() {
    let fresh = FreshStore::sqlite().await;
    two_nodes_task_writers_hand_out_each_task_once(&fresh.url, fresh.store.clone()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_two_nodes_task_writers_hand_out_each_task_once() {
    let fresh = FreshStore::postgres().await;
    two_nodes_task_writers_hand_out_each_task_once(&fresh.url, fresh.store.clone()).await
}
