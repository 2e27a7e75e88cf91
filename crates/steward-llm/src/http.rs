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
    let mut resp = req
        .timeout(Duration::from_millis(timeout_ms))
        .send()
        .await
        .map_err(map_send)?;
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
            body: snippet(&body),
            retry_after,
        });
    }
    serde_json::from_slice(&body).map_err(|e| Error::Garbage {
        provider: provider.to_string(),
        detail: format!("{e}; body starts {:?}", snippet(&body)),
    })
}

fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned()
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
    let resp = req.send().await.map_err(map_send)?;
    let status = resp.status();
    if !status.is_success() {
        let retry_after = retry_after(resp.headers());
        let body = resp.bytes().await.unwrap_or_default();
        return Err(Error::Status {
            provider: provider.to_string(),
            status: status.as_u16(),
            body: snippet(&body),
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
