//! Task queues through the real binary, on SQLite and PostgreSQL: priority and fairness between
//! tenants, dedup keys, concurrency limits, leases that expire and move to another worker (and
//! a late result refused), heartbeats, retries with backoff, the dead-letter queue and requeue,
//! delays and deadlines, agents serving a queue with one run per task — and a killed server
//! whose tasks finish once each.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use common::{Backend, Counter, TestServer};
use serde_json::{json, Value};

async fn put_queue(s: &TestServer, name: &str, body: Value) -> (u16, Value) {
    s.put(&format!("/api/v1/queues/{name}"), body).await
}

async fn enqueue(s: &TestServer, queue: &str, body: Value) -> Value {
    let (st, r) = s.post(&format!("/api/v1/queues/{queue}/tasks"), body).await;
    assert!(st == 201 || st == 200, "{st} {r}");
    r["task"].clone()
}

async fn lease(s: &TestServer, queue: &str, worker: &str, max: i64) -> Vec<Value> {
    let (st, r) = s
        .post(
            &format!("/api/v1/queues/{queue}/lease"),
            json!({"worker": worker, "max": max}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    r["tasks"].as_array().unwrap().clone()
}

async fn report(s: &TestServer, t: &Value, worker: &str, verb: &str, extra: Value) -> (u16, Value) {
    let mut body = json!({"worker": worker, "attempt": t["attempts"]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    s.post(
        &format!("/api/v1/tasks/{}/{verb}", t["id"].as_str().unwrap()),
        body,
    )
    .await
}

fn payloads(tasks: &[Value]) -> Vec<String> {
    tasks
        .iter()
        .map(|t| t["payload"].as_str().unwrap().to_string())
        .collect()
}

async fn tasks_are_leased_by_priority_fairly_once_and_within_limits(b: Backend) {
    let s = TestServer::start(b).await;
    // Tenant a enqueues a burst before tenant b; a higher priority goes first whoever sent it.
    for i in 0..3 {
        enqueue(
            &s,
            "work",
            json!({"payload": format!("a{i}"), "tenant": "a"}),
        )
        .await;
    }
    for i in 0..2 {
        enqueue(
            &s,
            "work",
            json!({"payload": format!("b{i}"), "tenant": "b"}),
        )
        .await;
    }
    enqueue(
        &s,
        "work",
        json!({"payload": "urgent", "tenant": "a", "priority": 10}),
    )
    .await;
    let got = lease(&s, "work", "w1", 10).await;
    assert_eq!(payloads(&got), ["urgent", "a0", "b0", "a1", "b1", "a2"]);
    assert!(
        lease(&s, "work", "w2", 10).await.is_empty(),
        "each task leased once"
    );

    // A dedup key the queue holds returns that task.
    let first = enqueue(&s, "dedup", json!({"payload": 1, "dedup_key": "order-7"})).await;
    let (st, again) = s
        .post(
            "/api/v1/queues/dedup/tasks",
            json!({"payload": 2, "dedup_key": "order-7"}),
        )
        .await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(again["deduplicated"], true);
    assert_eq!(again["task"]["id"], first["id"]);
    assert_eq!(again["task"]["payload"], 1);

    // Limits: at most 3 leased at once in the queue, 2 per worker.
    let (st, q) = put_queue(&s, "limited", json!({"max_in_flight": 3, "per_worker": 2})).await;
    assert_eq!(st, 200, "{q}");
    for i in 0..6 {
        enqueue(&s, "limited", json!({"payload": i})).await;
    }
    let w1 = lease(&s, "limited", "w1", 10).await;
    assert_eq!(w1.len(), 2, "per worker");
    let w2 = lease(&s, "limited", "w2", 10).await;
    assert_eq!(w2.len(), 1, "per queue");
    assert!(lease(&s, "limited", "w3", 10).await.is_empty());
    let (st, _) = report(
        &s,
        &w1[0],
        "w1",
        "complete",
        json!({"result": {"ok": true}}),
    )
    .await;
    assert_eq!(st, 204);
    assert_eq!(
        lease(&s, "limited", "w3", 10).await.len(),
        1,
        "a slot freed"
    );
    let (_, q) = s.get("/api/v1/queues/limited").await;
    assert_eq!(q["depth"]["done"], 1, "{q}");
    assert_eq!(q["depth"]["leased"], 3, "{q}");
    assert_eq!(q["depth"]["pending"], 2, "{q}");
    let (_, t) = s
        .get(&format!("/api/v1/tasks/{}", w1[0]["id"].as_str().unwrap()))
        .await;
    assert_eq!(
        (t["state"].as_str(), &t["result"]),
        (Some("done"), &json!({"ok": true}))
    );

    // Bad input is refused, saying what is wrong; nothing is enqueued.
    for (path, body, want) in [
        (
            "/api/v1/queues/bad%20name/tasks",
            json!({"payload": 1}),
            400,
        ),
        ("/api/v1/queues/work/tasks", json!({}), 400),
        (
            "/api/v1/queues/work/tasks",
            json!({"payload": 1, "priority": 5000}),
            400,
        ),
        (
            "/api/v1/queues/work/tasks",
            json!({"payload": 1, "colour": "red"}),
            400,
        ),
        (
            "/api/v1/queues/work/tasks",
            json!({"payload": 1, "delay_ms": -5}),
            400,
        ),
        (
            "/api/v1/queues/work/tasks",
            json!({"payload": "x".repeat(300_000)}),
            413,
        ),
        (
            "/api/v1/queues/work/lease",
            json!({"worker": "w", "max": 0}),
            400,
        ),
        ("/api/v1/queues/work/lease", json!({"max": 1}), 400),
    ] {
        let (st, r) = s.post(path, body).await;
        assert_eq!(st, want, "{path}: {r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{r}"
        );
    }
    let (st, _) = put_queue(&s, "work", json!({"max_attempts": 0})).await;
    assert_eq!(st, 400);
    let (_, q) = s.get("/api/v1/queues/work").await;
    assert_eq!(q["depth"]["leased"], 6, "nothing more was enqueued: {q}");
    let (st, _) = s.get("/api/v1/tasks/task_nope").await;
    assert_eq!(st, 404);

    // Every queue, configured or known only from its tasks, with its settings and depth.
    let (st, all) = s.get("/api/v1/queues").await;
    assert_eq!(st, 200, "{all}");
    let listed: Vec<(&str, i64)> = all["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            (
                q["name"].as_str().unwrap(),
                q["max_attempts"].as_i64().unwrap(),
            )
        })
        .collect();
    for name in ["dedup", "limited", "work"] {
        assert!(listed.iter().any(|(n, _)| *n == name), "{name}: {listed:?}");
    }
    assert!(listed.contains(&("work", 3)), "the defaults: {listed:?}");
}

both_backends!(
    tasks_are_leased_by_priority_fairly_once_and_within_limits_on,
    tasks_are_leased_by_priority_fairly_once_and_within_limits
);

async fn failures_retry_with_backoff_then_dead_letter_and_lost_leases_move_on(b: Backend) {
    let s = TestServer::start(b).await;
    put_queue(
        &s,
        "jobs",
        json!({"max_attempts": 2, "retry_base_ms": 400, "lease_ms": 300}),
    )
    .await;
    let t = enqueue(&s, "jobs", json!({"payload": "flaky"})).await;

    // Failure 1: back after a backoff (at least half the base), not at once.
    let got = lease(&s, "jobs", "w1", 1).await;
    assert_eq!(got[0]["attempts"], 1);
    let before = std::time::Instant::now();
    let (st, r) = report(&s, &got[0], "w1", "fail", json!({"error": "upstream 503"})).await;
    assert_eq!(st, 204, "{r}");
    let (_, now) = s
        .get(&format!("/api/v1/tasks/{}", t["id"].as_str().unwrap()))
        .await;
    assert_eq!(now["state"], "pending");
    assert_eq!(now["error"], "upstream 503");
    assert!(lease(&s, "jobs", "w1", 1).await.is_empty(), "backing off");
    let again = common::eventually("the retry comes due", || async {
        let got = lease(&s, "jobs", "w2", 1).await;
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert!(before.elapsed() >= Duration::from_millis(200));
    assert_eq!(again[0]["attempts"], 2);
    // Failure 2 uses up the attempts: dead-lettered, with the reason.
    report(
        &s,
        &again[0],
        "w2",
        "fail",
        json!({"error": "upstream 503 again"}),
    )
    .await;
    let (_, dead) = s.get("/api/v1/tasks?state=dead&queue=jobs").await;
    assert_eq!(dead["tasks"][0]["id"], t["id"], "{dead}");
    assert_eq!(dead["tasks"][0]["error"], "upstream 503 again");
    // Requeued: its attempts start over; a failure marked final dead-letters it at once.
    let (st, r) = s
        .post(
            &format!("/api/v1/tasks/{}/requeue", t["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(
        (st, r["state"].as_str(), r["attempts"].as_i64()),
        (200, Some("pending"), Some(0))
    );
    let (st, _) = s
        .post(
            &format!("/api/v1/tasks/{}/requeue", t["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(st, 409, "only dead tasks are requeued");
    let got = lease(&s, "jobs", "w1", 1).await;
    let (st, _) = report(&s, &got[0], "w1", "fail", json!({})).await;
    assert_eq!(st, 400, "a failure says what went wrong");
    report(
        &s,
        &got[0],
        "w1",
        "fail",
        json!({"error": "bad input", "retry": false}),
    )
    .await;
    let (_, r) = s
        .get(&format!("/api/v1/tasks/{}", t["id"].as_str().unwrap()))
        .await;
    assert_eq!(
        (r["state"].as_str(), r["attempts"].as_i64()),
        (Some("dead"), Some(1))
    );

    // A worker that stops answering loses its lease; the task goes to another worker, and the
    // first worker's late result is refused — the task is done once.
    let t = enqueue(&s, "jobs", json!({"payload": "slow"})).await;
    let mine = lease(&s, "jobs", "stalled", 1).await;
    let theirs = common::eventually("the lease expires and the task moves", || async {
        let got = lease(&s, "jobs", "healthy", 1).await;
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert_eq!(theirs[0]["id"], t["id"]);
    assert_eq!(theirs[0]["attempts"], 2);
    let (st, r) = report(
        &s,
        &mine[0],
        "stalled",
        "complete",
        json!({"result": "late"}),
    )
    .await;
    assert_eq!(st, 409, "{r}");
    let (st, _) = report(&s, &mine[0], "stalled", "heartbeat", json!({})).await;
    assert_eq!(st, 409);
    let (st, _) = report(
        &s,
        &theirs[0],
        "healthy",
        "complete",
        json!({"result": "on time"}),
    )
    .await;
    assert_eq!(st, 204);
    let (_, r) = s
        .get(&format!("/api/v1/tasks/{}", t["id"].as_str().unwrap()))
        .await;
    assert_eq!(r["result"], "on time");

    // Heartbeats keep a lease past its time.
    let t = enqueue(&s, "jobs", json!({"payload": "long"})).await;
    let held = lease(&s, "jobs", "steady", 1).await;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (st, _) = report(&s, &held[0], "steady", "heartbeat", json!({})).await;
        assert_eq!(st, 204);
        assert!(lease(&s, "jobs", "thief", 1).await.is_empty());
    }
    let (st, _) = report(&s, &held[0], "steady", "complete", json!({})).await;
    assert_eq!(st, 204);
    let (_, r) = s
        .get(&format!("/api/v1/tasks/{}", t["id"].as_str().unwrap()))
        .await;
    assert_eq!(r["attempts"], 1);

    // A delayed task waits its time; one nobody takes by its deadline is dead-lettered.
    enqueue(&s, "later", json!({"payload": "soon", "delay_ms": 600})).await;
    assert!(lease(&s, "later", "w", 1).await.is_empty());
    let got = common::eventually("the delayed task comes due", || async {
        let got = lease(&s, "later", "w", 1).await;
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert_eq!(got[0]["payload"], "soon");
    let t = enqueue(&s, "nobody", json!({"payload": "x", "deadline_ms": 200})).await;
    let r = common::eventually("the deadline passes", || async {
        let (_, r) = s
            .get(&format!("/api/v1/tasks/{}", t["id"].as_str().unwrap()))
            .await;
        (r["state"] == "dead").then_some(r)
    })
    .await;
    assert!(r["error"].as_str().unwrap().contains("deadline"), "{r}");
}

both_backends!(
    failures_retry_with_backoff_then_dead_letter_and_lost_leases_move_on_on,
    failures_retry_with_backoff_then_dead_letter_and_lost_leases_move_on
);

/// An agent serves a queue: one run per task, at most `concurrency` at once, the run's result
/// the task's; a run that fails is retried by a new run, then the task is dead-lettered. A
/// server killed mid-way finishes every task once, its side effects done once.
async fn an_agent_serves_a_queue_one_run_per_task_across_a_crash(b: Backend) {
    let c = Counter::start().await;
    let mut s = TestServer::start(b).await;
    s.apply(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: clerk}\nspec:\n  model: scripted\n  tools: [http_request]\n  recovery: fail\n  tasks: {queue: inbox, concurrency: 2}\n  script:\n    - {delayMs: 150, toolCalls: [{name: http_request, arguments: {method: PUT, url: \"{{input}}\"}}]}\n    - {delayMs: 150, content: filed}\n",
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let t = enqueue(&s, "inbox", json!({"payload": format!("{}/t/{i}", c.url)})).await;
        ids.push(t["id"].as_str().unwrap().to_string());
    }
    // Never more than two of its runs at once.
    for _ in 0..5 {
        let (_, q) = s.get("/api/v1/queues/inbox").await;
        assert!(q["depth"]["leased"].as_i64().unwrap_or(0) <= 2, "{q}");
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    s.kill9();
    s.spawn();
    let mut runs = std::collections::BTreeSet::new();
    for (i, id) in ids.iter().enumerate() {
        let t = common::eventually("every task done", || async {
            let (_, t) = s.get(&format!("/api/v1/tasks/{id}")).await;
            (t["state"] == "done").then_some(t)
        })
        .await;
        assert_eq!(t["result"], "filed", "{t}");
        assert_eq!(t["attempts"], 1, "one run per task: {t}");
        let (_, list) = s.get("/api/v1/runs?agent=clerk&limit=100").await;
        let served: Vec<&Value> = list["runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["input"].as_str().unwrap().ends_with(&format!("/t/{i}")))
            .collect();
        assert_eq!(served.len(), 1, "{list}");
        runs.insert(served[0]["id"].as_str().unwrap().to_string());
    }
    assert_eq!(runs.len(), 6);
    for run in &runs {
        // The PUT carries the run's idempotency key: a step the crash cut off may be retried
        // under the same key, and is never done under two.
        let n = c.total_for_run(run);
        assert!((1..=2).contains(&n), "{run}: {n}");
    }

    // A failing agent: its task is retried by a new run, then dead-lettered with the reason.
    put_queue(
        &s,
        "doomed",
        json!({"max_attempts": 2, "retry_base_ms": 100}),
    )
    .await;
    s.apply(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: doomed}\nspec:\n  model: scripted\n  runTimeout: 100ms\n  tasks: {queue: doomed}\n  script:\n    - {delayMs: 1000, content: never}\n",
    )
    .await;
    let t = enqueue(&s, "doomed", json!({"payload": "x"})).await;
    let dead = common::eventually("dead-lettered after two runs", || async {
        let (_, r) = s
            .get(&format!("/api/v1/tasks/{}", t["id"].as_str().unwrap()))
            .await;
        (r["state"] == "dead").then_some(r)
    })
    .await;
    assert_eq!(dead["attempts"], 2, "{dead}");
    assert!(dead["error"].as_str().unwrap().contains("failed"), "{dead}");
    let (_, list) = s.get("/api/v1/runs?agent=doomed&limit=10").await;
    assert_eq!(list["runs"].as_array().unwrap().len(), 2, "{list}");
}

both_backends!(
    an_agent_serves_a_queue_one_run_per_task_across_a_crash_on,
    an_agent_serves_a_queue_one_run_per_task_across_a_crash
);

async fn put_schedule(s: &TestServer, name: &str, body: Value) -> (u16, Value) {
    s.put(&format!("/api/v1/schedules/{name}"), body).await
}

/// A cron schedule feeds a queue every second; a one-shot delayed run set before a restart
/// fires after it, once; bad schedules are refused.
async fn schedules_fire_on_time_and_survive_a_restart(b: Backend) {
    let mut s = TestServer::start(b).await;
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: reminder}\nspec:\n  model: scripted\n  script:\n    - {content: reminded}\n")
        .await;
    let (st, tick) = put_schedule(
        &s,
        "tick",
        json!({"cron": "* * * * * *", "queue": "ticks", "payload": {"n": 1}}),
    )
    .await;
    assert_eq!(st, 200, "{tick}");
    assert_eq!(tick["missed"], "once");
    let (st, later) = put_schedule(
        &s,
        "later",
        json!({"delay_ms": 1500, "agent": "reminder", "payload": "call back"}),
    )
    .await;
    assert_eq!(st, 200, "{later}");
    for (body, want) in [
        (json!({"cron": "every tuesday", "queue": "q"}), 400),
        (json!({"queue": "q"}), 400),
        (json!({"cron": "* * * * *"}), 400),
        (
            json!({"cron": "* * * * *", "queue": "q", "agent": "reminder"}),
            400,
        ),
        (
            json!({"cron": "* * * * *", "queue": "q", "missed": "sometimes"}),
            400,
        ),
        (json!({"delay_ms": 10, "agent": "nobody"}), 404),
        (
            json!({"cron": "* * * * *", "queue": "q", "when": "now"}),
            400,
        ),
    ] {
        let (st, r) = put_schedule(&s, "bad", body.clone()).await;
        assert_eq!(st, want, "{body}: {r}");
    }
    let (st, _) = s.get("/api/v1/schedules/bad").await;
    assert_eq!(st, 404, "nothing was kept of the bad ones");
    // Restarted before the one-shot is due: it still fires, once.
    s.kill9();
    s.spawn();
    let run = common::eventually("the delayed run", || async {
        let (_, runs) = s.get("/api/v1/runs?agent=reminder").await;
        let r = runs["runs"].as_array()?.first()?.clone();
        (r["state"] == "succeeded").then_some(r)
    })
    .await;
    assert_eq!(run["input"], "call back");
    let (_, later) = s.get("/api/v1/schedules/later").await;
    assert_eq!(
        (later["fired"].as_i64(), &later["next_at"]),
        (Some(1), &Value::Null),
        "{later}"
    );
    // The cron schedule's tasks, one per second, each named by its second.
    let keys = common::eventually("three ticks", || async {
        let (_, t) = s.get("/api/v1/tasks?queue=ticks").await;
        let mut keys: Vec<i64> = t["tasks"]
            .as_array()?
            .iter()
            .map(|t| {
                t["dedup_key"]
                    .as_str()
                    .unwrap()
                    .rsplit(':')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        keys.sort();
        (keys.len() >= 3).then_some(keys)
    })
    .await;
    assert!(keys.iter().all(|k| k % 1000 == 0), "{keys:?}");
    let (_, runs) = s.get("/api/v1/runs?agent=reminder").await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1, "fired once");
    let (st, _) =
        common::send(reqwest::Client::new().delete(format!("{}/api/v1/schedules/tick", s.url)))
            .await;
    assert_eq!(st, 204);
    let (st, _) = s.get("/api/v1/schedules/tick").await;
    assert_eq!(st, 404);
}

both_backends!(
    schedules_fire_on_time_and_survive_a_restart_on,
    schedules_fire_on_time_and_survive_a_restart
);

/// What each task cost and how it ended, and the cost per successful task, from a real
/// (loopback) OpenAI-compatible upstream's token counts at the price table's prices.
async fn costs_are_reported_per_task_and_per_outcome(b: Backend) {
    let upstream = common::ok_upstream().await;
    let s = TestServer::start_with(
        b,
        &[
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &upstream),
        ],
    )
    .await;
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: priced}\nspec:\n  model: mock/gpt-4o-mini\n  tasks: {queue: priced, concurrency: 2}\n")
        .await;
    let mut ids = Vec::new();
    for i in 0..2 {
        let t = enqueue(&s, "priced", json!({"payload": format!("job {i}")})).await;
        ids.push(t["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        common::eventually("the task done", || async {
            let (_, t) = s.get(&format!("/api/v1/tasks/{id}")).await;
            (t["state"] == "done").then_some(())
        })
        .await;
    }
    let (st, r) = s.get("/api/v1/costs?by=task").await;
    assert_eq!(st, 200, "{r}");
    // One model call each: 1 token in at $0.15/M and 1 out at $0.60/M.
    let each = 0.75e-6;
    let lines = r["lines"].as_array().unwrap();
    for id in &ids {
        let line = lines.iter().find(|l| l["key"] == id.as_str()).unwrap();
        assert_eq!(
            (line["calls"].as_i64(), line["outcome"].as_str()),
            (Some(1), Some("done")),
            "{line}"
        );
        assert!(
            (line["cost_usd"].as_f64().unwrap() - each).abs() < 1e-12,
            "{line}"
        );
    }
    let o = &r["outcomes"];
    assert_eq!(
        (o["tasks"].as_i64(), o["successful_tasks"].as_i64()),
        (Some(2), Some(2)),
        "{o}"
    );
    assert!(
        (o["cost_per_successful_task_usd"].as_f64().unwrap() - each).abs() < 1e-12,
        "{o}"
    );
    assert_eq!(o["successful_runs"], 2);
    let (_, by_outcome) = s.get("/api/v1/costs?by=outcome").await;
    assert_eq!(by_outcome["lines"][0]["key"], "succeeded", "{by_outcome}");
    assert_eq!(by_outcome["lines"][0]["calls"], 2);
    let (st, _) = s.get("/api/v1/costs?by=mood").await;
    assert_eq!(st, 400);
}

both_backends!(
    costs_are_reported_per_task_and_per_outcome_on,
    costs_are_reported_per_task_and_per_outcome
);

/// A run that keeps making the same tool call is stopped as a loop, before the extra call is
/// made; a run that varies its calls is not.
async fn a_looping_run_is_stopped(b: Backend) {
    let c = Counter::start().await;
    let s = TestServer::start(b).await;
    let same =
        "    - {toolCalls: [{name: http_request, arguments: {method: PUT, url: \"{{input}}\"}}]}\n";
    s.apply(&format!(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: looper}}\nspec:\n  model: scripted\n  tools: [http_request]\n  liveness: {{maxRepeats: 2}}\n  script:\n{same}{same}{same}    - {{content: never}}\n"
    ))
    .await;
    let id = s.start_run("looper", &format!("{}/loop", c.url)).await;
    let r = s.wait_run(&id).await;
    assert_eq!(r["state"], "failed", "{r}");
    assert_eq!(r["error"]["code"], "loop_detected", "{r}");
    assert_eq!(
        c.total_for_run(&id),
        2,
        "the third identical call was not made"
    );
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: varied}\nspec:\n  model: scripted\n  tools: [echo]\n  liveness: {maxRepeats: 1}\n  script:\n    - {toolCalls: [{name: echo, arguments: {n: 1}}]}\n    - {toolCalls: [{name: echo, arguments: {n: 2}}]}\n    - {content: fine}\n")
        .await;
    let id = s.start_run("varied", "x").await;
    assert_eq!(s.wait_run(&id).await["state"], "succeeded");

    // A loop escalated: an incident for a human. A loop restarted: the run starts over with
    // the same input, at most maxRestarts times in a row.
    let looping = |name: &str, on_loop: &str| {
        format!(
            "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: {name}}}\nspec:\n  model: scripted\n  tools: [echo]\n  liveness: {{maxRepeats: 1, onLoop: {on_loop}, maxRestarts: 1}}\n  script:\n    - {{toolCalls: [{{name: echo, arguments: {{n: 1}}}}]}}\n    - {{toolCalls: [{{name: echo, arguments: {{n: 1}}}}]}}\n    - {{content: never}}\n"
        )
    };
    s.apply(&looping("escalator", "escalate")).await;
    let id = s.start_run("escalator", "x").await;
    let r = s.wait_run(&id).await;
    assert!(
        r["error"]["message"].as_str().unwrap().contains("incident"),
        "{r}"
    );
    let (_, inc) = s.get("/api/v1/incidents?state=open").await;
    assert!(
        inc["incidents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["supervisor"] == format!("run:{id}")),
        "{inc}"
    );
    s.apply(&looping("restarter", "restart")).await;
    let id = s.start_run("restarter", "again").await;
    let first = s.wait_run(&id).await;
    assert!(
        first["error"]["message"]
            .as_str()
            .unwrap()
            .contains("restarted as"),
        "{first}"
    );
    let second = common::eventually("the restart ends", || async {
        let (_, runs) = s.get(&format!("/api/v1/runs?parent={id}")).await;
        let r = runs["runs"].as_array()?.first()?.clone();
        (r["state"] == "failed").then_some(r)
    })
    .await;
    assert_eq!(second["input"], "again");
    assert!(
        second["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not restarted"),
        "{second}"
    );
    let (_, all) = s.get("/api/v1/runs?agent=restarter").await;
    assert_eq!(
        all["runs"].as_array().unwrap().len(),
        2,
        "one restart, then no more"
    );
    let (st, r) = s
        .post_raw(
            "/api/v1/agents",
            "application/yaml",
            looping("bad", "panic"),
        )
        .await;
    assert_eq!(st, 400, "{r}");
}

both_backends!(a_looping_run_is_stopped_on, a_looping_run_is_stopped);

/// An agent pool that autoscales on its queue's depth: from its floor up to its ceiling while
/// tasks wait, and never past it.
async fn an_agent_pool_scales_with_its_queue(b: Backend) {
    let s = TestServer::start(b).await;
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: pool}\nspec:\n  model: scripted\n  tasks: {queue: deep, concurrency: 1, maxConcurrency: 4, tasksPerRun: 2}\n  script:\n    - {delayMs: 400, content: ok}\n")
        .await;
    let (st, r) = s
        .post_raw("/api/v1/agents", "application/yaml", "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: badpool}\nspec:\n  model: scripted\n  tasks: {queue: deep, concurrency: 3, maxConcurrency: 2}\n  script:\n    - {content: ok}\n")
        .await;
    assert_eq!(st, 400, "{r}");
    for i in 0..12 {
        enqueue(&s, "deep", json!({"payload": i})).await;
    }
    let mut most = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, q) = s.get("/api/v1/queues/deep").await;
        let leased = q["depth"]["leased"].as_i64().unwrap_or(0);
        most = most.max(leased);
        assert!(leased <= 4, "never past the ceiling: {q}");
        if q["depth"]["done"] == 12 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{q}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(most, 4, "scaled up to the ceiling while tasks waited");

    // On latency: the depth alone asks for one run (100 tasks per run), but tasks wait longer
    // than 100 ms, so the pool grows, up to its ceiling.
    // Runs long next to the pause between one run's end and its replacement's start, so
    // that once grown the pool is seen at its ceiling however loaded the machine.
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: prompt}\nspec:\n  model: scripted\n  tasks: {queue: slow, concurrency: 1, maxConcurrency: 3, tasksPerRun: 100, targetWaitMs: 100}\n  script:\n    - {delayMs: 1000, content: ok}\n")
        .await;
    // Enough work that the backlog outlasts the growth by far (one run more per pass).
    for i in 0..12 {
        enqueue(&s, "slow", json!({"payload": i})).await;
    }
    let mut most = 0;
    loop {
        let (_, q) = s.get("/api/v1/queues/slow").await;
        let leased = q["depth"]["leased"].as_i64().unwrap_or(0);
        most = most.max(leased);
        assert!(leased <= 3, "{q}");
        if q["depth"]["done"] == 12 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline + Duration::from_secs(30),
            "{q}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(most, 3, "grew on latency to the ceiling");
}

both_backends!(
    an_agent_pool_scales_with_its_queue_on,
    an_agent_pool_scales_with_its_queue
);

/// A loopback HTTP server whose first `slow` requests hang for a second; it counts requests.
async fn flaky_server(slow: usize) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = axum::Router::new().route(
        "/{*path}",
        axum::routing::any(move || {
            let h = h.clone();
            async move {
                if h.fetch_add(1, Ordering::SeqCst) < slow {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                "fine"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, hits)
}

/// Tool failure patterns from the manifest: a hanging tool is timed out and retried until it
/// answers; one that keeps failing trips a circuit breaker shared by every run, after which it
/// is not called and its fallback answers instead.
async fn tool_policies_time_out_retry_break_and_fall_back(b: Backend) {
    use std::sync::atomic::Ordering;
    let s = TestServer::start(b).await;
    let (url, hits) = flaky_server(2).await;
    s.apply(&format!(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: patient}}\nspec:\n  model: scripted\n  tools: [http_request]\n  toolPolicies:\n    http_request: {{timeoutMs: 200, retry: {{maxAttempts: 3, initialMs: 50}}}}\n  script:\n    - {{toolCalls: [{{name: http_request, arguments: {{url: \"{url}/x\"}}}}]}}\n    - {{content: done}}\n"
    ))
    .await;
    let id = s.start_run("patient", "x").await;
    assert_eq!(s.wait_run(&id).await["state"], "succeeded");
    let outcome = s
        .journal(&id)
        .await
        .into_iter()
        .find(|e| e["kind"] == "tool" && e["phase"] == "outcome")
        .unwrap();
    assert_eq!(
        (
            outcome["ok"].as_bool(),
            outcome["body"]["ok"]["status"].as_i64()
        ),
        (Some(true), Some(200)),
        "{outcome}"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        3,
        "two timed out, the third answered"
    );

    let (url, hits) = flaky_server(usize::MAX).await;
    let call = |i: usize| {
        format!(
            "    - {{toolCalls: [{{name: http_request, arguments: {{url: \"{url}/{i}\"}}}}]}}\n"
        )
    };
    s.apply(&format!(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: guarded}}\nspec:\n  model: scripted\n  tools: [http_request, echo]\n  toolPolicies:\n    http_request: {{timeoutMs: 100, breaker: true, fallback: echo}}\n  script:\n{}{}{}{}    - {{content: done}}\n",
        call(1), call(2), call(3), call(4)
    ))
    .await;
    let id = s.start_run("guarded", "x").await;
    assert_eq!(s.wait_run(&id).await["state"], "succeeded");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        3,
        "the breaker opened after 3 failures"
    );
    let outcomes: Vec<Value> = s
        .journal(&id)
        .await
        .into_iter()
        .filter(|e| e["kind"] == "tool" && e["phase"] == "outcome")
        .collect();
    assert_eq!(outcomes.len(), 4);
    assert_eq!(
        outcomes[3]["body"]["ok"]["url"],
        format!("{url}/4"),
        "the fallback answered: {}",
        outcomes[3]
    );
    // Another run finds the circuit open: the tool is not called at all.
    let id = s.start_run("guarded", "y").await;
    assert_eq!(s.wait_run(&id).await["state"], "succeeded");
    assert_eq!(hits.load(Ordering::SeqCst), 3, "shared by every run");
    // A policy for a tool the agent does not list is refused.
    let (st, r) = s
        .post_raw("/api/v1/agents", "application/yaml", "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: odd}\nspec:\n  model: scripted\n  tools: [echo]\n  toolPolicies:\n    http_request: {timeoutMs: 10}\n  script:\n    - {content: x}\n")
        .await;
    assert_eq!(st, 400, "{r}");
}

both_backends!(
    tool_policies_on,
    tool_policies_time_out_retry_break_and_fall_back
);

/// A tool that still fails after its retries hands the call to its fallback agent: a child run
/// given the call and its error, whose answer becomes the call's result — started only where
/// the policy allows `agent.spawn` on that agent.
async fn a_failing_tool_falls_back_to_an_agent(b: Backend) {
    use std::sync::atomic::Ordering;
    let s = TestServer::start(b).await;
    let (url, hits) = flaky_server(usize::MAX).await;
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: fixer}\nspec:\n  model: scripted\n  script:\n    - {content: fixed by hand}\n")
        .await;
    s.apply(&format!(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: careful}}\nspec:\n  model: scripted\n  tools: [http_request]\n  toolPolicies:\n    http_request: {{timeoutMs: 100, retry: {{maxAttempts: 2, initialMs: 10}}, fallbackAgent: fixer}}\n  script:\n    - {{toolCalls: [{{name: http_request, arguments: {{url: \"{url}/x\"}}}}]}}\n    - {{content: done}}\n"
    ))
    .await;
    let tool_outcome = |journal: Vec<Value>| {
        journal
            .into_iter()
            .find(|e| e["kind"] == "tool" && e["phase"] == "outcome")
            .unwrap()
    };
    let id = s.start_run("careful", "x").await;
    assert_eq!(s.wait_run(&id).await["state"], "succeeded");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "both attempts were made first"
    );
    let outcome = tool_outcome(s.journal(&id).await);
    assert_eq!(
        outcome["body"]["ok"]["result"], "fixed by hand",
        "{outcome}"
    );
    let child = outcome["body"]["ok"]["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, c) = s.get(&format!("/api/v1/runs/{child}")).await;
    assert_eq!(c["parent_id"], id.as_str());
    assert_eq!(c["agent"], "fixer");
    let given: Value = serde_json::from_str(c["input"].as_str().unwrap()).unwrap();
    assert_eq!(given["tool"], "http_request");
    assert_eq!(given["arguments"]["url"], format!("{url}/x"));
    assert!(
        given["error"].as_str().unwrap().contains("100 ms"),
        "the child is told why: {given}"
    );

    // Where the policy forbids starting the fixer, the call fails as it would have, and no
    // child run exists.
    let (st, e) = common::send(
        reqwest::Client::new()
            .put(format!("{}/api/v1/policies", s.url))
            .body(
                r#"permit (principal, action in [Steward::Action::"llm.call", Steward::Action::"tool.call", Steward::Action::"agent.spawn"], resource);
@id("no-fixer") forbid (principal, action == Steward::Action::"agent.spawn", resource == Steward::Agent::"fixer");"#,
            ),
    )
    .await;
    assert_eq!(st, 200, "{e}");
    let id = s.start_run("careful", "y").await;
    assert_eq!(s.wait_run(&id).await["state"], "succeeded");
    let outcome = tool_outcome(s.journal(&id).await);
    let err = outcome["body"]["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("was not started") && err.contains("no-fixer"),
        "{outcome}"
    );
    let (_, runs) = s.get("/api/v1/runs?agent=fixer").await;
    assert_eq!(
        runs["runs"].as_array().map(Vec::len),
        Some(1),
        "only the first run's fixer: {runs}"
    );
}

both_backends!(fallback_agent_on, a_failing_tool_falls_back_to_an_agent);

/// A worker's lease waits (`wait_ms`) for tasks: a task enqueued meanwhile is handed to the
/// waiting worker, and a wait with nothing to lease ends empty.
async fn a_waiting_lease_gets_the_next_task(b: Backend) {
    let s = TestServer::start(b).await;
    let (st, r) = s
        .post(
            "/api/v1/queues/poll/lease",
            json!({"worker": "w1", "wait_ms": 300}),
        )
        .await;
    assert_eq!(
        (st, r["tasks"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{r}"
    );
    let url = s.url.clone();
    let waiting = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{url}/api/v1/queues/poll/lease"))
            .json(&json!({"worker": "w2", "wait_ms": 10000}))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (st, r) = s
        .post("/api/v1/queues/poll/tasks", json!({"payload": "late"}))
        .await;
    assert_eq!(st, 201, "{r}");
    let got = waiting.await.unwrap();
    let tasks = got["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1, "{got}");
    assert_eq!(
        (&tasks[0]["payload"], &tasks[0]["lease_owner"]),
        (&json!("late"), &json!("w2"))
    );
}

both_backends!(long_poll_on, a_waiting_lease_gets_the_next_task);

/// A server told to stop (SIGTERM) answers the workers waiting in lease requests at once — with
/// nothing — and exits, rather than holding on for their whole wait.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_waiting_workers() {
    let mut s = TestServer::start(Backend::Sqlite).await;
    let url = s.url.clone();
    let waiting = tokio::spawn(async move {
        let r = reqwest::Client::new()
            .post(format!("{url}/api/v1/queues/idle/lease"))
            .json(&json!({"worker": "w", "wait_ms": 25000}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    });
    // Let the request arrive and settle into its wait.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut child = s.take_child();
    #[allow(unsafe_code)]
    // SAFETY: sending a signal to a child process this test owns.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let (st, r) = tokio::time::timeout(Duration::from_secs(15), waiting)
        .await
        .expect("the waiting worker was answered well before its 25 s wait")
        .unwrap();
    assert_eq!(
        (st, r["tasks"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{r}"
    );
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "graceful exit: {status:?}");
}

/// External workers may hold their agent's own API key instead of the admin token: they
/// enqueue and lease only where a policy opens the queue to them, under worker names of their
/// own, refusals are audited, and the rest of the management API stays closed to them.
async fn workers_use_their_agents_own_keys(b: Backend) {
    const TOKEN: &str = "adm-5c1d7e9f0a2b4c6d";
    let s = TestServer::start_with(b, &[("STEWARD_SERVER__ADMIN_TOKEN", TOKEN)]).await;
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: crawler}\nspec:\n  model: scripted\n  script:\n    - {content: x}\n")
        .await;
    let (st, key) = s.post("/api/v1/keys", json!({"agent": "crawler"})).await;
    assert!(st < 300, "{key}");
    let key = key["key"].as_str().unwrap().to_string();
    for q in ["pages", "payroll"] {
        let (st, r) = s
            .post(&format!("/api/v1/queues/{q}/tasks"), json!({"payload": q}))
            .await;
        assert_eq!(st, 201, "{r}");
    }
    let lease = |q: &str, worker: &str| {
        let (s, key) = (&s, key.clone());
        let path = format!("/api/v1/queues/{q}/lease");
        let body = json!({"worker": worker, "max": 5});
        async move { s.post_as(&key, &path, body).await }
    };
    let (st, r) = lease("pages", "crawler").await;
    assert_eq!(st, 403, "no policy opens the queue yet: {r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("task.lease"),
        "{r}"
    );
    let (st, r) = s
        .post_as(
            "sk-steward-not-a-real-key",
            "/api/v1/queues/pages/lease",
            json!({"worker": "crawler"}),
        )
        .await;
    assert_eq!(st, 401, "{r}");

    let policy = r#"permit (principal == Steward::Agent::"crawler", action in [Steward::Action::"task.lease", Steward::Action::"task.enqueue"], resource == Steward::Queue::"pages");"#;
    let r = s
        .http
        .put(format!("{}/api/v1/policies", s.url))
        .body(policy)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    let (st, r) = lease("pages", "someone-else").await;
    assert_eq!(st, 403, "not its worker name: {r}");
    let (st, r) = lease("pages", "crawler:1").await;
    assert_eq!(st, 200, "{r}");
    let tasks = r["tasks"].as_array().unwrap().clone();
    assert_eq!(tasks.len(), 1, "{r}");
    assert_eq!(tasks[0]["payload"], "pages");
    let (st, r) = lease("payroll", "crawler:1").await;
    assert_eq!(st, 403, "a queue not opened to it: {r}");

    let id = tasks[0]["id"].as_str().unwrap();
    let report =
        |worker: &str| json!({"worker": worker, "attempt": tasks[0]["attempts"], "result": "ok"});
    let complete = format!("/api/v1/tasks/{id}/complete");
    let (st, r) = s.post_as(&key, &complete, report("crawler-2")).await;
    assert_eq!(st, 403, "another's worker name: {r}");
    let (st, r) = s.post_as(&key, &complete, report("crawler:1")).await;
    assert_eq!(st, 204, "{r}");
    let (_, t) = s.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(t["state"], "done", "{t}");
    let (st, r) = s
        .post_as(
            &key,
            "/api/v1/queues/pages/tasks",
            json!({"payload": "more"}),
        )
        .await;
    assert_eq!(st, 201, "{r}");

    // Everything else stays the administrator's.
    let r = reqwest::Client::new()
        .get(format!("{}/api/v1/tasks", s.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let denials = common::audit_records(&s)
        .await
        .into_iter()
        .filter(|r| r["action"] == "task.lease" && r["decision"] == "deny")
        .count();
    assert_eq!(denials, 2, "each refused lease is audited");
}

both_backends!(worker_keys_on, workers_use_their_agents_own_keys);

/// A loopback HTTP server that records each request's method and path, in order.
async fn recording_server() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let seen: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let s2 = seen.clone();
    let app = axum::Router::new().route(
        "/{*path}",
        axum::routing::any(move |method: axum::http::Method, uri: axum::http::Uri| {
            let s2 = s2.clone();
            async move {
                s2.lock().unwrap().push(format!("{method} {}", uri.path()));
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, seen)
}

/// A run that fails part-way has what it did undone: each completed call of a tool with an
/// undo step registered, newest first, by a compensation run; a run that succeeds keeps its
/// effects.
async fn a_failed_run_is_compensated(b: Backend) {
    let s = TestServer::start(b).await;
    let (url, seen) = recording_server().await;
    let put = |p: &str| {
        format!("    - {{toolCalls: [{{name: http_request, arguments: {{method: PUT, url: \"{url}/{p}\"}}}}]}}\n")
    };
    let manifest = |name: &str, max_steps: u32| {
        format!(
            "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: {name}}}\nspec:\n  model: scripted\n  tools: [http_request, echo]\n  maxSteps: {max_steps}\n  compensation:\n    http_request: {{tool: http_request, arguments: {{method: DELETE, url: \"{{{{args.url}}}}\"}}}}\n  script:\n{}{}    - {{toolCalls: [{{name: echo, arguments: {{n: 1}}}}]}}\n    - {{content: booked}}\n",
            put("flight"),
            put("hotel")
        )
    };
    // Three model turns allowed, four needed: it fails after booking both.
    s.apply(&manifest("booker", 3)).await;
    let id = s.start_run("booker", "trip").await;
    let r = s.wait_run(&id).await;
    assert_eq!(r["error"]["code"], "max_steps_exceeded", "{r}");
    let comp = common::eventually("the compensation run", || async {
        let (_, runs) = s.get(&format!("/api/v1/runs?parent={id}")).await;
        let c = runs["runs"].as_array()?.first()?.clone();
        (c["state"] == "succeeded").then_some(c)
    })
    .await;
    assert!(
        comp["result"].as_str().unwrap().contains("undid 2 steps"),
        "{comp}"
    );
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "PUT /flight",
            "PUT /hotel",
            "DELETE /hotel",
            "DELETE /flight"
        ]
    );
    let j = s.journal(comp["id"].as_str().unwrap()).await;
    assert_eq!(
        j.iter().filter(|e| e["phase"] == "outcome").count(),
        2,
        "journaled like any step"
    );

    seen.lock().unwrap().clear();
    s.apply(&manifest("lucky", 4)).await;
    let id = s.start_run("lucky", "trip").await;
    assert_eq!(s.wait_run(&id).await["state"], "succeeded");
    let (_, runs) = s.get(&format!("/api/v1/runs?parent={id}")).await;
    assert!(
        runs["runs"].as_array().unwrap().is_empty(),
        "nothing to undo"
    );
    assert_eq!(*seen.lock().unwrap(), ["PUT /flight", "PUT /hotel"]);
}

both_backends!(compensation_on, a_failed_run_is_compensated);
