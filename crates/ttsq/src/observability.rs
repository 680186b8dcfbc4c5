//! The binary's side of observability: where traces go (read from the
//! standard `OTEL_*` variables) and every process's operations listener
//! (`/metrics`, `/health`, the detailed `/ready`): `server.ops_listen` for a
//! process that serves the API, `worker.metrics_listen` for a worker.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use ttsq_providers::quota::ReplicaRole;
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
    /// The dependencies a worker's operations endpoints look at (an API's
    /// add its publishing channel: [`ttsq_api::ApiContext::probes`]).
    pub fn probes(&self) -> ttsq_api::ops::Probes {
        ttsq_api::ops::Probes {
            store: self.store.clone(),
            broker: Arc::clone(&self.broker),
            audio: self.audio.clone(),
            providers: Arc::clone(&self.providers),
            role: ReplicaRole::Worker,
        }
    }

    /// Binds the operations listener of `role`: `server.ops_listen` when it
    /// serves the API, else `worker.metrics_listen`; failing names the
    /// variable.
    pub async fn bind_ops(&self, role: ReplicaRole) -> anyhow::Result<TcpListener> {
        let (address, var) = match role {
            ReplicaRole::Api | ReplicaRole::All => {
                (self.settings.server.ops_listen, "TTSQ_SERVER_OPS_LISTEN")
            }
            ReplicaRole::Worker => (
                self.settings.worker.metrics_listen,
                "TTSQ_WORKER_METRICS_LISTEN",
            ),
        };
        TcpListener::bind(address)
            .await
            .with_context(|| format!("Failed to listen on {address} ({var})"))
    }

    /// Serves `/metrics`, `/health` and the detailed `/ready` over `probes`
    /// on `listener` until `shutdown`.
    pub async fn serve_ops(
        &self,
        probes: ttsq_api::ops::Probes,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        ttsq_api::ops::serve(probes, listener, shutdown.cancelled_owned())
            .await
            .context("operations listener failed")
    }
}
