//! Dialect catalog, liveness, readiness and metrics.

use axum::{Json, extract::State, http::StatusCode, response::IntoResponse};
use serde::Serialize;
use ttsq_core::DialectInfo;

use crate::{ApiContext, ApiError, auth::Caller, error::Problem};

/// Body of `GET /v1/dialects`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Dialects<'a> {
    /// Every dialect this deployment serves.
    #[schema(value_type = Vec<DialectInfo>)]
    dialects: Vec<&'a DialectInfo>,
}

/// `GET /v1/dialects`: every dialect with its voices, formats and provider chain.
#[utoipa::path(
    get,
    path = "/v1/dialects",
    operation_id = "list_dialects",
    tag = "system",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The dialect catalog", body = Dialects),
        (status = 401, description = "No valid API key", body = Problem, content_type = "application/problem+json"),
    )
)]
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
#[utoipa::path(
    get,
    path = "/health",
    operation_id = "health",
    tag = "system",
    responses((status = 200, description = "The process is up", body = Object, example = json!({"status": "ok"})))
)]
pub async fn health() -> Json<serde_json::Value> {
    crate::ops::health().await
}

/// `GET /ready`: 200 when Postgres, RabbitMQ (with this replica's
/// publishing channel) and S3 answer, else 503; the body reports each, and
/// each provider's last health check, with latency. See [`crate::ops`].
#[utoipa::path(
    get,
    path = "/ready",
    operation_id = "ready",
    tag = "system",
    responses(
        (status = 200, description = "Postgres, RabbitMQ and S3 answer; `checks` reports each, and each provider", body = Object),
        (status = 503, description = "A dependency does not answer; `checks` says which", body = Object),
    )
)]
pub async fn ready(State(context): State<ApiContext>) -> (StatusCode, Json<serde_json::Value>) {
    context
        .probes()
        .readiness(context.publisher.is_connected())
        .await
}

/// `GET /metrics`: every Prometheus series of this process.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "system",
    responses((status = 200, description = "Every Prometheus series of this process, in the text exposition format", body = String, content_type = "text/plain"))
)]
pub async fn metrics(State(context): State<ApiContext>) -> impl IntoResponse {
    crate::ops::metrics_response(context.probes().render_metrics().await)
}

/// Any unknown route.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("route")
}
