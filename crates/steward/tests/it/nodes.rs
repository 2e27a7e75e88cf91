//! Two nodes on one PostgreSQL database: kill one mid-run, and the other takes its runs over
//! once their leases expire, finishing them with no completed step done twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use common::{Backend, Counter, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_surviving_node_takes_over_a_dead_nodes_runs() {
    let c = Counter::start().await;
    let mut a = TestServer::start(Backend::Postgres).await;
    let b = TestServer::join(&a);
    let script = "    - {delayMs: 300, toolCalls: [{name: http_request, arguments: {method: PUT, url: \"{{input}}\"}}]}\n    - {delayMs: 300, toolCalls: [{name: http_request, arguments: {method: PUT, url: \"{{input}}\"}}]}\n    - {delayMs: 300, content: done}\n";
    a.apply(&format!(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: worker}}\nspec:\n  model: scripted\n  tools: [http_request]\n  recovery: fail\n  script:\n{script}"
    ))
    .await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(a.start_run("worker", &format!("{}/w/{i}", c.url)).await);
    }
    tokio::time::sleep(Duration::from_millis(450)).await;
    let (_, runs) = a.get("/api/v1/runs?limit=100").await;
    let a_node = std::fs::read_to_string(a.dir.path().join("node-id")).unwrap();
    let held_by_a = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["lease_owner"] == a_node.as_str())
        .count();
    assert!(held_by_a > 0, "node a should be driving some runs: {runs}");
    let killed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    a.kill9();

    for id in &ids {
        let r = b.wait_run(id).await;
        assert_eq!(r["state"], "succeeded", "{r}\n{}", b.log());
        let j = b.journal(id).await;
        for seq in [1, 3] {
            let outcome_at = j
                .iter()
                .find(|e| e["seq"] == seq && e["phase"] == "outcome")
                .unwrap()["at"]
                .as_i64()
                .unwrap();
            let intent_at = j
                .iter()
                .find(|e| e["seq"] == seq && e["phase"] == "intent")
                .unwrap()["at"]
                .as_i64()
                .unwrap();
            let n = c.count(&format!("{id}:{seq}"));
            // A PUT interrupted by the kill is retried by node b under the same key; any other ran once.
            if intent_at <= killed_at && killed_at < outcome_at {
                assert!((1..=2).contains(&n), "{id}:{seq} ran {n} times");
            } else {
                assert_eq!(n, 1, "{id}:{seq} ran {n} times");
            }
        }
    }
    let (_, runs) = b.get("/api/v1/runs?limit=100").await;
    let b_node = std::fs::read_to_string(b.dir.path().join("node-id")).unwrap();
    assert!(
        runs["runs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["lease_owner"].is_null()),
        "ended runs hold no lease"
    );
    assert_ne!(a_node, b_node);
}

