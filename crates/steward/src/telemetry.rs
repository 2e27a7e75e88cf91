//! Logs to stderr (`STEWARD_LOG` filters them) and spans: the Kernel's `syscall` spans and
//! the gateway's `gen_ai` spans, with the GenAI semantic-convention attributes they carry, kept
//! in the store (`[telemetry] store_spans`) and sent to an OpenTelemetry collector over
//! OTLP/HTTP when `[telemetry] otlp_endpoint` is set.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use steward_types::config::TelemetryConfig;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps the exporters alive; `shutdown` sends the spans still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// Steward's own spans on their way to the store, until the store is open.
    pub own_spans: Option<crate::own_spans::OwnSpans>,
}

impl Telemetry {
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            if let Err(e) = p.shutdown() {
                tracing::warn!(error = %e, "flushing spans to the collector failed");
            }
        }
    }
}

fn filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("STEWARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"))
}

/// Logs only.
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Logs, and spans to the store and to the collector, as configured.
pub fn init(cfg: &TelemetryConfig) -> anyhow::Result<Telemetry> {
    let endpoint = cfg.otlp_endpoint.as_deref().filter(|e| !e.is_empty());
    if endpoint.is_none() && !cfg.store_spans {
        init_logs();
        return Ok(Telemetry {
            provider: None,
            own_spans: None,
        });
    }
    let batches = |delay_ms: u64| {
        BatchConfigBuilder::default()
            .with_scheduled_delay(Duration::from_millis(delay_ms.max(10)))
            .build()
    };
    let mut provider = SdkTracerProvider::builder().with_resource(
        opentelemetry_sdk::Resource::builder()
            .with_service_name(cfg.service_name.clone())
            .build(),
    );
    let mut own_spans = None;
    let mut exporting = None;
    if cfg.store_spans {
        let (exporter, own) = crate::own_spans::exporter(&cfg.service_name);
        // Kept within a second of ending, so a trace can be read back while it is current;
        // in large batches, as each is a commit of the store's.
        provider = provider.with_span_processor(
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(
                    BatchConfigBuilder::default()
                        .with_scheduled_delay(Duration::from_secs(1))
                        .with_max_queue_size(16_384)
                        .with_max_export_batch_size(4_096)
                        .build(),
                )
                .build(),
        );
        own_spans = Some(own);
    }
    if let Some(endpoint) = endpoint {
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        // The exporter posts from the batch processor's own thread, hence the blocking client.
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_millis(cfg.export_timeout_ms))
            .build()?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(http)
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(&url)
            .with_timeout(Duration::from_millis(cfg.export_timeout_ms))
            .build()
            .map_err(|e| anyhow::anyhow!("telemetry.otlp_endpoint {endpoint:?}: {e}"))?;
        provider = provider.with_span_processor(
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(batches(cfg.export_interval_ms))
                .build(),
        );
        exporting = Some(url);
    }
    let provider = provider.build();
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("steward"));
    let _ = tracing_subscriber::registry()
        .with(filter())
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(otel)
        .try_init();
    if let Some(url) = exporting {
        tracing::info!(%url, "exporting spans over OTLP/HTTP");
    }
    Ok(Telemetry {
        provider: Some(provider),
        own_spans,
    })
}
