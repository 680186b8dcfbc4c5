#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`ApiContext`]: the dependencies every handler shares.
//! - [`router`] and [`run`]: the routes and the server loop.
//! - `auth`: the bearer-key extractor.
//! - `jobs`: submission, status, audio.
//! - [`coalescer`]: single submissions written many to a transaction.
//! - [`ops`]: `/metrics`, `/health` and the detailed `/ready` over any set
//!   of dependencies, served on an operations listener of their own; the
//!   cached readiness behind the public `/ready`.
//! - `listing`: a tenant's task list and cancellation.
//! - `speech`: the OpenAI-compatible `POST /v1/audio/speech`.
//! - [`openapi`]: the OpenAPI document, served at `/openapi.json`.
//! - `system`: dialects, health, readiness (its status only).
//! - `admin`: tenants and keys over HTTP, behind the admin token.
//! - `usage`: a tenant's own usage.
//! - `batches`: batch submission, status with paginated items, cancel.
//! - [`webhooks`]: webhook targets at submission; tenants' webhook settings.
//! - [`content`]: the optional content filter.
//! - [`error`]: [`ApiError`] and its problem+json rendering.

pub mod coalescer;
pub mod content;
pub mod error;
pub mod openapi;
pub mod ops;

mod admin;
mod auth;
mod batches;
mod jobs;
mod listing;
mod speech;
mod system;
mod usage;
mod view;
pub mod webhooks;

use std::{future::Future, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::DefaultBodyLimit,
    routing::{delete, get, post},
};
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;
use ttsq_audio::AudioStore;
use ttsq_config::Settings;
use ttsq_core::JobLimits;
use ttsq_queue::Broker;
use ttsq_store::Store;

pub use error::ApiError;

/// What the handlers share; cheap to clone.
#[derive(Clone)]
pub struct ApiContext {
    /// Postgres.
    pub store: Store,
    /// RabbitMQ connection, for readiness.
    pub broker: Arc<Broker>,
    /// Wakes the dispatcher, which publishes queued tasks in their turn.
    pub dispatch: ttsq_dispatch::Waker,
    /// Writes normal-priority single submissions, many per transaction.
    pub submissions: coalescer::SubmitCoalescer,
    /// S3 audio.
    pub audio: AudioStore,
    /// Providers and the dialect catalog.
    pub providers: Arc<ttsq_providers::Router>,
    /// Job validation limits.
    pub limits: JobLimits,
    /// What bounds a batch whose audio is joined: its estimated length.
    pub batches: Arc<ttsq_config::BatchSettings>,
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
    /// OpenAI voice names to dialects, for `/v1/audio/speech`.
    pub speech: Arc<ttsq_config::SpeechSettings>,
    /// Webhook targets: enabled or not, the SSRF guard, secrets.
    pub webhooks: Arc<webhooks::WebhookApi>,
    /// Long-polls waiting for tasks to finish, woken by LISTEN/NOTIFY.
    pub waiters: ttsq_store::TaskWaiters,
    /// How high-priority requests take part in the fleet-wide single flight.
    pub inline: InlineClaims,
    /// The public `/ready`'s answer, checked at most once per interval
    /// however many callers ask.
    pub readiness: Arc<ops::ReadinessCache>,
}

