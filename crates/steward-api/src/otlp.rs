//! `POST /v1/traces`: OTLP over HTTP, as OpenTelemetry's exporters send it — protobuf
//! (`application/x-protobuf`) or OTLP's JSON (`application/json`) — from agents authenticated
//! by their API key (`Authorization: Bearer …`, the exporter's headers). Spans are kept in the
//! store, joined to Steward's own by trace id. A request with a malformed span is refused
//! whole, saying which, and nothing of it is kept.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{span, status};
use prost::Message;
use serde_json::{json, Map, Value};
use steward_engine::Engine;
use steward_store::SpanRecord;

use crate::openai::{principal, OaiError};

fn bad(message: String) -> OaiError {
    OaiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "invalid_otlp",
        message,
    )
}

pub async fn traces(
    State(engine): State<Engine>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OaiError> {
    let who = principal(&engine, &headers).await?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let protobuf = content_type.starts_with("application/x-protobuf");
    let request = if protobuf {
        ExportTraceServiceRequest::decode(body.as_ref()).map_err(|e| {
            bad(format!(
                "the body is not an OTLP ExportTraceServiceRequest: {e}"
            ))
        })?
    } else if content_type.starts_with("application/json") {
        serde_json::from_slice(&body).map_err(|e| bad(format!("the body is not OTLP JSON: {e}")))?
    } else {
        return Err(OaiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            "unsupported_media_type",
            format!(
                "content-type {content_type:?}: send application/x-protobuf or application/json"
            ),
        ));
    };
    let spans = spans_of(request).map_err(bad)?;
    engine
        .traces()
        .ingest(&who, spans)
        .await
        .map_err(|e| match e {
            steward_engine::Error::InvalidRequest(m) => bad(m),
            other => OaiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "api_error",
                "not_stored",
                format!("the spans were not stored; send them again: {other}"),
            ),
        })?;
    // An empty ExportTraceServiceResponse: everything was accepted.
    Ok(if protobuf {
        (
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            Vec::<u8>::new(),
        )
            .into_response()
    } else {
        axum::Json(json!({})).into_response()
    })
}

/// The spans of a request as kept (who sent them and when are the engine's to stamp).
fn spans_of(request: ExportTraceServiceRequest) -> Result<Vec<SpanRecord>, String> {
    let mut out = Vec::new();
    for (r, rs) in request.resource_spans.into_iter().enumerate() {
        let resource = attributes(rs.resource.map(|r| r.attributes).unwrap_or_default());
        let service = resource
            .get("service.name")
            .and_then(Value::as_str)
            .map(str::to_string);
        let resource_text = Value::Object(resource.clone()).to_string();
        let resource_attrs = resource;
        for (sc, ss) in rs.scope_spans.into_iter().enumerate() {
            let scope = ss.scope.map(|s| s.name).filter(|n| !n.is_empty());
            for (i, s) in ss.spans.into_iter().enumerate() {
                let at = format!("resourceSpans[{r}].scopeSpans[{sc}].spans[{i}]");
                let trace_id = id(&s.trace_id, 16)
                    .ok_or_else(|| format!("{at}.traceId: expected 16 bytes, not all zero"))?;
                let span_id = id(&s.span_id, 8)
                    .ok_or_else(|| format!("{at}.spanId: expected 8 bytes, not all zero"))?;
                let parent_span_id = if s.parent_span_id.is_empty() {
                    None
                } else {
                    Some(id(&s.parent_span_id, 8).ok_or_else(|| {
                        format!("{at}.parentSpanId: expected 8 bytes, not all zero, or none")
                    })?)
                };
                if s.name.len() > 1024 {
                    return Err(format!("{at}.name: longer than 1024 bytes"));
                }
                let (start_ns, end_ns) =
                    (nanos(s.start_time_unix_nano), nanos(s.end_time_unix_nano));
                if end_ns < start_ns {
                    return Err(format!("{at}: ends before it starts"));
                }
                let mut attrs = attributes(s.attributes);
                // The session and end user, by OpenTelemetry's names, on the span or its sender.
                let said = |keys: &[&str]| {
                    keys.iter()
                        .find_map(|k| attrs.get(*k).or_else(|| resource_attrs.get(*k)))
                        .and_then(Value::as_str)
                        .filter(|v| !v.is_empty() && v.len() <= 256)
                        .map(str::to_string)
                };
                let session_id = said(&["session.id", "gen_ai.conversation.id"]);
                let end_user = said(&["user.id", "enduser.id"]);
                if let Some(scope) = &scope {
                    attrs.insert("otel.scope.name".into(), json!(scope));
                }
                let events: Vec<Value> = s
                    .events
                    .into_iter()
                    .map(|e| {
                        json!({"name": e.name, "time_ns": nanos(e.time_unix_nano),
                            "attributes": Value::Object(attributes(e.attributes))})
                    })
                    .collect();
                let (status, status_message) = match s.status {
                    Some(st) => (
                        match status::StatusCode::try_from(st.code) {
                            Ok(status::StatusCode::Ok) => "ok",
                            Ok(status::StatusCode::Error) => "error",
                            _ => "unset",
                        },
                        Some(st.message).filter(|m| !m.is_empty()),
                    ),
                    None => ("unset", None),
                };
                out.push(SpanRecord {
                    trace_id,
                    span_id,
                    parent_span_id,
                    name: s.name,
                    kind: kind(s.kind).into(),
                    service: service.clone(),
                    sent_by: String::new(),
                    start_ns,
                    end_ns,
                    status: status.into(),
                    status_message,
                    attributes: Value::Object(attrs).to_string(),
                    events: Value::Array(events).to_string(),
                    resource: resource_text.clone(),
                    received_at: 0,
                    session_id,
                    end_user,
                });
            }
        }
    }
    Ok(out)
}

