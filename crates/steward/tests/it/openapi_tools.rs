//! HTTP APIs described by OpenAPI documents: a test API on loopback serves its own document;
//! its operations become registry tools that MCP clients and managed runs call on the
//! governance path, with the API's credential from the vault — never shown, never replaceable
//! by a caller — and arguments checked against the document's schemas before the API is asked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::common::{self, key_of, Backend, TestServer};
use crate::mcp::{mcp_call, text_of};

const DOCUMENT: &str = r##"
openapi: 3.0.3
info: {title: Shop, version: "1.0"}
servers: [{url: "http://{host}/v1", variables: {host: {default: "HOST"}}}]
paths:
  /items/{id}:
    parameters:
      - {name: id, in: path, required: true, schema: {type: string}}
    get:
      operationId: getItem
      summary: One item, by id.
      parameters:
        - {name: verbose, in: query, schema: {type: boolean}}
        - {name: tags, in: query, schema: {type: array, items: {type: string}}}
        - {name: X-Api-Key, in: header, required: true, schema: {type: string}}
      responses:
        "200":
          description: the item
          content: {application/json: {schema: {type: object, properties: {id: {type: string}}}}}
    delete:
      operationId: deleteItem
      responses: {"204": {description: gone}}
  /items:
    post:
      operationId: createItem
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/NewItem"}
      responses: {"201": {description: created}}
  /files/{name}:
    get:
      operationId: getFile
      parameters:
        - {name: name, in: path, required: true, schema: {type: string}}
      # Not what the server answers: the body comes back as its text.
      responses:
        "200":
          description: the file
          content: {application/json: {schema: {type: object, required: [size], properties: {size: {type: integer}}}}}
  /whoami:
    get:
      operationId: whoami
      responses: {"200": {description: what the API saw}}
  /broken:
    get:
      operationId: broken
      responses: {"500": {description: always}}
  /upload:
    post:
      operationId: upload
      requestBody:
        content:
          multipart/form-data:
            schema: {type: object}
      responses: {"200": {description: ok}}
components:
  schemas:
    NewItem:
      type: object
      required: [name]
      properties:
        name: {type: string}
        count: {type: integer, nullable: true}
        parent: {$ref: "#/components/schemas/NewItem"}
"##;

/// What the test API saw: every request's method and raw path, in order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    fn count(&self, prefix: &str) -> usize {
        self.all().iter().filter(|r| r.starts_with(prefix)).count()
    }
}

struct Shop {
    port: u16,
    seen: Seen,
}

/// The test API on loopback, answering only requests that carry `X-Api-Key: key`; it serves
/// its own document at `/openapi.yaml`.
async fn shop(key: &str) -> Shop {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Seen::default();
    let key = key.to_string();
    let doc = DOCUMENT.replace("HOST", &format!("127.0.0.1:{port}"));
    let guard = move |h: &HeaderMap| h.get("x-api-key").and_then(|v| v.to_str().ok()) == Some(&key);
    let app = Router::new()
        .route("/openapi.yaml", get(move || async move { doc }))
        .route(
            "/v1/items/{id}",
            get({
                let guard = guard.clone();
                move |Path(id): Path<String>,
                      Query(q): Query<BTreeMap<String, String>>,
                      uri: Uri,
                      h: HeaderMap| async move {
                    if !guard(&h) {
                        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "no key"})));
                    }
                    (
                        StatusCode::OK,
                        Json(json!({"id": id, "query": q, "raw": uri.to_string()})),
                    )
                }
            })
            .delete(|| async { StatusCode::NO_CONTENT }),
        )
        .route(
            "/v1/items",
            axum::routing::post(|Json(b): Json<Value>| async move {
                (StatusCode::CREATED, Json(json!({"created": b["name"]})))
            }),
        )
        .route(
            "/v1/files/{name}",
            get(|Path(name): Path<String>| async move { Json(json!({"name": name})) }),
        )
        .route(
            "/v1/whoami",
            get(|h: HeaderMap| async move {
                let key = h
                    .get("x-api-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                format!("you sent the key {key}")
            }),
        )
        .route(
            "/v1/broken",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "the database is on fire") }),
        )
        .layer(axum::middleware::from_fn_with_state(
            seen.clone(),
            |State(seen): State<Seen>,
             req: axum::extract::Request,
             next: axum::middleware::Next| async move {
                seen.0
                    .lock()
                    .unwrap()
                    .push(format!("{} {}", req.method(), req.uri()));
                next.run(req).await
            },
        ));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Shop { port, seen }
}

const POLICIES: &str = r#"@id("read") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"shop.getItem");
@id("create") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"shop.createItem");
@id("files") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"shop.getFile");
@id("who") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"shop.whoami");
@id("broken") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"shop.broken");
@id("runs-think") permit (principal is Steward::Run, action == Steward::Action::"llm.call", resource);"#;

fn result_body(r: &Value) -> Value {
    let text = text_of(r);
    serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text))
}

