//! What the HTTP providers share: one client per provider with bounded waits, and the
//! translation of transport failures into errors that say what happened.

use std::time::Duration;

use crate::{Error, Result};

/// Bodies larger than this are refused: no chat completion is this big, a runaway upstream is.
const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// A client whose waits are bounded by silence (`read_timeout`), so streams may run long;
/// whole non-streaming requests are bounded per request (`RequestBuilder::timeout`).
pub(crate) fn client(timeout_ms: u64) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .read_timeout(Duration::from_millis(timeout_ms))
        .connect_timeout(Duration::from_millis(timeout_ms.min(10_000)))
        .build()
        .map_err(|e| Error::Route(format!("cannot build an HTTP client: {e}")))
}

/// Joins a path onto a base URL, keeping any query string (Azure-style `?api-version=`).
pub(crate) fn join(base: &str, path: &str) -> String {
    match base.split_once('?') {
        Some((b, q)) => format!("{}/{}?{}", b.trim_end_matches('/'), path, q),
        None => format!("{}/{}", base.trim_end_matches('/'), path),
    }
}

/// Sends a JSON request and returns the JSON body of a 2xx answer.
pub(crate) async fn post_json(
    provider: &str,
    timeout_ms: u64,
    req: reqwest::RequestBuilder,
    url: &str,
) -> Result<serde_json::Value> {
    let map_send = |e: reqwest::Error| {
        if e.is_timeout() {
            Error::Timeout {
                provider: provider.to_string(),
                timeout_ms,
            }
        } else {
            Error::Connect {
                provider: provider.to_string(),
                url: url.to_string(),
                detail: root_cause(&e),
            }
        }
    };
    let (client, req) = req.timeout(Duration::from_millis(timeout_ms)).build_split();
    let req = req.map_err(map_send)?;
    let creds = credentials(&req);
    let mut resp = client.execute(req).await.map_err(map_send)?;
    let status = resp.status();
    let retry_after = retry_after(resp.headers());
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(map_send)? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_RESPONSE_BYTES {
            return Err(Error::Garbage {
                provider: provider.to_string(),
                detail: format!("body larger than {MAX_RESPONSE_BYTES} bytes"),
            });
        }
    }
    if !status.is_success() {
        return Err(Error::Status {
            provider: provider.to_string(),
            status: status.as_u16(),
            body: snippet(&body, &creds),
            retry_after,
        });
    }
    serde_json::from_slice(&body).map_err(|e| Error::Garbage {
        provider: provider.to_string(),
        detail: format!("{e}; body starts {:?}", snippet(&body, &creds)),
    })
}

/// The start of an upstream's body, for an error, with every credential the request carried
/// taken out: an upstream that echoes the key it was sent must not hand it to the caller, the
/// call log or the audit record.
fn snippet(body: &[u8], creds: &[String]) -> String {
    const SHOWN: usize = 300;
    // Redact over more than is shown, so a key that straddles the cut is caught whole.
    let mut text = String::from_utf8_lossy(&body[..body.len().min(64 * 1024)]).into_owned();
    for c in creds {
        text = text.replace(c.as_str(), "[redacted]");
    }
    match text.char_indices().nth(SHOWN) {
        Some((i, _)) => text[..i].to_string(),
        None => text,
    }
}

/// The secrets a request carries: credential headers (without their scheme) and credential
/// query parameters. Short values are not secrets worth the name, and would redact noise.
fn credentials(req: &reqwest::Request) -> Vec<String> {
    let secretish = |name: &str| {
        let n = name.to_ascii_lowercase();
        n == "authorization"
            || n == "proxy-authorization"
            || ["key", "token", "secret", "signature", "sig"]
                .iter()
                .any(|w| n.contains(w))
    };
    let mut out: Vec<String> = Vec::new();
    for (name, value) in req.headers() {
        if !secretish(name.as_str()) {
            continue;
        }
        if let Ok(v) = value.to_str() {
            let v = v.trim();
            let bare = v.split_once(' ').map_or(v, |(_, rest)| rest.trim());
            out.extend([v, bare].into_iter().map(str::to_string));
        }
    }
    for (k, v) in req.url().query_pairs() {
        if secretish(&k) {
            out.push(v.into_owned());
        }
    }
    out.retain(|c| c.len() >= 8);
    // Longest first, so a whole header value goes before the key inside it.
    out.sort_by_key(|c| std::cmp::Reverse(c.len()));
    out.dedup();
    out
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

pub(crate) fn garbage(provider: &str, detail: impl Into<String>) -> Error {
    Error::Garbage {
        provider: provider.to_string(),
        detail: detail.into(),
    }
}

/// Sends a streaming request; returns the body as a stream once the upstream answered 2xx.
pub(crate) async fn post_stream(
    provider: &str,
    timeout_ms: u64,
    req: reqwest::RequestBuilder,
    url: &str,
) -> Result<crate::ByteStream> {
    use futures::StreamExt;
    let p = provider.to_string();
    let map_send = |e: reqwest::Error| {
        if e.is_timeout() {
            Error::Timeout {
                provider: p.clone(),
                timeout_ms,
            }
        } else {
            Error::Connect {
                provider: p.clone(),
                url: url.to_string(),
                detail: root_cause(&e),
            }
        }
    };
    let (client, req) = req.build_split();
    let req = req.map_err(map_send)?;
    let creds = credentials(&req);
    let resp = client.execute(req).await.map_err(map_send)?;
    let status = resp.status();
    if !status.is_success() {
        let retry_after = retry_after(resp.headers());
        // Bounded like any wait on this upstream: an error body that never ends is cut off.
        let body = match tokio::time::timeout(Duration::from_millis(timeout_ms), resp.bytes()).await
        {
            Ok(Ok(b)) => b,
            _ => Default::default(),
        };
        return Err(Error::Status {
            provider: provider.to_string(),
            status: status.as_u16(),
            body: snippet(&body, &creds),
            retry_after,
        });
    }
    let p = provider.to_string();
    Ok(resp
        .bytes_stream()
        .map(move |chunk| {
            chunk.map_err(|e| {
                if e.is_timeout() {
                    Error::Timeout {
                        provider: p.clone(),
                        timeout_ms,
                    }
                } else {
                    Error::Garbage {
                        provider: p.clone(),
                        detail: format!("the stream broke off: {}", root_cause(&e)),
                    }
                }
            })
        })
        .boxed())
}

/// `Retry-After` in seconds (the HTTP-date form is rare from model APIs and is ignored).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(3600.0)))
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    #[test]
    fn credentials_a_request_carried_never_come_back_in_an_error() {
        let key = "sk-proj-0123456789abcdefSECRET";
        let req = reqwest::Client::new()
            .post("http://upstream.test/v1/chat?api-key=q-9876543210&x=1")
            .bearer_auth(key)
            .header("x-api-key", "xk-ABCDEFGHIJKL")
            .build()
            .unwrap();
        let creds = credentials(&req);
        let body = format!(
            "{{\"error\": \"Incorrect API key provided: {key}. Also Bearer {key}, xk-ABCDEFGHIJKL, q-9876543210\"}}"
        );
        let shown = snippet(body.as_bytes(), &creds);
        for secret in [key, "xk-ABCDEFGHIJKL", "q-9876543210"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("[redacted]"), "{shown}");
        // A key past the shown part, or straddling its end, is never shown in part either.
        let long = format!("{}{key}", "x".repeat(290));
        let shown = snippet(long.as_bytes(), &creds);
        assert!(!shown.contains("sk-proj-0"), "{shown}");
    }
}
