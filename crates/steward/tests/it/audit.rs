//! The audit log through the real binary: every syscall of a managed run and every gateway
//! call leaves a record; `steward audit verify` passes on the untouched log and names the record
//! changed directly in the database; `steward audit export` writes records whose inclusion
//! proofs and checkpoint signatures check with the node's public key alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::cli as steward;

use common::{Backend, TestServer};
use serde_json::{json, Value};
use steward_gov::audit_key::{check_signature, public_key};
use steward_gov::proof::verify_inclusion;
use steward_store::merkle::{leaf_hash, unhex};
use steward_store::AuditCheckpoint;

async fn tamper(s: &TestServer, sql: &str) {
    if s.db_url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(&s.db_url).await.unwrap();
        sqlx::query(sql).execute(&pool).await.unwrap();
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(&s.db_url).await.unwrap();
        sqlx::query(sql).execute(&pool).await.unwrap();
        pool.close().await;
    }
}

async fn every_syscall_is_audited_and_tampering_is_named(b: Backend) {
    let s = TestServer::start(b).await;
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: audited}\nspec:\n  model: scripted\n  tools: [echo]\n  script:\n    - toolCalls: [{name: echo, arguments: {x: 1}}]\n    - content: done\n").await;
    let run = s.start_run("audited", "go").await;
    assert_eq!(s.wait_run(&run).await["state"], "succeeded");

    let (ok, out, err) = steward(&s, &["audit", "verify"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("the audit log verifies"), "{out}");

    // Export: three records (model, tool, model), each provable against the signed root.
    let (ok, out, err) = steward(&s, &["audit", "export", "--since", "1h"]);
    assert!(ok, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ours: Vec<&Value> = lines
        .iter()
        .filter(|l| l["record"]["run_id"] == run.as_str() && l["record"]["event"] == "syscall")
        .collect();
    assert!(
        ours.iter().all(|l| l["record"]["decision"] == "allow"
            && l["record"]["policy_ids"] == json!(["default-allow-models-and-listed-tools"])),
        "each step's record carries the decision that let it act: {out}"
    );
    let actions: Vec<&str> = ours
        .iter()
        .map(|l| l["record"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["llm.call", "tool.call", "llm.call"], "{out}");
    assert_eq!(ours[1]["record"]["resource"], "echo");
    assert_eq!(
        ours[1]["record"]["chain"],
        json!(["agent:audited", format!("run:{run}")])
    );
    let key_hex = {
        let seed = std::fs::read_to_string(s.dir.path().join("audit.key")).unwrap();
        let mut b = [0u8; 32];
        for (i, o) in b.iter_mut().enumerate() {
            *o = u8::from_str_radix(&seed.trim()[2 * i..2 * i + 2], 16).unwrap();
        }
        steward_store::merkle::hex(
            ed25519_dalek::SigningKey::from_bytes(&b)
                .verifying_key()
                .as_bytes(),
        )
    };
    let trusted = [public_key(&key_hex).unwrap()];
    for l in &lines {
        let cp: AuditCheckpoint = AuditCheckpoint {
            size: l["checkpoint"]["size"].as_i64().unwrap(),
            root: l["checkpoint"]["root"].as_str().unwrap().into(),
            at: l["checkpoint"]["at"].as_i64().unwrap(),
            key_id: l["checkpoint"]["key_id"].as_str().unwrap().into(),
            signature: l["checkpoint"]["signature"].as_str().unwrap().into(),
        };
        assert_eq!(check_signature(&cp, &trusted), Ok(()));
        let seq = l["seq"].as_i64().unwrap();
        let leaf = leaf_hash(seq, l["body"].as_str().unwrap().as_bytes());
        let proof: Vec<[u8; 32]> = l["proof"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| unhex(h.as_str().unwrap()).unwrap())
            .collect();
        assert!(verify_inclusion(
            leaf,
            seq as u64,
            cp.size as u64,
            &proof,
            &unhex(&cp.root).unwrap()
        ));
    }

    // A record changed behind Steward's back is named.
    let tool_seq = ours[1]["seq"].as_i64().unwrap();
    tamper(
        &s,
        &format!("UPDATE audit_log SET body = replace(body, '\"tool.call\"', '\"llm.call\"') WHERE seq = {tool_seq}"),
    )
    .await;
    let (ok, out, err) = steward(&s, &["audit", "verify"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("record {tool_seq} was changed")),
        "{out}{err}"
    );
}
both_backends!(
    every_syscall_is_audited_and_tampering_is_named,
    every_syscall_is_audited_and_tampering_is_named
);

/// Every change made through the management API is on the record — the administrator's and an
/// agent's (a task worker with its own key), those refused too, with the route, the path and
/// the status — and nothing of reads, of heartbeats, or of request bodies.
async fn management_changes_are_audited(b: Backend) {
    let s = TestServer::start(b).await;
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: worker}\nspec:\n  model: scripted\n  script:\n    - {content: done}\n")
        .await;
    let (st, _) = s
        .put(
            "/api/v1/schedules/nightly",
            json!({"cron": "0 0 3 * * *", "queue": "jobs", "payload": {"secret": "hunter2"}}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = s
        .put(
            "/api/v1/schedules/broken",
            json!({"cron": "every tuesday", "queue": "q"}),
        )
        .await;
    assert_eq!(st, 400);
    let (st, _) = s.get("/api/v1/schedules/nightly").await;
    assert_eq!(st, 200);
    let (st, r) = s
        .post(
            "/api/v1/agents/worker/resume",
            json!({"reason": "registered", "owner": "team-a"}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let (st, key) = s.post("/api/v1/keys", json!({"agent": "worker"})).await;
    assert_eq!(st, 201, "{key}");
    let key = key["key"].as_str().unwrap().to_string();
    // A task worker with the agent's own key: enqueue is refused (no policy lets it), and on
    // the record under the agent's name.
    let r = s
        .http
        .post(format!("{}/api/v1/queues/jobs/tasks", s.url))
        .bearer_auth(&key)
        .json(&json!({"payload": {"n": 1}}))
        .send()
        .await
        .unwrap();
    let agent_status = r.status().as_u16();
    // The administrator enqueues, leases and beats.
    let (st, _) = s
        .post("/api/v1/queues/jobs/tasks", json!({"payload": {"n": 2}}))
        .await;
    assert_eq!(st, 201);
    let (st, leased) = s
        .post(
            "/api/v1/queues/jobs/lease",
            json!({"worker": "w1", "max": 1}),
        )
        .await;
    assert_eq!(st, 200, "{leased}");
    let task = &leased["tasks"][0];
    let (st, beat) = s
        .post(
            &format!("/api/v1/tasks/{}/heartbeat", task["id"].as_str().unwrap()),
            json!({"worker": "w1", "attempt": task["attempts"]}),
        )
        .await;
    assert_eq!(st, 204, "{beat}");

    let changes: Vec<Value> = common::audit_records(&s)
        .await
        .into_iter()
        .filter(|r| r["event"] == "change")
        .collect();
    let find = |action: &str, resource: &str| {
        changes
            .iter()
            .find(|c| c["action"] == action && c["resource"] == resource)
            .cloned()
    };
    let nightly = find("PUT /api/v1/schedules/{name}", "/api/v1/schedules/nightly")
        .unwrap_or_else(|| panic!("{changes:?}"));
    assert_eq!(nightly["outcome"], "status:200");
    assert!(nightly["principal"].as_str().unwrap().starts_with("admin:"));
    let broken = find("PUT /api/v1/schedules/{name}", "/api/v1/schedules/broken").unwrap();
    assert_eq!(broken["outcome"], "status:400");
    assert!(find(
        "POST /api/v1/agents/{name}/resume",
        "/api/v1/agents/worker/resume"
    )
    .is_some());
    assert!(find("POST /api/v1/keys", "/api/v1/keys").is_some());
    let by_agent: Vec<&Value> = changes
        .iter()
        .filter(|c| c["principal"] == "agent:worker")
        .collect();
    assert_eq!(by_agent.len(), 1, "{changes:?}");
    assert_eq!(by_agent[0]["action"], "POST /api/v1/queues/{name}/tasks");
    assert_eq!(by_agent[0]["outcome"], format!("status:{agent_status}"));
    assert!(find(
        "POST /api/v1/queues/{name}/lease",
        "/api/v1/queues/jobs/lease"
    )
    .is_some());
    assert!(
        changes
            .iter()
            .all(|c| !c["action"].as_str().unwrap().starts_with("GET")
                && !c["action"].as_str().unwrap().ends_with("/heartbeat")),
        "{changes:?}"
    );
    assert!(!changes.iter().any(|c| c.to_string().contains("hunter2")));
}
both_backends!(
    management_changes_are_audited,
    management_changes_are_audited
);
