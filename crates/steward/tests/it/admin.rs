//! The management API behind an admin token: with `server.admin_token` set, `/api/v1` refuses
//! requests without it (401, `unauthorized`), the CLI sends it from `STEWARD_TOKEN`, and the
//! probes and the `/v1` gateway (which has its own API keys) are unaffected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::process::Command;

use common::{Backend, TestServer};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_management_api_needs_the_admin_token_when_one_is_set() {
    const TOKEN: &str = "adm-7f3e0c9a1b2d4e6f";
    let s =
        TestServer::start_with(Backend::Sqlite, &[("STEWARD_SERVER__ADMIN_TOKEN", TOKEN)]).await;
    let http = reqwest::Client::new();
    let get = |auth: Option<&str>| {
        let mut rb = http.get(format!("{}/api/v1/runs", s.url));
        if let Some(a) = auth {
            rb = rb.header("authorization", a);
        }
        rb.send()
    };
    let r = get(None).await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(
        get(Some("Bearer wrong-token-of-same-len"))
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        get(Some(&format!("Bearer {TOKEN}")))
            .await
            .unwrap()
            .status(),
        200
    );
    // Probes stay open; the gateway answers with its own authentication.
    assert_eq!(
        http.get(format!("{}/healthz", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = http
        .get(format!("{}/v1/models", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no API key");

    let cli = |token: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_steward"));
        c.args(["get", "runs"]).env("STEWARD_URL", &s.url);
        if let Some(t) = token {
            c.env("STEWARD_TOKEN", t);
        }
        c.output().unwrap()
    };
    let out = cli(None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized"));
    assert!(cli(Some(TOKEN)).status.success());
}
