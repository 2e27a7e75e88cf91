//! Router tests with `oneshot`: the application in-process, no socket, a real SQLite store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use steward_engine::{Engine, EngineOptions, SystemClock};
use steward_types::config::{EngineConfig, ServerConfig, ToolsConfig};
use steward_types::NodeId;
use tower::ServiceExt;

async fn app(cfg: ServerConfig) -> (axum::Router, tempfile::TempDir) {
    let fresh = steward_testkit::FreshStore::sqlite().await;
    let (store, dir) = (fresh.store, fresh.dir);
    let engine = Engine::start(
        store,
        EngineOptions {
            cfg: EngineConfig::default(),
            node: NodeId("test".into()),
            group_commit_max_batch: 64,
            providers: steward_llm::Providers::default(),
            tools: steward_tools::Tools::builtin(&ToolsConfig::default()).unwrap(),
            clock: Arc::new(SystemClock),
            llm: Default::default(),
            prices: steward_llm::Prices::default(),
            stats: None,
            audit_key: Arc::new(
                steward_gov::AuditKey::load_or_create(&dir.path().join("audit.key")).unwrap(),
            ),
            gov: Default::default(),
            policies: Arc::new(steward_gov::Policies::new(None).unwrap()),
            vault: None,
            sandboxes: None,
            meters: Default::default(),
            tool_rules: Default::default(),
            embedder: None,
            memory_limits: Default::default(),
            memory_embeddings_model: None,
            memory_curation_model: None,
        },
    )
    .await
    .unwrap();
    (steward_api::router(engine, &cfg), dir)
}

async fn body_json(resp: axum::response::Response) -> Value {
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn errors_have_the_stable_shape() {
    let (app, _dir) = app(ServerConfig::default()).await;
    let resp = app
        .clone()
        .oneshot(
            Request::post("/api/v1/runs")
                .header("content-type", "application/json")
                .body(Body::from("{"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v = body_json(resp).await;
    assert_eq!(v["error"]["code"], "invalid_request");
    let resp = app
        .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_json(resp).await["backend"], "sqlite");
}

#[tokio::test]
async fn a_stalled_request_is_cut_off() {
    let cfg = ServerConfig {
        request_timeout_ms: 200,
        ..ServerConfig::default()
    };
    let (app, _dir) = app(cfg).await;
    // A body that never finishes arriving.
    let stalled = Body::from_stream(futures::stream::pending::<Result<Vec<u8>, std::io::Error>>());
    let resp = app
        .oneshot(Request::post("/api/v1/agents").body(stalled).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
    let v = body_json(resp).await;
    assert_eq!(v["error"]["code"], "timeout");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("request_timeout_ms"));
}

/// The document generated clients are built from: a path parameter is in its path, a query
/// parameter is never declared as a path one, every operation documents the errors every
/// management request can meet, and every response names its content type.
#[test]
fn the_openapi_document_says_where_each_parameter_goes() {
    use utoipa::OpenApi;
    let doc = serde_json::to_value(steward_api::ApiDoc::openapi()).unwrap();
    let mut problems = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            for p in &params {
                let name = p["name"].as_str().unwrap();
                if p["in"] == "path" && !path.contains(&format!("{{{name}}}")) {
                    problems.push(format!("{method} {path}: {name} is declared in the path"));
                }
            }
            for seg in path.split('/').filter(|s| s.starts_with('{')) {
                let name = seg.trim_matches(|c| c == '{' || c == '}');
                if !params
                    .iter()
                    .any(|p| p["name"] == name && p["in"] == "path")
                {
                    problems.push(format!("{method} {path}: {name} is not declared"));
                }
            }
            if path.starts_with("/api/") {
                for status in ["400", "401", "500", "503"] {
                    if op["responses"].get(status).is_none() {
                        problems.push(format!("{method} {path}: {status} undocumented"));
                    }
                }
            }
            for (status, r) in op["responses"].as_object().unwrap() {
                if let Some(content) = r.get("content").and_then(Value::as_object) {
                    if content.is_empty() {
                        problems.push(format!("{method} {path} {status}: empty content"));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// A body is a JSON object sent as JSON, or a 400 that says what is wrong — never a struct
/// read from an array, a body with trailing bytes, or a policy set that is empty.
#[tokio::test]
async fn bodies_that_are_not_what_they_claim_are_refused() {
    let (app, _dir) = app(ServerConfig::default()).await;
    let send = |method: &str, path: &str, ct: Option<&str>, body: &str| {
        let mut r = Request::builder().method(method).uri(path);
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        let req = r.body(Body::from(body.to_string())).unwrap();
        let app = app.clone();
        async move {
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
            (status, ct, body_json(resp).await)
        }
    };
    let json = Some("application/json");
    for (method, path, ct, body, says) in [
        (
            "POST",
            "/api/v1/queues/q/tasks",
            json,
            "[null, null]",
            "JSON object",
        ),
        (
            "PUT",
            "/api/v1/queues/q",
            json,
            "[null, null]",
            "JSON object",
        ),
        ("POST", "/api/v1/sandboxes", json, "[1]", "JSON object"),
        ("POST", "/api/v1/runs", json, "\"run\"", "JSON object"),
        (
            "POST",
            "/api/v1/runs",
            json,
            "{\"agent\": \"a\", \"input\": \"x\"} trailing",
            "trailing",
        ),
        (
            "POST",
            "/api/v1/runs",
            Some("text/plain"),
            "{\"agent\": \"a\"}",
            "Content-Type",
        ),
        (
            "POST",
            "/api/v1/runs",
            None,
            "{\"agent\": \"a\"}",
            "Content-Type",
        ),
        ("POST", "/api/v1/runs", json, "{\"agent\": 7}", "agent"),
        ("PUT", "/api/v1/policies", Some("text/plain"), "", "empty"),
        ("PUT", "/api/v1/policies", None, "  \n ", "empty"),
        (
            "POST",
            "/api/v1/sandboxes/sbx_x/processes/2147483648/kill",
            json,
            "{}",
            "pid",
        ),
        (
            "POST",
            "/api/v1/sandboxes/sbx_x/processes/-1/kill",
            json,
            "{}",
            "pid",
        ),
    ] {
        let (status, ct, v) = send(method, path, ct, body).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{method} {path} {body}: {v}"
        );
        assert!(ct.starts_with("application/json"), "{ct}");
        assert_eq!(v["error"]["code"], "invalid_request", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(says),
            "{method} {path} {body}: {v}"
        );
    }
}
