//! Dialect catalog, liveness and readiness (its status only: the detail is
//! on the operations listener, see [`crate::ops`]).

use axum::{Json, extract::State, http::StatusCode};
use serde::Serialize;
use ttsq_core::DialectInfo;

use crate::{ApiContext, ApiError, auth::Caller, error::responses::NoApiKey};

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
        (status = 401, response = NoApiKey),
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
    responses((status = 200, description = "The process is up", body = crate::ops::Health, example = json!({"status": "ok"})))
)]
pub async fn health() -> Json<crate::ops::Health> {
    crate::ops::health().await
}

/// Whether this replica can serve: the public `/ready`'s body.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ReadyStatus {
    /// `ready`, or `not_ready` (with a 503).
    status: ReadyState,
}

/// The public readiness states.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadyState {
    /// Postgres and S3 answer: jobs can be accepted and answered.
    Ready,
    /// One of them does not.
    NotReady,
}

/// `GET /ready`: 200 when Postgres and S3 answered the latest check, else
/// 503. RabbitMQ does not gate the API: accepted jobs wait in Postgres
/// until it is back. The check is shared by all callers for a couple of
/// seconds, and which dependency failed is told only on the operations
/// listener.
#[utoipa::path(
    get,
    path = "/ready",
    operation_id = "ready",
    tag = "system",
    responses(
        (status = 200, description = "Postgres and S3 answer (RabbitMQ may be down: jobs wait in Postgres)", body = ReadyStatus, example = json!({"status": "ready"})),
        (status = 503, description = "A dependency does not answer", body = ReadyStatus, example = json!({"status": "not_ready"})),
    )
)]
pub async fn ready(State(context): State<ApiContext>) -> (StatusCode, Json<ReadyStatus>) {
    let ready = context.readiness.is_ready().await;
    let status = if ready {
        ReadyState::Ready
    } else {
        ReadyState::NotReady
    };
    (crate::ops::status_code(ready), Json(ReadyStatus { status }))
}

/// Any unknown route.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("route")
}
