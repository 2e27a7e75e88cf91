//! `http_request`: one HTTP call with a timeout and a cap on the response size. Every request
//! carries `Idempotency-Key: run:seq` so upstreams that honour it can drop a retried duplicate.
//! Loopback and private addresses are refused unless `tools.http.allow_private_networks` is set.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::{json, Value};
use steward_types::config::HttpToolConfig;

use crate::{str_arg, Annotations, Result, Tool, ToolContext, ToolError, ToolInfo};

const MAX_REQUEST_BODY: usize = 1024 * 1024;

pub struct HttpRequest {
    client: reqwest::Client,
    max_response_bytes: usize,
    timeout_ms: u64,
    allow_private: bool,
}

/// Resolves host names for the client and refuses any name with a private address among its
/// answers. The check happens here, in the one lookup whose answers the client connects to:
/// a name that resolves differently a moment later (DNS rebinding) cannot slip past it.
struct PublicOnly {
    lookup: Lookup,
}

/// A name's addresses (the system resolver; tests give their own).
type Lookup = std::sync::Arc<
    dyn Fn(
            String,
        )
            -> futures::future::BoxFuture<'static, std::io::Result<Vec<std::net::SocketAddr>>>
        + Send
        + Sync,
>;

fn system_lookup() -> Lookup {
    std::sync::Arc::new(|host: String| {
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), 0)).await?.collect()) })
    })
}

/// A name that resolved to an address `http_request` may not reach.
#[derive(Debug)]
struct PrivateAddress(String);

impl std::fmt::Display for PrivateAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PrivateAddress {}

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let lookup = self.lookup.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs = lookup(host.clone()).await?;
            if let Some(a) = addrs.iter().find(|a| is_private(&a.ip())) {
                return Err(Box::new(PrivateAddress(format!(
                    "{host} resolves to the private address {}; set tools.http.allow_private_networks to allow it",
                    a.ip()
                ))) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The refusal inside a client error, if the resolver refused the name.
fn private_address(e: &reqwest::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(p) = err.downcast_ref::<PrivateAddress>() {
            return Some(p.0.clone());
        }
        source = err.source();
    }
    None
}

impl HttpRequest {
    pub fn new(cfg: &HttpToolConfig) -> Result<Self> {
        Self::with_lookup(cfg, system_lookup())
    }

    fn with_lookup(cfg: &HttpToolConfig, lookup: Lookup) -> Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .connect_timeout(Duration::from_millis(cfg.timeout_ms.min(10_000)))
            // A redirect could lead to an address the checks below never saw.
            .redirect(reqwest::redirect::Policy::none());
        if !cfg.allow_private_networks {
            builder = builder.dns_resolver(std::sync::Arc::new(PublicOnly { lookup }));
        }
        let client = builder
            .build()
            .map_err(|e| ToolError::Failed(format!("cannot build an HTTP client: {e}")))?;
        Ok(HttpRequest {
            client,
            max_response_bytes: cfg.max_response_bytes,
            timeout_ms: cfg.timeout_ms,
            allow_private: cfg.allow_private_networks,
        })
    }

    async fn check_destination(&self, url: &reqwest::Url) -> Result<()> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ToolError::InvalidArgs(format!(
                "`url`: scheme {:?} is not http or https",
                url.scheme()
            )));
        }
        if self.allow_private {
            return Ok(());
        }
        let host = url
            .host_str()
            .ok_or_else(|| ToolError::InvalidArgs("`url` has no host".into()))?;
        // An address written in the URL is never looked up; a name is checked by the client's
        // resolver (`PublicOnly`), on the very answers it connects to.
        if let Ok(ip) = host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
        {
            if is_private(&ip) {
                return Err(ToolError::Denied(format!(
                    "{host} is the private address {ip}; set tools.http.allow_private_networks to allow it"
                )));
            }
        }
        Ok(())
    }
}

fn is_private(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64 // carrier-grade NAT
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link local
                || v6.to_ipv4_mapped().is_some_and(|v4| is_private(&IpAddr::V4(v4)))
        }
    }
}