/// Circuit breakers are shared: once one node opens a failing deployment's circuit, the other
/// skips that deployment too, without paying for its own failures first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_one_node_opens_is_open_on_the_other() {
    use axum::routing::post;
    use std::sync::{Arc, Mutex};
    let hits: Arc<Mutex<u32>> = Default::default();
    let h = hits.clone();
    let app = axum::Router::new()
        .route(
            "/failing/v1/chat/completions",
            post(move || {
                let h = h.clone();
                async move {
                    *h.lock().unwrap() += 1;
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down")
                }
            }),
        )
        .route(
            "/ok/v1/chat/completions",
            post(|axum::Json(body): axum::Json<serde_json::Value>| async move {
                axum::Json(serde_json::json!({"id": "x", "object": "chat.completion", "created": 1, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}))
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    let (failing, ok) = (format!("{base}/failing/v1"), format!("{base}/ok/v1"));
    let a = TestServer::start_with(
        Backend::Postgres,
        &[
            ("STEWARD_LLM__PROVIDERS__FAILING__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__FAILING__BASE_URL", &failing),
            ("STEWARD_LLM__PROVIDERS__OK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__OK__BASE_URL", &ok),
            (
                "STEWARD_LLM__ROUTES__SMART__DEPLOYMENTS",
                "[\"failing/m\", \"ok/m\"]",
            ),
            ("STEWARD_LLM__RETRIES", "0"),
            ("STEWARD_LLM__BREAKER_FAILURES", "3"),
            ("STEWARD_LLM__BREAKER_COOLDOWN_MS", "600000"),
            ("STEWARD_LLM__BREAKER_SYNC_MS", "50"),
        ],
    )
    .await;
    let b = TestServer::join(&a);
    let (_, key) = a
        .post("/api/v1/keys", serde_json::json!({"agent": "x"}))
        .await;
    let key = key["key"].as_str().unwrap().to_string();
    let ask = |node: &TestServer| {
        let (url, key) = (format!("{}/v1/chat/completions", node.url), key.clone());
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .bearer_auth(key)
                .json(&serde_json::json!({"model": "smart", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "the alias falls back to ok/m");
        }
    };
    for _ in 0..3 {
        ask(&a).await;
    }
    assert_eq!(*hits.lock().unwrap(), 3, "node a opened the circuit");
    common::eventually("node b learns of the open circuit", || {
        let b = &b;
        async move {
            let (_, c) = b.get("/api/v1/circuits").await;
            c["circuits"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["deployment"] == "failing/m" && c["open_for_ms"].as_u64() > Some(0))
                .then_some(())
        }
    })
    .await;
    for _ in 0..3 {
        ask(&b).await;
    }
    assert_eq!(
        *hits.lock().unwrap(),
        3,
        "node b skipped the failing deployment without trying it"
    );
}

/// Three nodes on one PostgreSQL share a queue's tasks through an agent that serves it. One
/// node is killed mid-way: its runs move to the others once their leases expire, and every task
/// is done once, by one run, with no completed step done twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_a_queue_and_survive_losing_one() {
    let c = Counter::start().await;
    let a = TestServer::start(Backend::Postgres).await;
    let mut b = TestServer::join(&a);
    let nodes = [a, TestServer::join(&b)];
    // Each run takes over a second, so a run node b drives is seen running even when polls
    // are slow on a loaded machine, and the queue outlasts b's first wake-up.
    let script = "    - {delayMs: 600, toolCalls: [{name: http_request, arguments: {method: PUT, url: \"{{input}}\"}}]}\n    - {delayMs: 600, content: done}\n";
    nodes[0]
        .apply(&format!(
            "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: shared}}\nspec:\n  model: scripted\n  tools: [http_request]\n  recovery: fail\n  tasks: {{queue: shared, concurrency: 9}}\n  script:\n{script}"
        ))
        .await;
    let mut tasks = Vec::new();
    // Through every node in turn: an enqueue wakes its own node's upkeep at once, so node b
    // takes some of the runs rather than only what its timer finds left.
    for i in 0..18 {
        let via = [&nodes[0], &b, &nodes[1]][i % 3];
        let (st, t) = via
            .post(
                "/api/v1/queues/shared/tasks",
                serde_json::json!({"payload": format!("{}/q/{i}", c.url)}),
            )
            .await;
        assert_eq!(st, 201, "{t}");
        tasks.push(t["task"]["id"].as_str().unwrap().to_string());
    }
    // Wait until node b drives some of the runs, then kill it.
    let b_node = std::fs::read_to_string(b.dir.path().join("node-id")).unwrap();
    common::eventually("node b drives a run", || async {
        let (_, runs) = nodes[0].get("/api/v1/runs?agent=shared&limit=100").await;
        runs["runs"]
            .as_array()?
            .iter()
            .any(|r| r["lease_owner"] == b_node.as_str() && r["state"] == "running")
            .then_some(())
    })
    .await;
    b.kill9();
    for id in &tasks {
        let t = common::eventually("every task done", || async {
            let (_, t) = nodes[1].get(&format!("/api/v1/tasks/{id}")).await;
            (t["state"] == "done").then_some(t)
        })
        .await;
        assert_eq!(t["attempts"], 1, "one run per task: {t}");
        assert_eq!(t["result"], "done");
    }
    let (_, runs) = nodes[0].get("/api/v1/runs?agent=shared&limit=100").await;
    let runs = runs["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 18, "one run per task");
    for r in runs {
        assert_eq!(r["state"], "succeeded", "{r}");
        let id = r["id"].as_str().unwrap();
        // The PUT went out once; one cut off by the kill is retried under the same key.
        let n = c.count(&format!("{id}:1"));
        assert!((1..=2).contains(&n), "{id}: {n}");
    }
}

/// An agent pool of at most two runs, filled by two nodes at once, never has a third run alive:
/// the limit holds across the cluster. Runs are counted where they act — a loopback server
/// each run's tool call waits on (longer or shorter by task), which records how many are in
/// flight at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_pool_holds_its_size_across_two_nodes() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (n, m) = (now.clone(), most.clone());
    let app = axum::Router::new().route(
        "/{*path}",
        axum::routing::any(move |uri: axum::http::Uri| {
            let (n, m) = (n.clone(), m.clone());
            async move {
                let inside = n.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(inside, Ordering::SeqCst);
                // Runs of uneven length, so one ends while another is still busy.
                let i: u64 = uri.path().rsplit('/').next().unwrap().parse().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(100 + (i % 4) * 250)).await;
                n.fetch_sub(1, Ordering::SeqCst);
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gauge = format!("http://{}/busy", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });

    let a = TestServer::start(Backend::Postgres).await;
    let b = TestServer::join(&a);
    a.apply(&format!(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: pooled}}\nspec:\n  model: scripted\n  tools: [http_request]\n  tasks: {{queue: work, concurrency: 1, maxConcurrency: 2}}\n  script:\n    - {{toolCalls: [{{name: http_request, arguments: {{method: GET, url: \"{gauge}/{{{{input}}}}\"}}}}]}}\n    - {{content: done}}\n"
    ))
    .await;
    for i in 0..16 {
        let node = if i % 2 == 0 { &a } else { &b };
        let (st, r) = node
            .post(
                "/api/v1/queues/work/tasks",
                serde_json::json!({"payload": i}),
            )
            .await;
        assert!(st == 201 || st == 200, "{st} {r}");
    }
    common::eventually("every task done", || async {
        let (_, q) = a.get("/api/v1/queues/work").await;
        (q["depth"]["done"] == 16).then_some(())
    })
    .await;
    assert_eq!(
        most.load(Ordering::SeqCst),
        2,
        "the pool grew to its ceiling of 2 and never past it"
    );
}
