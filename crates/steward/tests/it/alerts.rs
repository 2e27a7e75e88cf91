//! Alerts against the real binary: a rule above its threshold opens an incident and calls its
//! webhook — signed, retried until it answers — and calms when the measure falls back; each
//! measure (error rate, loops, spend, latency, budgets) fires its rule — on SQLite and
//! PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use crate::common;

use common::{eventually, Backend, TestServer};
use serde_json::{json, Value};

/// The webhook calls a receiver got: (headers, body).
type Calls = Arc<Mutex<Vec<(axum::http::HeaderMap, String)>>>;

/// A webhook receiver on loopback that answers 503 to its first `refuse` calls, then 200.
async fn receiver(refuse: usize) -> (String, Calls) {
    use axum::routing::post;
    let calls: Calls = Arc::default();
    let seen = calls.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: axum::http::HeaderMap, body: String| {
            let seen = seen.clone();
            async move {
                let mut c = seen.lock().unwrap();
                c.push((headers, body));
                if c.len() <= refuse {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, calls)
}

/// Whether `signature` (`t=…,v1=…`) signs `body` under `secret`, checked as a receiver written
/// in Python would check it.
fn signed(signature: &str, body: &str, secret: &str) -> bool {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import hmac,hashlib,sys\nt,v=(p.split('=',1)[1] for p in sys.argv[1].split(','))\nmac=hmac.new(sys.argv[3].encode(),(t+'.'+sys.argv[2]).encode(),hashlib.sha256).hexdigest()\nprint(hmac.compare_digest(mac,v))",
            signature,
            body,
            secret,
        ])
        .output()
        .expect("python3 runs");
    String::from_utf8_lossy(&out.stdout).trim() == "True"
}

async fn server(b: Backend, extra: &[(&str, &str)]) -> TestServer {
    let vault = "a7".repeat(32);
    let mut env = vec![
        ("STEWARD_VAULT_KEY", vault.as_str()),
        ("STEWARD_ENGINE__ALERT_EVERY_MS", "100"),
    ];
    env.extend_from_slice(extra);
    TestServer::start_with(b, &env).await
}

/// An agent whose script ends without an answer: each of its runs fails.
const BROKEN: &str = "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: broken}\nspec:\n  model: scripted\n  tools: [echo]\n  script:\n    - toolCalls: [{name: echo, arguments: {n: 1}}]\n";