impl ApiContext {
    /// A context from settings and connected dependencies.
    pub async fn new(
        settings: &Settings,
        store: Store,
        broker: Arc<Broker>,
        audio: AudioStore,
        providers: Arc<ttsq_providers::Router>,
        replica_id: uuid::Uuid,
        dispatch: ttsq_dispatch::Waker,
    ) -> Self {
        if providers
            .catalog()
            .get(&settings.speech.default_dialect)
            .is_none()
        {
            tracing::warn!(
                dialect = %settings.speech.default_dialect,
                "speech.default_dialect (TTSQ_SPEECH_DEFAULT_DIALECT) is not served by any provider; \
                 /v1/audio/speech refuses voices that fall back to it"
            );
        }
        let waiters = ttsq_store::TaskWaiters::start(
            store.pool().clone(),
            Duration::from_millis(settings.server.wait_poll_ms),
        );
        let readiness = Arc::new(ops::ReadinessCache::new(ops::Probes {
            store: store.clone(),
            broker: Arc::clone(&broker),
            audio: audio.clone(),
            providers: Arc::clone(&providers),
            publisher: None,
        }));
        Self {
            readiness,
            waiters,
            inline: InlineClaims {
                replica_id,
                replica_ttl: Duration::from_secs(settings.quota.heartbeat_secs * 3),
                lease_ttl: settings.worker.claim_timeout(),
                make: ttsq_worker::synthesis::MakeOptions {
                    storage_retry: settings.worker.storage_retry(),
                    serve_fallback_audio: settings.cache.serve_fallback_audio,
                },
                hash_wait: Duration::from_secs(settings.server.max_wait_secs.clamp(1, 30)),
            },
            submissions: coalescer::SubmitCoalescer::start(
                store.clone(),
                Arc::clone(&providers),
                settings.database.submit_committers as usize,
            ),
            store,
            broker,
            dispatch,
            audio,
            providers,
            limits: JobLimits {
                max_text_chars: settings.limits.max_text_chars,
                max_metadata_bytes: settings.limits.max_metadata_bytes,
                audit_key: settings
                    .audit
                    .enabled_text_key()
                    .map(|key| ttsq_core::AuditKey::new(secrecy::ExposeSecret::expose_secret(key))),
            },
            batches: Arc::new(settings.batches.clone()),
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
            speech: Arc::new(settings.speech.clone()),
            webhooks: Arc::new(webhooks::WebhookApi::new(settings)),
        }
    }
}

/// What a high-priority request needs to claim its task and its hash's
/// lease like a worker batch does.
#[derive(Debug, Clone, Copy)]
pub struct InlineClaims {
    /// This replica's id (its heartbeat row): its claims' holder.
    pub replica_id: uuid::Uuid,
    /// A replica silent for this long is presumed dead; its leases are taken over.
    pub replica_ttl: Duration,
    /// Longest a hash lease lasts, whatever the holder's heartbeat.
    pub lease_ttl: Duration,
    /// How the audio is stored.
    pub make: ttsq_worker::synthesis::MakeOptions,
    /// How long a request waits for a hash another claim is synthesizing
    /// before it hands its task to the queue.
    pub hash_wait: Duration,
}

impl ApiContext {
    /// The dependencies the operations endpoints look at, this replica's
    /// publishing channel among them.
    pub fn probes(&self) -> ops::Probes {
        self.readiness.probes().clone()
    }
}

/// Every public route of the API. The operations endpoints (`/metrics`, the
/// detailed `/ready`) are not among them: see [`ops::serve`].
pub fn router(context: ApiContext) -> Router {
    let max_body = context.max_body_bytes;
    Router::new()
        .route("/v1/tts/jobs", post(jobs::submit))
        .route("/v1/tts/jobs/{id}", get(jobs::get))
        .route("/v1/tts/jobs/{id}/audio", get(jobs::audio))
        // Batches and webhooks (issue 10).
        .route(
            "/v1/tts/batches",
            post(batches::submit).layer(DefaultBodyLimit::max(batches::batch_body_limit(max_body))),
        )
        .route(
            "/v1/tts/batches/{id}",
            get(batches::get).delete(batches::cancel),
        )
        .merge(webhooks::admin_routes())
        .route("/v1/tts/jobs/{id}/marks", get(jobs::marks))
        .route("/v1/dialects", get(system::dialects))
        .route("/v1/usage", get(usage::usage))
        .merge(admin::routes())
        .route("/health", get(system::health))
        .route("/ready", get(system::ready))
        // Clients (issue 9): listing, cancelling, OpenAI speech, the document.
        .route("/v1/tts/jobs", get(listing::list))
        .route("/v1/tts/jobs/{id}", delete(listing::cancel))
        .route("/v1/audio/speech", post(speech::speech))
        .route("/openapi.json", get(openapi::openapi_json))
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
