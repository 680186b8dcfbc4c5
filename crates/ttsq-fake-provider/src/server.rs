//! The axum app: the three vendors' routes plus the `/_fake` control routes.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};

use crate::{config, elevenlabs, http, openai, state::Shared};

/// Every route of the fake.
pub(crate) fn app(shared: Arc<Shared>) -> Router {
    Router::new()
        .merge(elevenlabs::routes())
        .merge(openai::routes())
        .merge(http::routes())
        .route("/_fake/config", post(set_config))
        .route("/_fake/stats", get(stats))
        .route("/_fake/reset", post(reset))
        .fallback(not_found)
        .with_state(shared)
}

/// `POST /_fake/config`: merges a partial JSON configuration into the live one.
async fn set_config(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(patch) => patch,
        Err(e) => return invalid_config(&e.to_string()),
    };
    let mut result = Ok(());
    shared.update(|current| match config::merge(current, patch) {
        Ok(merged) => *current = merged,
        Err(e) => result = Err(e),
    });
    match result {
        Ok(()) => Json(json!({"status": "ok"})).into_response(),
        Err(message) => invalid_config(&message),
    }
}

fn invalid_config(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "invalid_config", "message": message})),
    )
        .into_response()
}

/// `GET /_fake/stats`: counters and the recent log.
async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.stats()).into_response()
}

/// `POST /_fake/reset`: clears counters and log.
async fn reset(State(shared): State<Arc<Shared>>) -> Response {
    shared.reset();
    Json(json!({"status": "ok"})).into_response()
}

async fn not_found(uri: Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "not_found", "message": format!("no route for {}", uri.path())})),
    )
        .into_response()
}
