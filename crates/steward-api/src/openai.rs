//! The OpenAI-compatible gateway under `/v1`: what an agent written with any framework points
//! its base URL at. Requests and errors follow OpenAI's shapes, so the official SDKs work
//! unchanged; every call is a syscall through the engine (`Engine::gateway_chat`).

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use steward_engine::{Engine, GatewayError, GatewayReply, Principal};

/// An error in OpenAI's format: `{"error": {"message", "type", "param", "code"}}`.
pub struct OaiError {
    pub(crate) retry_after_s: Option<u64>,
    pub(crate) status: StatusCode,
    kind: &'static str,
    code: &'static str,
    pub(crate) message: String,
}

impl OaiError {
    pub(crate) fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        OaiError {
            retry_after_s: None,
            status,
            kind,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for OaiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message, "type": self.kind, "param": null, "code": self.code}});
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after_s {
            resp.headers_mut().insert(header::RETRY_AFTER, s.into());
        }
        resp
    }
}

impl From<GatewayError> for OaiError {
    fn from(e: GatewayError) -> Self {
        let message = e.to_string();
        match e {
            GatewayError::Unauthorized(_) => OaiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "invalid_api_key",
                message,
            ),
            GatewayError::BadRequest(_) => OaiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_request",
                message,
            ),
            GatewayError::RateLimited { retry_after_s, .. } => OaiError {
                retry_after_s: Some(retry_after_s),
                ..OaiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    "rate_limit_exceeded",
                    message,
                )
            },
            // 402, not 429: an SDK must not retry a call the budget refused.
            GatewayError::BudgetExceeded { .. } => OaiError::new(
                StatusCode::PAYMENT_REQUIRED,
                "insufficient_quota",
                "budget_exceeded",
                message,
            ),
            GatewayError::ModelNotFound(_) => OaiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "model_not_found",
                message,
            ),
            GatewayError::Forbidden(_) => OaiError::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                "policy_denied",
                message,
            ),
            GatewayError::Refused { code, .. } => OaiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                code,
                message,
            ),
            GatewayError::Upstream { timeout: true, .. } => OaiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "api_error",
                "upstream_timeout",
                message,
            ),
            GatewayError::Upstream {
                status: Some(429),
                retry_after_s,
                ..
            } => OaiError {
                retry_after_s,
                ..OaiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    "upstream_rate_limited",
                    message,
                )
            },
            // Steward's own credential for the upstream was refused: not the caller's to fix.
            GatewayError::Upstream {
                status: Some(401 | 403),
                ..
            } => OaiError::new(
                StatusCode::BAD_GATEWAY,
                "api_error",
                "upstream_auth_error",
                format!("{message} (the upstream refused the provider credential Steward holds; an operator must fix it)"),
            ),
            // The upstream rejected the request itself: the caller hears it as it is, and an
            // SDK does not retry it.
            GatewayError::Upstream {
                status: Some(s @ 400..=499),
                ..
            } => OaiError::new(
                StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_REQUEST),
                "invalid_request_error",
                "upstream_rejected",
                message,
            ),
            GatewayError::Upstream { .. } => OaiError::new(
                StatusCode::BAD_GATEWAY,
                "api_error",
                "upstream_error",
                message,
            ),
            GatewayError::Internal(_) => {
                tracing::error!(error = %message, "gateway internal error");
                OaiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "api_error",
                    "internal_error",
                    "internal error; the server log has the details",
                )
            }
        }
    }
}

pub(crate) async fn principal(engine: &Engine, headers: &HeaderMap) -> Result<Principal, OaiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let run = headers.get("x-steward-run").and_then(|v| v.to_str().ok());
    let delegation = headers
        .get("x-steward-delegation")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    Ok(engine
        .gateway()
        .authenticate(bearer, delegation, run)
        .await?)
}

/// The text a message's content holds: a string, or its parts' text joined by `sep` (the
/// Messages and Responses APIs both give content either way).
pub(crate) fn content_text(content: &Value, sep: &str) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(sep),
        _ => String::new(),
    }
}

