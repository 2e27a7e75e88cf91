//! `steward bench tools`: what calling an upstream MCP server's tool through Steward's `/mcp`
//! adds, against calling the same server directly. The upstream is the reference server
//! (`@modelcontextprotocol/server-everything`, over stdio); its `get-sum` tool is called
//! directly with the official Rust SDK's client, and through a `steward serve` of this build
//! (authenticated, decided by the policy, schema-checked, audited durably) over HTTP, one call
//! at a time; then as many calls a second as 32 concurrent callers get through `/mcp`; then the
//! same call again and again, answered from the result cache (`get-sum` is read-only; the
//! server runs with a cache TTL, so the calls before were misses that filled it). The last line
//! printed is one JSON object. See bench/README.md.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rmcp::model::CallToolRequestParams;
use rmcp::transport::TokioChildProcess;
use rmcp::ServiceExt;
use serde_json::{json, Value};

const CALLS: usize = 2000;
const CONCURRENCY: usize = 32;
const LOAD_FOR: Duration = Duration::from_secs(5);

fn percentiles(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99))
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn args(i: usize) -> serde_json::Map<String, Value> {
    let Value::Object(m) = json!({"a": i, "b": 1}) else {
        unreachable!("a JSON object literal")
    };
    m
}

/// `get-sum` called directly over stdio, one call at a time: latencies in ms.
async fn direct(server: &str) -> anyhow::Result<Vec<f64>> {
    let mut cmd = tokio::process::Command::new("node");
    cmd.args([server, "stdio"]).kill_on_drop(true);
    let (process, _) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::null())
        .spawn()?;
    let client = ().serve(process).await.context("the direct MCP handshake")?;
    let mut ms = Vec::with_capacity(CALLS);
    for i in 0..CALLS + 100 {
        let t = Instant::now();
        let r = client
            .peer()
            .call_tool(CallToolRequestParams::new("get-sum").with_arguments(args(i)))
            .await?;
        if r.is_error == Some(true) {
            bail!("get-sum failed directly: {r:?}");
        }
        if i >= 100 {
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    client.cancel().await?;
    Ok(ms)
}

async fn steward_serve(dir: &Path) -> anyhow::Result<(tokio::process::Child, String)> {
    let log = std::fs::File::create(dir.join("server.log"))?;
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("STEWARD_LOG", "warn")
        .env("STEWARD_TOOLS__CACHE__TTL_MS", "600000")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()?;
    let url = crate::bench_gateway::first_line_url(&mut child).await?;
    Ok((child, url.trim_end_matches('/').to_string()))
}

async fn ok(rb: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let r = rb.send().await?;
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("HTTP {status}: {body}");
    }
    Ok(body)
}

/// One `tools/call` of `everything.get-sum` with `a` = `i` at `/mcp`: its latency in ms.
async fn via_steward(
    http: &reqwest::Client,
    mcp: &str,
    key: &str,
    i: usize,
) -> anyhow::Result<f64> {
    let body = json!({"jsonrpc": "2.0", "id": i, "method": "tools/call",
        "params": {"name": "everything.get-sum", "arguments": args(i)}});
    let t = Instant::now();
    let r = ok(http
        .post(mcp)
        .bearer_auth(key)
        .header("accept", "application/json, text/event-stream")
        .json(&body))
    .await?;
    let took = t.elapsed().as_secs_f64() * 1000.0;
    if r["result"]["isError"] != json!(false) {
        bail!("everything.get-sum failed through /mcp: {r}");
    }
    Ok(took)
}

pub async fn run(server: &str) -> anyhow::Result<()> {
    if !Path::new(server).exists() {
        bail!(
            "{server} is missing: bench/run tools installs @modelcontextprotocol/server-everything"
        );
    }
    eprintln!("tools: get-sum of the MCP reference server, {CALLS} calls one at a time, then {CONCURRENCY} callers for {} s", LOAD_FOR.as_secs());
    let direct_ms = direct(server).await?;

    let dir = std::env::temp_dir().join(format!(
        "steward-bench-tools-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let (mut child, url) = steward_serve(&dir).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()?;
    ok(http
        .put(format!("{url}/api/v1/mcp-servers/everything"))
        .json(&json!({"command": ["node", server, "stdio"]})))
    .await?;
    ok(http
        .post(format!("{url}/api/v1/agents/bench-tools/resume"))
        .json(&json!({"reason": "benchmark", "owner": "bench"})))
    .await?;
    let key = ok(http
        .post(format!("{url}/api/v1/keys"))
        .json(&json!({"agent": "bench-tools"})))
    .await?["key"]
        .as_str()
        .context("a key")?
        .to_string();
    ok(http.put(format!("{url}/api/v1/policies")).body(
        r#"@id("bench") permit (principal == Steward::Agent::"bench-tools", action == Steward::Action::"tool.call", resource == Steward::Tool::"everything.get-sum");"#,
    ))
    .await?;
    let mcp = format!("{url}/mcp");
    let start = Instant::now();
    while via_steward(&http, &mcp, &key, 0).await.is_err() {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("everything.get-sum was not callable through /mcp within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut through_ms = Vec::with_capacity(CALLS);
    for i in 0..CALLS + 100 {
        let ms = via_steward(&http, &mcp, &key, i).await?;
        if i >= 100 {
            through_ms.push(ms);
        }
    }

    // Throughput: concurrent callers for a fixed time.
    let end = Instant::now() + LOAD_FOR;
    let mut callers = Vec::new();
    for c in 0..CONCURRENCY {
        let (http, mcp, key) = (http.clone(), mcp.clone(), key.clone());
        callers.push(tokio::spawn(async move {
            let mut n = 0usize;
            while Instant::now() < end {
                via_steward(&http, &mcp, &key, c * 1_000_000 + n).await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut calls = 0;
    for c in callers {
        calls += c.await??;
    }
    let calls_per_s = calls as f64 / LOAD_FOR.as_secs_f64();

    // The same call again and again: answered from the cache after the first.
    let mut hit_ms = Vec::with_capacity(CALLS);
    for i in 0..CALLS + 100 {
        let ms = via_steward(&http, &mcp, &key, 7).await?;
        if i >= 100 {
            hit_ms.push(ms);
        }
    }
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);

    let (d50, d99) = percentiles(direct_ms);
    let (s50, s99) = percentiles(through_ms);
    let (h50, h99) = percentiles(hit_ms);
    eprintln!("direct: p50 {d50:.3} ms, p99 {d99:.3} ms; through /mcp: p50 {s50:.3} ms, p99 {s99:.3} ms; {calls_per_s:.0} calls/s with {CONCURRENCY} callers; cache hits through /mcp: p50 {h50:.3} ms, p99 {h99:.3} ms");
    println!(
        "{}",
        json!({"bench": "tools",
            "p50_added_ms": round3(s50 - d50), "p99_added_ms": round3(s99 - d99),
            // A whole call through /mcp answered from the cache (audited all the same).
            "cache_hit_p50_ms": round3(h50),
            "cache_hit_p99_ms": round3(h99),
            "calls_per_s": calls_per_s.round(),
            "direct": {"p50_ms": round3(d50), "p99_ms": round3(d99)},
            "through_steward": {"p50_ms": round3(s50), "p99_ms": round3(s99)},
            "concurrency": CONCURRENCY})
    );
    Ok(())
}
