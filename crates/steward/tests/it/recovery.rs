//! Recovery against the real binary: in-doubt steps under each policy, divergence, and a
//! graceful SIGTERM — on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use common::{Backend, Counter, TestServer};
use serde_json::{json, Value};

fn http_agent(name: &str, method: &str, url: &str, recovery: &str) -> String {
    format!(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: {name}}}\nspec:\n  model: scripted\n  tools: [http_request]\n  recovery: {recovery}\n  script:\n    - toolCalls: [{{name: http_request, arguments: {{method: {method}, url: \"{url}\"}}}}]\n    - content: done\n"
    )
}

/// Waits until the counter has seen `key`, i.e. the request is in flight at the upstream.
async fn until_hit(c: &Counter, key: &str) {
    common::eventually(&format!("the upstream to see {key}"), || async {
        (c.count(key) > 0).then_some(())
    })
    .await;
}

/// Starts a run whose first tool call is an HTTP request that hangs at the upstream, SIGKILLs
/// the server once the upstream has received it (its outcome never journaled), restarts, and
/// returns the server, the upstream's counter, the step's idempotency key and the run as it ends.
async fn crash_mid_request(
    b: Backend,
    method: &str,
    policy: &str,
) -> (TestServer, Counter, String, String, Value) {
    let c = Counter::start().await;
    let mut s = TestServer::start(b).await;
    s.apply(&http_agent(
        "caller",
        method,
        &format!("{}/slow/call", c.url),
        policy,
    ))
    .await;
    let id = s.start_run("caller", "x").await;
    let key = format!("{id}:1");
    until_hit(&c, &key).await;
    s.kill9();
    s.spawn();
    let r = s.wait_run(&id).await;
    (s, c, id, key, r)
}

async fn interrupted_post_waits_for_a_human_then_retries_with_the_same_key(b: Backend) {
    let (s, c, id, key, r) = crash_mid_request(b, "POST", "wait_for_human").await;
    assert_eq!(
        (r["state"].as_str(), r["wait_kind"].as_str()),
        (Some("waiting"), Some("human")),
        "{r}"
    );
    assert_eq!(r["error"]["code"], "in_doubt");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        c.count(&key),
        1,
        "a non-idempotent step in doubt is not redone without a human"
    );

    let (st, body) = s
        .post(
            &format!("/api/v1/runs/{id}/resolve"),
            json!({"action": "retry"}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let r = s.wait_run(&id).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(
        c.count(&key),
        2,
        "retried once, at a human's word, under the same idempotency key"
    );
    let (st, body) = s
        .post(
            &format!("/api/v1/runs/{id}/resolve"),
            json!({"action": "retry"}),
        )
        .await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (409, Some("conflict"))
    );
}
both_backends!(
    interrupted_post_waits_for_a_human_then_retries_with_the_same_key,
    interrupted_post_waits_for_a_human_then_retries_with_the_same_key
);

async fn interrupted_post_fails_the_run_under_policy_fail(b: Backend) {
    let (_s, c, _id, key, r) = crash_mid_request(b, "POST", "fail").await;
    assert_eq!(r["state"], "failed");
    assert_eq!(r["error"]["code"], "in_doubt");
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("http_request"));
    assert_eq!(c.count(&key), 1);
}
both_backends!(
    interrupted_post_fails_the_run_under_policy_fail,
    interrupted_post_fails_the_run_under_policy_fail
);

async fn interrupted_put_is_retried_automatically(b: Backend) {
    let (_s, c, _id, key, r) = crash_mid_request(b, "PUT", "fail").await;
    assert_eq!(
        r["state"], "succeeded",
        "an idempotent step in doubt is retried: {r}"
    );
    assert_eq!(c.count(&key), 2, "same idempotency key on the retry");
}
both_backends!(
    interrupted_put_is_retried_automatically,
    interrupted_put_is_retried_automatically
);

async fn a_tampered_journal_is_reported_as_divergence(b: Backend) {
    let mut s = TestServer::start(b).await;
    s.apply(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: d}\nspec:\n  model: scripted\n  tools: [echo]\n  script:\n    - toolCalls: [{name: echo, arguments: {n: 1}}]\n    - {delayMs: 30000, content: late}\n",
    )
    .await;
    let id = s.start_run("d", "x").await;
    // Wait until the echo step is journaled and the slow model turn is under way.
    common::eventually("the echo step's outcome", || async {
        (s.journal(&id).await.len() >= 5).then_some(())
    })
    .await;
    s.kill9();
    let sql =
        format!("UPDATE journal SET request_hash = 'tampered' WHERE run_id = '{id}' AND seq = 1");
    match b {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&s.db_url).await.unwrap();
            sqlx::query(&sql).execute(&pool).await.unwrap();
            pool.close().await;
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&s.db_url).await.unwrap();
            sqlx::query(&sql).execute(&pool).await.unwrap();
            pool.close().await;
        }
    }
    s.spawn();
    let r = s.wait_run(&id).await;
    assert_eq!(r["state"], "failed", "{r}");
    assert_eq!(r["error"]["code"], "divergence");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("step 1"),
        "{r}"
    );
}
both_backends!(
    a_tampered_journal_is_reported_as_divergence,
    a_tampered_journal_is_reported_as_divergence
);

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_step_in_flight_then_exits() {
    let c = Counter::start().await;
    let mut s = TestServer::start(Backend::Sqlite).await;
    s.apply(
        &http_agent("getter", "GET", &format!("{}/slow/read", c.url), "fail").replace(
            "    - content: done\n",
            "    - {delayMs: 200, content: done}\n",
        ),
    )
    .await;
    let id = s.start_run("getter", "x").await;
    let key = format!("{id}:1");
    until_hit(&c, &key).await;
    let mut child = s.take_child();
    #[allow(unsafe_code)]
    // SAFETY: sending a signal to a child process this test owns.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "graceful exit: {status:?}");
    let j = s.journal_offline(&id).await;
    assert!(
        j.contains(&(1, 1)),
        "the in-flight step finished and was journaled before exit: {j:?}"
    );
    assert!(
        !j.contains(&(2, 0)),
        "no new step started after SIGTERM: {j:?}"
    );
    s.spawn();
    let r = s.wait_run(&id).await;
    assert_eq!(r["state"], "succeeded");
    assert_eq!(
        c.count(&key),
        1,
        "the finished step is not redone after restart"
    );
}

