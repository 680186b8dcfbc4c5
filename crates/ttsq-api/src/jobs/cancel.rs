//! `DELETE /v1/tts/jobs/{id}`: cancelling a task still queued, or a long
//! job not yet ended (its chunks not started are cancelled with it).

use axum::{Json, extract::State};
use ttsq_store::Cancellation;

use crate::{
    ApiContext, ApiError,
    auth::Caller,
    error::{
        Problem,
        responses::{NoApiKey, NoSuchTask},
    },
    extract::TaskId,
    view::TaskView,
};

/// `DELETE /v1/tts/jobs/{id}`: cancels a task that is still `queued`, or a long job still `processing`.
#[utoipa::path(
    delete,
    path = "/v1/tts/jobs/{id}",
    operation_id = "cancel_job",
    tag = "jobs",
    params(("id" = Uuid, Path, description = "Task id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Cancelled; the task as it is now", body = TaskView),
        (status = 401, response = NoApiKey),
        (status = 404, response = NoSuchTask),
        (status = 409, description = "The task is no longer queued (a long job: it has ended)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(task_id = %id))]
pub async fn cancel(
    State(context): State<ApiContext>,
    caller: Caller,
    TaskId(id): TaskId,
) -> Result<Json<TaskView>, ApiError> {
    match context.store.cancel_task(caller.0.tenant_id, id).await? {
        Cancellation::Cancelled(row) => {
            // A published task's slot in its provider's window is free.
            context.dispatch.wake();
            Ok(Json(context.task_view(row).await?))
        }
        Cancellation::TooLate(row) if row.chunks_total.is_some() => {
            Err(ApiError::Conflict(format!(
                "the long job is {}; it can no longer be cancelled",
                row.status()
            )))
        }
        Cancellation::TooLate(row) => Err(ApiError::Conflict(format!(
            "the task is {}; only a queued task can be cancelled",
            row.status()
        ))),
        Cancellation::NotFound => Err(ApiError::NotFound("task")),
    }
}
