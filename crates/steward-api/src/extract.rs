//! Extractors whose rejections speak the API's error format instead of axum's plain text.

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use steward_types::ErrorCode;

use crate::error::ApiError;

pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    /// A JSON object, sent as JSON: anything else (another content type, an array or a scalar
    /// where an object is expected — serde would read `[null, null]` as a struct) is a 400
    /// that names the problem, with the path of a field that is wrong.
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|ct| {
                ct.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .is_some_and(|m| {
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            });
        if !json {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "request body: send a JSON object with `Content-Type: application/json`",
            ));
        }
        let bytes = match axum::body::Bytes::from_request(req, state).await {
            Ok(b) => b,
            Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    "request body is larger than server.max_body_bytes",
                ))
            }
            Err(r) => {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("request body: {}", r.body_text()),
                ))
            }
        };
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "request body: expected a JSON object (`{...}`)",
            ));
        }
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let v = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let at = if path == "." {
                String::new()
            } else {
                format!("{path}: ")
            };
            ApiError::new(
                ErrorCode::InvalidRequest,
                format!("request body: {at}{}", e.inner()),
            )
        })?;
        de.end()
            .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("request body: {e}")))?;
        Ok(ApiJson(v))
    }
}

/// The raw body as text (for manifests, which may be YAML).
pub struct Text(pub String);

impl<S: Send + Sync> FromRequest<S> for Text {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match String::from_request(req, state).await {
            Ok(s) => Ok(Text(s)),
            Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                "request body is larger than server.max_body_bytes",
            )),
            Err(r) => Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("request body: {}", r.body_text()),
            )),
        }
    }
}

/// The raw body, for files.
pub struct Raw(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for Raw {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::body::Bytes::from_request(req, state).await {
            Ok(b) => Ok(Raw(b)),
            Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                "the file is larger than this endpoint takes",
            )),
            Err(r) => Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("request body: {}", r.body_text()),
            )),
        }
    }
}

pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(r @ QueryRejection::FailedToDeserializeQueryString(_)) | Err(r) => {
                Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("query: {}", r.body_text()),
                ))
            }
        }
    }
}
