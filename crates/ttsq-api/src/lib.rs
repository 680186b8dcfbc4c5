#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! Imports point one way: handlers import the leaf modules below them, and
//! only `lib.rs` (the router) and [`openapi`] import every handler.
//!
//! Leaves, shared by the handlers:
//! - [`ApiContext`] (`context`): the dependencies every handler shares.
//! - [`error`]: [`ApiError`], its problem+json rendering, and the error
//!   responses the OpenAPI document declares once.
//! - `auth`: the tenant's bearer key ([`auth::Caller`]) and the admin token.
//! - `csv`: RFC 4180 records.
//! - `extract`: a JSON body within the route's limit, `Idempotency-Key`, a
//!   task id or a tenant named in the path.
//! - `view`: response bodies (the task and batch views of `ttsq-views`,
//!   pages, audio).
//! - [`coalescer`]: single submissions written many to a transaction.
//! - [`content`]: the optional content filter.
//! - `long_jobs`: a long job's chunks, cut and hashed at submission.
//! - [`hot_cache`]: audio served lately, in memory, for repeated
//!   high-priority requests.
//! - [`webhooks`]: webhook targets at submission, and what signs tenants'
//!   secrets.
//!
//! Handlers, by resource:
//! - `jobs`: `submit`, `read` (status, long-poll, audio, marks), `list`,
//!   `cancel`.
//! - `batches`: batch submission, status with paginated items, cancel.
//! - `speech`: the OpenAI-compatible `POST /v1/audio/speech`.
//! - `usage`: a tenant's own usage.
//! - `admin`: tenants and keys over HTTP, behind the admin token.
//! - `admin_usage`: every tenant's usage as JSON or CSV, a page at a time,
//!   behind the admin token.
//! - `tenant_webhooks`: a tenant's webhook URL and signing secret, behind
//!   the admin token.
//! - `system`: dialects, health, readiness (its status only).
//! - [`openapi`]: the OpenAPI document, served at `/openapi.json`, and the
//!   reference page rendered from it (`ttsq-apidoc`) at `/docs`.
//! - [`ops`]: `/metrics`, `/health` and the detailed `/ready` over any set
//!   of dependencies, served on an operations listener of their own; the
//!   cached readiness behind the public `/ready`.
//! - `telemetry`: each request's span (continuing an incoming
//!   `traceparent`) and the per-route HTTP metrics.
//! - [`router`] and [`run`]: the routes and the server loop.

pub mod coalescer;
pub mod content;
pub mod error;
pub mod hot_cache;
pub mod openapi;
pub mod ops;
pub mod webhooks;

mod admin;
mod admin_usage;
mod auth;
mod batches;
mod context;
mod csv;
mod extract;
mod jobs;
mod long_jobs;
mod speech;
mod system;
mod telemetry;
mod tenant_webhooks;
mod usage;
mod view;

use std::future::Future;

use axum::{
    Extension, Router,
    extract::DefaultBodyLimit,
    middleware,
    routing::{get, post},
};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::trace::TraceLayer;

pub use context::{ApiContext, InlineClaims};
pub use error::ApiError;

/// Every public route of the API. The operations endpoints (`/metrics`, the
/// detailed `/ready`) are not among them: see [`ops::serve`]. Each request
/// runs in a span continuing the caller's `traceparent` and is counted per
/// route template.
pub fn router(context: ApiContext) -> Router {
    let max_body = context.max_body_bytes;
    let batch_body = batches::batch_body_limit(max_body);
    Router::new()
        .route(
            "/v1/tts/jobs",
            post(jobs::submit::submit).get(jobs::list::list),
        )
        .route(
            "/v1/tts/jobs/{id}",
            get(jobs::read::get).delete(jobs::cancel::cancel),
        )
        .route("/v1/tts/jobs/{id}/audio", get(jobs::read::audio))
        .route("/v1/tts/jobs/{id}/marks", get(jobs::read::marks))
        .route(
            "/v1/tts/batches",
            post(batches::submit).layer(
                ServiceBuilder::new()
                    .layer(DefaultBodyLimit::max(batch_body))
                    .layer(Extension(extract::BodyLimit(batch_body))),
            ),
        )
        .route(
            "/v1/tts/batches/{id}",
            get(batches::get).delete(batches::cancel),
        )
        .route("/v1/audio/speech", post(speech::speech))
        .route("/v1/dialects", get(system::dialects))
        .route("/v1/usage", get(usage::usage))
        .merge(admin::routes())
        .route("/v1/admin/usage", get(admin_usage::usage))
        .merge(tenant_webhooks::routes())
        .route("/health", get(system::health))
        .route("/ready", get(system::ready))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/docs", get(openapi::docs))
        .fallback(system::not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(telemetry::count_request))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(telemetry::request_span)
                .on_response(telemetry::record_response),
        )
        .with_state(context)
}

/// Serves the API on `listener` until `shutdown` resolves, then finishes the
/// requests in flight and the syntheses that outlived theirs.
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
    let syntheses = context.syntheses.clone();
    let served = axum::serve(listener, router(context))
        .with_graceful_shutdown(shutdown)
        .await;
    syntheses.close();
    if !syntheses.is_empty() {
        tracing::info!(
            running = syntheses.len(),
            "waiting for syntheses whose clients hung up"
        );
    }
    syntheses.wait().await;
    served
}
