//! The web console in a real browser: Debian's headless Chromium, driven by chromedriver over
//! the W3C WebDriver protocol (both installed by `.ci/run`). A person signs in with the admin
//! token, sees runs and a run's timeline, approves a waiting step from the page — and the run
//! resumes — and reads a trace's waterfall; no page logs an error to the browser's console.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::common;

use common::{eventually, Backend, TestServer};
use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const TOKEN: &str = "console-test-admin-token";

/// A chromedriver and one headless Chromium session, ended when dropped.
struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
    driver: std::process::Child,
}

impl Browser {
    async fn start() -> Browser {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let driver = std::process::Command::new(
            std::env::var("STEWARD_TEST_CHROMEDRIVER").unwrap_or("chromedriver".into()),
        )
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromedriver (Debian's chromium-driver, installed by .ci/run)");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": std::env::var("STEWARD_TEST_CHROMIUM").unwrap_or("/usr/bin/chromium".into()),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,900"]
            },
            "goog:loggingPrefs": {"browser": "ALL"}
        }}});
        let created = eventually("chromedriver to start a session", || {
            let (http, base, caps) = (http.clone(), base.clone(), caps.clone());
            async move {
                let r = http
                    .post(format!("{base}/session"))
                    .json(&caps)
                    .send()
                    .await
                    .ok()?;
                let v: Value = r.json().await.ok()?;
                v["value"]["sessionId"].as_str().map(str::to_string)
            }
        })
        .await;
        Browser {
            http,
            base,
            session: created,
            driver,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    /// The element `css` selects, once it is on the page.
    async fn find(&self, css: &str) -> String {
        eventually(&format!("an element {css:?} on the page"), || async {
            let v = self
                .call(
                    reqwest::Method::POST,
                    "/element",
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await;
            v[ELEMENT].as_str().map(str::to_string)
        })
        .await
    }

    async fn text(&self, css: &str) -> String {
        let e = self.find(css).await;
        self.call(reqwest::Method::GET, &format!("/element/{e}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits until the text of `css` contains `wanted`, and returns it.
    async fn wait_text(&self, css: &str, wanted: &str) -> String {
        eventually(&format!("{css:?} to show {wanted:?}"), || async {
            let t = self.text(css).await;
            t.contains(wanted).then_some(t)
        })
        .await
    }

    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn clear(&self, css: &str) {
        let e = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/clear"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// What the page logged to the browser's console at level SEVERE (errors).
    async fn errors(&self) -> Vec<Value> {
        let log = self
            .call(
                reqwest::Method::POST,
                "/se/log",
                Some(json!({"type": "browser"})),
            )
            .await;
        log.as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .cloned()
            .collect()
    }

    /// The page as a PNG.
    async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let b64 = self.call(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let url = format!("{}/session/{}", self.base, self.session);
        // Ends the browser; chromedriver goes with the test's process either way.
        let _ = std::thread::spawn(move || {
            let _ = reqwest::blocking::Client::new().delete(url).send();
        })
        .join();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

const POLICIES: &str = r#"
@id("models") permit (principal, action == Steward::Action::"llm.call", resource);
@id("payments-need-finance") @approval("finance")
permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"http_request");
"#;

const PAYER: &str = "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: payer}\nspec:\n  model: scripted\n  tools: [http_request]\n  script:\n    - toolCalls: [{name: http_request, arguments: {method: PUT, url: \"{{input}}\"}}]\n    - content: paid\n";

async fn the_console_shows_runs_and_approves_from_the_page(b: Backend) {
    let counter = common::Counter::start().await;
    let s = TestServer::start_with(b, &[("STEWARD_SERVER__ADMIN_TOKEN", TOKEN)]).await;
    let (st, e) = common::send(
        s.http
            .put(format!("{}/api/v1/policies", s.url))
            .body(POLICIES),
    )
    .await;
    assert_eq!(st, 200, "{e}");
    s.apply(PAYER).await;
    let run = s
        .start_run("payer", &format!("{}/pay/1", counter.url))
        .await;
    let r = s.wait_run(&run).await;
    assert_eq!(r["wait_kind"], "approval", "{r}");

    let browser = Browser::start().await;
    // The console's address, and the sign-in it asks for first.
    browser.open(&format!("{}/", s.url)).await;
    browser.find("form#sign-in").await;
    browser.type_into("#token", "not-the-token").await;
    browser.click("form#sign-in button").await;
    browser.wait_text("p.error", "refused").await;
    // The browser logs the refused calls; nothing else may be logged.
    let refused = browser.errors().await;
    assert!(
        refused
            .iter()
            .all(|e| e["message"].as_str().unwrap_or("").contains("401")),
        "{refused:?}"
    );
    browser.type_into("#token", TOKEN).await;
    browser.click("form#sign-in button").await;
    // The overview counts the waiting run and the open approval.
    let cards = browser.wait_text("#states", "approvals open").await;
    assert!(cards.contains("1\nwaiting"), "{cards}");
    assert!(cards.contains("1\napprovals open"), "{cards}");
    let chart = browser.find("#spend-chart .slot").await;
    assert!(!chart.is_empty(), "the spend chart is drawn");

    // The runs list, then the run's page with its timeline.
    browser.open(&format!("{}/ui/#/runs", s.url)).await;
    browser.wait_text("table#runs", &run).await;
    browser.click(&format!("a[href='#/runs/{run}']")).await;
    let steps = browser.wait_text("table#timeline", "http_request").await;
    assert!(steps.contains("scripted"), "the model step: {steps}");
    browser.wait_text("#run-state", "waiting").await;
    let paid = || counter.hits.lock().unwrap().values().sum::<u32>();
    assert_eq!(paid(), 0, "nothing paid yet");

    // Approved from the page where the step waits: the run resumes and pays once.
    browser
        .type_into("tr.approval input.reason", "invoice checked")
        .await;
    browser.click("tr.approval button.approve").await;
    browser.wait_text("#run-state", "succeeded").await;
    browser.wait_text("#run-result", "paid").await;
    assert_eq!(paid(), 1, "paid exactly once");
    let (_, approvals) = s.get("/api/v1/approvals?state=approved").await;
    assert_eq!(
        approvals["approvals"][0]["reason"], "invoice checked",
        "{approvals}"
    );

    // What it cost, by agent, and the audit log verified — each model and tool call of it.
    browser.open(&format!("{}/ui/#/costs", s.url)).await;
    let costs = browser.wait_text("table#costs", "payer").await;
    assert!(costs.contains("payer"), "{costs}");
    browser
        .wait_text("#cost-total", "1 of 1 runs succeeded")
        .await;
    browser.open(&format!("{}/ui/#/audit", s.url)).await;
    browser.wait_text("#audit", "verified").await;

    // Screenshots of the main pages, for the docs (written only when asked for).
    let shots = std::env::var_os("STEWARD_CONSOLE_SCREENSHOTS");
    if let Some(dir) = &shots {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("console-run.png"), browser.screenshot().await).unwrap();
    }
    let errors = browser.errors().await;
    assert!(errors.is_empty(), "the console logged errors: {errors:?}");
}

both_backends!(console, the_console_shows_runs_and_approves_from_the_page);

/// A trace's page draws the agent's spans and Steward's together as a waterfall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_draws_a_trace() {
    const TRACE: &str = "5af7651916cd43dd8448eb211c80319e";
    let upstream = crate::telemetry::mock_upstream().await;
    let s = TestServer::start_with(
        Backend::Sqlite,
        &[
            ("STEWARD_SERVER__ADMIN_TOKEN", TOKEN),
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &upstream),
        ],
    )
    .await;
    let key = common::key_of(&s, "support-bot", "ana").await;
    crate::traces::chat(
        &s,
        &key,
        Some(&format!("00-{TRACE}-b7ad6b7169203331-01")),
        "hi",
    )
    .await;
    eventually("Steward's spans kept", || async {
        let (st, t) = s.get(&format!("/api/v1/traces/{TRACE}")).await;
        (st == 200 && t["spans"].as_array().is_some_and(|a| a.len() >= 2)).then_some(())
    })
    .await;

    let browser = Browser::start().await;
    browser.open(&format!("{}/ui/", s.url)).await;
    browser.type_into("#token", TOKEN).await;
    browser.click("form#sign-in button").await;
    browser.find("#states").await;
    browser.open(&format!("{}/ui/#/traces", s.url)).await;
    browser.wait_text("table#traces", TRACE).await;
    browser.click(&format!("a[href='#/traces/{TRACE}']")).await;
    let waterfall = browser.wait_text("table#waterfall", "chat mock/m").await;
    assert!(
        waterfall.contains("POST /v1/chat/completions"),
        "{waterfall}"
    );
    let shots = std::env::var_os("STEWARD_CONSOLE_SCREENSHOTS");
    if let Some(dir) = &shots {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("console-trace.png"), browser.screenshot().await).unwrap();
    }
    let errors = browser.errors().await;
    assert!(errors.is_empty(), "the console logged errors: {errors:?}");
}

/// The console's files come with a policy that runs only their own script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_with_a_strict_policy() {
    let s =
        TestServer::start_with(Backend::Sqlite, &[("STEWARD_SERVER__ADMIN_TOKEN", TOKEN)]).await;
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = plain.get(format!("{}/", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/");
    for (path, kind) in [
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let r = plain.get(format!("{}{path}", s.url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert!(h["content-type"].to_str().unwrap().starts_with(kind));
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
        assert_eq!(h["x-content-type-options"], "nosniff");
    }
    // The page itself holds nothing; the API behind it still wants the token.
    let r = plain
        .get(format!("{}/api/v1/runs", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// The viewer token reads every page's data and changes nothing; the admin token still does.
/// A viewer token without an admin token, or equal to it, stops the server at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_token_only_reads() {
    const VIEWER: &str = "console-test-viewer-token";
    let s = TestServer::start_with(
        Backend::Sqlite,
        &[
            ("STEWARD_SERVER__ADMIN_TOKEN", TOKEN),
            ("STEWARD_SERVER__VIEWER_TOKEN", VIEWER),
        ],
    )
    .await;
    s.apply(PAYER).await;
    let run = s.start_run("payer", "http://127.0.0.1:9/").await;
    let plain = reqwest::Client::new();
    let as_viewer = |r: reqwest::RequestBuilder| async move {
        let r = r.bearer_auth(VIEWER).send().await.unwrap();
        let st = r.status().as_u16();
        (st, r.json::<Value>().await.unwrap_or(Value::Null))
    };
    for path in [
        "/api/v1/runs".to_string(),
        format!("/api/v1/runs/{run}"),
        format!("/api/v1/runs/{run}/journal"),
        "/api/v1/approvals?state=pending".into(),
        "/api/v1/traces".into(),
        "/api/v1/agents".into(),
    ] {
        let (st, body) = as_viewer(plain.get(format!("{}{path}", s.url))).await;
        assert_eq!(st, 200, "{path}: {body}");
    }
    let (st, body) = as_viewer(
        plain
            .post(format!("{}/api/v1/runs/{run}/cancel", s.url))
            .json(&json!({"reason": "a viewer tried"})),
    )
    .await;
    assert_eq!(st, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    let (st, _) = as_viewer(
        plain
            .post(format!("{}/api/v1/keys", s.url))
            .json(&json!({"agent": "payer"})),
    )
    .await;
    assert_eq!(st, 403, "a viewer cannot mint keys");
    let (st, _) = as_viewer(
        plain
            .post(format!("{}/api/v1/memories/search", s.url))
            .json(&json!({"query": "x", "scopes": ["org"]})),
    )
    .await;
    assert_eq!(st, 401, "nor read memories: they are not the console's");
    // The admin token still acts.
    let (st, r) = common::send(
        s.http
            .post(format!("{}/api/v1/runs/{run}/cancel", s.url))
            .json(&json!({"reason": "the admin did"})),
    )
    .await;
    assert!(st == 200 || st == 409, "{st} {r}");

    for (viewer, says) in [
        (
            &[("STEWARD_SERVER__VIEWER_TOKEN", VIEWER)][..],
            "without server.admin_token",
        ),
        (
            &[
                ("STEWARD_SERVER__ADMIN_TOKEN", TOKEN),
                ("STEWARD_SERVER__VIEWER_TOKEN", TOKEN),
            ][..],
            "must differ",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_steward"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .envs(viewer.iter().copied())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{err}");
    }
}

/// Policies edited in the page: a set with an error is refused with Cedar's diagnostics shown in
/// place and the set in force unchanged; a valid one takes effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_with_an_error_shows_the_error() {
    let s =
        TestServer::start_with(Backend::Sqlite, &[("STEWARD_SERVER__ADMIN_TOKEN", TOKEN)]).await;
    let (_, before) = s.get("/api/v1/policies").await;
    let browser = Browser::start().await;
    browser.open(&format!("{}/ui/", s.url)).await;
    browser.type_into("#token", TOKEN).await;
    browser.click("form#sign-in button").await;
    browser.find("#states").await;
    browser.open(&format!("{}/ui/#/policies", s.url)).await;
    browser
        .wait_text("#policy-status", &format!("Version {}", before["version"]))
        .await;
    browser.clear("#policy-text").await;
    browser
        .type_into(
            "#policy-text",
            r#"permit (principal, action == Steward::Action::"llm.cal", resource);"#,
        )
        .await;
    browser.click("#policy-save").await;
    let shown = browser.wait_text("#policy-errors", "llm.cal").await;
    assert!(
        shown.contains("llm.cal"),
        "Cedar's diagnostic names it: {shown}"
    );
    browser.wait_text("#policy-status", "Not saved").await;
    if let Some(dir) = std::env::var_os("STEWARD_CONSOLE_SCREENSHOTS") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("console-policy.png"), browser.screenshot().await).unwrap();
    }
    let (_, after) = s.get("/api/v1/policies").await;
    assert_eq!(
        after["version"], before["version"],
        "the set in force is unchanged"
    );

    browser.clear("#policy-text").await;
    browser
        .type_into(
            "#policy-text",
            r#"permit (principal, action == Steward::Action::"llm.call", resource);"#,
        )
        .await;
    browser.click("#policy-save").await;
    browser
        .wait_text("#policy-status", "saved: it is in force")
        .await;
    let (_, now) = s.get("/api/v1/policies").await;
    assert_ne!(now["version"], before["version"]);
    assert!(now["text"].as_str().unwrap().contains("llm.call"), "{now}");
    let errors = browser.errors().await;
    assert!(
        errors
            .iter()
            .all(|e| e["message"].as_str().unwrap_or("").contains("400")),
        "only the refused save is logged: {errors:?}"
    );
}

/// Keys listed in the page and revoked from it: the key is refused from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_revoked_from_the_page() {
    let s =
        TestServer::start_with(Backend::Sqlite, &[("STEWARD_SERVER__ADMIN_TOKEN", TOKEN)]).await;
    let (st, k) = s.post("/api/v1/keys", json!({"agent": "leaky-bot"})).await;
    assert_eq!(st, 201, "{k}");
    let (id, secret) = (
        k["id"].as_str().unwrap().to_string(),
        k["key"].as_str().unwrap().to_string(),
    );
    let models = || {
        reqwest::Client::new()
            .get(format!("{}/v1/models", s.url))
            .bearer_auth(&secret)
            .send()
    };
    assert_eq!(models().await.unwrap().status(), 200);

    let browser = Browser::start().await;
    browser.open(&format!("{}/ui/", s.url)).await;
    browser.type_into("#token", TOKEN).await;
    browser.click("form#sign-in button").await;
    browser.find("#states").await;
    browser.open(&format!("{}/ui/#/keys", s.url)).await;
    let row = browser.wait_text("table#keys", &id).await;
    assert!(row.contains("leaky-bot") && row.contains("active"), "{row}");
    assert!(!row.contains(&secret), "a key's secret is never shown");
    browser
        .type_into("tr.key input.reason", "pasted in a ticket")
        .await;
    browser.click("tr.key button.revoke").await;
    browser.wait_text("table#keys", "pasted in a ticket").await;
    assert_eq!(models().await.unwrap().status(), 401, "refused from now on");
    let errors = browser.errors().await;
    assert!(errors.is_empty(), "the console logged errors: {errors:?}");
}

/// A fork started from a run's timeline is a second run: the page compares the two side by
/// side, the steps before the fork's step marked as replayed, and the fork's edit in its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_produces_a_second_run() {
    let counter = common::Counter::start().await;
    let s =
        TestServer::start_with(Backend::Sqlite, &[("STEWARD_SERVER__ADMIN_TOKEN", TOKEN)]).await;
    s.apply(&format!(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: greeter}}\nspec:\n  model: scripted\n  tools: [http_request]\n  script:\n    - toolCalls: [{{name: http_request, arguments: {{method: POST, url: \"{}/greet\"}}}}]\n    - content: \"hello {{{{input}}}}\"\n",
        counter.url
    ))
    .await;
    let source = s.start_run("greeter", "ana").await;
    assert_eq!(s.wait_run(&source).await["result"], "hello ana");

    let browser = Browser::start().await;
    browser.open(&format!("{}/ui/", s.url)).await;
    browser.type_into("#token", TOKEN).await;
    browser.click("form#sign-in button").await;
    browser.find("#states").await;
    browser.open(&format!("{}/ui/#/runs/{source}", s.url)).await;
    browser.wait_text("#run-result", "hello ana").await;
    // Step 2 is the model's answer: the greeting already sent is replayed, not sent again.
    browser.click("button.fork[data-seq='2']").await;
    browser.clear("#fork-input").await;
    browser.type_into("#fork-input", "bea").await;
    browser.click("#fork-start").await;
    let result = browser.wait_text("#compare-result", "hello bea").await;
    assert!(
        result.contains("hello ana"),
        "both answers side by side: {result}"
    );
    let replayed = browser.text("#compare-steps-table").await;
    assert!(replayed.contains("replayed"), "{replayed}");

    let (_, runs) = s.get("/api/v1/runs?agent=greeter").await;
    let runs = runs["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "a second run: {runs:?}");
    let fork = runs.iter().find(|r| r["id"] != source.as_str()).unwrap();
    let fork_id = fork["id"].as_str().unwrap();
    assert_eq!(fork["result"], "hello bea", "{fork}");
    assert_eq!(counter.total_for_run(&source), 1);
    assert_eq!(
        counter.total_for_run(fork_id),
        0,
        "the greeting was not sent again"
    );
    // The fork's own page says where it came from, and its audit records verify in the page.
    browser
        .open(&format!("{}/ui/#/runs/{fork_id}", s.url))
        .await;
    browser.wait_text("#forked-from", &source).await;
    browser.click("#verify-run-audit").await;
    let audit = browser.wait_text("#audit-records", "verified").await;
    assert!(audit.contains("run.create"), "{audit}");
    assert!(!audit.contains("does not verify"), "{audit}");
    // A record changed in the database behind the log's back is shown as such.
    let pool = sqlx::SqlitePool::connect(&s.db_url).await.unwrap();
    let changed = sqlx::query(
        "UPDATE audit_log SET body = replace(body, 'run.create', 'run.created') \
         WHERE body LIKE '%run.create%' AND body LIKE $1",
    )
    .bind(format!("%\"run_id\":\"{fork_id}\"%"))
    .execute(&pool)
    .await
    .unwrap()
    .rows_affected();
    pool.close().await;
    assert!(changed >= 1);
    browser.open(&format!("{}/ui/#/runs", s.url)).await;
    browser
        .open(&format!("{}/ui/#/runs/{fork_id}", s.url))
        .await;
    browser.click("#verify-run-audit").await;
    browser
        .wait_text("#audit-records", "its body is not what was logged")
        .await;
    let shots = std::env::var_os("STEWARD_CONSOLE_SCREENSHOTS");
    if let Some(dir) = &shots {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        browser
            .open(&format!("{}/ui/#/compare/{source}/{fork_id}", s.url))
            .await;
        browser.wait_text("#compare-result", "hello bea").await;
        std::fs::write(dir.join("console-fork.png"), browser.screenshot().await).unwrap();
    }
    let errors = browser.errors().await;
    assert!(errors.is_empty(), "the console logged errors: {errors:?}");
}

/// A rule that fired shows on the alerts page, and its incident is resolved from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_is_seen_and_its_incident_resolved_from_the_page() {
    let s = TestServer::start_with(
        Backend::Sqlite,
        &[
            ("STEWARD_SERVER__ADMIN_TOKEN", TOKEN),
            ("STEWARD_ENGINE__ALERT_EVERY_MS", "100"),
        ],
    )
    .await;
    let (st, a) = s
        .put(
            "/api/v1/alerts/looping",
            json!({"metric": "loops", "above": 0}),
        )
        .await;
    assert_eq!(st, 200, "{a}");
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: looper}\nspec:\n  model: scripted\n  tools: [echo]\n  liveness: {maxRepeats: 1}\n  script:\n    - {toolCalls: [{name: echo, arguments: {n: 1}}]}\n    - {toolCalls: [{name: echo, arguments: {n: 1}}]}\n    - {content: never}\n").await;
    let run = s.start_run("looper", "x").await;
    s.wait_run(&run).await;

    let browser = Browser::start().await;
    browser.open(&format!("{}/ui/", s.url)).await;
    browser.type_into("#token", TOKEN).await;
    browser.click("form#sign-in button").await;
    browser.find("#states").await;
    browser.open(&format!("{}/ui/#/alerts", s.url)).await;
    let row = browser.wait_text("table#alerts", "firing").await;
    assert!(row.contains("loops > 0"), "{row}");
    let open = browser.wait_text("table#incidents", "alert:looping").await;
    assert!(open.contains("loops is 1, above 0"), "{open}");
    browser
        .type_into("tr.incident input.reason", "the looper was fixed")
        .await;
    browser.click("tr.incident button.resolve").await;
    browser.wait_text("#incidents", "No open incidents").await;
    let (_, l) = s.get("/api/v1/incidents?state=resolved").await;
    assert_eq!(
        l["incidents"][0]["resolution"], "the looper was fixed",
        "{l}"
    );
    let errors = browser.errors().await;
    assert!(errors.is_empty(), "the console logged errors: {errors:?}");
}

/// The fleet's other pages: a dead task requeued from the queues page, a schedule, a tree of
/// supervisors, the merge queue, an agent suspended and a delegation revoked in place — and no
/// page logs an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_pages_show_and_act() {
    let s =
        TestServer::start_with(Backend::Sqlite, &[("STEWARD_SERVER__ADMIN_TOKEN", TOKEN)]).await;
    // A task that failed for good.
    let (st, e) = s
        .put("/api/v1/queues/jobs", json!({"max_attempts": 1}))
        .await;
    assert_eq!(st, 200, "{e}");
    let (_, t) = s
        .post("/api/v1/queues/jobs/tasks", json!({"payload": "flaky"}))
        .await;
    let task = t["task"]["id"].as_str().unwrap().to_string();
    let (_, got) = s
        .post(
            "/api/v1/queues/jobs/lease",
            json!({"worker": "w1", "max": 1}),
        )
        .await;
    let (st, e) = s
        .post(
            &format!("/api/v1/tasks/{task}/fail"),
            json!({"worker": "w1", "attempt": got["tasks"][0]["attempts"], "error": "upstream 503"}),
        )
        .await;
    assert_eq!(st, 204, "{e}");
    let (st, e) = s
        .put(
            "/api/v1/schedules/nightly",
            json!({"cron": "0 0 3 * * *", "queue": "jobs", "payload": {"n": 1}}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: worker}\nspec:\n  model: scripted\n  script:\n    - {content: done}\n")
        .await;
    for (name, spec) in [
        (
            "inner",
            json!({"strategy": "one_for_one", "children": [{"name": "w", "agent": "worker"}]}),
        ),
        (
            "outer",
            json!({"strategy": "one_for_one", "children": [{"name": "inner", "supervisor": "inner"}]}),
        ),
    ] {
        let (st, e) = s.put(&format!("/api/v1/supervisors/{name}"), spec).await;
        assert_eq!(st, 200, "{e}");
    }
    let lead = common::key_of(&s, "lead-bot", "ana").await;
    let (st, d) = common::send(
        common::as_agent(s.http.post(format!("{}/v1/delegations", s.url)), &lead)
            .json(&json!({"to": "helper-bot"})),
    )
    .await;
    assert_eq!(st, 201, "{d}");
    let link = d["id"].as_str().unwrap().to_string();

    let browser = Browser::start().await;
    browser.open(&format!("{}/ui/", s.url)).await;
    browser.type_into("#token", TOKEN).await;
    browser.click("form#sign-in button").await;
    browser.find("#states").await;

    browser.open(&format!("{}/ui/#/queues", s.url)).await;
    let queues = browser.wait_text("table#queues", "jobs").await;
    assert!(queues.contains("jobs"), "{queues}");
    let dead = browser.wait_text("table#dead-letters", &task).await;
    assert!(dead.contains("upstream 503"), "{dead}");
    browser.click("#dead-letters button.requeue").await;
    browser.wait_text("#dead-letters", "No dead tasks").await;
    let (_, t) = s.get(&format!("/api/v1/tasks/{task}")).await;
    assert_eq!(t["state"], "pending", "requeued: {t}");

    browser.open(&format!("{}/ui/#/schedules", s.url)).await;
    let sched = browser.wait_text("table#schedules", "nightly").await;
    assert!(
        sched.contains("0 0 3 * * *") && sched.contains("a task on jobs"),
        "{sched}"
    );

    browser.open(&format!("{}/ui/#/supervisors", s.url)).await;
    let tree = browser.wait_text("#main", "outer").await;
    assert!(
        tree.contains("supervisor inner"),
        "outer's child is a supervisor: {tree}"
    );
    assert!(
        tree.contains("agent worker"),
        "inner's child is a run: {tree}"
    );

    browser.open(&format!("{}/ui/#/merges", s.url)).await;
    browser.wait_text("#repos", "No repositories").await;

    // A sandbox made from the page, and commands run in its console on one workspace.
    browser.open(&format!("{}/ui/#/sandboxes", s.url)).await;
    browser.click("#new-sandbox").await;
    browser.find("#exec-form").await;
    browser
        .type_into("#exec-command", "echo kept > note && cat note")
        .await;
    browser.click("#exec-form button").await;
    browser.wait_text("#exec-log", "kept").await;
    browser
        .type_into("#exec-command", "wc -c < note; exit 3")
        .await;
    browser.click("#exec-form button").await;
    let second = browser
        .wait_text("#exec-log .exec:nth-child(2)", "exit 3 ·")
        .await;
    assert_eq!(
        browser
            .text("#exec-log .exec:nth-child(2) .stdout")
            .await
            .trim(),
        "5",
        "the file the first command wrote is there for the second: {second}"
    );

    browser.open(&format!("{}/ui/#/identities", s.url)).await;
    browser.wait_text("table#identities", "lead-bot").await;
    browser
        .type_into("tr.identity input.reason", "on leave")
        .await;
    browser.click("tr.identity button.suspend").await;
    browser.wait_text("table#identities", "suspended").await;
    let (_, id) = s.get("/api/v1/agents/lead-bot/identity").await;
    assert_eq!(id["status"], "suspended", "{id}");

    browser.open(&format!("{}/ui/#/delegations", s.url)).await;
    browser.wait_text("table#delegations", &link).await;
    browser
        .type_into("tr.delegation input.reason", "no longer needed")
        .await;
    browser.click("tr.delegation button.revoke").await;
    browser
        .wait_text("table#delegations", "no longer needed")
        .await;
    let (_, d) = s.get(&format!("/api/v1/delegations/{link}")).await;
    assert!(d["revoked_at"].is_i64(), "{d}");

    let errors = browser.errors().await;
    assert!(errors.is_empty(), "the console logged errors: {errors:?}");
}

/// Scores show on the evaluation page, charted per evaluator, and on the run's own page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_are_charted_and_shown_with_their_run() {
    let s = TestServer::start_with(
        Backend::Sqlite,
        &[
            ("STEWARD_SERVER__ADMIN_TOKEN", TOKEN),
            ("STEWARD_ENGINE__ALERT_EVERY_MS", "100"),
        ],
    )
    .await;
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: greeter}\nspec:\n  model: scripted\n  script:\n    - content: \"hello {{input}}\"\n")
        .await;
    let (st, e) = s
        .put(
            "/api/v1/evaluators/polite",
            json!({"kind": "rules", "rules": {"result_contains": "hello"}, "agents": ["greeter"]}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    let run = s.start_run("greeter", "ana").await;
    s.wait_run(&run).await;
    eventually("the run scored", || async {
        let (_, l) = s.get("/api/v1/scores?evaluator=polite").await;
        (!l["scores"].as_array().unwrap().is_empty()).then_some(())
    })
    .await;

    let browser = Browser::start().await;
    browser.open(&format!("{}/ui/", s.url)).await;
    browser.type_into("#token", TOKEN).await;
    browser.click("form#sign-in button").await;
    browser.find("#states").await;
    browser.open(&format!("{}/ui/#/evaluation", s.url)).await;
    let row = browser.wait_text("table#evaluators", "polite").await;
    assert!(row.contains("1.00") && row.contains("100%"), "{row}");
    assert!(row.contains("online on greeter"), "{row}");
    browser.wait_text("table#scores", &run).await;
    browser.open(&format!("{}/ui/#/runs/{run}", s.url)).await;
    let scored = browser.wait_text("table#run-scores", "polite").await;
    assert!(scored.contains("all 1 checks held"), "{scored}");
    let errors = browser.errors().await;
    assert!(errors.is_empty(), "the console logged errors: {errors:?}");
}

/// Two experiments ticked on the evaluation page are compared side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_experiments_are_compared_side_by_side() {
    let s = TestServer::start_with(
        Backend::Sqlite,
        &[
            ("STEWARD_SERVER__ADMIN_TOKEN", TOKEN),
            ("STEWARD_ENGINE__ALERT_EVERY_MS", "100"),
        ],
    )
    .await;
    let greeter = |word: &str| {
        format!("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: greeter}}\nspec:\n  model: scripted\n  script:\n    - content: \"{word} {{{{input}}}}\"\n")
    };
    s.put(
        "/api/v1/datasets/names",
        json!({"items": [{"input": "ana", "expected": "hello ana"}]}),
    )
    .await;
    s.put(
        "/api/v1/evaluators/exact",
        json!({"kind": "rules", "rules": {"result_contains_expected": true}}),
    )
    .await;
    let mut ids = Vec::new();
    for word in ["hello", "bye"] {
        s.apply(&greeter(word)).await;
        let (st, x) = s
            .post(
                "/api/v1/experiments",
                json!({"dataset": "names", "agent": "greeter", "evaluators": ["exact"]}),
            )
            .await;
        assert_eq!(st, 201, "{x}");
        let id = x["id"].as_str().unwrap().to_string();
        eventually("the experiment scored", || async {
            let (_, x) = s.get(&format!("/api/v1/experiments/{id}")).await;
            (x["summary"]["evaluators"]["exact"]["scored"] == 1).then_some(())
        })
        .await;
        ids.push(id);
    }

    let browser = Browser::start().await;
    browser.open(&format!("{}/ui/", s.url)).await;
    browser.type_into("#token", TOKEN).await;
    browser.click("form#sign-in button").await;
    browser.find("#states").await;
    browser.open(&format!("{}/ui/#/evaluation", s.url)).await;
    browser.wait_text("table#experiments", &ids[1]).await;
    for id in &ids {
        browser.click(&format!("input.pick[data-id='{id}']")).await;
    }
    browser.click("#compare-experiments").await;
    let summary = browser.wait_text("#experiment-summary", "greeter v2").await;
    assert!(summary.contains("greeter v1"), "{summary}");
    let exact = browser.text("#score-exact").await;
    assert!(exact.contains("1.00") && exact.contains("0.00"), "{exact}");
    let items = browser.text("#experiment-items").await;
    assert!(
        items.contains("hello ana") && items.contains("bye ana"),
        "{items}"
    );
    let errors = browser.errors().await;
    assert!(errors.is_empty(), "the console logged errors: {errors:?}");
}

/// The gateway's calls are listed, and the costs page shows each budget's spend, cap and holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_budgets_are_shown() {
    let upstream = common::ok_upstream().await;
    let s = TestServer::start_with(
        Backend::Sqlite,
        &[
            ("STEWARD_SERVER__ADMIN_TOKEN", TOKEN),
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &upstream),
            // A model held against a budget needs a price.
            ("STEWARD_LLM__PRICES__M__INPUT", "1.0"),
            ("STEWARD_LLM__PRICES__M__OUTPUT", "2.0"),
        ],
    )
    .await;
    let (st, e) = s
        .put("/api/v1/budgets/agent:caller-bot", json!({"cap_usd": 5.0}))
        .await;
    assert_eq!(st, 200, "{e}");
    let key = common::key_of(&s, "caller-bot", "ana").await;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.url))
        .bearer_auth(&key)
        .json(&json!({"model": "mock/m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    common::settled(&s).await;

    let browser = Browser::start().await;
    browser.open(&format!("{}/ui/", s.url)).await;
    browser.type_into("#token", TOKEN).await;
    browser.click("form#sign-in button").await;
    browser.find("#states").await;
    browser.open(&format!("{}/ui/#/calls", s.url)).await;
    let calls = browser.wait_text("table#calls", "caller-bot").await;
    assert!(calls.contains("mock/m") && calls.contains("ok"), "{calls}");
    browser.open(&format!("{}/ui/#/costs", s.url)).await;
    let budgets = browser.wait_text("table#budgets", "agent:caller-bot").await;
    assert!(budgets.contains("$5.00"), "the cap: {budgets}");
    let errors = browser.errors().await;
    assert!(errors.is_empty(), "the console logged errors: {errors:?}");
}