/// An id of `len` bytes, not all zero, in lowercase hex.
fn id(bytes: &[u8], len: usize) -> Option<String> {
    (bytes.len() == len && bytes.iter().any(|b| *b != 0)).then(|| hex::encode(bytes))
}

/// Nanoseconds since the epoch as the store keeps them (times past 2262 are clamped).
fn nanos(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

fn kind(k: i32) -> &'static str {
    match span::SpanKind::try_from(k) {
        Ok(span::SpanKind::Internal) => "internal",
        Ok(span::SpanKind::Server) => "server",
        Ok(span::SpanKind::Client) => "client",
        Ok(span::SpanKind::Producer) => "producer",
        Ok(span::SpanKind::Consumer) => "consumer",
        _ => "unspecified",
    }
}

/// Attributes as one JSON object (a key given twice keeps its last value).
fn attributes(kvs: Vec<KeyValue>) -> Map<String, Value> {
    kvs.into_iter()
        .map(|kv| (kv.key, kv.value.map_or(Value::Null, value)))
        .collect()
}

fn value(v: AnyValue) -> Value {
    match v.value {
        Some(any_value::Value::StringValue(s)) => json!(s),
        Some(any_value::Value::BoolValue(b)) => json!(b),
        Some(any_value::Value::IntValue(i)) => json!(i),
        Some(any_value::Value::DoubleValue(d)) => json!(d),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Array(a.values.into_iter().map(value).collect())
        }
        Some(any_value::Value::KvlistValue(l)) => Value::Object(attributes(l.values)),
        Some(any_value::Value::BytesValue(b)) => json!(hex::encode(b)),
        None => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn one(span: Span) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![span],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn good() -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: "chat gpt-4o".into(),
            start_time_unix_nano: 10,
            end_time_unix_nano: 20,
            ..Default::default()
        }
    }

    #[test]
    fn malformed_spans_are_refused_saying_which() {
        assert_eq!(spans_of(one(good())).unwrap()[0].trace_id, "01".repeat(16));
        for (span, says) in [
            (
                Span {
                    trace_id: vec![0; 16],
                    ..good()
                },
                "traceId",
            ),
            (
                Span {
                    trace_id: vec![1; 15],
                    ..good()
                },
                "traceId",
            ),
            (
                Span {
                    span_id: vec![],
                    ..good()
                },
                "spanId",
            ),
            (
                Span {
                    parent_span_id: vec![3; 4],
                    ..good()
                },
                "parentSpanId",
            ),
            (
                Span {
                    end_time_unix_nano: 5,
                    ..good()
                },
                "ends before",
            ),
            (
                Span {
                    name: "x".repeat(2000),
                    ..good()
                },
                "name",
            ),
        ] {
            let e = spans_of(one(span)).unwrap_err();
            assert!(e.contains("spans[0]") && e.contains(says), "{says}: {e}");
        }
    }
}
