//! A run's workspace follows it to whichever node takes it over: each sandbox step's result is
//! kept in the store, and the node that takes the run over finds the workspace as the last
//! completed step left it — files, modes, directories and links.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use common::{eventually, Backend, TestServer};
use serde_json::Value;

const AGENT: &str = concat!(
    "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: builder}\nspec:\n  model: scripted\n",
    "  tools: [sandbox_write_file, sandbox_exec, sandbox_read_file]\n  script:\n",
    "    - toolCalls: [{name: sandbox_write_file, arguments: {path: src/a.txt, content: first}}]\n",
    "    - toolCalls: [{name: sandbox_exec, arguments: {command: \"mkdir -p d/e && printf second > d/b.txt && chmod 750 d/b.txt && ln -s d/b.txt link && head -c 300000 /dev/urandom > big.bin && sha256sum big.bin > big.sum && rm src/a.txt && printf again > src/a.txt\"}}]\n",
    // Node a is killed while this model step waits; the node that takes over waits again,
    // then reads what node a's steps left.
    "    - {delayMs: 4000, toolCalls: [{name: sandbox_read_file, arguments: {path: d/b.txt}}]}\n",
    "    - toolCalls: [{name: sandbox_exec, arguments: {command: \"cat src/a.txt; echo; stat -c %a d/b.txt; readlink link; test -d d/e && echo dir; sha256sum -c big.sum\"}}]\n",
    "    - content: done\n",
);

/// What the outcome of the first `name` step after `after` recorded.
fn outcome<'a>(journal: &'a [Value], name: &str, after: i64) -> &'a Value {
    journal
        .iter()
        .find(|e| {
            e["phase"] == "outcome" && e["name"] == name && e["seq"].as_i64().unwrap() > after
        })
        .unwrap_or_else(|| panic!("no {name} outcome after step {after}: {journal:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_finds_its_workspace_on_the_node_that_takes_it_over() {
    let mut a = TestServer::start(Backend::Postgres).await;
    // Node b joins only once the run is on node a, so node a is the one that made the workspace.
    a.apply(AGENT).await;
    let id = a.start_run("builder", "go").await;
    // Node a has done both sandbox steps and waits on the model when it is killed.
    eventually("node a to finish the run's sandbox steps", || async {
        let j = a.journal(&id).await;
        j.iter()
            .any(|e| e["phase"] == "outcome" && e["name"] == "sandbox_exec")
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let b = TestServer::join(&a);
    a.kill9();
    let r = b.wait_run(&id).await;
    let j = b.journal(&id).await;
    assert_eq!(r["state"], "succeeded", "{r}\n{j:?}\n{}", b.log());
    let exec_seq = outcome(&j, "sandbox_exec", -1)["seq"].as_i64().unwrap();
    let read = outcome(&j, "sandbox_read_file", exec_seq);
    assert_eq!(read["body"]["ok"]["content"], "second", "{read}");
    let check = outcome(&j, "sandbox_exec", exec_seq);
    let stdout = check["body"]["ok"]["stdout"].as_str().unwrap_or_default();
    assert_eq!(
        stdout,
        "again\n750\nd/b.txt\ndir\nbig.bin: OK\n",
        "{check}\n{}",
        b.log()
    );
    assert!(
        b.log().contains("restoring the run's workspace"),
        "{}",
        b.log()
    );
}
