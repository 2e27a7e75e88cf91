//! Test support: start the real `steward` binary on port 0 with a fresh database (a new SQLite
//! file, or a new PostgreSQL schema), restart it on the same database, kill it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub mod in_process;
pub mod openapi;

pub use steward_testkit::Backend;

pub struct TestServer {
    pub backend: Backend,
    pub url: String,
    pub db_url: String,
    pub dir: tempfile::TempDir,
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    pub http: reqwest::Client,
}

/// Sends `body` as JSON: (status, the answer — `null` when it is not JSON).
async fn json_call(rb: reqwest::RequestBuilder, body: Value) -> (u16, Value) {
    let (status, v) = exchange(rb.json(&body)).await.unwrap();
    (status, v.as_json())
}

/// Sends any request and reads its whole answer, checked against the OpenAPI document like
/// every helper's: (status, the body as JSON, or as text when it is not JSON).
pub async fn send(rb: reqwest::RequestBuilder) -> (u16, Value) {
    let (status, a) = exchange(rb).await.unwrap();
    (status, a.as_json_or_text())
}

/// An answer's body: JSON when it parses, else its text.
pub struct Answer(Vec<u8>);

impl Answer {
    fn as_json(&self) -> Value {
        serde_json::from_slice(&self.0).unwrap_or(Value::Null)
    }
    fn as_json_or_text(&self) -> Value {
        serde_json::from_slice(&self.0)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.0).into_owned()))
    }
}

/// The server's OpenAPI document, read once per test process.
static SPEC: tokio::sync::OnceCell<openapi::Spec> = tokio::sync::OnceCell::const_new();

