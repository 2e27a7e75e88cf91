//! The REST API against the real binary, on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{Backend, TestServer};
use serde_json::{json, Value};

fn agent(name: &str, tools: &str, script: &str, extra: &str) -> String {
    format!(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: {name}}}\nspec:\n  model: scripted\n  tools: [{tools}]\n{extra}  script:\n{script}"
    )
}

async fn runs_complete_and_keep_their_version(b: Backend) {
    let s = TestServer::start(b).await;
    let v1 = agent("greeter", "echo", "    - {delayMs: 1500, toolCalls: [{name: echo, arguments: {said: \"{{input}}\"}}]}\n    - content: \"v1 says {{input}}\"\n", "");
    let applied = s.apply(&v1).await;
    assert_eq!(
        applied["agents"][0],
        json!({"name": "greeter", "version": 1, "changed": true})
    );
    let first = s.start_run("greeter", "hello").await;
    // Re-applying the same spec changes nothing; a changed one is version 2.
    assert_eq!(s.apply(&v1).await["agents"][0]["changed"], false);
    let v2 = v1
        .replace("v1 says", "v2 says")
        .replace("delayMs: 1500", "delayMs: 0");
    assert_eq!(s.apply(&v2).await["agents"][0]["version"], 2);
    let second = s.start_run("greeter", "again").await;

    let r1 = s.wait_run(&first).await;
    assert_eq!(r1["state"], "succeeded", "{r1}");
    assert_eq!(
        r1["result"], "v1 says hello",
        "a run keeps the version it started with"
    );
    assert_eq!(r1["agent_version"], 1);
    let r2 = s.wait_run(&second).await;
    assert_eq!(r2["result"], "v2 says again");

    let j = s.journal(&first).await;
    let shape: Vec<(i64, &str, &str)> = j
        .iter()
        .map(|e| {
            (
                e["seq"].as_i64().unwrap(),
                e["phase"].as_str().unwrap(),
                e["kind"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            (0, "intent", "model"),
            (0, "outcome", "model"),
            (1, "intent", "tool"),
            (1, "outcome", "tool"),
            (2, "intent", "model"),
            (2, "outcome", "model")
        ]
    );
    assert_eq!(
        j[1]["body"]["provider"], "scripted",
        "scripted output is labelled"
    );
    assert_eq!(j[3]["body"]["ok"], json!({"said": "hello"}));
    assert_eq!(j[3]["idempotency_key"], format!("{first}:1"));
    assert!(j[1]["tokens_out"].as_i64().unwrap() > 0);

    let (_, list) = s.get("/api/v1/runs?agent=greeter&state=succeeded").await;
    assert_eq!(list["runs"].as_array().unwrap().len(), 2);
    let (_, a) = s.get("/api/v1/agents/greeter?version=1").await;
    assert_eq!(a["spec"]["script"][1]["content"], "v1 says {{input}}");
}
both_backends!(
    runs_complete_and_keep_their_version,
    runs_complete_and_keep_their_version
);

async fn child_runs_are_spawned_and_awaited(b: Backend) {
    let s = TestServer::start(b).await;
    let child = agent(
        "child",
        "echo",
        "    - content: \"child got {{input}}\"\n",
        "",
    );
    let parent = agent("parent", "spawn_agent", "    - toolCalls: [{name: spawn_agent, arguments: {agent: child, input: \"from {{input}}\"}}]\n    - content: parent done\n", "");
    s.apply(&format!("{child}\n---\n{parent}")).await;
    let id = s.start_run("parent", "p1").await;
    let r = s.wait_run(&id).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    let j = s.journal(&id).await;
    let spawn = &j[3]["body"]["ok"];
    assert_eq!(spawn["state"], "succeeded");
    assert_eq!(spawn["result"], "child got from p1");
    let (_, kids) = s.get(&format!("/api/v1/runs?parent={id}")).await;
    assert_eq!(kids["runs"].as_array().unwrap().len(), 1);
    assert_eq!(kids["runs"][0]["id"], spawn["run_id"]);
    assert_eq!(kids["runs"][0]["parent_id"], id);
}
both_backends!(
    child_runs_are_spawned_and_awaited,
    child_runs_are_spawned_and_awaited
);

/// Every way a run is created holds it to `engine.max_input_bytes` and audits it: a child whose
/// `spawn_agent` input is too long is refused as the tool's error (the parent carries on), and
/// each run created — by the API, by `spawn_agent` — has a `run.create` record naming where it
/// came from.
async fn every_new_run_is_held_to_the_input_limit_and_audited(b: Backend) {
    let s = TestServer::start_with(b, &[("STEWARD_ENGINE__MAX_INPUT_BYTES", "64")]).await;
    let child = agent(
        "child",
        "echo",
        "    - content: \"child got {{input}}\"\n",
        "",
    );
    let long = "y".repeat(100);
    let parent = agent("parent", "spawn_agent", &format!("    - toolCalls: [{{name: spawn_agent, arguments: {{agent: child, input: {long}}}}}]\n    - toolCalls: [{{name: spawn_agent, arguments: {{agent: child, input: short}}}}]\n    - content: parent done\n"), "");
    s.apply(&format!("{child}\n---\n{parent}")).await;
    let id = s.start_run("parent", "p1").await;
    let r = s.wait_run(&id).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    let j = s.journal(&id).await;
    let refused = j[3]["body"]["error"].as_str().unwrap_or_default();
    assert!(refused.contains("max_input_bytes"), "{j:?}");
    let (_, kids) = s.get(&format!("/api/v1/runs?parent={id}")).await;
    let kids = kids["runs"].as_array().unwrap().clone();
    assert_eq!(kids.len(), 1, "only the short input made a child: {kids:?}");
    let creates: Vec<Value> = common::audit_records(&s)
        .await
        .into_iter()
        .filter(|r| r["action"] == "run.create")
        .collect();
    let origin_of = |run: &Value| {
        creates
            .iter()
            .find(|c| c["run_id"] == *run)
            .map(|c| c["outcome"].clone())
    };
    assert_eq!(
        origin_of(&json!(id)),
        Some(json!("origin:api")),
        "{creates:?}"
    );
    assert_eq!(
        origin_of(&kids[0]["id"]),
        Some(json!("origin:spawn_agent")),
        "{creates:?}"
    );
    assert_eq!(creates.len(), 2, "{creates:?}");
    // Each names the chain of authority the new run will act with, as its steps' records do.
    let chain_of = |run: &Value| {
        creates
            .iter()
            .find(|c| c["run_id"] == *run)
            .map(|c| c["chain"].clone())
    };
    let kid = kids[0]["id"].as_str().unwrap();
    assert_eq!(
        chain_of(&json!(id)),
        Some(json!(["agent:parent", format!("run:{id}")]))
    );
    assert_eq!(
        chain_of(&json!(kid)),
        Some(json!([
            format!("run:{id}"),
            "agent:child",
            format!("run:{kid}")
        ]))
    );
}
both_backends!(
    every_new_run_is_held_to_the_input_limit_and_audited,
    every_new_run_is_held_to_the_input_limit_and_audited
);

async fn cancel_takes_a_reason_and_reaches_children(b: Backend) {
    let s = TestServer::start(b).await;
    let slow = agent(
        "slow",
        "echo",
        "    - {delayMs: 30000, content: never}\n",
        "",
    );
    let boss = agent("boss", "spawn_agent", "    - toolCalls: [{name: spawn_agent, arguments: {agent: slow, input: x}}]\n    - content: never\n", "");
    s.apply(&format!("{slow}\n---\n{boss}")).await;
    let id = s.start_run("boss", "go").await;
    // Wait for the child to exist.
    let child = common::eventually("the child run", || async {
        let (_, kids) = s.get(&format!("/api/v1/runs?parent={id}")).await;
        kids["runs"]
            .as_array()
            .unwrap()
            .first()
            .map(|k| k["id"].as_str().unwrap().to_string())
    })
    .await;
    let (status, body) = s
        .post(&format!("/api/v1/runs/{id}/cancel"), json!({"reason": ""}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, _) = s
        .post(
            &format!("/api/v1/runs/{id}/cancel"),
            json!({"reason": "wrong input"}),
        )
        .await;
    assert_eq!(status, 200);
    let r = s.wait_run(&id).await;
    assert_eq!(r["state"], "cancelled");
    assert_eq!(r["cancel_reason"], "wrong input");
    let c = s.wait_run(&child).await;
    assert_eq!(c["state"], "cancelled");
    assert!(c["cancel_reason"].as_str().unwrap().contains("wrong input"));
    let (status, body) = s
        .post(
            &format!("/api/v1/runs/{id}/cancel"),
            json!({"reason": "again"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict"))
    );
}
both_backends!(
    cancel_takes_a_reason_and_reaches_children,
    cancel_takes_a_reason_and_reaches_children
);

async fn expect_error(r: (u16, Value), status: u16, code: &str, mentions: &str) {
    let (st, body) = r;
    assert_eq!(st, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(mentions),
        "{msg:?} should mention {mentions:?}"
    );
}

async fn bad_input_is_rejected_and_nothing_is_half_written(b: Backend) {
    let s = TestServer::start(b).await;
    let good = agent("good", "echo", "    - content: ok\n", "");
    let y = "application/yaml";
    expect_error(
        s.post_raw("/api/v1/agents", y, "kind: Agent\nspec: [unclosed")
            .await,
        400,
        "invalid_manifest",
        "malformed YAML",
    )
    .await;
    // A billion-laughs document: aliases that would expand to 9^9 nodes.
    let mut bomb = String::from("apiVersion: steward.dev/v1\nkind: Agent\na: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h"]
        .iter()
        .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
    {
        let refs = vec![format!("*{prev}"); 9].join(", ");
        bomb.push_str(&format!("{name}: &{name} [{refs}]\n"));
    }
    expect_error(
        s.post_raw("/api/v1/agents", y, bomb).await,
        400,
        "invalid_manifest",
        "repetition limit",
    )
    .await;
    // Flat, not nested: one 400 kB anchor and 200k aliases of it, under 1 MB of text and
    // 80 GB expanded. Refused by its expanded size, in moments, and the server stays up.
    let anchor = "x".repeat(400 * 1024);
    let wide = format!(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: wide}}\nspec:\n  model: scripted\n  systemPrompt: &s {anchor}\n  script: [{}]\n",
        vec!["*s"; 120_000].join(",")
    );
    assert!(wide.len() < 1024 * 1024, "{}", wide.len());
    expect_error(
        s.post_raw("/api/v1/agents", y, wide).await,
        400,
        "invalid_manifest",
        "aliases expanded",
    )
    .await;
    assert_eq!(s.get("/healthz").await.0, 200);
    expect_error(
        s.post_raw(
            "/api/v1/agents",
            y,
            good.replace("tools:", "colour: red\n  tools:"),
        )
        .await,
        400,
        "invalid_manifest",
        "spec.colour: unknown field `colour`",
    )
    .await;
    expect_error(
        s.post_raw(
            "/api/v1/agents",
            y,
            good.replace("tools:", "maxSteps: lots\n  tools:"),
        )
        .await,
        400,
        "invalid_manifest",
        "spec.maxSteps",
    )
    .await;
    expect_error(
        s.post_raw("/api/v1/agents", y, good.replace("[echo]", "[rm_rf]"))
            .await,
        400,
        "invalid_manifest",
        "spec.tools[0]",
    )
    .await;
    expect_error(
        s.post_raw(
            "/api/v1/agents",
            y,
            good.replace("model: scripted", "model: nowhere/gpt")
                .replace("  script:\n    - content: ok\n", ""),
        )
        .await,
        400,
        "invalid_manifest",
        "nowhere",
    )
    .await;
    expect_error(
        s.post_raw(
            "/api/v1/agents",
            y,
            good.replace("name: good", "name: \"../etc\""),
        )
        .await,
        400,
        "invalid_manifest",
        "metadata.name",
    )
    .await;
    // Two documents, the second bad: neither is stored.
    let two = format!(
        "{good}\n---\n{}",
        good.replace("name: good", "name: other")
            .replace("maxSteps", "x")
            .replace("tools:", "maxSteps: -1\n  tools:")
    );
    expect_error(
        s.post_raw("/api/v1/agents", y, two).await,
        400,
        "invalid_manifest",
        "document 2",
    )
    .await;
    let (_, agents) = s.get("/api/v1/agents").await;
    assert_eq!(
        agents["agents"],
        json!([]),
        "a rejected apply stores nothing"
    );
    s.apply(&good).await;

    expect_error(
        s.post("/api/v1/runs", json!({"agent": "ghost", "input": "x"}))
            .await,
        404,
        "not_found",
        "ghost",
    )
    .await;
    expect_error(
        s.post("/api/v1/runs", json!({"agent": "good"})).await,
        400,
        "invalid_request",
        "input",
    )
    .await;
    expect_error(
        s.post("/api/v1/runs", json!({"agent": "good", "input": 5}))
            .await,
        400,
        "invalid_request",
        "input",
    )
    .await;
    expect_error(
        s.post(
            "/api/v1/runs",
            json!({"agent": "good", "input": "x", "extra": 1}),
        )
        .await,
        400,
        "invalid_request",
        "extra",
    )
    .await;
    expect_error(
        s.post_raw("/api/v1/runs", "application/json", "{\"agent\": ")
            .await,
        400,
        "invalid_request",
        "request body",
    )
    .await;
    expect_error(
        s.post(
            "/api/v1/runs",
            json!({"agent": "good", "input": "x".repeat(300 * 1024)}),
        )
        .await,
        413,
        "payload_too_large",
        "max_input_bytes",
    )
    .await;
    // The server may answer 413 and close before the client has finished sending: either way
    // the upload is refused (and the check below shows nothing was created).
    let huge = json!({"agent": "good", "input": "x".repeat(2 * 1024 * 1024)});
    if let Ok(r) = s.try_post("/api/v1/runs", huge).await {
        expect_error(r, 413, "payload_too_large", "max_body_bytes").await;
    }
    expect_error(
        s.get("/api/v1/runs/not-a-run").await,
        400,
        "invalid_id",
        "run_",
    )
    .await;
    expect_error(
        s.get("/api/v1/runs/run_00000000000000000000000000000000")
            .await,
        404,
        "not_found",
        "run_0000",
    )
    .await;
    expect_error(
        s.get("/api/v1/runs/run_00000000000000000000000000000000/journal")
            .await,
        404,
        "not_found",
        "run_0000",
    )
    .await;
    expect_error(
        s.get("/api/v1/runs?state=sleepy").await,
        400,
        "invalid_request",
        "sleepy",
    )
    .await;
    expect_error(
        s.get("/api/v1/runs?bogus=1").await,
        400,
        "invalid_request",
        "bogus",
    )
    .await;
    expect_error(s.get("/api/v1/nowhere").await, 404, "not_found", "openapi").await;
    let (_, runs) = s.get("/api/v1/runs").await;
    assert_eq!(runs["runs"], json!([]), "no rejected request created a run");
}
both_backends!(
    bad_input_is_rejected_and_nothing_is_half_written,
    bad_input_is_rejected_and_nothing_is_half_written
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_openapi() {
    let s = TestServer::start(Backend::Sqlite).await;
    let (st, body) = s.get("/healthz").await;
    assert_eq!((st, body), (200, Value::String("ok".into())));
    let (st, ready) = s.get("/readyz").await;
    assert_eq!(st, 200);
    assert_eq!(ready["backend"], "sqlite");
    let (st, doc) = s.get("/openapi.json").await;
    assert_eq!(st, 200);
    for p in [
        "/api/v1/runs",
        "/api/v1/runs/{id}/journal",
        "/api/v1/agents",
        "/api/v1/runs/{id}/cancel",
    ] {
        assert!(doc["paths"].get(p).is_some(), "openapi lacks {p}");
    }
    assert!(doc["components"]["schemas"].get("ErrorBody").is_some());
}

async fn limits_end_runs_with_the_reason(b: Backend) {
    let s = TestServer::start(b).await;
    let slow_model = agent(
        "slow-model",
        "echo",
        "    - {delayMs: 5000, content: late}\n",
        "  stepTimeout: 200ms\n",
    );
    let slow_run = agent(
        "slow-run",
        "echo",
        "    - {delayMs: 5000, content: late}\n",
        "  runTimeout: 300ms\n",
    );
    let chatty = agent(
        "chatty",
        "echo",
        "    - toolCalls: [{name: echo, arguments: {}}]\n    - toolCalls: [{name: echo, arguments: {}}]\n    - content: never\n",
        "  maxSteps: 2\n",
    );
    let notes = agent(
        "notes",
        "scratchpad_set, scratchpad_get",
        "    - toolCalls: [{name: scratchpad_set, arguments: {key: k, value: \"{{input}}\"}}]\n    - toolCalls: [{name: scratchpad_get, arguments: {key: k}}, {name: scratchpad_get, arguments: {key: missing}}]\n    - content: noted\n",
        "",
    );
    s.apply(&[slow_model, slow_run, chatty, notes].join("\n---\n"))
        .await;
    let ids: Vec<String> = futures::future::join_all(
        ["slow-model", "slow-run", "chatty", "notes"].map(|a| s.start_run(a, "remember me")),
    )
    .await;
    let codes: Vec<Value> = futures::future::join_all(ids.iter().map(|id| s.wait_run(id))).await;
    assert_eq!(codes[0]["error"]["code"], "step_timeout", "{}", codes[0]);
    assert_eq!(codes[1]["error"]["code"], "run_timeout", "{}", codes[1]);
    assert_eq!(
        codes[2]["error"]["code"], "max_steps_exceeded",
        "{}",
        codes[2]
    );
    assert_eq!(codes[3]["state"], "succeeded", "{}", codes[3]);
    let j = s.journal(&ids[3]).await;
    let outcomes: Vec<&Value> = j
        .iter()
        .filter(|e| e["phase"] == "outcome" && e["kind"] == "tool")
        .collect();
    assert_eq!(
        outcomes[1]["body"]["ok"],
        json!({"key": "k", "value": "remember me"})
    );
    assert_eq!(
        outcomes[2]["body"]["ok"],
        json!({"key": "missing", "value": null})
    );
}
both_backends!(
    limits_end_runs_with_the_reason,
    limits_end_runs_with_the_reason
);

/// Reads a whole SSE response into (event, data) pairs.
async fn read_events(url: &str) -> Vec<(String, Value)> {
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.split("\n\n")
        .filter_map(|block| {
            let event = block.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((event.to_string(), serde_json::from_str(data).unwrap()))
        })
        .collect()
}

async fn events_stream_a_run_live_and_end(b: Backend) {
    let s = TestServer::start(b).await;
    s.apply(&agent(
        "stepper",
        "echo",
        "    - {delayMs: 300, toolCalls: [{name: echo, arguments: {n: 1}}]}\n    - {delayMs: 300, toolCalls: [{name: echo, arguments: {n: 2}}]}\n    - {delayMs: 300, content: fin}\n",
        "",
    ))
    .await;
    let id = s.start_run("stepper", "x").await;
    // Opened while the run is under way: entries arrive as they are journaled.
    let live = read_events(&format!("{}/api/v1/runs/{id}/events", s.url)).await;
    let (last, entries) = live.split_last().unwrap();
    assert_eq!(last.0, "end");
    assert_eq!(last.1["state"], "succeeded");
    assert_eq!(last.1["result"], "fin");
    let order: Vec<(i64, String)> = entries
        .iter()
        .map(|(_, e)| {
            (
                e["seq"].as_i64().unwrap(),
                e["phase"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: Vec<(i64, String)> = (0..5)
        .flat_map(|s| [(s, "intent".to_string()), (s, "outcome".to_string())])
        .collect();
    assert_eq!(order, expected, "every entry once, in order");
    // Opened after the end: the whole journal, then `end`. `after` skips what was seen.
    let again = read_events(&format!("{}/api/v1/runs/{id}/events?after=2", s.url)).await;
    assert_eq!(
        again.len(),
        5,
        "steps 3 and 4, both phases, then end: {again:?}"
    );
    let (st, body) = s
        .get("/api/v1/runs/run_00000000000000000000000000000000/events")
        .await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
}
both_backends!(
    events_stream_a_run_live_and_end,
    events_stream_a_run_live_and_end
);
