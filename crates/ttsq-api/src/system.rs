//! Dialect catalog, liveness and readiness.

use std::{collections::BTreeMap, time::Instant};

use axum::{Json, extract::State, http::StatusCode};
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
    Json(serde_json::json!({ "status": "ok" }))
}

#[derive(Serialize)]
struct Check {
    ok: bool,
    latency_ms: u128,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn check<E: std::fmt::Display>(started: Instant, result: Result<(), E>) -> Check {
    Check {
        ok: result.is_ok(),
        latency_ms: started.elapsed().as_millis(),
        error: result.err().map(|e| e.to_string()),
    }
}

/// `GET /ready`: 200 when Postgres, RabbitMQ and S3 answer, else 503; the
/// body reports each, and each provider's last health check, with latency.
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
    let mut checks = BTreeMap::new();

    let started = Instant::now();
    checks.insert(
        "postgres".to_owned(),
        check(started, context.store.ping().await),
    );

    let started = Instant::now();
    let queue = if context.broker.is_connected() && context.publisher.is_connected() {
        Ok(())
    } else {
        Err("not connected")
    };
    checks.insert("rabbitmq".to_owned(), check(started, queue));

    let started = Instant::now();
    checks.insert("s3".to_owned(), check(started, context.audio.check().await));

    // Providers are reported but do not gate readiness: with fallback chains
    // a vendor outage degrades routing, and taking every API replica out of
    // service for it would turn a partial outage into a total one.
    let ready = checks.values().all(|c| c.ok);
    for (name, result) in context.providers.health().await {
        checks.insert(format!("provider:{name}"), check(started, result));
    }

    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({ "ready": ready, "checks": checks })),
    )
}

/// Any unknown route.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("route")
}