async fn alert(s: &TestServer, name: &str) -> Value {
    let (_, l) = s.get("/api/v1/alerts").await;
    l["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

async fn incidents_of(s: &TestServer, name: &str) -> Vec<Value> {
    let mut all = Vec::new();
    for state in ["open", "resolved"] {
        let (_, l) = s.get(&format!("/api/v1/incidents?state={state}")).await;
        all.extend(
            l["incidents"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|i| i["supervisor"] == format!("alert:{name}"))
                .cloned(),
        );
    }
    all
}

async fn an_alert_opens_an_incident_and_calls_its_signed_webhook_until_it_answers(b: Backend) {
    let (hook, calls) = receiver(2).await;
    let s = server(b, &[]).await;
    let (st, e) = s
        .put(
            "/api/v1/secrets/hook-key",
            json!({"value": "s3cret-signing-key"}),
        )
        .await;
    assert!(st < 300, "{e}");
    let rule = json!({"metric": "error_rate", "above": 0.5, "min_samples": 2, "agent": "broken",
        "webhook": {"url": hook, "secret": "hook-key"}});
    let (st, a) = s.put("/api/v1/alerts/failures", rule.clone()).await;
    assert_eq!(st, 200, "{a}");
    assert_eq!(a["state"], "ok");
    assert!(
        !a.to_string().contains("s3cret"),
        "the secret's value is never shown: {a}"
    );

    // One failure judges nothing (min_samples 2); the second fires the rule.
    s.apply(BROKEN).await;
    let first = s.start_run("broken", "x").await;
    assert_eq!(s.wait_run(&first).await["state"], "failed");
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(alert(&s, "failures").await["state"], "ok");
    assert!(calls.lock().unwrap().is_empty());
    let second = s.start_run("broken", "x").await;
    assert_eq!(s.wait_run(&second).await["state"], "failed");
    let firing = eventually("the rule to fire", || async {
        let a = alert(&s, "failures").await;
        (a["state"] == "firing").then_some(a)
    })
    .await;
    assert_eq!(firing["value"], 1.0, "{firing}");
    let incidents = incidents_of(&s, "failures").await;
    assert_eq!(incidents.len(), 1, "one incident: {incidents:?}");
    assert_eq!(incidents[0]["state"], "open");
    assert!(
        incidents[0]["reason"]
            .as_str()
            .unwrap()
            .contains("error_rate is 1, above 0.5"),
        "{incidents:?}"
    );

    // Refused twice, the call is made again (the same delivery) until it is taken.
    eventually("the webhook call to be taken", || async {
        (calls.lock().unwrap().len() >= 3).then_some(())
    })
    .await;
    let got = calls.lock().unwrap().clone();
    let delivery = got[0].0["steward-delivery"].to_str().unwrap().to_string();
    for (headers, body) in &got {
        assert_eq!(headers["steward-delivery"], delivery.as_str());
        assert_eq!(headers["steward-event"], "alert.firing");
        let sig = headers["steward-signature"].to_str().unwrap();
        assert!(
            signed(sig, body, "s3cret-signing-key"),
            "{sig} signs {body}"
        );
        assert!(!signed(sig, body, "another-key"));
        let b: Value = serde_json::from_str(body).unwrap();
        assert_eq!(b["alert"], "failures");
        assert_eq!(b["incident"], incidents[0]["id"], "{b}");
        assert_eq!(b["value"], 1.0);
    }
    let (_, d) = s.get("/api/v1/alerts/failures/deliveries").await;
    let d = &d["deliveries"][0];
    assert_eq!(
        (d["state"].as_str(), d["attempts"].as_i64()),
        (Some("delivered"), Some(3)),
        "{d}"
    );

    // Raised above the measure: the rule calms, its incident is resolved, and it says so.
    let mut raised = rule.clone();
    raised["above"] = json!(1.0);
    let (st, a) = s.put("/api/v1/alerts/failures", raised).await;
    assert_eq!(st, 200, "{a}");
    eventually("the rule to calm", || async {
        (alert(&s, "failures").await["state"] == "ok").then_some(())
    })
    .await;
    let incidents = incidents_of(&s, "failures").await;
    assert_eq!(incidents[0]["state"], "resolved", "{incidents:?}");
    let resolved = eventually("the resolved call", || async {
        calls
            .lock()
            .unwrap()
            .iter()
            .find(|(h, _)| h["steward-event"] == "alert.resolved")
            .cloned()
    })
    .await;
    assert!(signed(
        resolved.0["steward-signature"].to_str().unwrap(),
        &resolved.1,
        "s3cret-signing-key"
    ));
    assert_ne!(resolved.0["steward-delivery"], delivery.as_str());

    // Removed: gone with its deliveries.
    let (st, _) = common::send(s.http.delete(format!("{}/api/v1/alerts/failures", s.url))).await;
    assert_eq!(st, 204);
    let (st, _) = s.get("/api/v1/alerts/failures/deliveries").await;
    assert_eq!(st, 404);
    let (st, _) = common::send(s.http.delete(format!("{}/api/v1/alerts/failures", s.url))).await;
    assert_eq!(st, 404);
}
both_backends!(
    an_alert_opens_an_incident_and_calls_its_signed_webhook_until_it_answers,
    an_alert_opens_an_incident_and_calls_its_signed_webhook_until_it_answers
);

async fn each_measure_fires_its_rule(b: Backend) {
    let upstream = common::ok_upstream().await;
    let s = server(
        b,
        &[
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &upstream),
            ("STEWARD_LLM__PRICES__M__INPUT", "1000.0"),
            ("STEWARD_LLM__PRICES__M__OUTPUT", "1000.0"),
        ],
    )
    .await;
    let (st, e) = s
        .put("/api/v1/budgets/agent:spender", json!({"cap_usd": 1.0}))
        .await;
    assert_eq!(st, 200, "{e}");
    for (name, rule) in [
        ("loops", json!({"metric": "loops", "above": 0})),
        (
            "others-loops",
            json!({"metric": "loops", "above": 0, "agent": "someone-else"}),
        ),
        ("spend", json!({"metric": "spend_usd", "above": 0.001})),
        ("slow", json!({"metric": "latency_ms", "above": 0})),
        (
            "budget",
            json!({"metric": "budget_used", "above": 0.001, "account": "agent:spender"}),
        ),
        ("quiet", json!({"metric": "spend_usd", "above": 1000})),
    ] {
        let (st, a) = s.put(&format!("/api/v1/alerts/{name}"), rule).await;
        assert_eq!(st, 200, "{name}: {a}");
    }
    // A run stopped as looping.
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: looper}\nspec:\n  model: scripted\n  tools: [echo]\n  liveness: {maxRepeats: 1}\n  script:\n    - {toolCalls: [{name: echo, arguments: {n: 1}}]}\n    - {toolCalls: [{name: echo, arguments: {n: 1}}]}\n    - {content: never}\n").await;
    let run = s.start_run("looper", "x").await;
    assert_eq!(s.wait_run(&run).await["error"]["code"], "loop_detected");
    // A priced gateway call: 2 tokens at $1,000 per million, against the spender's budget.
    let key = common::key_of(&s, "spender", "team-a").await;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.url))
        .bearer_auth(&key)
        .json(&json!({"model": "mock/m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    common::settled(&s).await;
    for name in ["loops", "spend", "slow", "budget"] {
        eventually(&format!("rule {name} to fire"), || async {
            (alert(&s, name).await["state"] == "firing").then_some(())
        })
        .await;
        assert_eq!(incidents_of(&s, name).await.len(), 1, "{name}");
    }
    for name in ["others-loops", "quiet"] {
        let a = alert(&s, name).await;
        assert_eq!(a["state"], "ok", "{a}");
        assert!(a["checked_at"].as_i64().unwrap() > 0);
        assert!(incidents_of(&s, name).await.is_empty());
    }
    let spend = alert(&s, "spend").await;
    assert!(
        (spend["value"].as_f64().unwrap() - 0.002).abs() < 1e-9,
        "2 tokens at $1,000 per million: {spend}"
    );
}
both_backends!(each_measure_fires_its_rule, each_measure_fires_its_rule);

/// Every bad rule gets a clear error and is not kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rules_are_refused() {
    let s = server(Backend::Sqlite, &[]).await;
    for (rule, says) in [
        (json!({"metric": "latency", "above": 1}), "metric"),
        (json!({"metric": "loops"}), "above"),
        (json!({"metric": "loops", "above": -1}), "above"),
        (
            json!({"metric": "error_rate", "above": 1.5}),
            "share from 0 to 1",
        ),
        (
            json!({"metric": "loops", "above": 1, "window_minutes": 20000}),
            "window_minutes",
        ),
        (json!({"metric": "budget_used", "above": 0.5}), "account"),
        (
            json!({"metric": "loops", "above": 1, "agent": "BAD NAME"}),
            "agent",
        ),
        (
            json!({"metric": "loops", "above": 1, "webhook": {"url": "file:///etc/passwd", "secret": "k"}}),
            "webhook.url",
        ),
        (
            json!({"metric": "loops", "above": 1, "webhook": {"url": "http://127.0.0.1:1/h", "secret": "missing"}}),
            "no vault secret \"missing\"",
        ),
        (json!({"metric": "loops", "above": 1, "then": "x"}), "then"),
    ] {
        let (st, e) = s.put("/api/v1/alerts/bad", rule.clone()).await;
        assert_eq!(st, 400, "{rule}: {e}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(says),
            "{rule}: {e}"
        );
    }
    let (st, e) = s
        .put(
            "/api/v1/alerts/Not%20A%20Name",
            json!({"metric": "loops", "above": 1}),
        )
        .await;
    assert_eq!(st, 400, "{e}");
    let (_, l) = s.get("/api/v1/alerts").await;
    assert_eq!(l["alerts"], json!([]), "nothing kept");
}

/// Two nodes check the same rules: a rule that fires opens one incident and makes one call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_sharing_a_store_fire_a_rule_once() {
    let (hook, calls) = receiver(0).await;
    let a = server(Backend::Postgres, &[]).await;
    let b = TestServer::join(&a);
    let (st, e) = a
        .put("/api/v1/secrets/hook-key", json!({"value": "shared-key"}))
        .await;
    assert!(st < 300, "{e}");
    let (st, e) = a
        .put(
            "/api/v1/alerts/looping",
            json!({"metric": "loops", "above": 0, "webhook": {"url": hook, "secret": "hook-key"}}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    a.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: looper}\nspec:\n  model: scripted\n  tools: [echo]\n  liveness: {maxRepeats: 1}\n  script:\n    - {toolCalls: [{name: echo, arguments: {n: 1}}]}\n    - {toolCalls: [{name: echo, arguments: {n: 1}}]}\n    - {content: never}\n").await;
    let run = a.start_run("looper", "x").await;
    a.wait_run(&run).await;
    eventually("the call", || async {
        (!calls.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    // Many checks on both nodes later, still one of each.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(calls.lock().unwrap().len(), 1);
    assert_eq!(incidents_of(&b, "looping").await.len(), 1);
    let (_, d) = b.get("/api/v1/alerts/looping/deliveries").await;
    assert_eq!(d["deliveries"].as_array().unwrap().len(), 1, "{d}");
}
