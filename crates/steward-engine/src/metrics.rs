//! What the engine measures about itself, in the Prometheus text format (`GET /metrics`). The
//! figure that matters most is the time Steward adds to a call, excluding the upstream's own
//! time: it is what an agent pays for going through Steward.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OpLabels {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CallLabels {
    pub op: &'static str,
    pub outcome: &'static str,
    /// The API it came through: `chat_completions`, `responses`, `messages`, `embeddings`.
    pub api: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StepLabels {
    pub kind: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub(crate) gateway_added: Family<OpLabels, Histogram>,
    pub(crate) gateway_upstream: Family<OpLabels, Histogram>,
    pub(crate) gateway_calls: Family<CallLabels, Counter>,
    pub(crate) step_added: Family<StepLabels, Histogram>,
}

/// From 10 µs to about 10 s: Steward's own time is meant to sit in the first buckets.
fn seconds_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1e-5, 2.0, 20,
    ))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("steward");
        let gateway_added = Family::<OpLabels, Histogram>::new_with_constructor(
            seconds_buckets as fn() -> Histogram,
        );
        let gateway_upstream = Family::<OpLabels, Histogram>::new_with_constructor(
            seconds_buckets as fn() -> Histogram,
        );
        let gateway_calls = Family::<CallLabels, Counter>::default();
        let step_added = Family::<StepLabels, Histogram>::new_with_constructor(
            seconds_buckets as fn() -> Histogram,
        );
        registry.register(
            "gateway_added_seconds",
            "Time Steward adds to a /v1 call, excluding the upstream's (until the answer or the stream's first byte)",
            gateway_added.clone(),
        );
        registry.register(
            "gateway_upstream_seconds",
            "Time spent waiting on upstreams for a /v1 call, retries and fallbacks included",
            gateway_upstream.clone(),
        );
        registry.register(
            "gateway_calls",
            "/v1 calls by operation, outcome and the API they came through",
            gateway_calls.clone(),
        );
        registry.register(
            "kernel_step_added_seconds",
            "Time the Kernel adds to a managed run's step (journal, budgets), excluding the action",
            step_added.clone(),
        );
        Metrics {
            registry,
            gateway_added,
            gateway_upstream,
            gateway_calls,
            step_added,
        }
    }
}

impl Metrics {
    pub(crate) fn gateway_call(
        &self,
        op: &'static str,
        api: &'static str,
        outcome: &'static str,
        total: Duration,
        upstream: Duration,
    ) {
        self.gateway_calls
            .get_or_create(&CallLabels { op, outcome, api })
            .inc();
        self.gateway_upstream
            .get_or_create(&OpLabels { op })
            .observe(upstream.as_secs_f64());
        self.gateway_added
            .get_or_create(&OpLabels { op })
            .observe(total.saturating_sub(upstream).as_secs_f64());
    }

    /// Everything measured so far, in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