/// Sends a request and reads its whole answer — and checks the answer against the server's
/// OpenAPI document, so every test that goes through these helpers keeps the document true.
async fn exchange(rb: reqwest::RequestBuilder) -> Result<(u16, Answer), reqwest::Error> {
    let (client, req) = rb.build_split();
    let req = req?;
    let (method, url) = (req.method().to_string(), req.url().clone());
    let r = client.execute(req).await?;
    let status = r.status().as_u16();
    let content_type = r
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = r.bytes().await?.to_vec();
    let origin = url.origin().ascii_serialization();
    let spec = SPEC
        .get_or_init(|| async move {
            let doc: Value = reqwest::get(format!("{origin}/openapi.json"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            openapi::Spec::new(doc)
        })
        .await;
    if let Err(why) = spec.check(&method, url.path(), status, content_type.as_deref(), &body) {
        panic!("the OpenAPI document does not describe this answer: {why}");
    }
    Ok((status, Answer(body)))
}

/// The tests' own HTTP client: it carries the admin token when the server has one.
fn admin_client(env: &[(String, String)]) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some((_, t)) = env.iter().find(|(k, _)| k == "STEWARD_SERVER__ADMIN_TOKEN") {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
    }
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .default_headers(headers)
        .build()
        .unwrap()
}

pub use steward_testkit::pg_base;

/// A fresh database URL for `backend`.
pub async fn fresh_db(backend: Backend, dir: &std::path::Path) -> String {
    steward_testkit::store::fresh_url(backend, dir).await
}

impl TestServer {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, &[]).await
    }

    pub async fn start_with(backend: Backend, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db_url = fresh_db(backend, dir.path()).await;
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::spawned(backend, db_url, dir, env)
    }

    /// A server whose data directory (and SQLite database) is `dir`, e.g. a small filesystem.
    pub fn start_in(backend: Backend, dir: tempfile::TempDir, env: &[(&str, &str)]) -> Self {
        assert_eq!(
            backend,
            Backend::Sqlite,
            "a data directory of its own holds SQLite's file"
        );
        let db_url = format!("sqlite://{}", dir.path().join("steward.db").display());
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::spawned(backend, db_url, dir, env)
    }

    /// A second node on the same database (its own data dir, so its own node id).
    pub fn join(other: &TestServer) -> Self {
        Self::spawned(
            other.backend,
            other.db_url.clone(),
            tempfile::tempdir().unwrap(),
            other.env.clone(),
        )
    }

    /// A second node on the same PostgreSQL database whose connections carry
    /// `application_name`, so a test can find them in `pg_stat_activity` (and cut them).
    pub fn join_named(other: &TestServer, application_name: &str) -> Self {
        assert_eq!(other.backend, Backend::Postgres);
        Self::spawned(
            other.backend,
            format!("{}&application_name={application_name}", other.db_url),
            tempfile::tempdir().unwrap(),
            other.env.clone(),
        )
    }

    fn spawned(
        backend: Backend,
        db_url: String,
        dir: tempfile::TempDir,
        env: Vec<(String, String)>,
    ) -> Self {
        let http = admin_client(&env);
        let mut s = TestServer {
            backend,
            url: String::new(),
            db_url,
            dir,
            env,
            child: None,
            http,
        };
        s.spawn();
        s
    }

    /// Starts the binary (again) on the same database and data dir.
    pub fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_steward"));
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &self.db_url,
            "--data-dir",
        ])
        .arg(self.dir.path())
        .env("STEWARD_TOOLS__HTTP__ALLOW_PRIVATE_NETWORKS", "true")
        .env("STEWARD_ENGINE__POLL_MS", "50")
        .env("STEWARD_ENGINE__LEASE_TTL_MS", "3000")
        .env("STEWARD_ENGINE__HEARTBEAT_MS", "500")
        .env("STEWARD_LOG", "info,sqlx=warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join("server.log"))
                .unwrap(),
        ));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn steward");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(
            line.contains("listening on"),
            "server did not start: {line:?}\n{}",
            self.log()
        );
        self.url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap()
            .to_string();
        self.child = Some(child);
        // A new life may be given the port of the last one: connections pooled to that one are
        // dead, and must not carry this life's first requests.
        self.http = admin_client(&self.env);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn child_id(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn take_child(&mut self) -> Child {
        self.child.take().unwrap()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let (status, a) = exchange(self.http.get(format!("{}{path}", self.url)))
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e:?}\nthe server's log:\n{}", self.log()));
        (status, a.as_json_or_text())
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        json_call(self.http.put(format!("{}{path}", self.url)), body).await
    }

    /// POSTs with an agent's credential: its API key, or `key|token` for a key and the
    /// delegated token it holds (sent as `X-Steward-Delegation`).
    pub async fn post_as(&self, credential: &str, path: &str, body: Value) -> (u16, Value) {
        let rb = as_agent(
            reqwest::Client::new().post(format!("{}{path}", self.url)),
            credential,
        );
        json_call(rb, body).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        json_call(self.http.post(format!("{}{path}", self.url)), body).await
    }

    /// Like `post`, but a transport error (e.g. the server closing mid-upload) is returned.
    /// Uses a connection of its own, so one the server closes is never reused by later requests.
    pub async fn try_post(&self, path: &str, body: Value) -> Result<(u16, Value), reqwest::Error> {
        let (status, a) = exchange(
            reqwest::Client::new()
                .post(format!("{}{path}", self.url))
                .json(&body),
        )
        .await?;
        Ok((status, a.as_json()))
    }

    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let (status, a) = exchange(
            self.http
                .post(format!("{}{path}", self.url))
                .header("content-type", content_type)
                .body(body),
        )
        .await
        .unwrap();
        (status, a.as_json())
    }

    pub async fn apply(&self, yaml: &str) -> Value {
        let (status, body) = self
            .post_raw("/api/v1/agents", "application/yaml", yaml.to_string())
            .await;
        assert_eq!(status, 200, "apply failed: {body}");
        body
    }

    pub async fn start_run(&self, agent: &str, input: &str) -> String {
        let (status, body) = self
            .post("/api/v1/runs", json!({"agent": agent, "input": input}))
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    /// Waits until the run is terminal (or waits for a human) and returns it.
    pub async fn wait_run(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, r) = self.get(&format!("/api/v1/runs/{id}")).await;
            let st = r["state"].as_str().unwrap_or("");
            if matches!(st, "succeeded" | "failed" | "cancelled")
                || matches!(r["wait_kind"].as_str(), Some("human" | "approval"))
            {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "run {id} stuck in {st}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Replaces the active policy set with `text` (Cedar).
    pub async fn put_policies(&self, text: &str) -> (u16, Value) {
        send(
            reqwest::Client::new()
                .put(format!("{}/api/v1/policies", self.url))
                .body(text.to_string()),
        )
        .await
    }

    /// How many steps of the run have their outcome journaled.
    pub async fn outcomes(&self, id: &str) -> usize {
        self.journal(id)
            .await
            .iter()
            .filter(|e| e["phase"] == "outcome")
            .count()
    }

    pub async fn journal(&self, id: &str) -> Vec<Value> {
        let (status, j) = self
            .get(&format!("/api/v1/runs/{id}/journal?limit=10000"))
            .await;
        assert_eq!(status, 200, "{j}");
        j["entries"].as_array().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An HTTP server on loopback that counts requests per `Idempotency-Key`: the side effect
/// tests assert was done once.
pub struct Counter {
    pub url: String,
    pub hits: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, u32>>>,
}

impl Counter {
    pub async fn start() -> Self {
        use axum::routing::any;
        let hits: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, u32>>> =
            Default::default();
        let h = hits.clone();
        let app = axum::Router::new().route(
            "/{*path}",
            any(
                move |uri: axum::http::Uri, headers: axum::http::HeaderMap| {
                    let h = h.clone();
                    async move {
                        let key = headers
                            .get("idempotency-key")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("none")
                            .to_string();
                        *h.lock().unwrap().entry(key).or_insert(0) += 1;
                        // `/slow/…` answers after 2 s: long enough to kill the server mid-request.
                        if uri.path().starts_with("/slow") {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                        }
                        "counted"
                    }
                },
            ),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        Counter { url, hits }
    }

    pub fn count(&self, key: &str) -> u32 {
        self.hits.lock().unwrap().get(key).copied().unwrap_or(0)
    }

    pub fn total_for_run(&self, run: &str) -> u32 {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with(run))
            .map(|(_, n)| n)
            .sum()
    }
}

/// Runs an async test body once per backend.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$body($crate::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$body($crate::common::Backend::Postgres).await
            }
        }
    };
}

