//! `steward bench console`: how fast `steward serve` (release, SQLite, `synchronous=FULL`) takes
//! agents' spans over OTLP/HTTP — protobuf batches as OpenTelemetry's batch exporter sends them
//! (a trace of `SPANS_PER_REQUEST` spans with GenAI attributes each), from `CLIENTS` exporters
//! at once for the given seconds — each batch durable before it is answered. The console's
//! pages are not built yet; their timings are left out. The last line printed is one JSON
//! object. See bench/README.md.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost_otlp::Message;
use serde_json::{json, Value};

const SPANS_PER_REQUEST: usize = 200;
const CLIENTS: usize = 8;

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

/// One exporter's batch `n`: a trace of an agent invocation and its model and tool calls.
fn batch(client: usize, n: u64) -> Vec<u8> {
    let mut trace_id = [0u8; 16];
    trace_id[..8].copy_from_slice(&(client as u64 + 1).to_be_bytes());
    trace_id[8..].copy_from_slice(&(n + 1).to_be_bytes());
    let start = 1_700_000_000_000_000_000u64 + n * 1_000_000;
    let spans = (0..SPANS_PER_REQUEST as u64)
        .map(|i| {
            let (name, op) = match i {
                0 => ("invoke_agent triage", "invoke_agent"),
                i if i % 2 == 1 => ("chat gpt-4o", "chat"),
                _ => ("execute_tool lookup_order", "execute_tool"),
            };
            Span {
                trace_id: trace_id.to_vec(),
                span_id: (i + 1).to_be_bytes().to_vec(),
                parent_span_id: if i == 0 {
                    Vec::new()
                } else {
                    1u64.to_be_bytes().to_vec()
                },
                name: name.into(),
                kind: if op == "chat" { 3 } else { 1 },
                start_time_unix_nano: start + i * 1_000,
                end_time_unix_nano: start + i * 1_000 + 900,
                attributes: vec![
                    kv(
                        "gen_ai.operation.name",
                        any_value::Value::StringValue(op.into()),
                    ),
                    kv(
                        "gen_ai.request.model",
                        any_value::Value::StringValue("gpt-4o".into()),
                    ),
                    kv("gen_ai.usage.input_tokens", any_value::Value::IntValue(812)),
                    kv("gen_ai.usage.output_tokens", any_value::Value::IntValue(64)),
                    kv(
                        "session.id",
                        any_value::Value::StringValue(format!("s-{client}-{n}")),
                    ),
                    kv(
                        "enduser.id",
                        any_value::Value::StringValue("user-42".into()),
                    ),
                ],
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv(
                    "service.name",
                    any_value::Value::StringValue("support-bot".into()),
                )],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "support-bot.agent".into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

pub async fn run(seconds: u64) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!(
        "steward-bench-console-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let log = std::fs::File::create(dir.join("server.log"))?;
    let mut server = tokio::process::Command::new(std::env::current_exe()?)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env("STEWARD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()?;
    let url = crate::bench_gateway::first_line_url(&mut server).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(30))
        .build()?;
    let key: Value = http
        .post(format!("{url}/api/v1/keys"))
        .json(&json!({"agent": "support-bot"}))
        .send()
        .await?
        .json()
        .await?;
    let key = key["key"].as_str().context("no key")?.to_string();
    eprintln!("console: {CLIENTS} exporters, {SPANS_PER_REQUEST} spans a request, for {seconds} s");
    let spans = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let (http, url, key, spans, errors) = (
            http.clone(),
            url.clone(),
            key.clone(),
            spans.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut ms = Vec::new();
            let mut n = 0;
            while Instant::now() < end {
                let body = batch(client, n);
                n += 1;
                let t = Instant::now();
                let ok = http
                    .post(format!("{url}/v1/traces"))
                    .bearer_auth(&key)
                    .header("content-type", "application/x-protobuf")
                    .body(body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    ms.push(t.elapsed().as_secs_f64() * 1000.0);
                    spans.fetch_add(SPANS_PER_REQUEST as u64, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            ms
        }));
    }
    let mut ms = Vec::new();
    for t in tasks {
        ms.extend(t.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        ms.get(((ms.len().max(1) - 1) as f64 * q).round() as usize)
            .map(|v| (v * 1000.0).round() / 1000.0)
    };
    let per_s = (spans.load(Ordering::Relaxed) as f64 / elapsed).round();
    eprintln!("ingest: {per_s} spans/s");
    let pages = page_timings(&http, &url, &dir).await?;
    server.start_kill()?;
    let _ = server.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{}",
        json!({"bench": "console", "backend": "sqlite", "ingest_spans_per_s": per_s,
            "spans_per_request": SPANS_PER_REQUEST, "clients": CLIENTS,
            "request_p50_ms": at(0.5), "request_p99_ms": at(0.99),
            "errors": errors.load(Ordering::Relaxed),
            "runs": RUNS, "run_steps": STEPS, "pages": pages,
            "runs_page_p95_ms": pages["runs"]["p95_ms"], "run_page_p95_ms": pages["run"]["p95_ms"]})
    );
    Ok(())
}

/// Finished runs in the store when the console's pages are timed, and the steps of the one
/// whose page is.
const RUNS: usize = 100_000;
const STEPS: usize = 1_000;
/// Page loads timed, each after a few untimed ones.
const LOADS: usize = 200;

/// Fills the store behind a running server with `RUNS` finished runs, one of them with `STEPS`
/// model steps (intent and outcome each), in one transaction straight into its SQLite file
/// (faster than running them, and the same rows). Returns the long run's id.
async fn seed_runs(
    http: &reqwest::Client,
    url: &str,
    dir: &std::path::Path,
) -> anyhow::Result<String> {
    let r = http
        .post(format!("{url}/api/v1/agents"))
        .header("content-type", "application/yaml")
        .body("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: bench}\nspec:\n  model: scripted\n  script:\n    - content: done\n")
        .send()
        .await?;
    anyhow::ensure!(
        r.status().is_success(),
        "applying the bench agent: {}",
        r.text().await?
    );
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.join("steward.db"))
        .busy_timeout(Duration::from_secs(30));
    let mut db = <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&opts).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let long = format!("run_{}", "f".repeat(32));
    let mut tx = sqlx::Connection::begin(&mut db).await?;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
         INSERT INTO runs (id, agent, agent_version, input, state, result, created_at, updated_at) \
         SELECT printf('run_%032x', i), 'bench', 1, 'question ' || i, 'succeeded', \
                'answer ' || i, ?2 - ?1 + i, ?2 - ?1 + i FROM n",
    )
    .bind((RUNS - 2) as i64)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO runs (id, agent, agent_version, input, state, result, created_at, updated_at) \
         VALUES (?1, 'bench', 1, 'a long task', 'succeeded', 'done', ?2, ?2)",
    )
    .bind(&long)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?2 * 2 - 1) \
         INSERT INTO journal (run_id, seq, phase, kind, name, request_hash, idempotency_key, body, \
                              ok, tokens_in, tokens_out, at, duration_us) \
         SELECT ?1, i / 2, i % 2, 'model', 'scripted', 'h' || (i / 2), ?1 || ':' || (i / 2), \
                CASE i % 2 WHEN 0 THEN '{\"model\":\"scripted\",\"messages\":' || (i / 2 + 1) || '}' \
                ELSE '{\"content\":\"step ' || (i / 2) || ' of a long task, with a sentence or two of an answer\"}' END, \
                1, 120, 40, ?3 + i, 900 FROM n",
    )
    .bind(&long)
    .bind(STEPS as i64)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(long)
}

