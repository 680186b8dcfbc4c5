#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`ApiContext`]: the dependencies every handler shares.
//! - [`router`] and [`run`]: the routes and the server loop.
//! - `auth`: the bearer-key extractor.
//! - `jobs`: submission, status, audio.
//! - `system`: dialects, health, readiness, metrics.
//! - [`ops`]: `/metrics`, `/health`, `/ready` over any set of dependencies,
//!   also served alone by a worker.
//! - `system`: dialects, health, readiness.
//! - `admin`: tenants and keys over HTTP, behind the admin token.
//! - `usage`: a tenant's own usage.
//! - [`content`]: the optional content filter.
//! - [`error`]: [`ApiError`] and its problem+json rendering.

pub mod content;
pub mod error;
pub mod ops;
pub mod published;

mod admin;
mod auth;
mod jobs;
mod system;
mod usage;
mod view;

use std::{future::Future, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::DefaultBodyLimit,
    routing::{get, post},
};
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;
use ttsq_audio::AudioStore;
use ttsq_config::Settings;
use ttsq_core::JobLimits;
use ttsq_queue::{Broker, Publisher};
use ttsq_store::Store;

pub use error::ApiError;

/// What the handlers share; cheap to clone.
#[derive(Clone)]
pub struct ApiContext {
    /// Postgres.
    pub store: Store,
    /// RabbitMQ connection, for readiness.
    pub broker: Arc<Broker>,
    /// Confirmed publisher of job messages.
    pub publisher: Publisher,
    /// Marks confirmed tasks published, many per statement.
    pub published: published::PublishedMarks,
    /// S3 audio.
    pub audio: AudioStore,
    /// Providers and the dialect catalog.
    pub providers: Arc<ttsq_providers::Router>,
    /// Job validation limits.
    pub limits: JobLimits,
    /// Base URL for links in responses, without a trailing slash.
    pub public_url: Arc<str>,
    /// Longest long-poll allowed.
    pub max_wait: Duration,
    /// Largest body accepted.
    pub max_body_bytes: usize,
    /// SHA-256 of the admin token; `None` disables the admin API.
    pub admin_token: Option<Arc<admin::TokenDigest>>,
    /// Patterns a job's text must not match.
    pub content_filter: Arc<content::ContentFilter>,
}

impl ApiContext {
    /// A context from settings and connected dependencies.
    pub async fn new(
        settings: &Settings,
        store: Store,
        broker: Arc<Broker>,
        audio: AudioStore,
        providers: Arc<ttsq_providers::Router>,
    ) -> Result<Self, ttsq_queue::QueueError> {
        let publisher = broker.publisher().await?;
        Ok(Self {
            published: published::PublishedMarks::start(store.clone()),
            store,
            broker,
            publisher,
            audio,
            providers,
            limits: JobLimits {
                max_text_chars: settings.limits.max_text_chars,
                max_metadata_bytes: settings.limits.max_metadata_bytes,
            },
            public_url: settings.server.public_url.trim_end_matches('/').into(),
            max_wait: Duration::from_secs(settings.server.max_wait_secs),
            max_body_bytes: settings.server.max_body_bytes,
            admin_token: settings
                .admin
                .enabled_token()
                .map(|token| Arc::new(admin::TokenDigest::of(token))),
            // Settings::load has compiled every pattern once already.
            content_filter: Arc::new(
                content::ContentFilter::new(&settings.limits.blocked_patterns)
                    .expect("blocked patterns were validated with the settings"),
            ),
        })
    }
}

impl ApiContext {
    /// The dependencies `/ready` and `/metrics` look at.
    pub fn probes(&self) -> ops::Probes {
        ops::Probes {
            store: self.store.clone(),
            broker: Arc::clone(&self.broker),
            audio: self.audio.clone(),
            providers: Arc::clone(&self.providers),
        }
    }
}

/// Every route of the API.
pub fn router(context: ApiContext) -> Router {
    let max_body = context.max_body_bytes;
    Router::new()
        .route("/v1/tts/jobs", post(jobs::submit))
        .route("/v1/tts/jobs/{id}", get(jobs::get))
        .route("/v1/tts/jobs/{id}/audio", get(jobs::audio))
        .route("/v1/dialects", get(system::dialects))
        .route("/v1/usage", get(usage::usage))
        .merge(admin::routes())
        .route("/health", get(system::health))
        .route("/ready", get(system::ready))
        .route("/metrics", get(system::metrics))
        .fallback(system::not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(TraceLayer::new_for_http())
        .with_state(context)
}

/// Serves the API on `listener` until `shutdown` resolves, then finishes the
/// requests in flight.
pub async fn run(
    context: ApiContext,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tracing::info!(address = %listener.local_addr()?, "API listening");
    // Without TCP_NODELAY a response written in two segments waits for the
    // client's delayed ACK: ~40 ms on every small answer.
    let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "could not set TCP_NODELAY");
        }
    });
    axum::serve(listener, router(context))
        .with_graceful_shutdown(shutdown)
        .await
}