impl TestServer {
    /// The journal's (seq, phase) pairs read straight from the database (no server needed).
    pub async fn journal_offline(&self, run: &str) -> Vec<(i64, i64)> {
        let sql =
            format!("SELECT seq, phase FROM journal WHERE run_id = '{run}' ORDER BY seq, phase");
        match self.backend {
            Backend::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&self.db_url).await.unwrap();
                let rows: Vec<(i64, i64)> = sqlx::query_as(&sql).fetch_all(&pool).await.unwrap();
                pool.close().await;
                rows
            }
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&self.db_url).await.unwrap();
                let rows: Vec<(i64, i64)> = sqlx::query_as(&sql).fetch_all(&pool).await.unwrap();
                pool.close().await;
                rows
            }
        }
    }
}

/// Polls `check` until it yields a value; fails the test after 30 s instead of hanging CI.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every gateway call the server answered is settled (the ledger is written
/// moments after the answer is sent).
pub async fn settled(s: &TestServer) {
    eventually("every gateway call to be settled", || async move {
        let (_, calls) = s.get("/api/v1/calls?limit=1000").await;
        calls["calls"]
            .as_array()?
            .iter()
            .all(|c| c["status"] != "started")
            .then_some(())
    })
    .await
}

/// Runs the `steward` CLI against `server`: (succeeded, stdout, stderr).
pub fn cli(server: &TestServer, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_steward"))
        .args(args)
        .env("STEWARD_URL", &server.url)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A mock OpenAI-compatible upstream on loopback answering every chat call with "ok" (1 token
/// in, 1 out). Returns its `/v1` base URL.
/// A key for `agent`, registered under `owner`.
pub async fn key_of(s: &TestServer, agent: &str, owner: &str) -> String {
    let (st, e) = s
        .post(
            &format!("/api/v1/agents/{agent}/resume"),
            json!({"reason": "registered", "owner": owner}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    let (st, key) = s.post("/api/v1/keys", json!({"agent": agent})).await;
    assert_eq!(st, 201, "{key}");
    key["key"].as_str().unwrap().to_string()
}

pub async fn ok_upstream() -> String {
    use axum::routing::post;
    use axum::Json;
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(|Json(body): Json<Value>| async move {
            Json(serde_json::json!({"id": "x", "object": "chat.completion", "created": 1, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}))
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    url
}

/// Every audit record the server exports, in order (the `record` of each JSON line).
pub async fn audit_records(s: &TestServer) -> Vec<Value> {
    let export = s
        .http
        .get(format!("{}/api/v1/audit/export", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    export
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["record"].clone())
        .collect()
}

/// A host of the tests' own, as a sandbox's egress sees one: an HTTP server in a network
/// namespace of its own, reached over a veth pair — an address that is neither loopback nor
/// one of this host's (which egress never reaches). Public-looking (TEST-NET-2,
/// 198.51.100.0/24) or private (10.0.0.0/8). Removed when dropped.
pub struct NetHost {
    /// Its address, and the address of this host's end of the link.
    pub ip: String,
    pub host_side: String,
    /// Where its server answers `body` to any request.
    pub port: u16,
    ns: String,
    server: Child,
}

impl NetHost {
    pub fn start(body: &str, private: bool) -> NetHost {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let k = (std::process::id() * 7 + n) % 60 + 1;
        let ns = format!("stw{}n{n}", std::process::id());
        let (outside, inside) = (
            format!("sw{k}o{}", std::process::id() % 1000),
            format!("sw{k}i{}", std::process::id() % 1000),
        );
        let net = |last: u32| {
            if private {
                format!("10.231.{k}.{last}")
            } else {
                format!("198.51.100.{}", k * 4 + last - 1)
            }
        };
        let (host_side, ip) = (net(1), net(2));
        let ip_cmd = |args: &[&str]| {
            let out = Command::new("ip")
                .args(args)
                .output()
                .expect("iproute2's ip");
            assert!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        let _ = Command::new("ip").args(["link", "del", &outside]).output();
        ip_cmd(&["netns", "add", &ns]);
        ip_cmd(&[
            "link", "add", &outside, "type", "veth", "peer", "name", &inside,
        ]);
        ip_cmd(&["link", "set", &inside, "netns", &ns]);
        ip_cmd(&["addr", "add", &format!("{host_side}/30"), "dev", &outside]);
        ip_cmd(&["link", "set", &outside, "up"]);
        ip_cmd(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip}/30"),
            "dev",
            &inside,
        ]);
        ip_cmd(&["-n", &ns, "link", "set", &inside, "up"]);
        ip_cmd(&["-n", &ns, "link", "set", "lo", "up"]);
        let port = 8080;
        let script = r#"
import http.server, sys
body = sys.argv[2].encode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("content-length", str(len(body)))
        self.send_header("connection", "close"); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
s = http.server.HTTPServer((sys.argv[1], 8080), H)
print("ready", flush=True)
s.serve_forever()
"#;
        let mut server = Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-c", script, &ip, body])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 in the namespace");
        let mut line = String::new();
        BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the namespace's server did not start");
        NetHost {
            ip,
            host_side,
            port,
            ns,
            server,
        }
    }

    /// `host:port` of its server.
    pub fn target(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }
}

impl Drop for NetHost {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        // The namespace takes its end of the pair with it, and the pair this host's end.
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// Authenticates `rb` as an agent: `credential` is its API key, or `key|token` for a key and
/// the delegated token it holds.
pub fn as_agent(rb: reqwest::RequestBuilder, credential: &str) -> reqwest::RequestBuilder {
    match credential.split_once('|') {
        Some((key, token)) => rb.bearer_auth(key).header("X-Steward-Delegation", token),
        None => rb.bearer_auth(credential),
    }
}
