//! Identity lifecycle through the real binary — part of the escalation battery: a revoked key,
//! an expired short-lived key and a rotated-out key are refused; a suspended agent can neither
//! call the gateway nor take a step in a managed run until resumed; a revoked agent stays
//! revoked; each change is audited with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{Backend, TestServer};
use serde_json::{json, Value};

async fn call(s: &TestServer, key: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.url))
        .bearer_auth(key)
        .json(&json!({"model": "mock/m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn revoked_expired_and_suspended_credentials_are_refused(b: Backend) {
    let upstream = common::ok_upstream().await;
    let s = TestServer::start_with(
        b,
        &[
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &upstream),
        ],
    )
    .await;
    let key = |v: &Value| v["key"].as_str().unwrap().to_string();

    // Revoked.
    let (_, k1) = s.post("/api/v1/keys", json!({"agent": "ext"})).await;
    assert_eq!(call(&s, &key(&k1)).await.0, 200);
    let (st, r) = s
        .post(
            &format!("/api/v1/keys/{}/revoke", k1["id"].as_str().unwrap()),
            json!({"reason": "leaked in a log"}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let (st, e) = call(&s, &key(&k1)).await;
    assert_eq!(st, 401, "{e}");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("leaked in a log"));
    let (st, _) = s
        .post(
            &format!("/api/v1/keys/{}/revoke", k1["id"].as_str().unwrap()),
            json!({"reason": "again"}),
        )
        .await;
    assert_eq!(st, 409);

    // Expired.
    let (st, short) = s
        .post("/api/v1/keys", json!({"agent": "ext", "ttl_s": 1}))
        .await;
    assert_eq!(st, 201, "{short}");
    assert!(short["expires_at"].as_i64().is_some());
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (st, e) = call(&s, &key(&short)).await;
    assert_eq!(st, 401, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("expired"));
    let (st, _) = s
        .post("/api/v1/keys", json!({"agent": "ext", "ttl_s": -5}))
        .await;
    assert_eq!(st, 400);

    // Rotated.
    let (_, old) = s.post("/api/v1/keys", json!({"agent": "ext"})).await;
    let (st, new) = s
        .post(
            &format!("/api/v1/keys/{}/rotate", old["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(st, 201, "{new}");
    assert_eq!(call(&s, &key(&old)).await.0, 401);
    assert_eq!(call(&s, &key(&new)).await.0, 200);
    let (_, listed) = s.get("/api/v1/keys?agent=ext").await;
    assert!(
        !listed.to_string().contains("sk-steward"),
        "no secrets listed"
    );

    // Suspended: refused on the gateway and in managed runs, until resumed.
    let (st, id) = s
        .post(
            "/api/v1/agents/ext/suspend",
            json!({"reason": "under review", "owner": "team:payments"}),
        )
        .await;
    assert_eq!(
        (st, id["status"].as_str()),
        (200, Some("suspended")),
        "{id}"
    );
    let (st, e) = call(&s, &key(&new)).await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (403, Some("policy_denied")),
        "{e}"
    );
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("under review"));
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: ext}\nspec:\n  model: scripted\n  script: [{content: hello}]\n").await;
    let run = s.start_run("ext", "go").await;
    let r = s.wait_run(&run).await;
    assert_eq!(
        (r["state"].as_str(), r["error"]["code"].as_str()),
        (Some("failed"), Some("policy_denied")),
        "{r}"
    );
    let (st, _) = s
        .post(
            "/api/v1/agents/ext/resume",
            json!({"reason": "review passed"}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(call(&s, &key(&new)).await.0, 200);
    let run = s.start_run("ext", "go").await;
    assert_eq!(s.wait_run(&run).await["state"], "succeeded");
    let (_, i) = s.get("/api/v1/agents/ext/identity").await;
    assert_eq!(
        (i["status"].as_str(), i["owner"].as_str()),
        (Some("active"), Some("team:payments"))
    );

    // Revoked for good.
    let (st, _) = s
        .post(
            "/api/v1/agents/ext/revoke",
            json!({"reason": "decommissioned"}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(call(&s, &key(&new)).await.0, 403);
    let (st, _) = s
        .post("/api/v1/agents/ext/resume", json!({"reason": "please"}))
        .await;
    assert_eq!(st, 409);
    let (st, _) = s.post("/api/v1/agents/ext/suspend", json!({})).await;
    assert_eq!(st, 400, "a reason is required");

    // Deleted: its keys are revoked with the reason, and it stays deleted.
    let (_, other) = s.post("/api/v1/keys", json!({"agent": "temp"})).await;
    assert_eq!(call(&s, &key(&other)).await.0, 200);
    let (st, i) = s
        .post(
            "/api/v1/agents/temp/delete",
            json!({"reason": "project over"}),
        )
        .await;
    assert_eq!((st, i["status"].as_str()), (200, Some("deleted")), "{i}");
    let (st, e) = call(&s, &key(&other)).await;
    assert_eq!(st, 401, "{e}");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("project over"));
    let (_, keys) = s.get("/api/v1/keys?agent=temp").await;
    assert!(keys["keys"][0]["revoked_at"].as_i64().is_some(), "{keys}");
    let (st, _) = s
        .post("/api/v1/agents/temp/resume", json!({"reason": "undo"}))
        .await;
    assert_eq!(st, 409);
    let (st, _) = s
        .post("/api/v1/agents/ext/delete", json!({"reason": "cleanup"}))
        .await;
    assert_eq!(st, 200, "a revoked identity can still be deleted");

    // Every change is on the record, with its reason.
    let lifecycle: Vec<(String, String)> = common::audit_records(&s)
        .await
        .into_iter()
        .filter(|r| r["event"] == "lifecycle")
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_string(),
                r["error"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for want in [
        ("key.revoke", "leaked in a log"),
        ("identity.suspended", "under review"),
        ("identity.active", "review passed"),
        ("identity.revoked", "decommissioned"),
        ("identity.deleted", "project over"),
    ] {
        assert!(
            lifecycle.iter().any(|(a, r)| a == want.0 && r == want.1),
            "{want:?} in {lifecycle:?}"
        );
    }
}
both_backends!(
    revoked_expired_and_suspended_credentials_are_refused,
    revoked_expired_and_suspended_credentials_are_refused
);
