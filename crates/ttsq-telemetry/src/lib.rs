#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`init`], [`TraceSettings`], [`TelemetryGuard`]: the subscriber and the
//!   OTLP exporter, installed once by the binary.
//! - `json`: the JSON line format with span fields flattened in.
//! - [`trace_context`]: W3C `traceparent` out of the current span and back
//!   into the worker's spans; the queue-wait span.
//! - [`metrics`]: the Prometheus registry and every ttsq series.

pub mod metrics;
pub mod trace_context;

mod json;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};
use ttsq_config::LogFormat;

/// Filter used when `RUST_LOG` is unset: our crates at info, noisy
/// dependencies at warn.
const DEFAULT_FILTER: &str =
    "info,sqlx=warn,lapin=warn,aws_config=warn,aws_smithy_runtime=warn,tower_http=info";

/// Spans exported as traces, whatever `RUST_LOG` says about log lines: ours
/// at info, never the exporter's own HTTP stack (it would trace itself).
const TRACE_FILTER: &str = "info,sqlx=warn,lapin=warn,aws_config=warn,aws_smithy_runtime=warn,\
     hyper=off,hyper_util=off,reqwest=off,h2=off,opentelemetry=off,opentelemetry_sdk=off,\
     opentelemetry_otlp=off,opentelemetry_http=off";

/// Where traces go; read from the environment by the binary.
#[derive(Debug, Clone, Default)]
pub struct TraceSettings {
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: the collector's base URL
    /// (`http://collector:4318`); `/v1/traces` is appended. `None` exports
    /// nothing and installs no OpenTelemetry layer at all.
    pub otlp_endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`: `http/json` (default) or `http/protobuf`.
    pub protocol: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

/// Keeps the trace exporter alive; dropping it flushes the spans still
/// buffered and stops the exporter. Drop it outside the async runtime (or on
/// a blocking thread): the flush waits for the exporter's HTTP call.
#[must_use = "dropping the guard at once stops trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            tracing::warn!(error = %err, "flushing traces failed");
        }
    }
}

/// Installs the global subscriber — log lines on stderr (stdout stays for
/// command output, a new API key say) and, with an OTLP endpoint, span
/// export — and the W3C trace-context propagator. Calling it twice is
/// harmless: the second call installs nothing. A trace exporter that cannot
/// be built is reported and skipped: traces are never a reason not to serve.
pub fn init(format: LogFormat, traces: &TraceSettings) -> TelemetryGuard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let logs = match format {
        LogFormat::Pretty => fmt::layer().with_writer(std::io::stderr).boxed(),
        LogFormat::Json => fmt::layer()
            .fmt_fields(fmt::format::JsonFields::new())
            .event_format(json::FlatJson)
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(filter);

    let provider = traces
        .otlp_endpoint
        .as_deref()
        .filter(|e| !e.trim().is_empty())
        .and_then(|endpoint| match tracer_provider(endpoint, traces) {
            Ok(provider) => Some(provider),
            Err(err) => {
                eprintln!("warning: traces disabled, the OTLP exporter failed to start: {err}");
                None
            }
        });
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("ttsq"))
            .with_filter(EnvFilter::new(TRACE_FILTER))
    });

    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(otel)
        .try_init();
    if installed.is_err() {
        tracing::debug!("a tracing subscriber was already installed");
        return TelemetryGuard { provider: None };
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    if let Some(provider) = &provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
        tracing::info!(endpoint = ?traces.otlp_endpoint, "exporting traces over OTLP");
    }
    TelemetryGuard { provider }
}

fn tracer_provider(
    endpoint: &str,
    settings: &TraceSettings,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let protocol = match settings.protocol.as_deref() {
        Some("http/protobuf") => Protocol::HttpBinary,
        _ => Protocol::HttpJson,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(settings.service_name.clone())
                .build(),
        )
        .build())
}
