//! Approvals through the real binary: a permit with `@approval("finance")` parks the run until
//! an approver decides — across a `kill -9` and restart — then the step acts exactly once if
//! approved, is denied if denied, and counts as denied when nobody decides in time. Every step
//! of it is in the audit log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::cli as steward;

use common::{Backend, Counter, TestServer};
use serde_json::{json, Value};

const POLICIES: &str = r#"
@id("models") permit (principal, action == Steward::Action::"llm.call", resource);
@id("payments-need-finance") @approval("finance")
permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"http_request");
"#;

const AGENT: &str = "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: payer}\nspec:\n  model: scripted\n  tools: [http_request]\n  script:\n    - toolCalls: [{name: http_request, arguments: {method: PUT, url: \"{{input}}\"}}]\n    - content: done\n";

async fn setup(s: &TestServer) {
    let (st, e) = common::send(
        reqwest::Client::new()
            .put(format!("{}/api/v1/policies", s.url))
            .body(POLICIES),
    )
    .await;
    assert_eq!(st, 200, "{e}");
    s.apply(AGENT).await;
}

async fn pending(s: &TestServer) -> Vec<Value> {
    let (_, a) = s.get("/api/v1/approvals?state=pending").await;
    a["approvals"].as_array().unwrap().clone()
}

async fn an_approved_step_acts_once_after_a_restart(b: Backend) {
    let c = Counter::start().await;
    let mut s = TestServer::start(b).await;
    setup(&s).await;
    let run = s.start_run("payer", &format!("{}/pay/1", c.url)).await;
    let r = s.wait_run(&run).await;
    assert_eq!(
        (r["state"].as_str(), r["wait_kind"].as_str()),
        (Some("waiting"), Some("approval")),
        "{r}"
    );
    assert_eq!(r["error"]["code"], "awaiting_approval");
    assert_eq!(
        c.count(&format!("{run}:0")),
        0,
        "nothing paid before approval"
    );
    let list = pending(&s).await;
    assert_eq!(list.len(), 1);
    let id = list[0]["id"].as_str().unwrap().to_string();
    assert_eq!(list[0]["approvers"], "finance");
    assert_eq!(list[0]["policy_ids"], json!(["payments-need-finance"]));
    let (ok, out, _) = steward(&s, &["approvals"]);
    assert!(ok && out.contains(&id), "{out}");

    // The wait is durable.
    s.kill9();
    s.spawn();
    let (_, r) = s.get(&format!("/api/v1/runs/{run}")).await;
    assert_eq!(r["wait_kind"], "approval", "{r}");

    let (ok, _, err) = steward(&s, &["approve", &id, "--reason", ""]);
    assert!(!ok && err.contains("reason"), "a reason is required: {err}");
    let (ok, out, err) = steward(&s, &["approve", &id, "--reason", "invoice 42 checked"]);
    assert!(ok, "{err}");
    assert!(out.contains("approved"), "{out}");
    let r = s.wait_run(&run).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    let paid: u32 = c.hits.lock().unwrap().values().sum();
    assert_eq!(paid, 1, "the approved step acted exactly once");
    let (ok, _, err) = steward(&s, &["deny", &id, "--reason", "too late"]);
    assert!(!ok && err.contains("approved already"), "{err}");

    // A denied one: the model hears why, nothing is paid.
    let run2 = s.start_run("payer", &format!("{}/pay/2", c.url)).await;
    s.wait_run(&run2).await;
    let id2 = pending(&s).await[0]["id"].as_str().unwrap().to_string();
    let (ok, _, err) = steward(&s, &["deny", &id2, "--reason", "not budgeted"]);
    assert!(ok, "{err}");
    let r = s.wait_run(&run2).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    let text = serde_json::to_string(&s.journal(&run2).await).unwrap();
    assert!(text.contains("denied by policy: approval"), "{text}");
    assert!(text.contains("not budgeted"), "{text}");
    let paid: u32 = c.hits.lock().unwrap().values().sum();
    assert_eq!(paid, 1, "the denied step did not act");

    // The audit log has the request, the approval and the denial.
    let decisions: Vec<(String, String)> = common::audit_records(&s)
        .await
        .into_iter()
        .filter(|r| r["resource"] == "http_request")
        .map(|r| {
            (
                r["event"].as_str().unwrap().to_string(),
                r["decision"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [
        ("decision", "approval_required"),
        ("syscall", "allow"),
        ("decision", "approval_required"),
        ("syscall", "deny"),
    ];
    assert_eq!(
        decisions,
        want.map(|(a, b)| (a.to_string(), b.to_string())),
        "the audit log"
    );
}
both_backends!(
    an_approved_step_acts_once_after_a_restart,
    an_approved_step_acts_once_after_a_restart
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_nobody_decides_expires_as_a_denial() {
    let c = Counter::start().await;
    let s = TestServer::start_with(
        Backend::Sqlite,
        &[
            ("STEWARD_GOV__APPROVAL_TIMEOUT_MS", "300"),
            ("STEWARD_ENGINE__HOUSEKEEPING_MS", "100"),
        ],
    )
    .await;
    setup(&s).await;
    let run = s.start_run("payer", &format!("{}/pay/3", c.url)).await;
    let r = common::eventually("the run to finish after the approval expired", || {
        let s = &s;
        let run = run.clone();
        async move {
            let (_, r) = s.get(&format!("/api/v1/runs/{run}")).await;
            (r["state"] == "succeeded").then_some(r)
        }
    })
    .await;
    assert_eq!(r["result"], "done");
    let text = serde_json::to_string(&s.journal(&run).await).unwrap();
    assert!(text.contains("expired"), "{text}");
    assert_eq!(c.hits.lock().unwrap().values().sum::<u32>(), 0);
    let (_, all) = s.get("/api/v1/approvals?state=expired").await;
    assert_eq!(all["approvals"].as_array().unwrap().len(), 1);
}
