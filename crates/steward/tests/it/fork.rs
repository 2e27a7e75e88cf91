//! Fork and replay against the real binary: a run started from another's journal up to a step
//! replays the steps before it (never made or paid for again), runs the rest live with its
//! edits, and applies them again at the same step after a crash — on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{Backend, Counter, TestServer};
use serde_json::{json, Value};

/// Pays (a POST), then notifies (a PUT, under `/slow` when asked: 2 s at the upstream), then
/// answers with its input. Steps: 0 model, 1 pay, 2 model, 3 notify, 4 model.
fn payer(counter: &str, slow: bool) -> String {
    let notify = if slow { "slow/notify" } else { "notify" };
    format!(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: payer}}\nspec:\n  model: scripted\n  systemPrompt: You pay, then notify.\n  tools: [http_request]\n  script:\n    - toolCalls: [{{name: http_request, arguments: {{method: POST, url: \"{counter}/pay\"}}}}]\n    - toolCalls: [{{name: http_request, arguments: {{method: PUT, url: \"{counter}/{notify}\"}}}}]\n    - content: \"done for {{{{input}}}}\"\n"
    )
}

async fn fork(s: &TestServer, run: &str, body: Value) -> (u16, Value) {
    s.post(&format!("/api/v1/runs/{run}/fork"), body).await
}

/// The (seq, phase, kind, name, body) of each entry: what a replay must find unchanged.
fn steps(journal: &[Value]) -> Vec<(i64, String, String, String, String)> {
    journal
        .iter()
        .map(|e| {
            (
                e["seq"].as_i64().unwrap(),
                e["phase"].as_str().unwrap().to_string(),
                e["kind"].as_str().unwrap().to_string(),
                e["name"].as_str().unwrap().to_string(),
                e["body"].to_string(),
            )
        })
        .collect()
}

async fn a_fork_replays_what_came_before_its_step_and_runs_the_rest_with_its_edits(b: Backend) {
    let c = Counter::start().await;
    let s = TestServer::start(b).await;
    s.apply(&payer(&c.url, false)).await;
    let source = s.start_run("payer", "alpha").await;
    let ended = s.wait_run(&source).await;
    assert_eq!(
        (ended["state"].as_str(), ended["result"].as_str()),
        (Some("succeeded"), Some("done for alpha")),
        "{ended}"
    );
    assert_eq!(c.total_for_run(&source), 2, "paid and notified once each");
    let source_journal = s.journal(&source).await;
    assert_eq!(source_journal.len(), 10, "{source_journal:?}");

    // Departing at the notification with another input: the payment is the source's, replayed.
    let (st, f) = fork(&s, &source, json!({"at": 3, "input": "beta"})).await;
    assert_eq!(st, 201, "{f}");
    let forked = f["id"].as_str().unwrap().to_string();
    assert_ne!(forked, source);
    assert_eq!(
        f["fork"],
        json!({"source": source, "at": 3, "input": "beta"}),
        "{f}"
    );
    let ended = s.wait_run(&forked).await;
    assert_eq!(
        (ended["state"].as_str(), ended["result"].as_str()),
        (Some("succeeded"), Some("done for beta")),
        "the model saw the edited input from step 3 on: {ended}"
    );
    assert_eq!(ended["fork"]["source"], source.as_str(), "{ended}");
    assert_eq!(
        c.count(&format!("{forked}:1")),
        0,
        "the payment before the fork's step is not made again"
    );
    assert_eq!(c.count(&format!("{forked}:3")), 1, "the notification is");
    assert_eq!(
        c.total_for_run(&source),
        2,
        "the source's calls are as they were"
    );
    let journal = s.journal(&forked).await;
    assert_eq!(
        steps(&journal)[..6],
        steps(&source_journal)[..6],
        "the steps before 3 are the source's"
    );
    assert_eq!(journal.len(), 10, "{journal:?}");
    let last_intent = journal
        .iter()
        .rfind(|e| e["kind"] == "model" && e["phase"] == "intent")
        .unwrap();
    assert_eq!(last_intent["seq"], 4);
    assert_eq!(
        s.journal(&source).await,
        source_journal,
        "the source is untouched"
    );

    // Its creation is audited with where it came from.
    let records = common::audit_records(&s).await;
    assert!(
        records.iter().any(|r| r["action"] == "run.create"
            && r["run_id"] == forked.as_str()
            && r["outcome"] == format!("origin:fork:{source}@3")),
        "{records:?}"
    );

    // From step 0 with a new system prompt and input: everything is live again.
    let (st, f) = fork(
        &s,
        &source,
        json!({"at": 0, "input": "gamma", "system_prompt": "You are terse."}),
    )
    .await;
    assert_eq!(st, 201, "{f}");
    let whole = f["id"].as_str().unwrap().to_string();
    let ended = s.wait_run(&whole).await;
    assert_eq!(ended["result"], "done for gamma", "{ended}");
    assert_eq!(
        c.total_for_run(&whole),
        2,
        "paid and notified, as a new run"
    );
    let first = &s.journal(&whole).await[0];
    assert_eq!(first["body"]["last"], "gamma", "{first}");

    // A fork of a fork: its copied steps are copied on.
    let (st, f) = fork(&s, &forked, json!({"at": 4, "input": "delta"})).await;
    assert_eq!(st, 201, "{f}");
    let again = f["id"].as_str().unwrap().to_string();
    let ended = s.wait_run(&again).await;
    assert_eq!(ended["result"], "done for delta", "{ended}");
    assert_eq!(
        c.total_for_run(&again),
        0,
        "nothing before step 4 is redone"
    );
    assert_eq!(
        steps(&s.journal(&again).await)[..8],
        steps(&s.journal(&forked).await)[..8]
    );

    // With no edits, a fork replays to its step and runs the rest as the source did.
    let (st, f) = fork(&s, &source, json!({"at": 2})).await;
    assert_eq!(st, 201, "{f}");
    let replay = f["id"].as_str().unwrap().to_string();
    assert_eq!(s.wait_run(&replay).await["result"], "done for alpha");
    assert_eq!(c.total_for_run(&replay), 1, "only the notification is live");
}
both_backends!(
    a_fork_replays_what_came_before_its_step_and_runs_the_rest_with_its_edits,
    a_fork_replays_what_came_before_its_step_and_runs_the_rest_with_its_edits
);

/// A fork whose model is changed from its step on: the new model is asked (through the router,
/// decided and costed as any), the steps before stay the scripted source's and cost nothing.
async fn a_fork_can_change_the_model(b: Backend) {
    let c = Counter::start().await;
    let upstream = common::ok_upstream().await;
    let s = TestServer::start_with(
        b,
        &[
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &upstream),
        ],
    )
    .await;
    s.apply(&payer(&c.url, false)).await;
    let source = s.start_run("payer", "alpha").await;
    s.wait_run(&source).await;
    let (st, f) = fork(&s, &source, json!({"at": 2, "model": "mock/m"})).await;
    assert_eq!(st, 201, "{f}");
    let forked = f["id"].as_str().unwrap().to_string();
    let ended = s.wait_run(&forked).await;
    assert_eq!(
        (ended["state"].as_str(), ended["result"].as_str()),
        (Some("succeeded"), Some("ok")),
        "the mock model answered from step 2: {ended}"
    );
    let journal = s.journal(&forked).await;
    let models: Vec<(i64, &str)> = journal
        .iter()
        .filter(|e| e["kind"] == "model" && e["phase"] == "intent")
        .map(|e| {
            (
                e["seq"].as_i64().unwrap(),
                e["body"]["model"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(models, vec![(0, "scripted"), (2, "mock/m")], "{journal:?}");
    assert_eq!(c.total_for_run(&forked), 0, "the payment was the source's");

    // A model the router cannot reach is refused before anything is created.
    let (_, before) = s.get("/api/v1/runs?limit=100").await;
    let (st, e) = fork(&s, &source, json!({"at": 2, "model": "nowhere/x"})).await;
    assert_eq!(st, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("model:"),
        "{e}"
    );
    let (_, after) = s.get("/api/v1/runs?limit=100").await;
    assert_eq!(
        before["runs"].as_array().unwrap().len(),
        after["runs"].as_array().unwrap().len()
    );
}
both_backends!(a_fork_can_change_the_model, a_fork_can_change_the_model);

/// Killed while its first live step is in flight, a fork comes back with its edits applied at
/// the same step: its journaled model step replays without divergence.
async fn a_fork_survives_a_crash_with_its_edits(b: Backend) {
    let c = Counter::start().await;
    let mut s = TestServer::start(b).await;
    s.apply(&payer(&c.url, true)).await;
    let source = s.start_run("payer", "alpha").await;
    assert_eq!(s.wait_run(&source).await["state"], "succeeded");
    // At 2: the edited model step is journaled, then the slow notification is in flight.
    let (st, f) = fork(&s, &source, json!({"at": 2, "input": "beta"})).await;
    assert_eq!(st, 201, "{f}");
    let forked = f["id"].as_str().unwrap().to_string();
    let key = format!("{forked}:3");
    common::eventually("the fork's notification to reach the upstream", || async {
        (c.count(&key) > 0).then_some(())
    })
    .await;
    s.kill9();
    s.spawn();
    let ended = s.wait_run(&forked).await;
    assert_eq!(
        (ended["state"].as_str(), ended["result"].as_str()),
        (Some("succeeded"), Some("done for beta")),
        "{ended}"
    );
    assert_eq!(c.count(&format!("{forked}:1")), 0, "never paid by the fork");
    assert_eq!(c.count(&key), 2, "the PUT in doubt retried under its key");
}
both_backends!(
    a_fork_survives_a_crash_with_its_edits,
    a_fork_survives_a_crash_with_its_edits
);

/// Every bad fork request gets a clear error and creates nothing.
async fn bad_forks_are_refused_and_create_nothing(b: Backend) {
    let c = Counter::start().await;
    let s = TestServer::start(b).await;
    s.apply(&payer(&c.url, false)).await;
    let source = s.start_run("payer", "alpha").await;
    s.wait_run(&source).await;
    let count = || async {
        let (_, l) = s.get("/api/v1/runs?limit=1000").await;
        l["runs"].as_array().unwrap().len()
    };
    let runs = count().await;
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"at": -1}), 400, "at:"),
        (json!({"at": 6}), 400, "5 completed steps"),
        (json!({"at": 99}), 400, "from 0 to 5"),
        (json!({}), 400, "at"),
        (json!({"at": "1"}), 400, "at"),
        (json!({"at": 1, "prompt": "x"}), 400, "prompt"),
        (json!({"at": 1, "model": ""}), 400, "model:"),
        (json!({"at": 1, "input": 7}), 400, "input"),
        (
            json!({"at": 1, "input": "x".repeat(300 * 1024)}),
            413,
            "limit",
        ),
        (
            json!({"at": 1, "system_prompt": "x".repeat(300 * 1024)}),
            413,
            "system_prompt",
        ),
    ];
    for (body, status, says) in cases {
        let shown = body.to_string().chars().take(60).collect::<String>();
        let (st, e) = fork(&s, &source, body).await;
        assert_eq!(st, status, "{shown}: {e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(says),
            "{shown}: {e}"
        );
    }
    let unknown = format!("run_{}", "0".repeat(32));
    let (st, e) = fork(&s, &unknown, json!({"at": 0})).await;
    assert_eq!(st, 404, "{e}");
    let (st, e) = fork(&s, "not-a-run", json!({"at": 0})).await;
    assert_eq!(st, 400, "{e}");
    assert_eq!(count().await, runs, "nothing was created");

    // Departing after the last step replays the whole run: the same answer, nothing redone.
    let (st, e) = fork(&s, &source, json!({"at": 5})).await;
    assert_eq!(st, 201, "{e}");
    let whole = e["id"].as_str().unwrap().to_string();
    assert_eq!(s.wait_run(&whole).await["result"], "done for alpha");
    assert_eq!(c.total_for_run(&whole), 0);
}
both_backends!(
    bad_forks_are_refused_and_create_nothing,
    bad_forks_are_refused_and_create_nothing
);

/// `steward fork` from the command line: the fork it names runs the rest with the edited
/// input and pays nothing again; a step out of range is refused with the server's reason and a
/// failing exit, creating nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_forks_a_run() {
    let c = Counter::start().await;
    let s = TestServer::start(Backend::Sqlite).await;
    s.apply(&payer(&c.url, false)).await;
    let source = s.start_run("payer", "alpha").await;
    s.wait_run(&source).await;

    let (ok, out, err) = common::cli(&s, &["fork", &source, "--at", "3", "--input", "gamma"]);
    assert!(ok, "{err}");
    let forked = out
        .strip_prefix("run ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    assert!(
        out.trim_end().ends_with(&format!("forked from {source}")),
        "{out}"
    );
    let ended = s.wait_run(&forked).await;
    assert_eq!(ended["result"], "done for gamma", "{ended}");
    assert_eq!(ended["fork"]["at"], 3);
    assert_eq!(
        c.count(&format!("{forked}:1")),
        0,
        "the payment is replayed"
    );

    let (_, before) = s.get("/api/v1/runs?limit=1000").await;
    let (ok, _, err) = common::cli(&s, &["fork", &source, "--at", "99"]);
    assert!(!ok, "a step out of range fails");
    assert!(err.contains("from 0 to 5"), "{err}");
    let (_, after) = s.get("/api/v1/runs?limit=1000").await;
    assert_eq!(
        before["runs"].as_array().unwrap().len(),
        after["runs"].as_array().unwrap().len()
    );
}