/// The API's document, fetched by `steward openapi add` from the API itself, becomes tools;
/// MCP clients see and call those policy allows; the credential comes from the vault and never
/// shows; bad arguments never reach the API; path parameters cannot walk out of their segment.
async fn an_openapi_documents_operations_are_governed_tools(b: Backend) {
    let s = TestServer::start(b).await;
    let secret = format!("sk-{}", uuid::Uuid::new_v4().simple());
    let api = shop(&secret).await;
    let (st, e) = s
        .put("/api/v1/secrets/SHOP_KEY", json!({"value": secret}))
        .await;
    assert!(st == 200 || st == 204, "{e}");

    let doc_url = format!("http://127.0.0.1:{}/openapi.yaml", api.port);
    let (ok, out, err) = common::cli(
        &s,
        &[
            "openapi",
            "add",
            "shop",
            &doc_url,
            "--header",
            "X-Api-Key={{secret:SHOP_KEY}}",
            "--owner",
            "team-shop",
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("shop.getItem"), "{out}");
    assert!(
        out.contains("left out: POST /upload"),
        "says what it left out: {out}"
    );

    let (st, e) = s.get("/api/v1/openapi/shop").await;
    assert_eq!(st, 200, "{e}");
    assert_eq!(e["headers"], json!(["X-Api-Key"]), "names only: {e}");
    assert_eq!(
        e["base_url"],
        format!("http://127.0.0.1:{}/v1", api.port),
        "the document's server, its variables filled: {e}"
    );
    assert!(!e.to_string().contains(&secret), "{e}");
    let mut tools: Vec<&str> = e["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    tools.sort();
    assert_eq!(
        tools,
        [
            "shop.broken",
            "shop.createItem",
            "shop.deleteItem",
            "shop.getFile",
            "shop.getItem",
            "shop.whoami"
        ]
    );
    let (st, t) = s.get("/api/v1/tools/shop.getItem").await;
    assert_eq!(st, 200, "{t}");
    assert_eq!(t["source"], "openapi:shop", "{t}");
    assert_eq!(t["version"], "1.0", "the document's: {t}");
    assert_eq!(t["owner"], "team-shop", "{t}");
    // What it returns: the answer's status and body, the body as the document describes it.
    let out = &t["output_schema"];
    assert_eq!(
        out["required"],
        json!(["status", "content_type", "body", "truncated"]),
        "{t}"
    );
    assert_eq!(
        out["properties"]["body"]["anyOf"][0]["properties"]["id"]["type"], "string",
        "{t}"
    );
    assert_eq!(t["annotations"]["read_only"], true, "{t}");
    let props = &t["input_schema"]["properties"];
    assert!(
        props["id"].is_object() && props["verbose"].is_object(),
        "{t}"
    );
    assert!(
        props.get("X-Api-Key").is_none(),
        "the credential the API sets is no caller's parameter: {t}"
    );
    let (_, t) = s.get("/api/v1/tools/shop.deleteItem").await;
    assert_eq!(t["annotations"]["idempotent"], true, "{t}");
    assert_eq!(t["annotations"]["destructive"], true, "{t}");

    let key = key_of(&s, "shopper", "team-a").await;
    let (st, e) = s.put_policies(POLICIES).await;
    assert_eq!(st, 200, "{e}");

    // Listed: what policy allows, not deleteItem.
    let (st, list) = common::send(
        s.http
            .post(format!("{}/mcp", s.url))
            .header("authorization", format!("Bearer {key}"))
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})),
    )
    .await;
    assert_eq!(st, 200, "{list}");
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"shop.getItem"), "{names:?}");
    // This caller's list: cacheable by it alone, briefly (MCP 2026-07-28's hints).
    assert_eq!(list["result"]["cacheScope"], "private", "{list}");
    assert_eq!(list["result"]["ttlMs"], 2000, "{list}");
    assert!(!names.contains(&"shop.deleteItem"), "{names:?}");

    // A call: path, query (an array repeated), the key added by Steward.
    let r = mcp_call(
        &s,
        &key,
        "shop.getItem",
        json!({"id": "42", "verbose": true, "tags": ["a", "b c"]}),
    )
    .await;
    assert_ne!(r["result"]["isError"], true, "{r}");
    let body = result_body(&r);
    assert_eq!(body["status"], 200, "{r}");
    assert_eq!(body["body"]["id"], "42", "{r}");
    assert_eq!(
        body["body"]["raw"], "/v1/items/42?verbose=true&tags=a&tags=b+c",
        "{r}"
    );

    // Refused by policy: the API never hears of it.
    let r = mcp_call(&s, &key, "shop.deleteItem", json!({"id": "42"})).await;
    assert!(
        r["error"].is_object() || r["result"]["isError"] == true,
        "{r}"
    );
    assert_eq!(api.seen.count("DELETE"), 0, "{:?}", api.seen.all());

    // Bad arguments are refused with the path of the bad field, before the API is asked.
    let r = mcp_call(
        &s,
        &key,
        "shop.createItem",
        json!({"body": {"name": "x", "count": "many"}}),
    )
    .await;
    assert_eq!(r["result"]["isError"], true, "{r}");
    assert!(text_of(&r).contains("/body/count"), "{r}");
    let r = mcp_call(&s, &key, "shop.createItem", json!({"body": {"count": 1}})).await;
    assert_eq!(
        r["result"]["isError"], true,
        "a required field is missing: {r}"
    );
    let r = mcp_call(
        &s,
        &key,
        "shop.getItem",
        json!({"id": "1", "X-Api-Key": "mine"}),
    )
    .await;
    assert_eq!(
        r["result"]["isError"], true,
        "a caller cannot set the API's credential: {r}"
    );
    assert_eq!(api.seen.count("POST /v1/items"), 0, "{:?}", api.seen.all());
    // OpenAPI 3.0's `nullable` and a recursive schema are understood.
    let r = mcp_call(
        &s,
        &key,
        "shop.createItem",
        json!({"body": {"name": "box", "count": null, "parent": {"name": "shelf"}}}),
    )
    .await;
    assert_ne!(r["result"]["isError"], true, "{r}");
    let body = result_body(&r);
    assert_eq!(body["status"], 201, "{r}");
    assert_eq!(body["body"]["created"], "box", "{r}");

    // Path parameters stay one segment.
    let r = mcp_call(&s, &key, "shop.getFile", json!({"name": "../items/1"})).await;
    assert_ne!(r["result"]["isError"], true, "{r}");
    // Not the documented shape: the text, which the output schema allows too.
    let text = result_body(&r)["body"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_string();
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["name"], "../items/1", "{r}");
    assert!(
        api.seen
            .all()
            .contains(&"GET /v1/files/..%2Fitems%2F1".to_string()),
        "{:?}",
        api.seen.all()
    );
    for walk in ["..", "."] {
        let r = mcp_call(&s, &key, "shop.getFile", json!({ "name": walk })).await;
        assert_eq!(r["result"]["isError"], true, "{walk}: {r}");
    }

    // An API that echoes its credential: the answer has the secret's name, not its value.
    let r = mcp_call(&s, &key, "shop.whoami", json!({})).await;
    assert!(!r.to_string().contains(&secret), "{r}");
    assert!(text_of(&r).contains("[secret:SHOP_KEY]"), "{r}");

    // An API error is the call's error, with its status and what the API said.
    let r = mcp_call(&s, &key, "shop.broken", json!({})).await;
    assert_eq!(r["result"]["isError"], true, "{r}");
    assert!(
        text_of(&r).contains("500") && text_of(&r).contains("on fire"),
        "{r}"
    );

    // Audited with the caller's chain, the credential in no record and no log.
    let records = common::audit_records(&s).await;
    assert!(
        records
            .iter()
            .any(|r| r.to_string().contains("shop.getItem")),
        "the call is audited"
    );
    assert!(!records.iter().any(|r| r.to_string().contains(&secret)));
    assert!(!s.log().contains(&secret), "the credential is in no log");

    // A managed run names the API's tools by prefix.
    s.apply(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: buyer}\nspec:\n  model: scripted\n  tools: [shop.*]\n  script:\n    - toolCalls: [{name: shop.getItem, arguments: {id: run-7}}]\n    - content: done\n",
    )
    .await;
    let run = s.start_run("buyer", "x").await;
    let done = s.wait_run(&run).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(
        api.seen
            .all()
            .iter()
            .any(|r| r.starts_with("GET /v1/items/run-7")),
        "{:?}",
        api.seen.all()
    );

    // A secret gone from the vault: calls fail saying which.
    let (st, _) = common::send(s.http.delete(format!("{}/api/v1/secrets/SHOP_KEY", s.url))).await;
    assert!(st == 200 || st == 204);
    let r = mcp_call(&s, &key, "shop.getItem", json!({"id": "1"})).await;
    assert_eq!(r["result"]["isError"], true, "{r}");
    assert!(text_of(&r).contains("SHOP_KEY"), "{r}");

    // Replaced with a smaller document, then removed: the tools follow.
    let (st, e) = s
        .put(
            "/api/v1/openapi/shop",
            json!({"document": {"openapi": "3.1.0", "paths": {"/whoami": {"get": {"operationId": "whoami"}}}},
                   "base_url": format!("http://127.0.0.1:{}/v1", api.port)}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    assert_eq!(e["tools"], json!(["shop.whoami"]), "{e}");
    let (st, _) = s.get("/api/v1/tools/shop.getItem").await;
    assert_eq!(st, 404);
    let (ok, out, err) = common::cli(&s, &["openapi", "rm", "shop"]);
    assert!(ok, "{out}{err}");
    let (st, _) = s.get("/api/v1/tools/shop.whoami").await;
    assert_eq!(st, 404);
    let (st, _) = s.get("/api/v1/openapi/shop").await;
    assert_eq!(st, 404);
}
both_backends!(
    an_openapi_documents_operations_are_governed_tools,
    an_openapi_documents_operations_are_governed_tools
);

/// Definitions that cannot work are refused with what to fix, and store nothing.
async fn bad_openapi_definitions_are_refused(b: Backend) {
    let s = TestServer::start(b).await;
    let ok_doc = json!({"openapi": "3.1.0", "paths": {"/a": {"get": {"operationId": "a"}}}});
    let base = "http://127.0.0.1:9/v1";
    let (st, e) = s
        .put("/api/v1/mcp-servers/taken", json!({"command": ["true"]}))
        .await;
    assert_eq!(st, 200, "{e}");
    let blowup = {
        // Each schema names the next one four times: 4^12 values once followed.
        let mut schemas = serde_json::Map::new();
        for i in 0..12 {
            let next = json!({"$ref": format!("#/components/schemas/s{}", i + 1)});
            schemas.insert(
                format!("s{i}"),
                json!({"type": "array", "items": [next, next, next, next]}),
            );
        }
        schemas.insert("s12".into(), json!({"type": "string"}));
        json!({"openapi": "3.0.0", "components": {"schemas": schemas},
               "paths": {"/b": {"post": {"operationId": "b", "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/s0"}}}}}}}})
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        ("Bad", json!({"document": ok_doc, "base_url": base}), "name"),
        (
            "taken",
            json!({"document": ok_doc, "base_url": base}),
            "MCP server",
        ),
        ("x", json!({"document": 7, "base_url": base}), "document"),
        (
            "x",
            json!({"document": "not: [yaml", "base_url": base}),
            "neither JSON nor YAML",
        ),
        (
            "x",
            json!({"document": {"swagger": "2.0", "paths": {}}, "base_url": base}),
            "OpenAPI 3",
        ),
        (
            "x",
            json!({"document": {"openapi": "3.0.0"}, "base_url": base}),
            "paths",
        ),
        (
            "x",
            json!({"document": {"openapi": "3.0.0", "paths": {}}, "base_url": base}),
            "no operations",
        ),
        (
            "x",
            json!({"document": {"openapi": "3.0.0", "paths": {"/c": {"get": {"parameters": [{"$ref": "other.yaml#/p"}]}}}}, "base_url": base}),
            "outside the document",
        ),
        (
            "x",
            json!({"document": {"openapi": "3.0.0", "paths": {"/c/{id}": {"get": {}}}}, "base_url": base}),
            "not declared",
        ),
        (
            "x",
            json!({"document": blowup, "base_url": base}),
            "too large",
        ),
        ("x", json!({"document": ok_doc}), "base URL"),
        (
            "x",
            json!({"document": ok_doc, "base_url": "ftp://h/"}),
            "http",
        ),
        (
            "x",
            json!({"document": ok_doc, "base_url": "http://u:p@h/"}),
            "credentials",
        ),
        (
            "x",
            json!({"document": ok_doc, "base_url": "http://h/?k=1"}),
            "query",
        ),
        (
            "x",
            json!({"document": ok_doc, "base_url": base, "headers": {"Content-Type": "x"}}),
            "HTTP client",
        ),
        (
            "x",
            json!({"document": ok_doc, "base_url": base, "headers": {"bad name": "x"}}),
            "header name",
        ),
        (
            "x",
            json!({"document": ok_doc, "base_url": base, "headers": {"K": "{{secret:A"}}),
            "closing",
        ),
        (
            "x",
            json!({"document": ok_doc, "base_url": base, "query": {"k": "{{secret:}}"}}),
            "secret's name",
        ),
        (
            "x",
            json!({"document": ok_doc, "base_url": base, "extra": 1}),
            "unknown field",
        ),
    ];
    for (name, body, says) in cases {
        let (st, e) = s
            .put(&format!("/api/v1/openapi/{name}"), body.clone())
            .await;
        assert!(
            st == 400 || st == 409 || st == 422,
            "{name} {body}: {st} {e}"
        );
        assert!(
            e.to_string().contains(says),
            "{name} {body}: says {says:?}: {e}"
        );
    }
    let (_, list) = s.get("/api/v1/openapi").await;
    assert_eq!(list["apis"], json!([]), "nothing stored: {list}");
    // And the reverse: an MCP server may not take an API's name.
    let (st, e) = s
        .put(
            "/api/v1/openapi/api1",
            json!({"document": ok_doc, "base_url": base}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    let (st, e) = s
        .put("/api/v1/mcp-servers/api1", json!({"command": ["true"]}))
        .await;
    assert_eq!(st, 409, "{e}");
}
both_backends!(
    bad_openapi_definitions_are_refused,
    bad_openapi_definitions_are_refused
);

/// An API added through one node is a tool on the other (PostgreSQL, the cluster engine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_added_on_one_node_is_a_tool_on_the_other() {
    let a = TestServer::start(Backend::Postgres).await;
    let other = TestServer::join(&a);
    let doc = json!({"openapi": "3.1.0", "paths": {"/a": {"get": {"operationId": "ping"}}}});
    let (st, e) = a
        .put(
            "/api/v1/openapi/far",
            json!({"document": doc, "base_url": "http://127.0.0.1:9/"}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    common::eventually("the other node to offer the tool", || async {
        let (st, t) = other.get("/api/v1/tools/far.ping").await;
        (st == 200).then_some(t)
    })
    .await;
    let (st, _) = common::send(a.http.delete(format!("{}/api/v1/openapi/far", a.url))).await;
    assert_eq!(st, 204);
    common::eventually("the other node to drop the tool", || async {
        let (st, _) = other.get("/api/v1/tools/far.ping").await;
        (st == 404).then_some(())
    })
    .await;
}

/// An OAuth 2 authorization server and a protected API in one: tokens live 2 s (an hour for
/// scope `long`); each refresh rotates the refresh token, and presenting a spent one is counted
/// as reuse and refused. Client credentials get no refresh token.
#[derive(Default)]
struct AuthState {
    valid: Vec<(String, std::time::Instant)>,
    refresh: String,
    requests: u32,
    reuse: u32,
    scopes: Vec<String>,
    issued: Vec<String>,
}

async fn oauth_server(first_refresh: &str) -> (u16, Arc<Mutex<AuthState>>) {
    let state = Arc::new(Mutex::new(AuthState {
        refresh: first_refresh.to_string(),
        ..AuthState::default()
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let basic = format!("Basic {}", base64_of("cid:client-secret"));
    let token = {
        let state = state.clone();
        move |h: HeaderMap, body: String| async move {
            let f: BTreeMap<String, String> = form_urlencoded::parse(body.as_bytes())
                .into_owned()
                .collect();
            let mut st = state.lock().unwrap();
            st.requests += 1;
            if h.get("authorization").and_then(|v| v.to_str().ok()) != Some(basic.as_str()) {
                return (
                    StatusCode::UNAUTHORIZED,
                    Json(json!({"error": "invalid_client"})),
                );
            }
            let scope = f.get("scope").cloned().unwrap_or_default();
            let life = if scope == "long" { 3600 } else { 2 };
            let refreshing = f.get("grant_type").map(String::as_str) == Some("refresh_token");
            if refreshing && f.get("refresh_token") != Some(&st.refresh) {
                st.reuse += 1;
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"error": "invalid_grant"})),
                );
            }
            let access = format!("at-{}", uuid::Uuid::new_v4().simple());
            st.valid.push((
                access.clone(),
                std::time::Instant::now() + std::time::Duration::from_secs(life),
            ));
            st.issued.push(access.clone());
            if !refreshing {
                return (
                    StatusCode::OK,
                    Json(json!({"access_token": access, "expires_in": life})),
                );
            }
            st.scopes.push(scope);
            st.refresh = format!("rt-{}", uuid::Uuid::new_v4().simple());
            (
                StatusCode::OK,
                Json(
                    json!({"access_token": access, "token_type": "Bearer", "expires_in": life, "refresh_token": st.refresh}),
                ),
            )
        }
    };
    let data = {
        let state = state.clone();
        move |h: HeaderMap| async move {
            let st = state.lock().unwrap();
            let bearer = h
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            let ok = st
                .valid
                .iter()
                .any(|(t, until)| t == bearer && *until > std::time::Instant::now());
            if ok {
                (StatusCode::OK, Json(json!({"data": "secret sauce"})))
            } else {
                (
                    StatusCode::UNAUTHORIZED,
                    Json(json!({"error": "bad token"})),
                )
            }
        }
    };
    let revoke = {
        let state = state.clone();
        move || async move {
            state.lock().unwrap().valid.clear();
        }
    };
    let app = Router::new()
        .route("/token", axum::routing::post(token))
        .route("/v1/data", get(data))
        .route("/revoke-all", axum::routing::post(revoke));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, state)
}

