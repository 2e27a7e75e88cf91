//! `http_request` against a loopback server: size cap, timeout, private-network refusal,
//! the idempotency key header.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::routing::get;
use serde_json::json;
use steward_tools::*;
use steward_types::config::HttpToolConfig;
use steward_types::RunId;

struct NoHost;

#[async_trait::async_trait]
impl ToolHost for NoHost {
    async fn scratch_put(&self, _: &RunId, _: &str, _: &str) -> Result<()> {
        unreachable!()
    }
    async fn scratch_get(&self, _: &RunId, _: &str) -> Result<Option<String>> {
        unreachable!()
    }
    async fn spawn_and_wait(
        &self,
        _: &RunId,
        _: &RunId,
        _: &str,
        _: &str,
        _: Option<steward_tools::Grant>,
    ) -> Result<ChildOutcome> {
        unreachable!()
    }
}

fn ctx() -> ToolContext {
    let run = RunId::parse("run_0123456789abcdef0123456789abcdef").unwrap();
    ToolContext {
        idempotency_key: format!("{run}:4"),
        run_id: Some(run),
        seq: 4,
        host: Arc::new(NoHost),
        traceparent: None,
        progress: None,
        owner: None,
    }
}

async fn server() -> String {
    let app = axum::Router::new()
        .route("/big", get(|| async { "x".repeat(10_000) }))
        .route(
            "/key",
            get(|h: HeaderMap| async move { h["idempotency-key"].to_str().unwrap().to_string() }),
        )
        .route(
            "/hang",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    url
}

fn tool(allow_private: bool) -> HttpRequest {
    HttpRequest::new(&HttpToolConfig {
        timeout_ms: 300,
        max_response_bytes: 1000,
        allow_private_networks: allow_private,
    })
    .unwrap()
}

#[tokio::test]
async fn caps_sends_the_key_and_times_out() {
    let url = server().await;
    let t = tool(true);
    let r = t
        .call(&ctx(), json!({"url": format!("{url}/big")}))
        .await
        .unwrap();
    assert_eq!(r["body"].as_str().unwrap().len(), 1000);
    assert_eq!(r["truncated"], true);
    let r = t
        .call(&ctx(), json!({"url": format!("{url}/key")}))
        .await
        .unwrap();
    assert_eq!(r["body"], "run_0123456789abcdef0123456789abcdef:4");
    let started = Instant::now();
    let e = t
        .call(&ctx(), json!({"url": format!("{url}/hang")}))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no answer within 300 ms"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn private_networks_and_bad_arguments_are_refused() {
    let url = server().await;
    let t = tool(false);
    let e = t
        .call(&ctx(), json!({"url": format!("{url}/key")}))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ToolError::Denied(_)) && e.to_string().contains("allow_private_networks"),
        "{e}"
    );
    let e = t
        .call(&ctx(), json!({"url": "http://localhost:1/"}))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ToolError::Denied(_)),
        "names resolving to loopback are refused too: {e}"
    );
    for (args, mentions) in [
        (json!({}), "`url` is required"),
        (json!({"url": "file:///etc/passwd"}), "scheme"),
        (json!({"url": "not a url"}), "`url`"),
        (json!({"url": "http://x", "method": "TRACE"}), "TRACE"),
        (
            json!({"url": format!("{url}/key"), "headers": "x"}),
            "`headers`",
        ),
    ] {
        let e = tool(true).call(&ctx(), args).await.unwrap_err();
        assert!(
            e.to_string().contains(mentions),
            "{e} should mention {mentions}"
        );
    }
}
