//! The binary's side of observability: where traces go (read from the
//! standard `OTEL_*` variables) and a worker's own `/metrics`, `/health` and
//! `/ready` listener.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use ttsq_telemetry::TraceSettings;

use crate::Services;

/// Trace export settings from `OTEL_EXPORTER_OTLP_ENDPOINT`,
/// `OTEL_EXPORTER_OTLP_PROTOCOL` and `OTEL_SERVICE_NAME` (default `service`).
pub fn trace_settings(service: &str) -> TraceSettings {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    TraceSettings {
        otlp_endpoint: var("OTEL_EXPORTER_OTLP_ENDPOINT"),
        protocol: var("OTEL_EXPORTER_OTLP_PROTOCOL"),
        service_name: var("OTEL_SERVICE_NAME").unwrap_or_else(|| service.to_owned()),
    }
}

impl Services {
    /// The dependencies `/ready` and `/metrics` look at.
    pub fn probes(&self) -> ttsq_api::ops::Probes {
        ttsq_api::ops::Probes {
            store: self.store.clone(),
            broker: Arc::clone(&self.broker),
            audio: self.audio.clone(),
            providers: Arc::clone(&self.providers),
        }
    }

    /// Binds `worker.metrics_listen`; failing names the variable.
    pub async fn bind_metrics(&self) -> anyhow::Result<TcpListener> {
        let address = self.settings.worker.metrics_listen;
        TcpListener::bind(address)
            .await
            .with_context(|| format!("Failed to listen on {address} (TTSQ_WORKER_METRICS_LISTEN)"))
    }

    /// Serves a worker's `/metrics`, `/health` and `/ready` on `listener`
    /// until `shutdown`.
    pub async fn serve_metrics(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        ttsq_api::ops::serve(self.probes(), listener, shutdown.cancelled_owned())
            .await
            .context("metrics listener failed")
    }
}
