#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`init`], [`TraceSettings`], [`TelemetryGuard`]: the subscriber, the
//!   tracer (always, so trace ids exist for logs and outgoing calls) and the
//!   OTLP exporter (when configured), installed once by the binary.
//! - `json`: the JSON line format with span fields, `trace_id` and `span_id`
//!   flattened in.
//! - [`trace_context`]: W3C `traceparent` out of the current span and back
//!   into a span (an incoming request's, a worker's job); the queue-wait span.
//! - [`metrics`]: the Prometheus registry and every ttsq series; `process`:
//!   the `process_*` series read from `/proc`.

pub mod metrics;
pub mod trace_context;

mod json;
mod process;

use std::{ffi::OsString, io::IsTerminal as _};

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
    /// nothing, but spans still get trace ids: log lines carry them and
    /// outgoing calls send them on.
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
    exporting: bool,
}

impl TelemetryGuard {
    /// Whether spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.exporting
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
/// command output, a new API key say), coloured only on a terminal — the
/// tracer and, with an OTLP endpoint, span export; and the W3C trace-context
/// propagator. The tracer is installed without an endpoint too: an incoming
/// `traceparent` is then still continued, logged and sent on, only no span
/// leaves the process. Calling it twice is harmless: the second call
/// installs nothing. A trace exporter that cannot be built is reported and
/// skipped: traces are never a reason not to serve.
pub fn init(format: LogFormat, traces: &TraceSettings) -> TelemetryGuard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let logs = match format {
        LogFormat::Pretty => fmt::layer()
            .with_ansi(colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR"),
            ))
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .fmt_fields(fmt::format::JsonFields::new())
            .event_format(json::FlatJson)
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(filter);

    let exporter = traces
        .otlp_endpoint
        .as_deref()
        .filter(|e| !e.trim().is_empty())
        .and_then(|endpoint| match exporting_provider(endpoint, traces) {
            Ok(provider) => Some(provider),
            Err(err) => {
                eprintln!("warning: traces disabled, the OTLP exporter failed to start: {err}");
                None
            }
        });
    let exporting = exporter.is_some();
    let provider = exporter.unwrap_or_else(|| local_provider(traces));
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("ttsq"))
        .with_filter(EnvFilter::new(TRACE_FILTER));

    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(otel)
        .try_init();
    if installed.is_err() {
        tracing::debug!("a tracing subscriber was already installed");
        return TelemetryGuard {
            provider: None,
            exporting: false,
        };
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    if exporting {
        tracing::info!(endpoint = ?traces.otlp_endpoint, "exporting traces over OTLP");
    }
    TelemetryGuard {
        provider: Some(provider),
        exporting,
    }
}

/// Whether the human-readable format may colour its lines: only on a
/// terminal, and never when `NO_COLOR` is set to anything but the empty
/// string (<https://no-color.org>). A log file or a pipe gets plain text.
fn colour(stderr_is_terminal: bool, no_color: Option<OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|value| value.is_empty())
}

fn resource(settings: &TraceSettings) -> Resource {
    Resource::builder()
        .with_service_name(settings.service_name.clone())
        .build()
}

/// A tracer provider without a span processor: spans get trace and span
/// ids (continuing a remote parent, keeping its sampled flag) and are
/// dropped when they end.
fn local_provider(settings: &TraceSettings) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_resource(resource(settings))
        .build()
}

fn exporting_provider(
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
        .with_resource(resource(settings))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(
            colour(true, Some(OsString::new())),
            "an empty NO_COLOR is unset"
        );
        assert!(!colour(true, Some("1".into())));
        assert!(
            !colour(false, None),
            "a file or a pipe gets no escape codes"
        );
        assert!(!colour(false, Some("1".into())));
    }
}
