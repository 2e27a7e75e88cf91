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
    server.start_kill()?;
    let _ = server.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{}",
        json!({"bench": "console", "backend": "sqlite", "ingest_spans_per_s": per_s,
            "spans_per_request": SPANS_PER_REQUEST, "clients": CLIENTS,
            "request_p50_ms": at(0.5), "request_p99_ms": at(0.99),
            "errors": errors.load(Ordering::Relaxed),
            "runs_page_p95_ms": null, "run_page_p95_ms": null})
    );
    Ok(())
}
