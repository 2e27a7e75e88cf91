//! A node stalled past its leases (SIGSTOP, as a long GC pause, a frozen VM or an I/O stall
//! does) and then continued: it must not drive a run twice. Every POST a run makes is counted
//! by a real HTTP server; none may arrive twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Backend, Counter, TestServer};

async fn poster(s: &TestServer, counter: &Counter) {
    let steps: String = (0..16)
        .map(|_| {
            format!(
                "    - {{delayMs: 100, toolCalls: [{{name: http_request, arguments: {{method: POST, url: \"{}/p\"}}}}]}}\n",
                counter.url
            )
        })
        .collect();
    s.apply(&format!(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: poster}}\nspec:\n  model: scripted\n  tools: [http_request]\n  script:\n{steps}    - content: done\n"
    ))
    .await;
}

/// Every POST of every run arrived exactly once.
fn each_step_once(counter: &Counter, runs: &[String], s: &TestServer) {
    let hits = counter.hits.lock().unwrap().clone();
    let twice: Vec<(&String, &u32)> = hits.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "steps done more than once: {twice:?}\n{}",
        s.log()
    );
    for run in runs {
        assert_eq!(counter.total_for_run(run), 16, "{hits:?}");
    }
}

async fn a_stalled_node_never_drives_a_run_twice(b: Backend) {
    let counter = Counter::start().await;
    let s = TestServer::start(b).await;
    poster(&s, &counter).await;
    let mut runs = Vec::new();
    for i in 0..6 {
        runs.push(s.start_run("poster", &format!("r{i}")).await);
    }
    let pid = s.child_id().to_string();
    // Stopped longer than its leases (3 s in the tests), then continued — three times.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success());
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        assert!(std::process::Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success());
    }
    for run in &runs {
        assert_eq!(s.wait_run(run).await["state"], "succeeded");
    }
    each_step_once(&counter, &runs, &s);
}

both_backends!(
    a_stalled_node_never_drives_a_run_twice,
    a_stalled_node_never_drives_a_run_twice
);