#[async_trait::async_trait]
impl Tool for HttpRequest {
    fn annotations(&self) -> Annotations {
        Annotations {
            read_only: false,
            destructive: true,
            idempotent: false,
            open_world: true,
        }
    }
    fn outside_runs(&self) -> bool {
        true
    }
    fn info(&self) -> ToolInfo {
        ToolInfo {
            name: "http_request".into(),
            description: "Makes an HTTP request and returns status, content type and body (truncated at a size cap).".into(),
            parameters: json!({"type": "object", "required": ["url"], "properties": {
                "method": {"type": "string", "enum": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]},
                "url": {"type": "string"},
                "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                "body": {}
            }}),
        }
    }

    /// HTTP's own semantics: GET, HEAD, PUT and DELETE are idempotent; POST and PATCH are not.
    fn idempotent(&self, args: &Value) -> bool {
        let m = args
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or("GET")
            .to_ascii_uppercase();
        matches!(m.as_str(), "GET" | "HEAD" | "PUT" | "DELETE")
    }

    async fn call(&self, ctx: &ToolContext, args: Value) -> Result<Value> {
        let method = args
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or("GET")
            .to_ascii_uppercase();
        let method = match method.as_str() {
            "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" => {
                reqwest::Method::from_bytes(method.as_bytes())
                    .map_err(|e| ToolError::InvalidArgs(e.to_string()))?
            }
            other => {
                return Err(ToolError::InvalidArgs(format!(
                    "`method`: {other:?} is not supported"
                )))
            }
        };
        let url = reqwest::Url::parse(str_arg(&args, "url")?)
            .map_err(|e| ToolError::InvalidArgs(format!("`url`: {e}")))?;
        self.check_destination(&url).await?;
        let mut rb = self
            .client
            .request(method, url.clone())
            .header("Idempotency-Key", &ctx.idempotency_key);
        // Secrets used in headers, to keep out of whatever this tool returns.
        let mut used: Vec<(String, String)> = Vec::new();
        if let Some(h) = args.get("headers") {
            let h = h
                .as_object()
                .ok_or_else(|| ToolError::InvalidArgs("`headers` must be an object".into()))?;
            for (k, v) in h {
                let v = v.as_str().ok_or_else(|| {
                    ToolError::InvalidArgs(format!("`headers.{k}` must be a string"))
                })?;
                let v = with_secrets(v, ctx, url.host_str().unwrap_or_default(), &mut used).await?;
                rb = rb.header(k.as_str(), v);
            }
        }
        let redact = |text: String| {
            used.iter().fold(text, |t, (name, value)| {
                t.replace(value.as_str(), &format!("[secret:{name}]"))
            })
        };
        match args.get("body") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => rb = rb.body(s.clone()),
            Some(v) => rb = rb.json(v),
        }
        let body_len = args.get("body").map_or(0, |b| b.to_string().len());
        if body_len > MAX_REQUEST_BODY {
            return Err(ToolError::InvalidArgs(format!(
                "`body` is larger than {MAX_REQUEST_BODY} bytes"
            )));
        }
        let timeout_ms = self.timeout_ms;
        let fail = |e: reqwest::Error| {
            if let Some(why) = private_address(&e) {
                ToolError::Denied(why)
            } else if e.is_timeout() {
                ToolError::Failed(format!("{url}: no answer within {timeout_ms} ms"))
            } else {
                ToolError::Failed(redact(format!("{url}: {e}")))
            }
        };
        let mut resp = rb.send().await.map_err(fail)?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut body = Vec::new();
        let mut truncated = false;
        while let Some(chunk) = resp.chunk().await.map_err(fail)? {
            let room = self.max_response_bytes - body.len();
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                truncated = true;
                break; // stop reading: the rest is never downloaded
            }
            body.extend_from_slice(&chunk);
        }
        Ok(json!({
            "status": status,
            "content_type": content_type,
            "body": redact(String::from_utf8_lossy(&body).into_owned()),
            "truncated": truncated,
        }))
    }
}

