//! Steward's own spans (runs, model and tool calls, gateway calls) kept in its store beside
//! the spans agents send over OTLP, so one trace shows both. The tracer's batch processor
//! hands finished spans to [`StoreExporter`], which passes them on without waiting; a task
//! started once the store is open writes them. Spans are telemetry: when the store falls
//! behind, a batch is dropped and counted rather than slowing the work it describes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanId, SpanKind, Status};
use opentelemetry::{Array, KeyValue, Value as OtelValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use serde_json::{json, Map, Value};
use steward_store::SpanRecord;
use tokio::sync::mpsc;

/// Batches waiting for the store; past this, new ones are dropped.
const QUEUED_BATCHES: usize = 64;

/// Passes finished spans to the store's writer (see [`keep`]).
#[derive(Debug)]
pub struct StoreExporter {
    tx: mpsc::Sender<Vec<SpanRecord>>,
    resource: Map<String, Value>,
    dropped: Arc<AtomicU64>,
}

/// What [`keep`] writes from, and how many spans were dropped on the way.
pub struct OwnSpans {
    pub rx: mpsc::Receiver<Vec<SpanRecord>>,
    pub dropped: Arc<AtomicU64>,
}

pub fn exporter(service_name: &str) -> (StoreExporter, OwnSpans) {
    let (tx, rx) = mpsc::channel(QUEUED_BATCHES);
    let dropped = Arc::new(AtomicU64::new(0));
    let mut resource = Map::new();
    resource.insert("service.name".into(), json!(service_name));
    (
        StoreExporter {
            tx,
            resource,
            dropped: dropped.clone(),
        },
        OwnSpans { rx, dropped },
    )
}

impl SpanExporter for StoreExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let records: Vec<SpanRecord> = batch.into_iter().map(|s| self.record(s)).collect();
        if self.tx.try_send(records).is_err() {
            self.dropped.fetch_add(n, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl StoreExporter {
    fn record(&self, s: SpanData) -> SpanRecord {
        let attrs: Map<String, Value> = attributes(&s.attributes);
        let said = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| attrs.get(*k))
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty() && v.len() <= 256)
                .map(str::to_string)
        };
        let session_id = said(&["session.id", "gen_ai.conversation.id"]);
        let end_user = said(&["user.id", "enduser.id"]);
        let events: Vec<Value> = s
            .events
            .events
            .iter()
            .map(|e| {
                json!({"name": e.name, "time_ns": nanos(e.timestamp),
                    "attributes": Value::Object(attributes(&e.attributes))})
            })
            .collect();
        let (status, status_message) = match &s.status {
            Status::Ok => ("ok", None),
            Status::Error { description } => (
                "error",
                Some(description.to_string()).filter(|d| !d.is_empty()),
            ),
            Status::Unset => ("unset", None),
        };
        let mut name = s.name.into_owned();
        if name.len() > 1024 {
            let mut end = 1024;
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            name.truncate(end);
        }
        SpanRecord {
            trace_id: s.span_context.trace_id().to_string(),
            span_id: s.span_context.span_id().to_string(),
            parent_span_id: (s.parent_span_id != SpanId::INVALID)
                .then(|| s.parent_span_id.to_string()),
            name,
            kind: kind(&s.span_kind).into(),
            service: self
                .resource
                .get("service.name")
                .and_then(Value::as_str)
                .map(str::to_string),
            sent_by: String::new(),
            start_ns: nanos(s.start_time),
            end_ns: nanos(s.end_time).max(nanos(s.start_time)),
            status: status.into(),
            status_message,
            attributes: Value::Object(attrs).to_string(),
            events: Value::Array(events).to_string(),
            resource: Value::Object(self.resource.clone()).to_string(),
            received_at: 0,
            session_id,
            end_user,
        }
    }
}

/// Writes Steward's own spans as they come, until the tracer is shut down. A batch the store
/// refuses is dropped and counted: it is never retried ahead of the work.
pub async fn keep(engine: steward_engine::Engine, mut own: OwnSpans) {
    while let Some(batch) = own.rx.recv().await {
        let n = batch.len() as u64;
        if let Err(e) = engine.traces().keep_own(batch).await {
            own.dropped.fetch_add(n, Ordering::Relaxed);
            tracing::warn!(error = %e, spans = n, "Steward's own spans were not stored");
        }
    }
    let dropped = own.dropped.load(Ordering::Relaxed);
    if dropped > 0 {
        tracing::warn!(
            dropped,
            "some of Steward's own spans were dropped, the store being behind"
        );
    }
}

/// How long shutdown waits for the last spans to be written.
pub const FLUSH_WAIT: Duration = Duration::from_secs(5);

fn nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn kind(k: &SpanKind) -> &'static str {
    match k {
        SpanKind::Client => "client",
        SpanKind::Server => "server",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
        SpanKind::Internal => "internal",
    }
}

fn attributes(kvs: &[KeyValue]) -> Map<String, Value> {
    kvs.iter()
        .map(|kv| (kv.key.as_str().to_string(), value(&kv.value)))
        .collect()
}

fn value(v: &OtelValue) -> Value {
    match v {
        OtelValue::Bool(b) => json!(b),
        OtelValue::I64(i) => json!(i),
        OtelValue::F64(f) => json!(f),
        OtelValue::String(s) => json!(s.as_str()),
        OtelValue::Array(Array::Bool(a)) => json!(a),
        OtelValue::Array(Array::I64(a)) => json!(a),
        OtelValue::Array(Array::F64(a)) => json!(a),
        OtelValue::Array(Array::String(a)) => {
            Value::Array(a.iter().map(|s| json!(s.as_str())).collect())
        }
        other => json!(other.to_string()),
    }
}
