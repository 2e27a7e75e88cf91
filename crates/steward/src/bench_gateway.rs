//! `steward bench gateway`: the latency Steward's `/v1` adds and its maximum throughput, against
//! a mock OpenAI-compatible upstream with a fixed 20 ms latency on loopback — and the same for
//! the LiteLLM proxy when `litellm` is installed and for Portkey's gateway when bench/run
//! installed it. Budgets and call records are on. The last line printed is one JSON object.
//! See bench/README.md.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::routing::post;
use axum::Json;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

const UPSTREAM_LATENCY: Duration = Duration::from_millis(20);
/// LiteLLM refuses to start without a master key; the benchmark's callers present it.
const LITELLM_KEY: &str = "sk-litellm-bench-0123456789abcdef0123456789abcdef";

#[derive(Clone, Copy, Debug)]
struct Figures {
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
}

async fn mock_upstream() -> anyhow::Result<String> {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(|Json(body): Json<Value>| async move {
            tokio::time::sleep(UPSTREAM_LATENCY).await;
            Json(json!({"id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "pong"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9}}))
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1", l.local_addr()?);
    tokio::spawn(async move { axum::serve(l, app).await });
    Ok(url)
}

fn request_body(model: &str) -> Value {
    json!({"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "ping"}]})
}

/// The same call in the Responses API's terms.
fn responses_body(model: &str) -> Value {
    json!({"model": model, "max_output_tokens": 16, "input": "ping"})
}

/// Open-loop load: `rate` requests a second for `seconds`, each timed from send to full body.
async fn fixed_rate(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    body: &Value,
    rate: u32,
    seconds: u64,
) -> Figures {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        tick.tick().await;
        let req = http.post(url).bearer_auth(key).json(body);
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            match req.send().await {
                Ok(r) if r.status().is_success() => r.bytes().await.ok().map(|_| t.elapsed()),
                _ => None,
            }
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        match t.await.ok().flatten() {
            Some(d) => lat.push(d.as_secs_f64() * 1000.0),
            None => errors += 1,
        }
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * p) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Figures {
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        errors,
    }
}

/// Closed-loop load at `clients` callers and at four times as many, `seconds` each: the best
/// figure, and each. With a 20 ms upstream, `clients` callers cannot pass `clients` / 20 ms
/// however fast the gateway is (64 callers: 3,200 requests a second), so one count alone would
/// measure the callers, not the gateway.
async fn max_rps_sweep(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    model: &str,
    clients: usize,
    seconds: u64,
) -> (f64, Value) {
    let mut best = 0.0f64;
    let mut by = serde_json::Map::new();
    for n in [clients, clients * 4] {
        let rps = max_rps(http, url, key, model, n, seconds).await;
        best = best.max(rps);
        by.insert(n.to_string(), json!(rps.round()));
    }
    (best, Value::Object(by))
}

/// Closed-loop load: `clients` callers back to back for `seconds`; successful requests a second.
async fn max_rps(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    model: &str,
    clients: usize,
    seconds: u64,
) -> f64 {
    let end = Instant::now() + Duration::from_secs(seconds);
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, url, key, model, done) = (
            http.clone(),
            url.to_string(),
            key.to_string(),
            model.to_string(),
            done.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let ok = match http
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&request_body(&model))
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                    _ => false,
                };
                if ok {
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    done.load(std::sync::atomic::Ordering::Relaxed) as f64 / seconds as f64
}

pub(crate) async fn first_line_url(child: &mut tokio::process::Child) -> anyhow::Result<String> {
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await??
        .context("server exited")?;
    Ok(line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .context("no URL printed")?
        .to_string())
}

async fn start_steward(
    dir: &Path,
    upstream: &str,
) -> anyhow::Result<(tokio::process::Child, String)> {
    let log = std::fs::File::create(dir.join("server.log"))?;
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai")
        .env("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", upstream)
        .env(
            "STEWARD_LLM__ROUTES__BENCH__DEPLOYMENTS",
            "[\"mock/gpt-mock\"]",
        )
        .env("STEWARD_LLM__PRICES__GPT-MOCK__INPUT", "1.0")
        .env("STEWARD_LLM__PRICES__GPT-MOCK__OUTPUT", "2.0")
        .env("STEWARD_LOG", "info,sqlx=warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()?;
    let url = first_line_url(&mut child).await?;
    Ok((child, url))
}

async fn start_litellm(
    dir: &Path,
    upstream: &str,
) -> anyhow::Result<Option<(tokio::process::Child, String)>> {
    let Ok(exe) = which("litellm") else {
        return Ok(None);
    };
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let cfg = dir.join("litellm.yaml");
    std::fs::write(
        &cfg,
        format!(
            "model_list:\n  - model_name: bench\n    litellm_params:\n      model: openai/gpt-mock\n      api_base: {upstream}\n      api_key: sk-none\n"
        ),
    )?;
    let log = std::fs::File::create(dir.join("litellm.log"))?;
    let child = tokio::process::Command::new(exe)
        .args(["--config"])
        .arg(&cfg)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--num_workers",
            "1",
        ])
        .env("LITELLM_MASTER_KEY", LITELLM_KEY)
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()?;
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = http.get(format!("{url}/health/liveliness")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!(
                "LiteLLM did not start within 120 s; see {}",
                dir.join("litellm.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(Some((child, url)))
}

/// Portkey's open-source gateway (`@portkey-ai/gateway` on npm), when `STEWARD_BENCH_PORTKEY`
/// names its `build/start-server.js` (bench/run installs it), routing to `upstream` per request
/// (the `x-portkey-*` headers of the client it returns).
async fn start_portkey(
    upstream: &str,
) -> anyhow::Result<Option<(tokio::process::Child, String, reqwest::Client)>> {
    let Some(script) = std::env::var_os("STEWARD_BENCH_PORTKEY") else {
        return Ok(None);
    };
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let child = tokio::process::Command::new("node")
        .arg(&script)
        .arg(format!("--port={port}"))
        .arg("--headless")
        .env("NODE_ENV", "production")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting node (Portkey's gateway runs on Node.js)")?;
    let url = format!("http://127.0.0.1:{port}");
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-portkey-provider", "openai".parse()?);
    headers.insert("x-portkey-custom-host", upstream.parse()?);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(30))
        .default_headers(headers)
        .build()?;
    for _ in 0..120 {
        if http
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(Some((child, url, http)));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("Portkey's gateway did not start within 30 s")
}

fn which(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::var_os("PATH").context("no PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .context("not found")
}

pub async fn run(rate: u32, seconds: u64, clients: usize) -> anyhow::Result<()> {
    let upstream = mock_upstream().await?;
    let dir = std::env::temp_dir().join(format!(
        "steward-bench-gw-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(30))
        .build()?;
    eprintln!("gateway: upstream latency {} ms, {rate} rps for {seconds} s, {clients} clients for max throughput", UPSTREAM_LATENCY.as_millis());

    let direct = fixed_rate(
        &http,
        &format!("{upstream}/chat/completions"),
        "none",
        &request_body("gpt-mock"),
        rate,
        seconds,
    )
    .await;
    eprintln!("direct to upstream: {direct:?}");
    // What bounds the time added: the durable commit a call's start waits for, and the
    // wake-ups of the hops it takes that a direct call does not.
    let lone = crate::bench_bounds::sqlite(&dir, "full")
        .await
        .unwrap_or(Value::Null);
    let wake = tokio::task::spawn_blocking(crate::bench_bounds::wake_round_trip)
        .await
        .unwrap_or(Value::Null);
    eprintln!("bounds: lone commit {lone}, wake-ups {wake}");

    let (mut steward, url) = start_steward(&dir, &upstream).await?;
    let key: Value = http
        .post(format!("{url}/api/v1/keys"))
        .json(&json!({"agent": "bench"}))
        .send()
        .await?
        .json()
        .await?;
    let key = key["key"].as_str().context("no key")?.to_string();
    http.put(format!("{url}/api/v1/budgets/agent:bench"))
        .json(&json!({"cap_usd": 1.0e6}))
        .send()
        .await?
        .error_for_status()?;
    let _ = fixed_rate(
        &http,
        &format!("{url}/v1/chat/completions"),
        &key,
        &request_body("bench"),
        rate,
        1,
    )
    .await; // warm up
    let s = fixed_rate(
        &http,
        &format!("{url}/v1/chat/completions"),
        &key,
        &request_body("bench"),
        rate,
        seconds,
    )
    .await;
    // The same calls through the Responses and Messages APIs (translated onto the same path).
    let responses = fixed_rate(
        &http,
        &format!("{url}/v1/responses"),
        &key,
        &responses_body("bench"),
        rate,
        seconds,
    )
    .await;
    let messages = fixed_rate(
        &http,
        &format!("{url}/v1/messages"),
        &key,
        &request_body("bench"),
        rate,
        seconds,
    )
    .await;
    eprintln!("steward /v1/responses: {responses:?}; /v1/messages: {messages:?}");
    let (s_rps, s_by) = max_rps_sweep(
        &http,
        &format!("{url}/v1/chat/completions"),
        &key,
        "bench",
        clients,
        seconds,
    )
    .await;
    eprintln!("steward: {s:?}, max {s_rps:.0} rps");
    steward.start_kill()?;
    let added = |f: &Figures| json!({"p50_added_ms": round(f.p50_ms - direct.p50_ms), "p99_added_ms": round(f.p99_ms - direct.p99_ms), "errors": f.errors});
    let steward_json = json!({
        "p50_added_ms": round(s.p50_ms - direct.p50_ms),
        "p99_added_ms": round(s.p99_ms - direct.p99_ms),
        "max_rps": s_rps.round(),
        "max_rps_by_clients": s_by,
        "errors": s.errors,
        "responses": added(&responses),
        "messages": added(&messages),
        "bounds": {"lone": lone, "wake": wake},
    });

    let litellm_json = match start_litellm(&dir, &upstream).await {
        Ok(Some((mut child, url))) => {
            let _ = fixed_rate(
                &http,
                &format!("{url}/v1/chat/completions"),
                LITELLM_KEY,
                &request_body("bench"),
                rate.min(50),
                1,
            )
            .await;
            let l = fixed_rate(
                &http,
                &format!("{url}/v1/chat/completions"),
                LITELLM_KEY,
                &request_body("bench"),
                rate,
                seconds,
            )
            .await;
            let (l_rps, l_by) = max_rps_sweep(
                &http,
                &format!("{url}/v1/chat/completions"),
                LITELLM_KEY,
                "bench",
                clients,
                seconds,
            )
            .await;
            eprintln!("litellm: {l:?}, max {l_rps:.0} rps");
            child.start_kill()?;
            json!({"p50_added_ms": round(l.p50_ms - direct.p50_ms), "p99_added_ms": round(l.p99_ms - direct.p99_ms), "max_rps": l_rps.round(), "max_rps_by_clients": l_by, "errors": l.errors})
        }
        Ok(None) => {
            eprintln!("litellm: not installed (pip install 'litellm[proxy]'); skipped");
            Value::Null
        }
        Err(e) => {
            eprintln!("litellm: {e:#}");
            Value::Null
        }
    };
    let portkey_json = match start_portkey(&upstream).await {
        Ok(Some((mut child, url, http))) => {
            let chat = format!("{url}/v1/chat/completions");
            let body = request_body("gpt-mock");
            let _ = fixed_rate(&http, &chat, "sk-none", &body, rate, 1).await;
            let p = fixed_rate(&http, &chat, "sk-none", &body, rate, seconds).await;
            let (p_rps, p_by) =
                max_rps_sweep(&http, &chat, "sk-none", "gpt-mock", clients, seconds).await;
            eprintln!("portkey: {p:?}, max {p_rps:.0} rps");
            child.start_kill()?;
            json!({"p50_added_ms": round(p.p50_ms - direct.p50_ms), "p99_added_ms": round(p.p99_ms - direct.p99_ms), "max_rps": p_rps.round(), "max_rps_by_clients": p_by, "errors": p.errors})
        }
        Ok(None) => {
            eprintln!(
                "portkey: not installed (bench/run gateway installs @portkey-ai/gateway); skipped"
            );
            Value::Null
        }
        Err(e) => {
            eprintln!("portkey: {e:#}");
            Value::Null
        }
    };
    let ratio = litellm_json
        .get("max_rps")
        .and_then(Value::as_f64)
        .filter(|r| *r > 0.0)
        .map(|l| round(s_rps / l));
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{}",
        json!({"bench": "gateway", "rate": rate, "seconds": seconds, "steward": steward_json, "litellm": litellm_json, "portkey": portkey_json, "rps_ratio": ratio})
    );
    Ok(())
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
