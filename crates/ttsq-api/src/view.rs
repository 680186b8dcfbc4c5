//! JSON shapes of API responses: the task and batch views shared with
//! webhook payloads (`ttsq-views`), and the envelopes only the API answers
//! with.

use axum::{
    body::Bytes,
    http::header,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use ttsq_core::TaskStatus;
use ttsq_store::{BatchRow, TaskRow};
pub use ttsq_views::{BatchItemView, BatchView, TaskView};
use uuid::Uuid;

use crate::{ApiContext, ApiError};

/// The body of a `202 Accepted`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AcceptedView {
    /// The task created (or found by idempotency key).
    pub task_id: Uuid,
    /// Its state now: `queued`, or terminal on a cache hit.
    pub status: TaskStatus,
    /// Where to poll.
    pub status_url: String,
}

/// The body of `202 Accepted` for a batch.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AcceptedBatch {
    /// The batch created (or found by idempotency key).
    pub batch_id: Uuid,
    /// Its state now: `running`, `concatenating` or `completed` (every
    /// item a cache hit, or a repeat of a batch that has finished).
    pub status: String,
    /// The items' task ids, in item order.
    pub task_ids: Vec<Uuid>,
    /// Where to poll the batch.
    pub status_url: String,
}

/// A batch with a page of its items: `GET /v1/tts/batches/{id}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BatchPage {
    /// The batch and its counts.
    #[serde(flatten)]
    pub batch: BatchView,
    /// Items in batch order, from the cursor on.
    pub data: Vec<BatchItemView>,
    /// The cursor of the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// A batch after `DELETE /v1/tts/batches/{id}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CancelledBatch {
    /// The batch and its counts, as they are now.
    #[serde(flatten)]
    pub batch: BatchView,
    /// Items this request cancelled.
    pub cancelled_items: u64,
}

/// Audio bytes as a response body, for the document only: `audio/mpeg`,
/// `audio/wav`, `audio/pcm` or `audio/ogg` by the task's format.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
#[expect(
    dead_code,
    reason = "a schema for the document; responses are built from bytes"
)]
pub struct AudioBody(Vec<u8>);

/// The task's stored audio, read from S3, as a response.
pub async fn stored_audio(context: &ApiContext, row: &TaskRow) -> Result<Response, ApiError> {
    let key = row
        .s3_key
        .as_deref()
        .ok_or_else(|| ApiError::Conflict("the task has no audio".into()))?;
    let bytes = context.audio.get(key).await?;
    Ok(audio_response(row, bytes))
}

/// `bytes` with the content type of the task's format.
pub fn audio_response(row: &TaskRow, bytes: Bytes) -> Response {
    let content_type = row
        .format
        .parse::<ttsq_core::AudioFormat>()
        .map(|f| f.content_type())
        .unwrap_or("application/octet-stream");
    ([(header::CONTENT_TYPE, content_type)], bytes).into_response()
}

impl ApiContext {
    /// Where a task's status is polled.
    pub fn task_url(&self, id: Uuid) -> String {
        ttsq_views::task_status_url(&self.public_url, id)
    }

    /// Where a batch's status is polled.
    pub fn batch_url(&self, id: Uuid) -> String {
        ttsq_views::batch_status_url(&self.public_url, id)
    }

    /// A task as clients see it, presigning its URLs.
    pub async fn task_view(&self, row: TaskRow) -> Result<TaskView, ApiError> {
        Ok(TaskView::render(&self.audio, &self.public_url, row).await?)
    }

    /// A batch as clients see it, with its counts.
    pub async fn batch_view(&self, batch: BatchRow) -> Result<BatchView, ApiError> {
        Ok(BatchView::render(&self.store, &self.audio, &self.public_url, batch).await?)
    }
}
