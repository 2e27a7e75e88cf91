//! Supervision trees through the real binary, on SQLite and PostgreSQL: restarts by strategy
//! with backoff and an intensity limit, escalation to a parent and, at the root, an incident
//! for a human; evaluators (a rule and a reviewer agent) that accept, send back with
//! feedback, or escalate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{Backend, TestServer};
use serde_json::{json, Value};

async fn put(s: &TestServer, name: &str, spec: Value) -> (u16, Value) {
    s.put(&format!("/api/v1/supervisors/{name}"), spec).await
}

fn agent(name: &str, body: &str) -> String {
    format!("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: {name}}}\nspec:\n  model: scripted\n{body}")
}

async fn status(s: &TestServer, name: &str, want: &str) -> Value {
    common::eventually(&format!("supervisor {name} {want}"), || async {
        let (_, r) = s.get(&format!("/api/v1/supervisors/{name}")).await;
        (r["status"] == want).then_some(r)
    })
    .await
}

/// Runs of `agent`, oldest first.
async fn runs_of(s: &TestServer, agent: &str) -> Vec<Value> {
    let (_, r) = s
        .get(&format!("/api/v1/runs?agent={agent}&limit=100"))
        .await;
    let mut runs = r["runs"].as_array().unwrap().clone();
    runs.sort_by_key(|r| r["created_at"].as_i64().unwrap());
    runs
}

