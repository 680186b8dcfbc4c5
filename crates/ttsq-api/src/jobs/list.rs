//! `GET /v1/tts/jobs`: a tenant's own tasks, newest first, a page at a time.

use axum::{
    Json,
    extract::{Query, State, rejection::QueryRejection},
};
use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};
use ttsq_core::TaskStatus;
use ttsq_store::TaskCursor;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{
    ApiContext, ApiError,
    auth::Caller,
    error::{Problem, responses::NoApiKey},
    view::TaskView,
};

/// Page size when `limit` is not given.
const DEFAULT_LIMIT: u32 = 50;
/// Largest page a client may ask for.
const MAX_LIMIT: u32 = 200;

/// Query of `GET /v1/tts/jobs`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only tasks in this state.
    #[param(value_type = Option<TaskStatus>)]
    status: Option<String>,
    /// Tasks per page, 1 to 200 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// `next_cursor` of the previous page, as given (48 hex digits).
    #[param(pattern = "^[0-9a-fA-F]{48}$")]
    cursor: Option<String>,
}

/// One page of `GET /v1/tts/jobs`.
#[derive(Serialize, ToSchema)]
pub struct TaskListView {
    /// The tasks, newest first.
    jobs: Vec<TaskView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// `GET /v1/tts/jobs`: the tenant's tasks, newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/tts/jobs",
    operation_id = "list_jobs",
    tag = "jobs",
    params(ListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of tasks, newest first", body = TaskListView),
        (status = 400, description = "Invalid `status`, `limit` or `cursor`", body = Problem, content_type = "application/problem+json"),
        (status = 401, response = NoApiKey),
    )
)]
#[tracing::instrument(skip_all, fields(tenant = %caller.0.tenant_id))]
pub async fn list(
    State(context): State<ApiContext>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<TaskListView>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::field("", e.body_text()))?;
    let status = query
        .status
        .as_deref()
        .map(|s| {
            s.parse::<TaskStatus>().map_err(|_| {
                ApiError::field(
                    "status",
                    "must be one of queued, processing, succeeded, failed, cancelled",
                )
            })
        })
        .transpose()?;
    let limit = match query.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                ApiError::field(
                    "limit",
                    format!("must be a whole number from 1 to {MAX_LIMIT}"),
                )
            })?,
    };
    let cursor = query.cursor.as_deref().map(decode_cursor).transpose()?;
    let page = context
        .store
        .list_tasks(caller.0.tenant_id, status, cursor, limit)
        .await?;
    let mut jobs = Vec::with_capacity(page.tasks.len());
    for row in page.tasks {
        jobs.push(context.task_view(row).await?);
    }
    Ok(Json(TaskListView {
        jobs,
        next_cursor: page.next.map(encode_cursor),
    }))
}

/// The cursor is opaque to clients: the hex of the sort key of the last
/// task shown, `created_at` in microseconds (8 bytes) and its id (16).
fn encode_cursor(cursor: TaskCursor) -> String {
    let mut bytes = cursor.created_at.timestamp_micros().to_be_bytes().to_vec();
    bytes.extend_from_slice(cursor.id.as_bytes());
    hex::encode(bytes)
}

fn decode_cursor(raw: &str) -> Result<TaskCursor, ApiError> {
    let invalid = || ApiError::field("cursor", "is not a cursor this API returned");
    let bytes = hex::decode(raw).map_err(|_| invalid())?;
    let (micros, id) = bytes
        .split_first_chunk::<8>()
        .filter(|(_, id)| id.len() == 16)
        .ok_or_else(invalid)?;
    // Only times Postgres holds (years 4713 BC to 294276 AD) can be compared
    // with `created_at`; a real cursor is well inside years 1 to 9999.
    let created_at = DateTime::<Utc>::from_timestamp_micros(i64::from_be_bytes(*micros))
        .filter(|at| (1..=9999).contains(&at.year()))
        .ok_or_else(invalid)?;
    let id = Uuid::from_slice(id).map_err(|_| invalid())?;
    Ok(TaskCursor { created_at, id })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_survives_its_round_trip() {
        let cursor = TaskCursor {
            created_at: DateTime::from_timestamp_micros(1_763_900_000_123_456).expect("in range"),
            id: Uuid::now_v7(),
        };
        assert_eq!(
            decode_cursor(&encode_cursor(cursor)).expect("decodes"),
            cursor
        );
    }

    #[test]
    fn a_forged_cursor_is_a_bad_request() {
        let too_long = "ab".repeat(25);
        let far_future = format!("{}{}", hex::encode(i64::MAX.to_be_bytes()), "00".repeat(16));
        // Year -5000: chrono holds it, Postgres does not.
        let far_past = format!(
            "{}{}",
            hex::encode((-220_000_000_000_000_000_i64).to_be_bytes()),
            "00".repeat(16)
        );
        for raw in [
            "",
            "zz",
            "abcd",
            too_long.as_str(),
            far_future.as_str(),
            far_past.as_str(),
        ] {
            assert!(
                matches!(decode_cursor(raw), Err(ApiError::Validation(_))),
                "{raw}"
            );
        }
    }
}