/// `{{secret:NAME}}` in a header value, replaced by the vault's value at call time — if a
/// policy lets this run send that secret to `destination` (decided and audited by the host).
/// The arguments — journaled, and written by the model — only ever hold the placeholder.
async fn with_secrets(
    value: &str,
    ctx: &ToolContext,
    destination: &str,
    used: &mut Vec<(String, String)>,
) -> Result<String, ToolError> {
    let mut out = String::new();
    for part in crate::secret_refs::parts(value).map_err(ToolError::InvalidArgs)? {
        let name = match part {
            crate::secret_refs::Part::Text(t) => {
                out.push_str(t);
                continue;
            }
            crate::secret_refs::Part::Secret(name) => name,
            crate::secret_refs::Part::UserSecret(name) => {
                return Err(ToolError::InvalidArgs(format!(
                    "{{{{user_secret:{name}}}}}: a caller's own credential is for the APIs an administrator configured; here, name the secret"
                )))
            }
        };
        let run = ctx.run_id.as_ref().ok_or_else(|| {
            ToolError::Denied(format!(
                "secret {name:?}: secrets from the vault are sent only by a run's tool calls"
            ))
        })?;
        let secret = ctx.host.use_secret(run, name, destination).await?;
        out.push_str(&secret);
        used.push((name.to_string(), secret));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ranges_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.169.254",
            "::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "100.64.0.1",
        ] {
            assert!(is_private(&ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:4700::1111"] {
            assert!(!is_private(&ip.parse().unwrap()), "{ip}");
        }
    }

    /// Names are checked by the resolver the client connects with, so the addresses checked
    /// are the addresses dialled: a name that resolves to loopback is never connected to, even
    /// with a live server there.
    #[tokio::test]
    async fn the_client_never_dials_a_name_that_resolves_privately() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let accepted = tokio::spawn(async move { l.accept().await.is_ok() });
        let t = HttpRequest::new(&HttpToolConfig::default()).unwrap();
        let e = t
            .client
            .get(format!("http://localhost:{port}/"))
            .send()
            .await
            .unwrap_err();
        let why = private_address(&e).expect("refused by the resolver");
        assert!(
            why.contains("localhost resolves to the private address"),
            "{why}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!accepted.is_finished(), "no connection was made");
        accepted.abort();
        // Allowed, the same name connects.
        let open = HttpRequest::new(&HttpToolConfig {
            allow_private_networks: true,
            ..HttpToolConfig::default()
        })
        .unwrap();
        let e = open
            .client
            .get(format!("http://localhost:{port}/"))
            .timeout(Duration::from_millis(200))
            .send()
            .await;
        assert!(e.as_ref().err().and_then(private_address).is_none());
    }

    /// A name that answers a public address when checked and loopback a moment later: the
    /// address dialled is the one checked, and the second answer is refused — the live server
    /// on loopback is never reached.
    #[tokio::test]
    async fn a_rebinding_name_never_reaches_what_it_rebinds_to() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let accepted = tokio::spawn(async move { l.accept().await.is_ok() });
        let answers = std::sync::Arc::new(std::sync::Mutex::new(vec![
            // Second answer: loopback, where the server listens.
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            // First answer: a public address (TEST-NET-2) that cannot be reached from here.
            std::net::SocketAddr::from(([198, 51, 100, 7], port)),
        ]));
        let lookup: Lookup = std::sync::Arc::new(move |_host: String| {
            let next = answers.lock().unwrap().pop();
            Box::pin(async move { Ok(next.into_iter().collect()) })
        });
        let cfg = HttpToolConfig {
            timeout_ms: 300,
            ..HttpToolConfig::default()
        };
        let t = HttpRequest::with_lookup(&cfg, lookup).unwrap();
        let url = format!("http://rebind.test:{port}/");
        let first = t.client.get(&url).send().await.unwrap_err();
        assert!(private_address(&first).is_none(), "{first}");
        let second = t.client.get(&url).send().await.unwrap_err();
        let why = private_address(&second).unwrap_or_else(|| {
            panic!("the rebound answer is refused: {second:?} (first: {first:?})")
        });
        assert!(why.contains("127.0.0.1"), "{why}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!accepted.is_finished(), "loopback was never dialled");
        accepted.abort();
    }

    #[test]
    fn idempotency_follows_the_method() {
        let t = HttpRequest::new(&HttpToolConfig::default()).unwrap();
        assert!(t.idempotent(&json!({"url": "x"})));
        assert!(t.idempotent(&json!({"method": "put"})));
        assert!(!t.idempotent(&json!({"method": "POST"})));
    }
}