fn base64_of(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Calls authorised by an OAuth client: the token is obtained once and refreshed before it
/// expires by one node at a time — with callers on every node at once, no spent refresh token
/// is ever presented (each refresh rotates it) and no call fails; a token the API refuses is
/// replaced on the next call; a wrong client secret is a clear error; no token is ever shown.
async fn oauth_tokens_are_refreshed_once_across_the_cluster(b: Backend) {
    // Nodes share the vault's key, as a cluster's must: tokens are sealed with it.
    let s = TestServer::start_with(b, &[("STEWARD_VAULT_KEY", &"a7".repeat(32))]).await;
    let (port, auth) = oauth_server("rt-first").await;
    for (name, value) in [
        ("CLIENT_SECRET", "client-secret"),
        ("FIRST_REFRESH", "rt-first"),
        ("WRONG", "nope"),
    ] {
        let (st, e) = s
            .put(&format!("/api/v1/secrets/{name}"), json!({"value": value}))
            .await;
        assert!(st == 200 || st == 204, "{e}");
    }
    // Joined once the secrets are in: it reads the vault as it starts.
    let joined = (b == Backend::Postgres).then(|| TestServer::join(&s));
    let nodes: Vec<&TestServer> = std::iter::once(&s).chain(joined.as_ref()).collect();
    let doc = json!({"openapi": "3.1.0", "paths": {"/data": {"get": {"operationId": "getData"}}}});
    let oauth = |secret: &str| {
        json!({"token_url": format!("http://127.0.0.1:{port}/token"), "client_id": "cid",
               "client_secret": format!("{{{{secret:{secret}}}}}"), "scopes": ["read", "write"],
               "refresh_token": "{{secret:FIRST_REFRESH}}"})
    };
    let base = format!("http://127.0.0.1:{port}/v1");
    let (st, e) = s
        .put(
            "/api/v1/openapi/vault",
            json!({"document": doc, "base_url": base, "oauth": oauth("CLIENT_SECRET")}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    assert_eq!(
        e["oauth_token_url"],
        format!("http://127.0.0.1:{port}/token"),
        "{e}"
    );
    let (st, e) = s
        .put(
            "/api/v1/openapi/wrong",
            json!({"document": doc, "base_url": base, "oauth": oauth("WRONG")}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    // The same through the CLI: client credentials, an hour-long token.
    let doc_file = s.dir.path().join("steady.json");
    std::fs::write(&doc_file, doc.to_string()).unwrap();
    let token_url = format!("http://127.0.0.1:{port}/token");
    let (ok, out, err) = common::cli(
        &s,
        &[
            "openapi",
            "add",
            "steady",
            doc_file.to_str().unwrap(),
            "--base-url",
            &base,
            "--oauth-token-url",
            &token_url,
            "--oauth-client-id",
            "cid",
            "--oauth-client-secret",
            "{{secret:CLIENT_SECRET}}",
            "--oauth-scope",
            "long",
        ],
    );
    assert!(ok, "{out}{err}");
    let (_, e) = s.get("/api/v1/openapi/steady").await;
    assert_eq!(e["oauth_token_url"], token_url.as_str(), "{e}");
    let key = key_of(&s, "oauther", "team-a").await;
    let (st, e) = s
        .put_policies(
            r#"@id("data") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"vault.getData");
@id("wrong") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"wrong.getData");
@id("steady") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"steady.getData");"#,
        )
        .await;
    assert_eq!(st, 200, "{e}");
    for n in &nodes {
        common::eventually("the API's tool on every node", || async {
            let (st, _) = n.get("/api/v1/tools/vault.getData").await;
            (st == 200).then_some(())
        })
        .await;
    }

    // Six callers spread over the nodes for about three token lifetimes.
    let started = std::time::Instant::now();
    let mut callers = Vec::new();
    for i in 0..6 {
        let n = nodes[i % nodes.len()];
        let (url, http, key) = (n.url.clone(), n.http.clone(), key.clone());
        callers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut calls = 0;
            while started.elapsed() < std::time::Duration::from_secs(6) {
                let (st, r) = common::send(
                    http.post(format!("{url}/mcp"))
                        .header("authorization", format!("Bearer {key}"))
                        .header("accept", "application/json, text/event-stream")
                        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                            "params": {"name": "vault.getData", "arguments": {}}})),
                )
                .await;
                calls += 1;
                if st != 200 || r["result"]["isError"] == true {
                    failures.push(r);
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            (calls, failures)
        }));
    }
    let mut calls = 0;
    for c in callers {
        let (n, failures) = c.await.unwrap();
        assert!(
            failures.is_empty(),
            "every call succeeds: {} failed, the first: {:?}",
            failures.len(),
            failures.first()
        );
        calls += n;
    }
    let elapsed = started.elapsed().as_secs_f64();
    {
        let st = auth.lock().unwrap();
        assert_eq!(
            st.reuse, 0,
            "a spent refresh token was presented: a refresh was done twice"
        );
        assert!(
            st.requests >= 3,
            "tokens were refreshed before they expired: {}",
            st.requests
        );
        // One refresh per 4/3 s of a 2 s token, plus the first: never one per node or caller.
        let most = (elapsed / (4.0 / 3.0)).ceil() as u32 + 2;
        assert!(
            st.requests <= most,
            "{} token requests in {elapsed:.1} s for {calls} calls (at most {most})",
            st.requests
        );
        assert!(
            st.scopes.iter().all(|s| s == "read write"),
            "{:?}",
            st.scopes
        );
    }

    // Client credentials and an hour-long token: the API revokes it; the next call fails, the
    // one after has a new token.
    let r = mcp_call(&s, &key, "steady.getData", json!({})).await;
    assert!(text_of(&r).contains("secret sauce"), "{r}");
    let (st, _) = common::send(s.http.post(format!("http://127.0.0.1:{port}/revoke-all"))).await;
    assert_eq!(st, 200);
    let r = mcp_call(&s, &key, "steady.getData", json!({})).await;
    assert_eq!(r["result"]["isError"], true, "{r}");
    assert!(text_of(&r).contains("401"), "{r}");
    let r = mcp_call(&s, &key, "steady.getData", json!({})).await;
    assert!(
        text_of(&r).contains("secret sauce"),
        "a refused token is replaced: {r}"
    );

    // A wrong client secret: the token endpoint's own reason.
    let r = mcp_call(&s, &key, "wrong.getData", json!({})).await;
    assert_eq!(r["result"]["isError"], true, "{r}");
    assert!(text_of(&r).contains("invalid_client"), "{r}");

    // No token anywhere a person or a model could read it.
    let issued = auth.lock().unwrap().issued.clone();
    let records = common::audit_records(&s).await;
    for n in &nodes {
        let log = n.log();
        assert!(
            !issued.iter().any(|t| log.contains(t.as_str())),
            "a token is in a log"
        );
    }
    let (_, api) = s.get("/api/v1/openapi/vault").await;
    for t in &issued {
        assert!(!records.iter().any(|r| r.to_string().contains(t.as_str())));
        assert!(!api.to_string().contains(t.as_str()));
    }

    // OAuth definitions that cannot work are refused.
    for (oauth, says) in [
        (
            json!({"token_url": "ftp://x/", "client_id": "c"}),
            "token_url",
        ),
        (
            json!({"token_url": "http://x/t", "client_id": ""}),
            "client_id",
        ),
        (
            json!({"token_url": "http://x/t", "client_id": "c", "client_secret": "plain"}),
            "from the vault",
        ),
        (
            json!({"token_url": "http://x/t", "client_id": "c", "scopes": ["a b"]}),
            "scopes",
        ),
        (
            json!({"token_url": "http://x/t", "client_id": "c", "grant": "password"}),
            "unknown field",
        ),
    ] {
        let (st, e) = s
            .put(
                "/api/v1/openapi/bad",
                json!({"document": doc, "base_url": base, "oauth": oauth}),
            )
            .await;
        assert!(st == 400 || st == 422, "{oauth}: {st} {e}");
        assert!(e.to_string().contains(says), "{oauth}: says {says:?}: {e}");
    }
    let (st, e) = s
        .put(
            "/api/v1/openapi/bad",
            json!({"document": doc, "base_url": base, "oauth": oauth("WRONG"),
                                           "headers": {"Authorization": "Bearer x"}}),
        )
        .await;
    assert_eq!(st, 400, "{e}");
}
both_backends!(
    oauth_tokens_are_refreshed_once_across_the_cluster,
    oauth_tokens_are_refreshed_once_across_the_cluster
);

