//! Evaluation against the real binary: online evaluators score a sample of their agents' ended
//! runs once each, with rules, a model as judge (on its own budget) or code in a sandbox; any
//! run is scored on request; bad evaluators are refused — on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{eventually, Backend, TestServer};
use serde_json::{json, Value};

const CLERK: &str = "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: clerk}\nspec:\n  model: scripted\n  tools: [echo]\n  script:\n    - toolCalls: [{name: echo, arguments: {n: 1}}]\n    - content: \"paid {{input}}\"\n";
const SLOPPY: &str = "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: sloppy}\nspec:\n  model: scripted\n  script:\n    - content: done\n";

async fn scores(s: &TestServer, query: &str) -> Value {
    s.get(&format!("/api/v1/scores?{query}")).await.1
}

async fn an_online_evaluator_scores_each_ended_run_once(b: Backend) {
    let s = TestServer::start_with(b, &[("STEWARD_ENGINE__ALERT_EVERY_MS", "100")]).await;
    s.apply(CLERK).await;
    s.apply(SLOPPY).await;
    let (st, e) = s
        .put(
            "/api/v1/evaluators/paid",
            json!({"kind": "rules", "rules": {"succeeded": true, "result_contains": "paid",
                "must_call": ["echo"], "max_steps": 10}, "agents": ["clerk", "sloppy"]}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    let (st, e) = s
        .put(
            "/api/v1/evaluators/none-sampled",
            json!({"kind": "rules", "rules": {"succeeded": true}, "agents": ["clerk"], "sample": 0}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    let mut runs = Vec::new();
    for (agent, input) in [("clerk", "a"), ("clerk", "b"), ("sloppy", "c")] {
        let id = s.start_run(agent, input).await;
        s.wait_run(&id).await;
        runs.push(id);
    }
    let all = eventually("every run scored", || async {
        let l = scores(&s, "evaluator=paid").await;
        (l["scores"].as_array().unwrap().len() == 3).then_some(l)
    })
    .await;
    let of = |run: &str| {
        all["scores"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["run_id"] == run)
            .cloned()
            .unwrap()
    };
    assert_eq!(of(&runs[0])["score"], 1.0, "{all}");
    assert_eq!(of(&runs[0])["passed"], true);
    let sloppy = of(&runs[2]);
    assert_eq!(sloppy["score"], 0.5, "two of four checks hold: {sloppy}");
    assert_eq!(sloppy["passed"], false);
    let why = sloppy["reason"].as_str().unwrap();
    assert!(
        why.contains("result contains \"paid\"") && why.contains("called echo"),
        "{why}"
    );
    assert!(
        (all["mean"].as_f64().unwrap() - 2.5 / 3.0).abs() < 1e-9,
        "{all}"
    );
    assert!((all["pass_rate"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
    // Scored once: later checks add nothing.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        scores(&s, "evaluator=paid").await["scores"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        scores(&s, "evaluator=none-sampled").await["scores"],
        json!([]),
        "a sample of 0 scores nothing"
    );
    let one = scores(&s, &format!("run={}", runs[1])).await;
    assert_eq!(one["scores"][0]["evaluator"], "paid", "{one}");

    // On request: a run of an agent the evaluator does not watch.
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: outsider}\nspec:\n  model: scripted\n  tools: [echo]\n  script:\n    - toolCalls: [{name: echo, arguments: {n: 2}}]\n    - content: paid in full\n").await;
    let outsider = s.start_run("outsider", "x").await;
    s.wait_run(&outsider).await;
    let (st, sc) = s
        .post("/api/v1/evaluators/paid/score", json!({"run": outsider}))
        .await;
    assert_eq!(st, 200, "{sc}");
    assert_eq!(sc["score"], 1.0, "{sc}");
    let (_, again) = s
        .post("/api/v1/evaluators/paid/score", json!({"run": outsider}))
        .await;
    assert_eq!(again["at"], sc["at"], "scored once");
    let (st, _) = s
        .post("/api/v1/evaluators/nobody/score", json!({"run": outsider}))
        .await;
    assert_eq!(st, 404);
    let (st, _) = s
        .post("/api/v1/evaluators/paid/score", json!({"run": "not-a-run"}))
        .await;
    assert_eq!(st, 400);
    let (st, _) = common::send(s.http.delete(format!("{}/api/v1/evaluators/paid", s.url))).await;
    assert_eq!(st, 204);
    let (_, l) = s.get("/api/v1/evaluators").await;
    assert_eq!(l["evaluators"].as_array().unwrap().len(), 1, "{l}");
}
both_backends!(
    an_online_evaluator_scores_each_ended_run_once,
    an_online_evaluator_scores_each_ended_run_once
);

/// A model as judge: asked through the gateway as `eval-<name>`, on its own budget account;
/// its score and its cost kept.
async fn a_judge_scores_a_run_on_its_own_budget(b: Backend) {
    use axum::routing::post;
    use axum::Json;
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(|Json(body): Json<Value>| async move {
            let asked = body["messages"][1]["content"].as_str().unwrap_or_default().to_string();
            // The judge sees the criteria and the trajectory.
            let content = if asked.contains("pays once") && asked.contains("\"tools_called\":[\"echo\"]") {
                "SCORE: 0.75\nIt paid, once."
            } else {
                "no idea"
            };
            Json(json!({"id": "x", "object": "chat.completion", "created": 1, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}}))
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}/v1", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    let s = TestServer::start_with(
        b,
        &[
            ("STEWARD_ENGINE__ALERT_EVERY_MS", "100"),
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &upstream),
            ("STEWARD_LLM__PRICES__JUDGE__INPUT", "1.0"),
            ("STEWARD_LLM__PRICES__JUDGE__OUTPUT", "2.0"),
        ],
    )
    .await;
    s.apply(CLERK).await;
    let (st, e) = s
        .put(
            "/api/v1/evaluators/judge",
            json!({"kind": "judge", "judge": {"model": "mock/judge", "criteria": "The clerk pays once."},
                "agents": ["clerk"]}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    let run = s.start_run("clerk", "x").await;
    s.wait_run(&run).await;
    let l = eventually("the judge's score", || async {
        let l = scores(&s, "evaluator=judge").await;
        (!l["scores"].as_array().unwrap().is_empty()).then_some(l)
    })
    .await;
    let sc = &l["scores"][0];
    assert_eq!(sc["score"], 0.75, "{sc}");
    assert_eq!(sc["reason"], "It paid, once.");
    // 100 tokens in at $1, 10 out at $2 per million.
    assert!(
        (sc["cost_usd"].as_f64().unwrap() - 120e-6).abs() < 1e-12,
        "{sc}"
    );
    common::settled(&s).await;
    let (_, costs) = s.get("/api/v1/costs?by=agent").await;
    assert!(
        costs["lines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["key"] == "eval-judge" && l["calls"] == 1),
        "its calls are its own agent's: {costs}"
    );
}
both_backends!(
    a_judge_scores_a_run_on_its_own_budget,
    a_judge_scores_a_run_on_its_own_budget
);

/// Code in a sandbox reads the trajectory on its standard input and prints the score.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_scores_a_run_in_a_sandbox() {
    let s = TestServer::start(Backend::Sqlite).await;
    s.apply(CLERK).await;
    let (st, e) = s
        .put(
            "/api/v1/evaluators/counted",
            json!({"kind": "code", "code": {"language": "python3", "source":
                "import json, sys\nt = json.load(sys.stdin)\nprint(json.dumps({'score': 1.0 if t['tool_calls'] == 1 else 0.0, 'reason': 'tools: %d, state: %s' % (t['tool_calls'], t['state'])}))\n"}}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    let run = s.start_run("clerk", "x").await;
    s.wait_run(&run).await;
    let (st, sc) = s
        .post("/api/v1/evaluators/counted/score", json!({"run": run}))
        .await;
    assert_eq!(st, 200, "{sc}");
    assert_eq!(sc["score"], 1.0, "{sc}");
    assert_eq!(sc["reason"], "tools: 1, state: succeeded");
    // A program that prints no score gives none, and says why.
    s.put(
        "/api/v1/evaluators/silent",
        json!({"kind": "code", "code": {"language": "sh", "source": "echo oops >&2; exit 2"}}),
    )
    .await;
    let (_, sc) = s
        .post("/api/v1/evaluators/silent/score", json!({"run": run}))
        .await;
    assert!(sc["score"].is_null(), "{sc}");
    assert!(sc["reason"].as_str().unwrap().contains("oops"), "{sc}");
}

/// Every bad evaluator gets a clear error and is not kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_evaluators_are_refused() {
    let s = TestServer::start(Backend::Sqlite).await;
    for (body, says) in [
        (json!({"kind": "rules"}), "rules: a rules evaluator"),
        (json!({"kind": "rules", "rules": {}}), "at least one check"),
        (
            json!({"kind": "rules", "rules": {"succeeded": true}, "judge": {"model": "m", "criteria": "c"}}),
            "nothing of the other kinds",
        ),
        (
            json!({"kind": "judge", "judge": {"model": "nowhere/x", "criteria": "c"}}),
            "judge.model",
        ),
        (
            json!({"kind": "judge", "judge": {"model": "scripted", "criteria": ""}}),
            "judge.criteria",
        ),
        (
            json!({"kind": "code", "code": {"language": "ruby", "source": "x"}}),
            "code.language",
        ),
        (
            json!({"kind": "rules", "rules": {"succeeded": true}, "sample": 2}),
            "sample",
        ),
        (
            json!({"kind": "rules", "rules": {"succeeded": true}, "agents": ["Not Valid"]}),
            "agents[0]",
        ),
        (json!({"kind": "vibes"}), "unknown variant"),
        (
            json!({"kind": "rules", "rules": {"succeeded": true, "also": 1}}),
            "unknown field",
        ),
    ] {
        let (st, e) = s.put("/api/v1/evaluators/bad", body.clone()).await;
        assert_eq!(st, 400, "{body}: {e}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(says),
            "{body}: {e}"
        );
    }
    let (st, _) = s
        .put(
            "/api/v1/evaluators/Bad%20Name",
            json!({"kind": "rules", "rules": {"succeeded": true}}),
        )
        .await;
    assert_eq!(st, 400);
    let (_, l) = s.get("/api/v1/evaluators").await;
    assert_eq!(l["evaluators"], json!([]));
}

fn greeter(word: &str) -> String {
    format!("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: greeter}}\nspec:\n  model: scripted\n  script:\n    - content: \"{word} {{{{input}}}}\"\n")
}

async fn experiment_done(s: &TestServer, id: &str) -> Value {
    eventually("the experiment scored", || async {
        let (_, x) = s.get(&format!("/api/v1/experiments/{id}")).await;
        (x["summary"]["evaluators"]["exact"]["scored"] == 2).then_some(x)
    })
    .await
}

/// Two versions of an agent run over one dataset, scored against its expectations, compared.
async fn experiments_compare_two_versions_over_a_dataset(b: Backend) {
    let s = TestServer::start_with(b, &[("STEWARD_ENGINE__ALERT_EVERY_MS", "100")]).await;
    s.apply(&greeter("hello")).await;
    let (st, d) = s
        .put(
            "/api/v1/datasets/names",
            json!({"items": [{"input": "ana", "expected": "hello ana"}, {"input": "bo", "expected": "hello bo"}]}),
        )
        .await;
    assert_eq!(st, 200, "{d}");
    let (st, e) = s
        .put(
            "/api/v1/evaluators/exact",
            json!({"kind": "rules", "rules": {"result_contains_expected": true}}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    let start = || {
        s.post(
            "/api/v1/experiments",
            json!({"dataset": "names", "agent": "greeter", "evaluators": ["exact"]}),
        )
    };
    let (st, first) = start().await;
    assert_eq!(st, 201, "{first}");
    let first = experiment_done(&s, first["id"].as_str().unwrap()).await;
    assert_eq!(first["agent_version"], 1);
    assert_eq!(first["summary"]["succeeded"], 2, "{first}");
    assert_eq!(
        first["summary"]["evaluators"]["exact"]["mean"], 1.0,
        "{first}"
    );
    assert_eq!(first["items"][1]["result"], "hello bo");
    assert_eq!(first["items"][1]["scores"]["exact"]["passed"], true);

    // Version 2 says something else: the same dataset scores it lower.
    s.apply(&greeter("bye")).await;
    let (st, second) = start().await;
    assert_eq!(st, 201, "{second}");
    let second = experiment_done(&s, second["id"].as_str().unwrap()).await;
    assert_eq!(second["agent_version"], 2);
    assert_eq!(
        second["summary"]["evaluators"]["exact"]["mean"], 0.0,
        "{second}"
    );
    assert_eq!(second["summary"]["evaluators"]["exact"]["pass_rate"], 0.0);
    // Version 1 again, named: it scores as it did.
    let (st, pinned) = s
        .post(
            "/api/v1/experiments",
            json!({"dataset": "names", "agent": "greeter", "version": 1, "evaluators": ["exact"]}),
        )
        .await;
    assert_eq!(st, 201, "{pinned}");
    let pinned = experiment_done(&s, pinned["id"].as_str().unwrap()).await;
    assert_eq!(pinned["agent_version"], 1);
    assert_eq!(
        pinned["summary"]["evaluators"]["exact"]["mean"], 1.0,
        "{pinned}"
    );
    let (st, e) = s
        .post(
            "/api/v1/experiments",
            json!({"dataset": "names", "agent": "greeter", "version": 9, "evaluators": ["exact"]}),
        )
        .await;
    assert_eq!(st, 404, "{e}");
    let (_, l) = s.get("/api/v1/experiments").await;
    let listed: Vec<&str> = l["experiments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        vec![
            pinned["id"].as_str().unwrap(),
            second["id"].as_str().unwrap(),
            first["id"].as_str().unwrap()
        ]
    );

    // A dataset from past runs: each one's input, its result as what is expected.
    let past = first["items"][0]["run_id"].as_str().unwrap();
    let (st, d) = s
        .post("/api/v1/datasets/from-past/runs", json!({"runs": [past]}))
        .await;
    assert_eq!(st, 200, "{d}");
    assert_eq!(
        d["items"],
        json!([{"input": "ana", "expected": "hello ana"}])
    );

    // Bad requests, each with its reason; nothing started.
    for (path, body, status) in [
        (
            "/api/v1/experiments",
            json!({"dataset": "nope", "agent": "greeter", "evaluators": ["exact"]}),
            404,
        ),
        (
            "/api/v1/experiments",
            json!({"dataset": "names", "agent": "nobody", "evaluators": ["exact"]}),
            404,
        ),
        (
            "/api/v1/experiments",
            json!({"dataset": "names", "agent": "greeter", "evaluators": ["missing"]}),
            400,
        ),
        (
            "/api/v1/experiments",
            json!({"dataset": "names", "agent": "greeter", "evaluators": []}),
            400,
        ),
        (
            "/api/v1/datasets/from-past/runs",
            json!({"runs": ["run_00000000000000000000000000000000"]}),
            400,
        ),
    ] {
        let (st, e) = s.post(path, body.clone()).await;
        assert_eq!(st, status, "{body}: {e}");
    }
    let (st, _) = s.put("/api/v1/datasets/empty", json!({"items": []})).await;
    assert_eq!(st, 400);
    let (st, _) = s
        .put(
            "/api/v1/datasets/big",
            json!({"items": [{"input": "x".repeat(300 * 1024)}]}),
        )
        .await;
    assert_eq!(st, 413);
    let (_, l) = s.get("/api/v1/experiments").await;
    assert_eq!(l["experiments"].as_array().unwrap().len(), 3);
}
both_backends!(
    experiments_compare_two_versions_over_a_dataset,
    experiments_compare_two_versions_over_a_dataset
);

/// Two nodes score the same ended runs online with a slow judge: each run's judge is asked
/// once, by whichever node claimed it, never by both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_pay_one_judge_per_run() {
    use axum::routing::post;
    use axum::Json;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let asked = Arc::new(AtomicUsize::new(0));
    let counted = asked.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |Json(body): Json<Value>| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                // Slow enough that both nodes look at each run while its judge thinks.
                tokio::time::sleep(std::time::Duration::from_millis(400)).await;
                Json(json!({"id": "x", "object": "chat.completion", "created": 1, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "SCORE: 1\nfine"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}}))
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}/v1", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    let a = TestServer::start_with(
        Backend::Postgres,
        &[
            ("STEWARD_ENGINE__ALERT_EVERY_MS", "50"),
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &upstream),
            ("STEWARD_LLM__PRICES__JUDGE__INPUT", "1.0"),
            ("STEWARD_LLM__PRICES__JUDGE__OUTPUT", "2.0"),
        ],
    )
    .await;
    let b = TestServer::join(&a);
    a.apply(CLERK).await;
    let (st, e) = a
        .put(
            "/api/v1/evaluators/judge",
            json!({"kind": "judge", "judge": {"model": "mock/judge", "criteria": "The clerk pays once."},
                "agents": ["clerk"]}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    let mut runs = Vec::new();
    for i in 0..6 {
        runs.push(a.start_run("clerk", &format!("bill {i}")).await);
    }
    for r in &runs {
        a.wait_run(r).await;
    }
    eventually("every run's score", || async {
        let l = scores(&b, "evaluator=judge").await;
        (l["scores"].as_array().unwrap().len() == 6).then_some(())
    })
    .await;
    // Long enough for a second node's late call to land, were it made.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(asked.load(Ordering::SeqCst), 6, "one judge call per run");
}
