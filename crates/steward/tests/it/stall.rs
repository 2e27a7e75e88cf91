//! A node stalled past its leases (SIGSTOP, as a long GC pause, a frozen VM or an I/O stall
//! does) and then continued: it must not drive a run twice. Every POST a run makes is counted
//! by a real HTTP server; none may arrive twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

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

/// With two nodes, a step in flight on the node that stalls is in doubt for the node that takes
/// the run over (its intent is journaled, its outcome never was): the run waits for a human, as
/// the agent's recovery policy says, rather than guess. Every other run finishes; nothing is
/// done twice.
async fn each_run_finished_or_in_doubt(counter: &Counter, runs: &[String], s: &TestServer) {
    let mut ended = Vec::new();
    for run in runs {
        ended.push((run, s.wait_run(run).await));
    }
    let hits = counter.hits.lock().unwrap().clone();
    let twice: Vec<(&String, &u32)> = hits.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "steps done more than once: {twice:?}\n{}",
        s.log()
    );
    let mut in_doubt = 0;
    for (run, r) in ended {
        match r["state"].as_str() {
            Some("succeeded") => assert_eq!(counter.total_for_run(run), 16, "{hits:?}"),
            Some("waiting") if r["error"]["code"] == "in_doubt" => in_doubt += 1,
            _ => panic!("{r}\n{}", s.log()),
        }
    }
    assert!(in_doubt < runs.len(), "some runs should have finished");
}

fn signal(pid: u32, sig: &str) {
    assert!(std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

/// Two nodes on PostgreSQL: one is stopped past its leases while the other takes its runs
/// over, then continues. The stalled node's steps in flight and its next ones are fenced off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_node_of_two_never_drives_a_run_twice() {
    let counter = Counter::start().await;
    let a = TestServer::start(Backend::Postgres).await;
    poster(&a, &counter).await;
    let mut runs = Vec::new();
    for i in 0..8 {
        runs.push(a.start_run("poster", &format!("r{i}")).await);
    }
    // b joins once a drives the runs: had b claimed them all first (a loaded machine can
    // start it sooner than a's scheduler wakes), there would be nothing to take over.
    let b = TestServer::join(&a);
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        signal(a.child_id(), "-STOP");
        // Past a's leases (3 s) and then some: b takes a's runs and drives them meanwhile.
        tokio::time::sleep(Duration::from_millis(4_500)).await;
        signal(a.child_id(), "-CONT");
    }
    each_run_finished_or_in_doubt(&counter, &runs, &b).await;
    assert!(
        a.log().contains("claimed again") || b.log().contains("resuming from the journal"),
        "node b should have taken runs over from the stalled node a"
    );
}

/// A node cut off from PostgreSQL — every connection it opens killed at once, for longer than
/// its leases — and then let back in, while another node goes on: no step is done twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_database_never_drives_a_run_twice() {
    let counter = Counter::start().await;
    let b = TestServer::start(Backend::Postgres).await;
    let a = TestServer::join_named(&b, "steward_cut_off");
    poster(&b, &counter).await;
    let mut runs = Vec::new();
    for i in 0..8 {
        runs.push(b.start_run("poster", &format!("r{i}")).await);
    }
    let admin = sqlx::PgPool::connect(&common::pg_base()).await.unwrap();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let until = std::time::Instant::now() + Duration::from_millis(4_500);
        let mut killed = 0;
        while std::time::Instant::now() < until {
            let n: Vec<(bool,)> = sqlx::query_as(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = 'steward_cut_off'",
            )
            .fetch_all(&admin)
            .await
            .unwrap();
            killed += n.len();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(killed > 0, "node a never connected:\n{}", a.log());
    }
    each_run_finished_or_in_doubt(&counter, &runs, &b).await;
}

both_backends!(
    a_stalled_node_never_drives_a_run_twice,
    a_stalled_node_never_drives_a_run_twice
);