async fn a_parent_waiting_on_a_child_survives_a_crash(b: Backend) {
    let mut s = TestServer::start(b).await;
    s.apply(concat!(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: kid}\nspec:\n  model: scripted\n  script:\n    - {delayMs: 1500, content: \"kid did {{input}}\"}\n",
        "---\n",
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: mom}\nspec:\n  model: scripted\n  tools: [spawn_agent]\n  recovery: fail\n  script:\n",
        "    - toolCalls: [{name: spawn_agent, arguments: {agent: kid, input: chores}}]\n    - content: family done\n",
    ))
    .await;
    let id = s.start_run("mom", "x").await;
    common::eventually("the parent waiting on its child", || async {
        let (_, r) = s.get(&format!("/api/v1/runs/{id}")).await;
        (r["state"] == "waiting" && r["wait_kind"] == "child").then_some(())
    })
    .await;
    s.kill9();
    s.spawn();
    let r = s.wait_run(&id).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    let (_, kids) = s.get(&format!("/api/v1/runs?parent={id}")).await;
    let kids = kids["runs"].as_array().unwrap();
    assert_eq!(kids.len(), 1, "the replayed spawn found the same child");
    assert_eq!(kids[0]["result"], "kid did chores");
    let spawn = s
        .journal(&id)
        .await
        .into_iter()
        .find(|e| e["phase"] == "outcome" && e["kind"] == "tool")
        .unwrap();
    assert_eq!(spawn["body"]["ok"]["result"], "kid did chores");
}
both_backends!(
    a_parent_waiting_on_a_child_survives_a_crash,
    a_parent_waiting_on_a_child_survives_a_crash
);

async fn interrupted_post_is_redone_under_policy_retry(b: Backend) {
    let (_s, c, _id, key, r) = crash_mid_request(b, "POST", "retry").await;
    assert_eq!(
        r["state"], "succeeded",
        "the agent's policy says act again: {r}"
    );
    assert_eq!(
        c.count(&key),
        2,
        "redone once, under the same idempotency key"
    );
}
both_backends!(
    interrupted_post_is_redone_under_policy_retry,
    interrupted_post_is_redone_under_policy_retry
);
