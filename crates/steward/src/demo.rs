//! `steward demo`: starts an embedded Steward (SQLite in a temporary data dir), applies the
//! example fleet, starts several runs, kills the server with SIGKILL mid-run, restarts it, and
//! shows that every run finished with no completed step done twice.
//!
//! The runs' side effect is an HTTP POST to a small "effects" server the demo hosts on
//! loopback; it counts every request it receives, keyed by the `Idempotency-Key` Steward sends.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use steward_api::wire::{Journal, Run};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::client::{describe, Client};

const FLEET: &str = include_str!("../../../examples/fleet.yaml");

#[derive(clap::Args)]
pub struct DemoArgs {
    /// How many runs to start.
    #[arg(long, default_value_t = 6)]
    runs: usize,
    /// Keep the data directory (printed at the end) instead of a temporary one.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Milliseconds after the runs start at which the server is killed.
    #[arg(long, default_value_t = 1100)]
    kill_after_ms: u64,
}

/// Requests received per idempotency key (`run:seq`).
#[derive(Clone, Default)]
struct Effects(Arc<Mutex<BTreeMap<String, u32>>>);

async fn effect(
    State(e): State<Effects>,
    Path(_topic): Path<String>,
    headers: HeaderMap,
) -> Json<Value> {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_string();
    let n = {
        let mut m = e.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(key.clone()).or_insert(0);
        *n += 1;
        *n
    };
    // Like a payment API, the effects server applies a key once and answers repeats from memory.
    Json(json!({"key": key, "applied": n == 1}))
}

async fn effects_list(State(e): State<Effects>) -> Json<Value> {
    Json(json!(e.0.lock().unwrap_or_else(|p| p.into_inner()).clone()))
}

struct Server {
    child: tokio::process::Child,
    url: String,
}

