//! `http_request`: one HTTP call with a timeout and a cap on the response size. Every request
//! carries `Idempotency-Key: run:seq` so upstreams that honour it can drop a retried duplicate.
//! Loopback and private addresses are refused unless `tools.http.allow_private_networks` is set.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::{json, Value};
use steward_types::config::HttpToolConfig;

use crate::{str_arg, Result, Tool, ToolContext, ToolError, ToolInfo};

const MAX_REQUEST_BODY: usize = 1024 * 1024;

pub struct HttpRequest {
    client: reqwest::Client,
    max_response_bytes: usize,
    timeout_ms: u64,
    allow_private: bool,
}

impl HttpRequest {
    pub fn new(cfg: &HttpToolConfig) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .connect_timeout(Duration::from_millis(cfg.timeout_ms.min(10_000)))
            // A redirect could lead to an address the checks below never saw.
            .redirect(reqwest::redirect::Policy::none())
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
        let port = url.port_or_known_default().unwrap_or(80);
        let addrs: Vec<IpAddr> = match host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
        {
            Ok(ip) => vec![ip],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| ToolError::Failed(format!("cannot resolve {host}: {e}")))?
                .map(|a| a.ip())
                .collect(),
        };
        if let Some(ip) = addrs.iter().find(|ip| is_private(ip)) {
            return Err(ToolError::Denied(format!(
                "{host} resolves to the private address {ip}; set tools.http.allow_private_networks to allow it"
            )));
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
    fn info(&self) -> ToolInfo {
        ToolInfo {
            name: "http_request",
            description: "Makes an HTTP request and returns status, content type and body (truncated at a size cap).",
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
                let v = with_secrets(v, &*ctx.host, &mut used)?;
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
            if e.is_timeout() {
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

/// `{{secret:NAME}}` in a header value, replaced by the vault's value at call time. The
/// arguments — journaled, and written by the model — only ever hold the placeholder.
fn with_secrets(
    value: &str,
    host: &dyn crate::ToolHost,
    used: &mut Vec<(String, String)>,
) -> Result<String, ToolError> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("{{secret:") {
        out.push_str(&rest[..start]);
        let after = &rest[start + "{{secret:".len()..];
        let end = after
            .find("}}")
            .ok_or_else(|| ToolError::InvalidArgs("`{{secret:` without its closing `}}`".into()))?;
        let name = &after[..end];
        let secret = host.secret(name).ok_or_else(|| {
            ToolError::InvalidArgs(format!("no secret named {name:?} in the vault"))
        })?;
        out.push_str(&secret);
        used.push((name.to_string(), secret));
        rest = &after[end + 2..];
    }
    out.push_str(rest);
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

    #[test]
    fn idempotency_follows_the_method() {
        let t = HttpRequest::new(&HttpToolConfig::default()).unwrap();
        assert!(t.idempotent(&json!({"url": "x"})));
        assert!(t.idempotent(&json!({"method": "put"})));
        assert!(!t.idempotent(&json!({"method": "POST"})));
    }
}