/// Time to first byte (ms) of the API requests each console page makes, p50 and p95 over
/// `LOADS` loads of the page (its requests made together, as the page makes them).
async fn page_timings(
    http: &reqwest::Client,
    url: &str,
    dir: &std::path::Path,
) -> anyhow::Result<Value> {
    let started = Instant::now();
    let long = seed_runs(http, url, dir).await?;
    eprintln!(
        "console: {RUNS} runs and a {STEPS}-step run written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let pages: [(&str, Vec<String>); 3] = [
        (
            "overview",
            vec![
                "/api/v1/runs?limit=1000".into(),
                "/api/v1/approvals?state=pending&limit=1000".into(),
            ],
        ),
        ("runs", vec!["/api/v1/runs?limit=200".into()]),
        (
            "run",
            vec![
                format!("/api/v1/runs/{long}"),
                format!("/api/v1/runs/{long}/journal?limit=1000"),
                format!("/api/v1/runs?parent={long}&limit=200"),
                "/api/v1/approvals?state=pending&limit=1000".into(),
                format!("/api/v1/scores?run={long}"),
            ],
        ),
    ];
    let mut out = serde_json::Map::new();
    for (page, paths) in &pages {
        let mut ms = Vec::with_capacity(LOADS);
        for i in 0..LOADS + 10 {
            let t = Instant::now();
            let loads = paths.iter().map(|p| {
                let req = http.get(format!("{url}{p}"));
                async move {
                    // The first byte: the status line and headers.
                    let r = req.send().await?;
                    anyhow::ensure!(r.status().is_success(), "{p}: {}", r.status());
                    let first = t.elapsed();
                    r.bytes().await?;
                    Ok(first)
                }
            });
            let firsts = futures::future::try_join_all(loads).await?;
            if i >= 10 {
                let slowest = firsts.into_iter().max().unwrap_or_default();
                ms.push(slowest.as_secs_f64() * 1000.0);
            }
        }
        ms.sort_by(f64::total_cmp);
        let at =
            |q: f64| (ms[((ms.len() - 1) as f64 * q).round() as usize] * 1000.0).round() / 1000.0;
        eprintln!("{page}: p50 {} ms, p95 {} ms", at(0.5), at(0.95));
        out.insert(
            (*page).into(),
            json!({"requests": paths, "p50_ms": at(0.5), "p95_ms": at(0.95)}),
        );
    }
    Ok(Value::Object(out))
}
