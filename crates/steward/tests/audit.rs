//! The audit log through the real binary: every syscall of a managed run and every gateway
//! call leaves a record; `steward audit verify` passes on the untouched log and names the record
//! changed directly in the database; `steward audit export` writes records whose inclusion
//! proofs and checkpoint signatures check with the node's public key alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

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