async fn start_server(data_dir: &std::path::Path) -> anyhow::Result<Server> {
    let exe = std::env::current_exe().context("finding the steward executable")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.join("server.log"))?;
    let mut child = tokio::process::Command::new(exe)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("STEWARD_TOOLS__HTTP__ALLOW_PRIVATE_NETWORKS", "true")
        .env("STEWARD_ENGINE__POLL_MS", "100")
        .env_remove("STEWARD_STORE__DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .context("starting `steward serve`")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("the server did not start within 30 s; see server.log in the data dir")??
        .context("the server exited at start; see server.log in the data dir")?;
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .context("unexpected first line from the server")?
        .to_string();
    Ok(Server { child, url })
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let (data_dir, _tmp) = match &args.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            (d.clone(), None)
        }
        None => {
            let t = tempdir()?;
            (t.clone(), Some(TempDir(t)))
        }
    };
    println!(
        "Steward demo — embedded SQLite store in {}",
        data_dir.display()
    );
    println!(
        "The agents use the scripted model provider: a deterministic script, not a real LLM.\n"
    );

    let effects = Effects::default();
    let app = Router::new()
        .route("/effects/{topic}", post(effect))
        .route("/effects", get(effects_list))
        .with_state(effects.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let effects_addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut server = start_server(&data_dir).await?;
    println!("1. started `steward serve` at {}", server.url);
    let client = Client::new(&server.url)?;
    let applied = client.apply_text(FLEET.to_string()).await?;
    let names: Vec<String> = applied
        .agents
        .iter()
        .map(|a| format!("{} v{}", a.name, a.version))
        .collect();
    println!("2. applied the example fleet: {}", names.join(", "));

    let mut ids = Vec::new();
    for i in 0..args.runs {
        let input = format!("http://{effects_addr}/effects/topic-{i}");
        ids.push(client.create_run("researcher", &input).await?.id);
    }
    println!(
        "3. started {} researcher runs (each: scratchpad, POST an effect, spawn a summarizer)",
        ids.len()
    );
    tokio::time::sleep(Duration::from_millis(args.kill_after_ms)).await;

    let mut done_before = 0;
    for id in &ids {
        let j: Journal = client
            .get_json(&format!("/api/v1/runs/{id}/journal"))
            .await?;
        done_before += j.entries.iter().filter(|e| e.phase == "outcome").count();
    }
    server.child.start_kill()?; // SIGKILL: no chance to clean up
    server.child.wait().await?;
    let killed_at = crate::client::now_ms();
    println!("4. killed the server with SIGKILL mid-run ({done_before} steps were complete)");

    let server = start_server(&data_dir).await?;
    let client = Client::new(&server.url)?;
    println!(
        "5. restarted it at {}; unfinished runs resume from their journals",
        server.url
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut resolved = Vec::new();
    loop {
        let mut open = 0;
        for id in &ids {
            let r: Run = client.get_json(&format!("/api/v1/runs/{id}")).await?;
            if r.state == "waiting"
                && r.wait_kind.as_deref() == Some("human")
                && !resolved.contains(id)
            {
                // The crash interrupted this run's POST. The effects server deduplicates by
                // Idempotency-Key, so as the human in the loop the demo chooses "retry".
                println!(
                    "   run {id} waits for a human: {}",
                    r.error.map(|e| e.message).unwrap_or_default()
                );
                let _: Run = client
                    .post_json(
                        &format!("/api/v1/runs/{id}/resolve"),
                        &json!({"action": "retry"}),
                    )
                    .await?;
                println!(
                    "   → resolved with retry (the effects server deduplicates by Idempotency-Key)"
                );
                resolved.push(id.clone());
            }
            if !matches!(r.state.as_str(), "succeeded" | "failed" | "cancelled") {
                open += 1;
            }
        }
        if open == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{open} runs did not finish within 60 s; see server.log in {}",
                data_dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let hits = effects.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    println!("\n6. every run has ended:\n");
    println!(
        "   {:<38} {:<10} {:>6} {:>9} {:>8}",
        "RUN", "STATE", "STEPS", "RESUMED", "POSTS"
    );
    let mut problems = Vec::new();
    for id in &ids {
        let r: Run = client.get_json(&format!("/api/v1/runs/{id}")).await?;
        let j: Journal = client
            .get_json(&format!("/api/v1/runs/{id}/journal"))
            .await?;
        let outcomes: Vec<_> = j.entries.iter().filter(|e| e.phase == "outcome").collect();
        let resumed = outcomes.iter().filter(|e| e.at >= killed_at).count();
        let posts: u32 = hits
            .iter()
            .filter(|(k, _)| k.starts_with(id.as_str()))
            .map(|(_, n)| *n)
            .sum();
        println!(
            "   {:<38} {:<10} {:>6} {:>9} {:>8}",
            id,
            r.state,
            outcomes.len(),
            resumed,
            posts
        );
        if r.state != "succeeded" {
            problems.push(format!("{id} ended {}", r.state));
        }
        let was_retried = resolved.contains(id);
        if posts != 1 && !(was_retried && posts == 2) {
            problems.push(format!("{id} POSTed {posts} times"));
        }
    }
    println!("\n   STEPS: outcomes in the journal (one per step, never two); RESUMED: steps done after the restart;");
    println!("   POSTS: requests the effects server received from that run.");
    if !resolved.is_empty() {
        println!("   {} run(s) had a POST in flight at the kill; the human chose retry, and the effects server", resolved.len());
        println!("   saw the same Idempotency-Key again and applied it once.");
    }

    if let Some(first) = ids.first() {
        println!("\n7. the timeline of {first} (`steward logs {first}`):\n");
        let j: Journal = client
            .get_json(&format!("/api/v1/runs/{first}/journal"))
            .await?;
        for e in j.entries.iter().filter(|e| e.phase == "outcome") {
            let marker = if e.at >= killed_at {
                "after restart "
            } else {
                "before crash  "
            };
            println!("   #{:<2} {marker} {}", e.seq, describe(e));
        }
    }
    let mut server = server;
    let _ = server.child.start_kill();
    if problems.is_empty() {
        println!(
            "\n✔ all {} runs succeeded; no completed step was done twice.",
            ids.len()
        );
        if args.data_dir.is_some() {
            println!("  data kept in {}", data_dir.display());
        }
        Ok(())
    } else {
        bail!("the demo found problems: {}", problems.join("; "))
    }
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let p = std::env::temp_dir().join(format!("steward-demo-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&p)?;
    Ok(p)
}

/// Removes the demo's temporary data dir when the demo ends.
struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
