//! Traces kept in the store: spans external agents send over OTLP (`POST /v1/traces`) and
//! Steward's own, read back by trace id.

use steward_store::SpanRecord;

use crate::*;

/// The most spans one request may carry.
pub const MAX_SPANS_PER_REQUEST: usize = 10_000;

/// `Engine::traces()`.
pub struct Traces<'a>(pub(crate) &'a Engine);

impl Traces<'_> {
    /// Keeps spans `who` sent, stamped with who sent them and when; a span sent before (the
    /// same trace and span id) is kept once. How many were new; durable when this returns.
    pub async fn ingest(&self, who: &Principal, mut spans: Vec<SpanRecord>) -> Result<u64> {
        if spans.len() > MAX_SPANS_PER_REQUEST {
            return Err(Error::InvalidRequest(format!(
                "{} spans in one request, more than {MAX_SPANS_PER_REQUEST}: send them in smaller batches",
                spans.len()
            )));
        }
        let now = self.0.inner.shared.clock.now_ms();
        let sent_by = format!("agent:{}", who.agent);
        for s in &mut spans {
            s.sent_by.clone_from(&sent_by);
            s.received_at = now;
        }
        Ok(self.0.store().put_spans(&spans).await?)
    }

    /// Keeps spans of Steward's own (`sent_by` `steward`); a span kept before is kept once.
    pub async fn keep_own(&self, mut spans: Vec<SpanRecord>) -> Result<u64> {
        let now = self.0.inner.shared.clock.now_ms();
        for s in &mut spans {
            s.sent_by = "steward".into();
            s.received_at = now;
        }
        Ok(self.0.store().put_spans(&spans).await?)
    }

    /// Traces with a span of a session or an end user (all without either), latest first.
    pub async fn list(
        &self,
        filter: steward_store::TraceFilter,
    ) -> Result<Vec<steward_store::TraceSummary>> {
        if !(1..=1_000).contains(&filter.limit) {
            return Err(Error::InvalidRequest(format!(
                "limit: {}: expected 1 to 1000",
                filter.limit
            )));
        }
        Ok(self.0.store().list_traces(&filter).await?)
    }

    /// Every span kept of trace `trace_id` (32 lowercase hex digits), by start time.
    pub async fn trace(&self, trace_id: &str) -> Result<Vec<SpanRecord>> {
        if trace_id.len() != 32 || !trace_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidRequest(format!(
                "trace id {trace_id:?}: expected 32 hex digits"
            )));
        }
        Ok(self
            .0
            .store()
            .trace_spans(&trace_id.to_ascii_lowercase())
            .await?)
    }
}
