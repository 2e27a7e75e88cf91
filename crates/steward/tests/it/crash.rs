//! The crash test: many runs against the real binary, SIGKILLed at several points and restarted,
//! on SQLite and PostgreSQL. The model is a mock OpenAI-compatible server on loopback (a real
//! HTTP peer that counts every request), and the tools' side effects land on a counter server.
//! Asserts every run finishes and no completed step — model call or tool call — is done again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::Json;
use common::{Backend, Counter, TestServer};
use serde_json::{json, Value};

const RUNS: usize = 30;

/// Model requests per (run input, turn).
type Calls = Arc<Mutex<HashMap<(String, usize), u32>>>;

/// A mock model: turn 0 asks for a POST, turn 1 an echo, turn 2 a PUT, turn 3 answers.
async fn mock_model(counter_url: String) -> (String, Calls) {
    let calls: Calls = Default::default();
    let c = calls.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |Json(req): Json<Value>| {
            let c = c.clone();
            let counter_url = counter_url.clone();
            async move {
                let msgs = req["messages"].as_array().cloned().unwrap_or_default();
                let input = msgs.iter().find(|m| m["role"] == "user").and_then(|m| m["content"].as_str()).unwrap_or("").to_string();
                let turn = msgs.iter().filter(|m| m["role"] == "assistant").count();
                *c.lock().unwrap().entry((input.clone(), turn)).or_insert(0) += 1;
                tokio::time::sleep(Duration::from_millis(40)).await;
                let call = |name: &str, args: Value| {
                    json!({"id": format!("c{turn}"), "type": "function", "function": {"name": name, "arguments": args.to_string()}})
                };
                let message = match turn {
                    0 => json!({"role": "assistant", "content": null, "tool_calls": [call("http_request", json!({"method": "POST", "url": format!("{counter_url}/post/{input}")}))]}),
                    1 => json!({"role": "assistant", "content": null, "tool_calls": [call("echo", json!({"tag": input}))]}),
                    2 => json!({"role": "assistant", "content": null, "tool_calls": [call("http_request", json!({"method": "PUT", "url": format!("{counter_url}/put/{input}")}))]}),
                    _ => json!({"role": "assistant", "content": format!("done {input}")}),
                };
                Json(json!({
                    "id": "x", "object": "chat.completion", "model": "mock-1",
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10 + turn, "completion_tokens": 5}
                }))
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, calls)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn killed_runs_finish_with_no_step_done_twice(b: Backend) {
    let counter = Counter::start().await;
    let (model_url, calls) = mock_model(counter.url.clone()).await;
    let mut s = TestServer::start_with(
        b,
        &[
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &model_url),
        ],
    )
    .await;
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: bumper}\nspec:\n  model: mock/mock-1\n  tools: [http_request, echo]\n  recovery: wait_for_human\n").await;
    let mut runs = Vec::new();
    for i in 0..RUNS {
        let input = format!("r{i}");
        runs.push((s.start_run("bumper", &input).await, input));
    }

    let mut kills = Vec::new();
    for pause in [150u64, 260, 90, 330] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        kills.push(now_ms());
        s.kill9();
        s.spawn();
    }

    // Act as the human for runs whose POST was in flight at a kill: retry it.
    let mut resolved: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut open = 0;
        for (id, _) in &runs {
            let (_, r) = s.get(&format!("/api/v1/runs/{id}")).await;
            match (r["state"].as_str().unwrap(), r["wait_kind"].as_str()) {
                ("succeeded", _) => {}
                ("waiting", Some("human")) => {
                    assert_eq!(r["error"]["code"], "in_doubt");
                    let (st, body) = s
                        .post(
                            &format!("/api/v1/runs/{id}/resolve"),
                            json!({"action": "retry"}),
                        )
                        .await;
                    assert_eq!(st, 200, "{body}");
                    resolved.push(id.clone());
                    open += 1;
                }
                ("failed" | "cancelled", _) => panic!("run {id} ended {r}\n{}", s.log()),
                _ => open += 1,
            }
        }
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "runs did not finish\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let calls = calls.lock().unwrap().clone();
    let mut in_doubt_steps = 0;
    let mut resumed_runs = 0;
    for (id, input) in &runs {
        let (_, r) = s.get(&format!("/api/v1/runs/{id}")).await;
        assert_eq!(r["result"], format!("done {input}"));
        let j = s.journal(id).await;
        let mut by_seq: BTreeMap<i64, (Option<i64>, Option<i64>)> = BTreeMap::new();
        for e in &j {
            let slot = by_seq.entry(e["seq"].as_i64().unwrap()).or_default();
            let at = e["at"].as_i64().unwrap();
            if e["phase"] == "intent" {
                assert!(slot.0.replace(at).is_none(), "two intents for one step");
            } else {
                assert!(slot.1.replace(at).is_none(), "two outcomes for one step");
            }
        }
        assert_eq!(
            by_seq.keys().copied().collect::<Vec<_>>(),
            (0..7).collect::<Vec<_>>(),
            "run {id}: 4 model turns and 3 tool calls"
        );
        let outcomes: Vec<i64> = by_seq.values().map(|(_, o)| o.unwrap()).collect();
        if kills
            .iter()
            .any(|k| outcomes.iter().any(|o| o <= k) && outcomes.iter().any(|o| o > k))
        {
            resumed_runs += 1;
        }
        for (seq, (intent, outcome)) in &by_seq {
            let (intent, outcome) = (intent.unwrap(), outcome.unwrap());
            // In doubt: the intent was written in a life that was killed before the outcome.
            let in_doubt = kills.iter().any(|k| intent <= *k && *k < outcome);
            in_doubt_steps += usize::from(in_doubt);
            let done = match seq {
                0 | 2 | 4 | 6 => calls
                    .get(&(input.clone(), (*seq / 2) as usize))
                    .copied()
                    .unwrap_or(0),
                1 => counter.count(&format!("{id}:1")),
                3 => 1, // echo has no outside effect to count
                5 => counter.count(&format!("{id}:5")),
                _ => unreachable!(),
            };
            if in_doubt {
                // Once per life it was in flight in: a step cut off by two kills in a row is
                // tried in three lives.
                let lives = 1 + kills
                    .iter()
                    .filter(|k| intent <= **k && **k < outcome)
                    .count();
                assert!(
                    (1..=lives as u32).contains(&done),
                    "run {id} step {seq}: in doubt across {} kills, done {done} times",
                    lives - 1
                );
                if *seq == 1 {
                    assert!(
                        done == 1 || resolved.contains(id),
                        "a POST is redone only at a human's word"
                    );
                }
            } else {
                assert_eq!(
                    done, 1,
                    "run {id} step {seq} was completed before a kill and done {done} times"
                );
            }
        }
    }
    eprintln!("{} kills, {resumed_runs} runs resumed mid-way, {in_doubt_steps} steps in doubt, {} runs resolved by a human", kills.len(), resolved.len());
    assert!(
        resumed_runs > 0,
        "the kills must land while runs are part-way through"
    );
}
both_backends!(
    killed_runs_finish_with_no_step_done_twice,
    killed_runs_finish_with_no_step_done_twice
);
