//! Reading a task: its status (long-polled with `?wait=`), its audio and
//! its speech marks.

use std::time::Duration;

use axum::{
    Json,
    extract::{Query, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use ttsq_core::TaskStatus;
use ttsq_store::TaskRow;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::{
    ApiContext, ApiError,
    auth::Caller,
    error::{
        Problem,
        responses::{NoApiKey, NoSuchTask},
    },
    extract::TaskId,
    view::{AudioBody, TaskView, stored_audio},
};

/// The caller's task `id`; another tenant's is as unknown as none.
async fn find_task(context: &ApiContext, caller: &Caller, id: Uuid) -> Result<TaskRow, ApiError> {
    context
        .store
        .get_task(caller.0.tenant_id, id)
        .await?
        .ok_or(ApiError::NotFound("task"))
}

/// Query of `GET /v1/tts/jobs/{id}`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Seconds to wait for a terminal state (at most `server.max_wait_secs`).
    #[param(value_type = Option<f64>, minimum = 0)]
    wait: Option<String>,
}

/// `GET /v1/tts/jobs/{id}`, with `?wait=N` to long-poll up to N seconds.
#[utoipa::path(
    get,
    path = "/v1/tts/jobs/{id}",
    operation_id = "get_job",
    tag = "jobs",
    params(("id" = Uuid, Path, description = "Task id"), WaitQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The task", body = TaskView),
        (status = 400, description = "Invalid `wait`", body = Problem, content_type = "application/problem+json"),
        (status = 401, response = NoApiKey),
        (status = 404, response = NoSuchTask),
    )
)]
#[tracing::instrument(skip_all, fields(task_id = %id))]
pub async fn get(
    State(context): State<ApiContext>,
    caller: Caller,
    TaskId(id): TaskId,
    query: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TaskView>, ApiError> {
    let wait = match query.ok().and_then(|Query(q)| q.wait) {
        None => Duration::ZERO,
        Some(raw) => {
            let seconds: f64 = raw
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                .ok_or_else(|| ApiError::field("wait", "must be a number of seconds"))?;
            // Checked before converting: a huge number would overflow a Duration.
            let wait = Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX);
            if wait > context.max_wait {
                return Err(ApiError::field(
                    "wait",
                    format!("must be at most {} seconds", context.max_wait.as_secs()),
                ));
            }
            wait
        }
    };
    let row = wait_for_terminal(&context, &caller, id, wait).await?;
    Ok(Json(context.task_view(row).await?))
}

/// Reads the task, and while it is not terminal waits up to `wait` for the
/// notification that it finished, re-reading it on each wake-up and at
/// least every `server.wait_poll_ms` (notifications can be missed while the
/// listener reconnects).
async fn wait_for_terminal(
    context: &ApiContext,
    caller: &Caller,
    id: Uuid,
    wait: Duration,
) -> Result<TaskRow, ApiError> {
    let mut row = find_task(context, caller, id).await?;
    if wait.is_zero() || row.status().is_terminal() {
        return Ok(row);
    }
    let deadline = tokio::time::Instant::now() + wait;
    let waiter = context.waiters.register(row.id);
    loop {
        // Enabled before the read, so a finish in between still wakes us.
        let notified = waiter.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        row = find_task(context, caller, id).await?;
        let now = tokio::time::Instant::now();
        if row.status().is_terminal() || now >= deadline {
            return Ok(row);
        }
        let next_poll = (now + context.waiters.fallback()).min(deadline);
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep_until(next_poll) => {}
        }
    }
}

/// Query of `GET /v1/tts/jobs/{id}/audio`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AudioQuery {
    /// `1` answers with the bytes instead of a redirect.
    #[param(value_type = Option<String>, example = "1")]
    inline: Option<String>,
}

/// `GET /v1/tts/jobs/{id}/audio`: a redirect to a presigned URL, or the
/// bytes themselves with `?inline=1`.
#[utoipa::path(
    get,
    path = "/v1/tts/jobs/{id}/audio",
    operation_id = "get_job_audio",
    tag = "jobs",
    params(("id" = Uuid, Path, description = "Task id"), AudioQuery),
    security(("bearer" = [])),
    responses(
        (status = 302, description = "Redirect to a presigned URL of the audio", headers(("location" = String, description = "Presigned URL"))),
        (status = 200, description = "With `?inline=1`: the audio", content(
            (AudioBody = "audio/mpeg"), (AudioBody = "audio/wav"), (AudioBody = "audio/pcm"), (AudioBody = "audio/ogg"), (AudioBody = "audio/flac")
        )),
        (status = 401, response = NoApiKey),
        (status = 404, response = NoSuchTask),
        (status = 409, description = "The task has not succeeded", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Audio storage is unavailable; retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(task_id = %id))]
pub async fn audio(
    State(context): State<ApiContext>,
    caller: Caller,
    TaskId(id): TaskId,
    query: Result<Query<AudioQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let inline = query
        .ok()
        .and_then(|Query(q)| q.inline)
        .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "yes"));
    let row = find_task(&context, &caller, id).await?;
    let status = row.status();
    if status != TaskStatus::Succeeded {
        return Err(ApiError::Conflict(format!(
            "the task is {status}; audio exists only once it has succeeded"
        )));
    }
    if inline {
        return stored_audio(&context, &row).await;
    }
    let key = row
        .s3_key
        .as_deref()
        .ok_or_else(|| ApiError::Conflict("the task has no audio".into()))?;
    let url = context.audio.presign_get(key).await?;
    let location = HeaderValue::from_str(&url).map_err(ApiError::internal)?;
    Ok((StatusCode::FOUND, [(header::LOCATION, location)]).into_response())
}

/// `GET /v1/tts/jobs/{id}/marks`: the speech marks file of a succeeded task
/// that asked for marks, as JSON.
#[utoipa::path(
    get,
    path = "/v1/tts/jobs/{id}/marks",
    operation_id = "get_marks",
    tag = "jobs",
    params(("id" = Uuid, Path, description = "Task id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The speech marks, in time order", body = Vec<ttsq_core::Mark>),
        (status = 401, response = NoApiKey),
        (status = 404, description = "No such task, or it has no marks", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The task has not succeeded yet", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(task_id = %id))]
pub async fn marks(
    State(context): State<ApiContext>,
    caller: Caller,
    TaskId(id): TaskId,
) -> Result<Response, ApiError> {
    let row = find_task(&context, &caller, id).await?;
    if row.marks.as_ref().is_none_or(Vec::is_empty) {
        return Err(ApiError::NotFound("speech marks"));
    }
    let status = row.status();
    if status != TaskStatus::Succeeded {
        return Err(ApiError::Conflict(format!(
            "the task is {status}; speech marks exist only once it has succeeded"
        )));
    }
    let hash = ttsq_core::ContentHash::parse(&row.content_hash)
        .ok_or(ApiError::NotFound("speech marks"))?;
    let bytes = context.audio.get(&hash.marks_key()).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response())
}
