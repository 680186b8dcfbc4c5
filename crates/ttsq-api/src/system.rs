//! Dialect catalog, liveness, readiness and metrics.

use axum::{Json, extract::State, http::StatusCode, response::IntoResponse};
use serde::Serialize;
use ttsq_core::DialectInfo;

use crate::{ApiContext, ApiError, auth::Caller};

/// Body of `GET /v1/dialects`.
#[derive(Serialize)]
pub struct Dialects<'a> {
    dialects: Vec<&'a DialectInfo>,
}

/// `GET /v1/dialects`: every dialect with its voices, formats and provider chain.
pub async fn dialects(
    State(context): State<ApiContext>,
    _caller: Caller,
) -> Json<serde_json::Value> {
    let body = Dialects {
        dialects: context.providers.catalog().iter().collect(),
    };
    // Plain data always serialises.
    Json(serde_json::to_value(body).expect("catalog serialises"))
}

/// `GET /health`: the process is up. Dependencies are `/ready`'s business.
pub async fn health() -> Json<serde_json::Value> {
    crate::ops::health().await
}

/// `GET /ready`: 200 when Postgres, RabbitMQ (with this replica's
/// publishing channel) and S3 answer, else 503; the body reports each, and
/// each provider's last health check, with latency. See [`crate::ops`].
pub async fn ready(State(context): State<ApiContext>) -> (StatusCode, Json<serde_json::Value>) {
    context
        .probes()
        .readiness(context.publisher.is_connected())
        .await
}

/// `GET /metrics`: every Prometheus series of this process.
pub async fn metrics(State(context): State<ApiContext>) -> impl IntoResponse {
    crate::ops::metrics_response(context.probes().render_metrics().await)
}

/// Any unknown route.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("route")
}