async fn supervisors_restart_back_off_give_up_and_escalate(b: Backend) {
    let s = TestServer::start(b).await;
    s.apply(&agent(
        "steady",
        "  script:\n    - {content: steady done}\n",
    ))
    .await;
    s.apply(&agent(
        "flaky",
        "  runTimeout: 100ms\n  script:\n    - {delayMs: 2000, content: never}\n",
    ))
    .await;
    s.apply(&agent(
        "slow",
        "  script:\n    - {delayMs: 60000, content: late}\n",
    ))
    .await;

    // Bad specs are refused, naming the problem.
    for (spec, want) in [
        (
            json!({"strategy": "one_for_some", "children": [{"name": "a", "agent": "steady"}]}),
            400,
        ),
        (json!({"strategy": "one_for_one", "children": []}), 400),
        (
            json!({"strategy": "one_for_one", "children": [{"name": "a"}]}),
            400,
        ),
        (
            json!({"strategy": "one_for_one", "children": [{"name": "a", "agent": "ghost"}]}),
            404,
        ),
        (
            json!({"strategy": "one_for_one", "children": [{"name": "a", "agent": "steady"}, {"name": "a", "agent": "steady"}]}),
            400,
        ),
        (
            json!({"strategy": "one_for_one", "children": [{"name": "a", "agent": "steady"}], "evaluator": {}}),
            400,
        ),
    ] {
        let (st, r) = put(&s, "bad", spec.clone()).await;
        assert_eq!(st, want, "{spec}: {r}");
    }

    // one_for_one: the failing child is restarted with growing backoff until the intensity
    // limit; its sibling is left alone; at the root, giving up opens an incident.
    let (st, r) = put(&s, "team", json!({
        "strategy": "one_for_one", "maxRestarts": 2, "withinMs": 60000,
        "backoff": {"initialMs": 300, "maxMs": 5000},
        "children": [{"name": "s", "agent": "steady", "input": "go"}, {"name": "f", "agent": "flaky", "input": "go"}]
    })).await;
    assert_eq!(st, 200, "{r}");
    let team = status(&s, "team", "failed").await;
    assert!(
        team["state"]["reason"]
            .as_str()
            .unwrap()
            .contains("child f failed"),
        "{team}"
    );
    assert_eq!(
        runs_of(&s, "steady").await.len(),
        1,
        "the sibling was not restarted"
    );
    let flaky = runs_of(&s, "flaky").await;
    assert_eq!(flaky.len(), 3, "first run and two restarts");
    let at: Vec<i64> = flaky
        .iter()
        .map(|r| r["created_at"].as_i64().unwrap())
        .collect();
    assert!(
        at[1] - at[0] >= 300 + 100,
        "backoff 300 ms after a 100 ms run: {at:?}"
    );
    assert!(at[2] - at[1] >= 600 + 100, "then 600 ms: {at:?}");
    let (_, inc) = s.get("/api/v1/incidents?state=open").await;
    let incident = inc["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["supervisor"] == "team")
        .cloned()
        .unwrap();
    assert!(
        incident["reason"]
            .as_str()
            .unwrap()
            .contains("maxRestarts 2"),
        "{incident}"
    );
    let (st, r) = s
        .post(
            &format!(
                "/api/v1/incidents/{}/resolve",
                incident["id"].as_str().unwrap()
            ),
            json!({"resolution": "flaky fixed"}),
        )
        .await;
    assert_eq!((st, r["state"].as_str()), (200, Some("resolved")), "{r}");
    let (st, _) = s
        .post(
            &format!(
                "/api/v1/incidents/{}/resolve",
                incident["id"].as_str().unwrap()
            ),
            json!({"resolution": "again"}),
        )
        .await;
    assert_eq!(st, 404, "resolved already");

    // one_for_all: a failure stops and restarts the running sibling too.
    put(&s, "pair", json!({
        "strategy": "one_for_all", "maxRestarts": 1, "backoff": {"initialMs": 100, "maxMs": 100},
        "children": [{"name": "slow", "agent": "slow"}, {"name": "f", "agent": "flaky"}]
    })).await;
    status(&s, "pair", "failed").await;
    let slow = common::eventually("the slow sibling's runs stopped", || async {
        let runs = runs_of(&s, "slow").await;
        runs.iter()
            .all(|r| r["state"] == "cancelled")
            .then_some(runs)
    })
    .await;
    assert_eq!(
        slow.len(),
        2,
        "restarted with its sibling, then stopped when the supervisor gave up"
    );

    // A child supervisor that gives up escalates to its parent, which restarts it; when the
    // parent gives up, only the root opens an incident.
    put(&s, "inner", json!({"strategy": "one_for_one", "maxRestarts": 0, "children": [{"name": "f", "agent": "flaky"}]})).await;
    put(&s, "outer", json!({"strategy": "one_for_one", "maxRestarts": 1, "backoff": {"initialMs": 100, "maxMs": 100},
        "children": [{"name": "inner", "supervisor": "inner"}]})).await;
    let outer = status(&s, "outer", "failed").await;
    assert!(
        outer["state"]["reason"]
            .as_str()
            .unwrap()
            .contains("supervisor inner gave up"),
        "{outer}"
    );
    let (_, inner) = s.get("/api/v1/supervisors/inner").await;
    assert_eq!(
        inner["state"]["generation"], 1,
        "restarted once by its parent: {inner}"
    );
    let (_, inc) = s.get("/api/v1/incidents?state=open").await;
    let by: Vec<&str> = inc["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["supervisor"].as_str().unwrap())
        .collect();
    assert!(by.contains(&"outer") && !by.contains(&"inner"), "{by:?}");
}

both_backends!(
    supervision_on,
    supervisors_restart_back_off_give_up_and_escalate
);

async fn evaluators_accept_send_back_or_escalate(b: Backend) {
    let s = TestServer::start(b).await;
    s.apply(&agent(
        "writer",
        "  script:\n    - {content: a first draft}\n",
    ))
    .await;
    s.apply(&agent(
        "reviewer",
        "  script:\n    - {content: ACCEPT looks good}\n",
    ))
    .await;

    // A rule the answer meets: accepted at once.
    put(
        &s,
        "kind",
        json!({"strategy": "one_for_one", "evaluator": {"contains": "draft"},
        "children": [{"name": "w", "agent": "writer", "input": "write"}]}),
    )
    .await;
    let kind = status(&s, "kind", "completed").await;
    assert_eq!(
        kind["state"]["children"][0]["result"], "a first draft",
        "{kind}"
    );

    // A rule it never meets: sent back with feedback (the next run sees it), then escalated.
    put(
        &s,
        "strict",
        json!({"strategy": "one_for_one", "evaluator": {"contains": "FINAL", "maxRounds": 1},
        "children": [{"name": "w", "agent": "writer", "input": "write the essay"}]}),
    )
    .await;
    let strict = status(&s, "strict", "failed").await;
    assert!(
        strict["state"]["reason"]
            .as_str()
            .unwrap()
            .contains("evaluator rejected w"),
        "{strict}"
    );
    let runs = runs_of(&s, "writer").await;
    let second = runs.last().unwrap();
    assert!(
        second["input"]
            .as_str()
            .unwrap()
            .contains("must contain \"FINAL\""),
        "{second}"
    );
    let (_, inc) = s.get("/api/v1/incidents").await;
    assert!(inc["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["supervisor"] == "strict"));

    // A reviewer agent that accepts.
    put(
        &s,
        "reviewed",
        json!({"strategy": "one_for_one", "evaluator": {"agent": "reviewer"},
        "children": [{"name": "w", "agent": "writer", "input": "write"}]}),
    )
    .await;
    status(&s, "reviewed", "completed").await;
    let reviews = runs_of(&s, "reviewer").await;
    assert_eq!(reviews.len(), 1);
    assert!(
        reviews[0]["input"]
            .as_str()
            .unwrap()
            .contains("a first draft"),
        "the reviewer saw the answer"
    );

    // What outcomes cost: a run its evaluator sent back is `rejected`, not a success.
    let (_, by) = s.get("/api/v1/costs?by=outcome").await;
    let calls = |key: &str| {
        by["lines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["key"] == key)
            .and_then(|l| l["calls"].as_i64())
    };
    assert_eq!(
        (calls("accepted"), calls("rejected"), calls("succeeded")),
        (Some(2), Some(2), Some(1)),
        "two writers accepted, two sent back, the reviewer's own run: {by}"
    );
    assert_eq!(by["outcomes"]["successful_runs"], 3, "{by}");
}

both_backends!(evaluators_on, evaluators_accept_send_back_or_escalate);

/// The CLI lists the incidents a root supervisor opened, and resolves one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_and_resolves_incidents() {
    let s = TestServer::start(Backend::Sqlite).await;
    s.apply(&agent(
        "flaky",
        "  runTimeout: 100ms\n  script:\n    - {delayMs: 2000, content: never}\n",
    ))
    .await;
    put(&s, "solo", json!({"strategy": "one_for_one", "maxRestarts": 0, "children": [{"name": "f", "agent": "flaky"}]})).await;
    status(&s, "solo", "failed").await;
    let (ok, out, err) = common::cli(&s, &["incidents"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("solo") && out.contains("child f failed"),
        "{out}"
    );
    let id = out
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let (ok, out, err) = common::cli(
        &s,
        &[
            "incidents",
            "--resolve",
            &id,
            "--resolution",
            "fixed the agent",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("resolved"), "{out}");
    let (_, out, _) = common::cli(&s, &["incidents"]);
    assert!(!out.contains("solo"), "no open incident left: {out}");
    let (ok, _, err) = common::cli(&s, &["incidents", "--resolve", &id]);
    assert!(!ok && err.contains("no open incident"), "{err}");
}

/// Supervisors come in manifests too: `steward apply` takes agents and `kind: Supervisor`
/// documents in one file; applying it again restarts nothing; a bad one is refused whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisors_are_applied_from_manifests() {
    let s = TestServer::start(Backend::Sqlite).await;
    let file = s.dir.path().join("team.yaml");
    std::fs::write(
        &file,
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: helper}\nspec:\n  model: scripted\n  script:\n    - {content: helped}\n---\napiVersion: steward.dev/v1\nkind: Supervisor\nmetadata: {name: crew}\nspec:\n  strategy: rest_for_one\n  children:\n    - {name: a, agent: helper, input: one}\n    - {name: b, agent: helper, input: two}\n",
    )
    .unwrap();
    let (ok, out, err) = common::cli(&s, &["apply", "-f", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("agent/helper") && out.contains("supervisor/crew"),
        "{out}"
    );
    let crew = status(&s, "crew", "completed").await;
    assert_eq!(crew["spec"]["strategy"], "rest_for_one");
    let (ok, _, err) = common::cli(&s, &["apply", "-f", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    let (_, again) = s.get("/api/v1/supervisors/crew").await;
    assert_eq!(
        again["status"], "completed",
        "re-applied unchanged: nothing restarted"
    );
    assert_eq!(runs_of(&s, "helper").await.len(), 2);
    std::fs::write(&file, "apiVersion: steward.dev/v1\nkind: Supervisor\nmetadata: {name: broken}\nspec:\n  strategy: one_for_one\n  children: [{name: x, agent: nobody}]\n").unwrap();
    let (ok, _, err) = common::cli(&s, &["apply", "-f", file.to_str().unwrap()]);
    assert!(!ok && err.contains("no agent nobody"), "{err}");
}

/// Each run ended no later than the next one started: never two copies at once.
fn one_at_a_time(runs: &[Value]) {
    for pair in runs.windows(2) {
        let (old, new) = (&pair[0], &pair[1]);
        let ended = old["updated_at"].as_i64().unwrap();
        let started = new["created_at"].as_i64().unwrap();
        assert!(
            ["succeeded", "failed", "cancelled"].contains(&old["state"].as_str().unwrap())
                && ended <= started,
            "{} ({}) still going when {} started: ended {ended}, started {started}",
            old["id"],
            old["state"],
            new["id"]
        );
    }
}

/// A supervisor restarting a group, giving up, or replaced by a new spec stops the old runs
/// before their replacements start — on this node, or on whichever node drives them.
async fn restarted_children_never_overlap(s: &TestServer) {
    s.apply(&agent(
        "worker",
        "  script:\n    - {delayMs: 1500, content: worked}\n",
    ))
    .await;
    s.apply(&agent(
        "failing",
        "  runTimeout: 100ms\n  script:\n    - {delayMs: 2000, content: never}\n",
    ))
    .await;
    put(s, "pair", json!({
        "strategy": "one_for_all", "maxRestarts": 2, "backoff": {"initialMs": 100, "maxMs": 100},
        "children": [{"name": "w", "agent": "worker"}, {"name": "f", "agent": "failing"}]
    }))
    .await;
    status(s, "pair", "failed").await;
    let workers = common::eventually("every worker run ended", || async {
        let runs = runs_of(s, "worker").await;
        runs.iter()
            .all(|r| r["state"] == "cancelled" || r["state"] == "succeeded")
            .then_some(runs)
    })
    .await;
    assert_eq!(workers.len(), 3, "the first and two restarts: {workers:?}");
    one_at_a_time(&workers);

    // A new spec for a running supervisor: a new generation, whose run starts once the old
    // generation's has stopped (and is a new run, not the old one found again).
    put(s, "solo", json!({"strategy": "one_for_one", "children": [{"name": "w", "agent": "worker", "input": "one"}]})).await;
    let first = common::eventually("solo's first run started", || async {
        runs_of(s, "worker")
            .await
            .into_iter()
            .find(|r| r["input"] == "one")
    })
    .await;
    let (st, r) = put(s, "solo", json!({"strategy": "one_for_one", "children": [{"name": "w", "agent": "worker", "input": "two"}]})).await;
    assert_eq!(st, 200, "{r}");
    let solo = status(s, "solo", "completed").await;
    assert_eq!(solo["state"]["generation"], 1, "{solo}");
    let mut runs = vec![
        s.get(&format!("/api/v1/runs/{}", first["id"].as_str().unwrap()))
            .await
            .1,
    ];
    runs.extend(
        runs_of(s, "worker")
            .await
            .into_iter()
            .filter(|r| r["input"] == "two"),
    );
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[1]["state"], "succeeded");
    one_at_a_time(&runs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_children_never_overlap_on_sqlite() {
    restarted_children_never_overlap(&TestServer::start(Backend::Sqlite).await).await
}

/// Two nodes drive the runs and the supervisors: a stop reaches the node that drives a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_children_never_overlap_across_nodes() {
    let a = TestServer::start(Backend::Postgres).await;
    let _b = TestServer::join(&a);
    restarted_children_never_overlap(&a).await
}
