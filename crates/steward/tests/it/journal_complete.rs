//! However a run's loop ends, every step it completed has its outcome in the journal. A step's
//! outcome is committed with the run's next write (as a rule the next step's intent, so a step
//! costs one commit); an answer, a failure, a wait for approval, a loop stopped, a cancel and a
//! graceful shutdown each commit it before the run's state moves on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{Backend, TestServer};
use serde_json::json;

/// The steps of `run` with an intent and no outcome, read from the database.
async fn open_steps(s: &TestServer, run: &str) -> Vec<i64> {
    let pairs = s.journal_offline(run).await;
    let intents = pairs.iter().filter(|(_, p)| *p == 0).map(|(seq, _)| *seq);
    intents.filter(|seq| !pairs.contains(&(*seq, 1))).collect()
}

fn agent(name: &str, extra: &str, script: &str) -> String {
    format!(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: {name}}}\nspec:\n  model: scripted\n  tools: [echo, http_request]\n{extra}  script:\n{script}"
    )
}

const ECHO: &str = "    - toolCalls: [{name: echo, arguments: {n: 1}}]\n";

async fn every_ending_commits_the_last_outcome(b: Backend) {
    let s = TestServer::start(b).await;
    let (st, e) = s
        .put_policies(
            r#"@id("models") permit (principal, action == Steward::Action::"llm.call", resource);
@id("echo") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"echo");
@id("requests-need-finance") @approval("finance")
permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"http_request");"#,
        )
        .await;
    assert_eq!(st, 200, "{e}");

    // An answer: five steps, all complete.
    s.apply(&agent(
        "answers",
        "",
        &format!(
            "{ECHO}    - toolCalls: [{{name: echo, arguments: {{n: 2}}}}]\n    - content: done\n"
        ),
    ))
    .await;
    // Out of model turns right after a tool's outcome.
    s.apply(&agent(
        "overruns",
        "  maxSteps: 2\n",
        &format!("{ECHO}    - toolCalls: [{{name: echo, arguments: {{n: 2}}}}]\n    - toolCalls: [{{name: echo, arguments: {{n: 3}}}}]\n    - content: never\n"),
    ))
    .await;
    // A step that waits for an approval after a completed one.
    s.apply(&agent(
        "asks",
        "",
        &format!("{ECHO}    - toolCalls: [{{name: http_request, arguments: {{url: \"http://127.0.0.1:9/\"}}}}]\n    - content: done\n"),
    ))
    .await;
    // The same call twice in a row: stopped as a loop, with an incident.
    s.apply(&agent(
        "loops",
        "  liveness: {maxRepeats: 1, onLoop: escalate}\n",
        &format!("{ECHO}{ECHO}    - content: never\n"),
    ))
    .await;

    for (agent, state, code) in [
        ("answers", "succeeded", None),
        ("overruns", "failed", Some("max_steps_exceeded")),
        ("asks", "waiting", Some("awaiting_approval")),
        ("loops", "failed", Some("loop_detected")),
    ] {
        let run = s.start_run(agent, "go").await;
        let r = s.wait_run(&run).await;
        assert_eq!(
            (r["state"].as_str(), r["error"]["code"].as_str()),
            (Some(state), code),
            "{agent}: {r}"
        );
        assert_eq!(open_steps(&s, &run).await, Vec::<i64>::new(), "{agent}");
        let outcomes = s.outcomes(&run).await;
        assert!(outcomes >= 2, "{agent}: {outcomes} outcomes");
    }

    // Cancelled while the model is thinking: the tool before it is complete; the model call
    // it cut short is the only open step.
    s.apply(&agent(
        "cancelled",
        "",
        &format!("{ECHO}    - {{delayMs: 30000, content: never}}\n"),
    ))
    .await;
    let run = s.start_run("cancelled", "go").await;
    common::eventually("the slow model call to start", || async {
        (s.journal_offline(&run).await.len() >= 3).then_some(())
    })
    .await;
    let (st, r) = s
        .post(
            &format!("/api/v1/runs/{run}/cancel"),
            json!({"reason": "enough"}),
        )
        .await;
    assert!(st == 200 || st == 202, "{st} {r}");
    assert_eq!(s.wait_run(&run).await["state"], "cancelled");
    assert_eq!(open_steps(&s, &run).await, vec![2]);
}
both_backends!(
    every_ending_commits_the_last_outcome,
    every_ending_commits_the_last_outcome
);