/// The result cache keeps an HTTP API's answer no longer than the API's `Cache-Control`
/// allows (and no longer than `[tools.cache]` says): `no-store` is never kept, `max-age` bounds
/// the configured TTL, no header leaves it as configured.
async fn an_apis_cache_control_bounds_the_result_cache(b: Backend) {
    let s = TestServer::start_with(b, &[("STEWARD_TOOLS__CACHE__TTL_MS", "600000")]).await;
    let seen = Seen::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let header = |cc: &'static str| {
        get(move || async move {
            let mut h = HeaderMap::new();
            if !cc.is_empty() {
                h.insert("cache-control", cc.parse().unwrap());
            }
            (h, Json(json!({"fresh": true})))
        })
    };
    let app = Router::new()
        .route("/plain", header(""))
        .route("/nostore", header("no-store"))
        .route("/long", header("public, max-age=600"))
        .route("/zero", header("max-age=0"))
        .layer(axum::middleware::from_fn_with_state(
            seen.clone(),
            |State(seen): State<Seen>,
             req: axum::extract::Request,
             next: axum::middleware::Next| async move {
                seen.0.lock().unwrap().push(req.uri().path().to_string());
                next.run(req).await
            },
        ));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let op = |id: &str| json!({"get": {"operationId": id}});
    let doc = json!({"openapi": "3.1.0", "paths": {
        "/plain": op("plain"), "/nostore": op("nostore"), "/long": op("long"), "/zero": op("zero")}});
    let (st, e) = s
        .put(
            "/api/v1/openapi/cc",
            json!({"document": doc, "base_url": format!("http://127.0.0.1:{port}")}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    let key = key_of(&s, "cacher", "team-a").await;
    let policies: String = ["plain", "nostore", "long", "zero"]
        .iter()
        .map(|t| format!("@id(\"{t}\") permit (principal, action == Steward::Action::\"tool.call\", resource == Steward::Tool::\"cc.{t}\");\n"))
        .collect();
    let (st, e) = s.put_policies(&policies).await;
    assert_eq!(st, 200, "{e}");
    for tool in ["plain", "nostore", "long", "zero"] {
        for _ in 0..2 {
            let r = mcp_call(&s, &key, &format!("cc.{tool}"), json!({})).await;
            assert_ne!(r["result"]["isError"], true, "{r}");
        }
    }
    let hits = |path: &str| seen.all().iter().filter(|p| *p == path).count();
    assert_eq!(hits("/plain"), 1, "no header: the configured TTL");
    assert_eq!(hits("/long"), 1, "max-age=600 within the configured TTL");
    assert_eq!(hits("/nostore"), 2, "no-store is never kept");
    assert_eq!(hits("/zero"), 2, "max-age=0 is never kept");
}
both_backends!(
    an_apis_cache_control_bounds_the_result_cache,
    an_apis_cache_control_bounds_the_result_cache
);

/// Calls carry their caller's own credential: `{{user_secret:TOKEN}}` is the vault secret
/// `TOKEN.<owner>` of the calling agent's owner — from MCP clients and managed runs alike; an
/// owner without one is refused, saying which secret an administrator sets; a shared MCP
/// connection cannot carry one.
async fn each_caller_brings_their_own_credential(b: Backend) {
    let s = TestServer::start(b).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = Router::new().route(
        "/whoami",
        get(|h: HeaderMap| async move {
            match h.get("x-user-token").and_then(|v| v.to_str().ok()) {
                Some("alice-token") => (
                    StatusCode::OK,
                    Json(json!({"user": "alice", "echo": "alice-token"})),
                ),
                Some("bob-token") => (StatusCode::OK, Json(json!({"user": "bob"}))),
                _ => (
                    StatusCode::UNAUTHORIZED,
                    Json(json!({"error": "who are you?"})),
                ),
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    for (name, value) in [("TOKEN.alice", "alice-token"), ("TOKEN.bob", "bob-token")] {
        let (st, e) = s
            .put(&format!("/api/v1/secrets/{name}"), json!({"value": value}))
            .await;
        assert!(st == 200 || st == 204, "{e}");
    }
    let doc = json!({"openapi": "3.1.0", "paths": {"/whoami": {"get": {"operationId": "whoami"}}}});
    let (st, e) = s
        .put(
            "/api/v1/openapi/me",
            json!({"document": doc, "base_url": format!("http://127.0.0.1:{port}"),
                   "headers": {"X-User-Token": "{{user_secret:TOKEN}}"}}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    let (st, e) = s
        .put_policies(
            r#"@id("me") permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"me.whoami");
@id("think") permit (principal is Steward::Run, action == Steward::Action::"llm.call", resource);"#,
        )
        .await;
    assert_eq!(st, 200, "{e}");

    let alice = key_of(&s, "alices-agent", "alice").await;
    let bob = key_of(&s, "bobs-agent", "bob").await;
    let carol = key_of(&s, "carols-agent", "carol").await;
    let r = mcp_call(&s, &alice, "me.whoami", json!({})).await;
    assert_eq!(result_body(&r)["body"]["user"], "alice", "{r}");
    assert!(!r.to_string().contains("alice-token"), "never shown: {r}");
    let r = mcp_call(&s, &bob, "me.whoami", json!({})).await;
    assert_eq!(result_body(&r)["body"]["user"], "bob", "{r}");
    let r = mcp_call(&s, &carol, "me.whoami", json!({})).await;
    assert_eq!(r["result"]["isError"], true, "{r}");
    assert!(
        text_of(&r).contains("TOKEN.carol"),
        "says which secret to set: {r}"
    );

    // A managed run acts with its agent's owner's credential.
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: bobs-runner}\nspec:\n  model: scripted\n  tools: [me.*]\n  script:\n    - toolCalls: [{name: me.whoami, arguments: {}}]\n    - content: done\n").await;
    let (st, e) = s
        .post(
            "/api/v1/agents/bobs-runner/resume",
            json!({"reason": "registered", "owner": "bob"}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    let run = s.start_run("bobs-runner", "x").await;
    assert_eq!(s.wait_run(&run).await["state"], "succeeded");
    let journal = s.journal(&run).await;
    let outcome = journal
        .iter()
        .find(|e| e["kind"] == "tool" && e["phase"] == "outcome")
        .unwrap_or_else(|| panic!("{journal:?}"));
    assert!(
        outcome.to_string().contains("\\\"bob\\\"") || outcome.to_string().contains("\"bob\""),
        "{outcome}"
    );

    // One connection serves every caller of an MCP server: it cannot carry one's own.
    let (st, e) = s
        .put(
            "/api/v1/mcp-servers/shared",
            json!({"url": "http://127.0.0.1:9/mcp", "headers": {"Authorization": "Bearer {{user_secret:TOKEN}}"}}),
        )
        .await;
    assert_eq!(st, 400, "{e}");
    assert!(e.to_string().contains("every caller"), "{e}");
}
both_backends!(
    each_caller_brings_their_own_credential,
    each_caller_brings_their_own_credential
);
