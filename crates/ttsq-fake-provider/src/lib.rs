#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`FakeProvider`]: start, reconfigure, read stats, shut down.
//! - [`config`]: [`FakeConfig`], every knob with its default.
//! - [`stats`]: [`FakeStats`] and the [`RequestRecord`] log.
//! - `server`: the app, merging each vendor's routes and the control routes.
//! - `elevenlabs`, `openai`, `http`: each vendor's routes, body parsing and
//!   error shapes.
//! - `pipeline`: the checks and faults every synthesis request goes through,
//!   whatever its vendor.
//! - `request`, `refusal`: what the vendors and the pipeline share: a parsed
//!   order, and why a request gets no audio.
//! - `audio`: the synthetic tone in WAV, PCM and MP3, cached.
//! - `state`: counters, quota windows and the random source.

pub mod config;
pub mod stats;

mod audio;
mod elevenlabs;
mod http;
mod openai;
mod pipeline;
mod refusal;
mod request;
mod server;
mod state;

use std::{
    io,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
};

use tokio::{net::TcpListener, task::JoinHandle};

use crate::state::Shared;
pub use crate::{
    config::{ApiKeys, FakeConfig, FakeVoice, Faults, Latency, Quota, Streaming},
    stats::{FakeStats, Outcome, RequestRecord, Vendor},
};

/// A running fake provider. Dropping it stops the server (without waiting);
/// [`FakeProvider::shutdown`] stops it and waits.
pub struct FakeProvider {
    /// Where it listens.
    addr: SocketAddr,
    /// Configuration, counters and audio, shared with the handlers.
    shared: Arc<Shared>,
    /// The server task; taken by `shutdown`.
    server: Option<JoinHandle<io::Result<()>>>,
}

impl FakeProvider {
    /// Starts a fake on `127.0.0.1` at a free port.
    pub async fn start(config: FakeConfig) -> io::Result<Self> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config).await
    }

    /// Starts a fake on `addr` (port 0 picks a free one).
    pub async fn start_on(addr: SocketAddr, config: FakeConfig) -> io::Result<Self> {
        Self::serve(TcpListener::bind(addr).await?, config)
    }

    /// Starts a fake on an already bound listener.
    pub fn serve(listener: TcpListener, config: FakeConfig) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config));
        let app = server::app(Arc::clone(&shared));
        let shutdown = shared.shutdown.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        });
        tracing::debug!(%addr, "fake provider listening");
        Ok(Self {
            addr,
            shared,
            server: Some(server),
        })
    }

    /// The socket address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://{addr}`, without a trailing slash: the base URL of all three
    /// wire formats.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The configuration now.
    pub fn config(&self) -> FakeConfig {
        FakeConfig::clone(&self.shared.config())
    }

    /// Replaces the configuration; requests already past a check keep the
    /// version they read.
    pub fn set_config(&self, config: FakeConfig) {
        self.shared.set_config(config);
    }

    /// Changes some knobs, keeping the others.
    pub fn update(&self, change: impl FnOnce(&mut FakeConfig)) {
        self.shared.update(change);
    }

    /// Counters and the recent request log.
    pub fn stats(&self) -> FakeStats {
        self.shared.stats()
    }

    /// Clears counters and the log (the quota windows keep their history).
    pub fn reset_stats(&self) {
        self.shared.reset();
    }

    /// Stops accepting, ends held requests, and waits for the server to finish.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.cancel();
        if let Some(server) = self.server.take() {
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "fake provider server failed"),
                Err(e) => tracing::warn!(error = %e, "fake provider task failed"),
            }
        }
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

impl std::fmt::Debug for FakeProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeProvider")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}