pub(crate) fn json_object(body: &Bytes) -> Result<Value, OaiError> {
    let body: Value = serde_json::from_slice(body).map_err(|e| {
        OaiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_json",
            format!("request body is not valid JSON: {e}"),
        )
    })?;
    if !body.is_object() {
        return Err(OaiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            "request body must be a JSON object",
        ));
    }
    Ok(body)
}

pub async fn embeddings(
    State(engine): State<Engine>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OaiError> {
    let who = principal(&engine, &headers).await?;
    match engine
        .gateway()
        .embeddings(&who, json_object(&body)?)
        .await?
    {
        GatewayReply::Json(v) | GatewayReply::Native(v) => Ok(Json(v).into_response()),
        GatewayReply::Stream(_) | GatewayReply::NativeStream(_) => Err(OaiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "internal_error",
            "embeddings do not stream",
        )),
    }
}

pub async fn chat_completions(
    State(engine): State<Engine>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OaiError> {
    let who = principal(&engine, &headers).await?;
    // Chat completions are every deployment's own API: the answer is the upstream's.
    match engine.gateway().chat(&who, json_object(&body)?).await? {
        GatewayReply::Json(v) | GatewayReply::Native(v) => Ok(Json(v).into_response()),
        GatewayReply::Stream(s) | GatewayReply::NativeStream(s) => Ok((
            [
                (header::CONTENT_TYPE, "text/event-stream"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            Body::from_stream(s),
        )
            .into_response()),
    }
}

pub async fn models(
    State(engine): State<Engine>,
    headers: HeaderMap,
) -> Result<Json<Value>, OaiError> {
    principal(&engine, &headers).await?;
    let data: Vec<Value> = engine
        .gateway()
        .models()
        .into_iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "steward"}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `GET /v1/models/{id}`: one model the caller may name, or 404.
pub async fn model(
    State(engine): State<Engine>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, OaiError> {
    principal(&engine, &headers).await?;
    if !engine.gateway().routes(&id) {
        return Err(OaiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!("no model {id:?}: GET /v1/models lists them"),
        ));
    }
    Ok(Json(
        json!({"id": id, "object": "model", "created": 0, "owned_by": "steward"}),
    ))
}

pub async fn not_found() -> OaiError {
    OaiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "unknown_url",
        "no such endpoint under /v1",
    )
}

/// `POST /v1/delegations`: the caller (an API key, or a delegated token) mints a token for
/// another agent, no wider than its own credential.
pub async fn delegate(
    State(engine): State<Engine>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OaiError> {
    let who = principal(&engine, &headers).await?;
    let req: crate::wire::DelegationRequest =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&body))
            .map_err(|e| {
                OaiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "invalid_request",
                    format!("request body: {}: {}", e.path(), e.inner()),
                )
            })?;
    let bad = |m: &str| {
        OaiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            m,
        )
    };
    let budget_nanos = match req.budget_usd {
        Some(b) if !(0.0..=1e6).contains(&b) || b.is_nan() => {
            return Err(bad("budget_usd: from 0 to 1,000,000"))
        }
        b => b.map(|b| (b * 1e9).round() as i64),
    };
    let expires_at = match req.ttl_s {
        Some(t) if !(1..=366 * 86_400).contains(&t) => {
            return Err(bad("ttl_s: from 1 second to a year"))
        }
        t => t.map(|t| engine.now_ms() + t * 1000),
    };
    let set = |l: Option<Vec<String>>| l.map(|l| l.into_iter().collect());
    let (rec, token) = engine
        .delegations()
        .mint(
            &who,
            &req.to,
            steward_gov::delegation::Requested {
                actions: set(req.actions),
                models: set(req.models),
                tools: set(req.tools),
                budget_nanos,
                expires_at,
            },
        )
        .await?;
    let mut out = crate::wire::Delegation::from(rec);
    out.token = Some(token);
    Ok((StatusCode::CREATED, Json(out)).into_response())
}
