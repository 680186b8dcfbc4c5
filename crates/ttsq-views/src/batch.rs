//! A client batch as clients see it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use ttsq_audio::{AudioStore, AudioStoreError};
use ttsq_core::TaskStatus;
use ttsq_store::{BatchItemRow, BatchRow, Store};
use uuid::Uuid;

use crate::{ErrorView, ViewError, batch_status_url};

/// A batch without its items: what `GET /v1/tts/batches/{id}` opens with
/// and what a `batch.completed` webhook carries.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BatchView {
    /// Batch id.
    pub batch_id: Uuid,
    /// `running`, `concatenating` (joining the audio) or `completed`.
    pub status: String,
    /// Items the batch was submitted with.
    pub items: i32,
    /// Items per task status.
    pub counts: StatusCounts,
    /// Whether the succeeded items' audio is joined into one file.
    pub concatenate: bool,
    /// Presigned URL of the joined audio, once stored.
    pub concatenated_audio_url: Option<String>,
    /// Size of the joined audio in bytes.
    pub concatenated_audio_bytes: Option<i64>,
    /// Playing time of the joined audio.
    pub concatenated_duration_ms: Option<i32>,
    /// Why the audio could not be joined.
    pub concatenate_error: Option<String>,
    /// The client's metadata, as given.
    pub metadata: Option<serde_json::Value>,
    /// Where to poll it.
    pub status_url: String,
    /// Accepted at.
    pub created_at: DateTime<Utc>,
    /// Cancelled at, when it was.
    pub cancelled_at: Option<DateTime<Utc>>,
    /// Every item terminal (and the audio joined, when asked) at.
    pub completed_at: Option<DateTime<Utc>>,
}

/// A batch's items per task status.
#[derive(Debug, Clone, Copy, Default, Serialize, utoipa::ToSchema)]
pub struct StatusCounts {
    /// Waiting for a worker.
    pub queued: i64,
    /// Being synthesized.
    pub processing: i64,
    /// Audio stored.
    pub succeeded: i64,
    /// Failed for good.
    pub failed: i64,
    /// Cancelled before synthesis.
    pub cancelled: i64,
}

/// One item of a batch, in a page of `GET /v1/tts/batches/{id}`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BatchItemView {
    /// Position in the submitted batch, from 0.
    pub index: i32,
    /// The item's task.
    pub task_id: Uuid,
    /// The client's id of the item, as given.
    pub custom_id: Option<String>,
    /// Where the task is in its life.
    pub status: TaskStatus,
    /// Served from stored audio, not billed.
    pub cache_hit: bool,
    /// Presigned URL of the audio, once succeeded.
    pub audio_url: Option<String>,
    /// Playing time of the audio.
    pub duration_ms: Option<i32>,
    /// Why it failed or was cancelled.
    pub error: Option<ErrorView>,
}

impl BatchView {
    /// Renders a batch with its counts, presigning the joined audio's URL.
    pub async fn render(
        store: &Store,
        audio: &AudioStore,
        public_url: &str,
        batch: BatchRow,
    ) -> Result<Self, ViewError> {
        let mut counts = StatusCounts::default();
        for (status, n) in store.batch_counts(batch.id).await? {
            match status.parse::<TaskStatus>() {
                Ok(TaskStatus::Queued) => counts.queued = n,
                Ok(TaskStatus::Processing) => counts.processing = n,
                Ok(TaskStatus::Succeeded) => counts.succeeded = n,
                Ok(TaskStatus::Failed) => counts.failed = n,
                Ok(TaskStatus::Cancelled) => counts.cancelled = n,
                Err(_) => {}
            }
        }
        let concatenated_audio_url = match &batch.concatenated_key {
            Some(key) => Some(audio.presign_get(key).await?),
            None => None,
        };
        Ok(Self {
            batch_id: batch.id,
            status: batch.status,
            items: batch.items,
            counts,
            concatenate: batch.concatenate,
            concatenated_audio_url,
            concatenated_audio_bytes: batch.concatenated_bytes,
            concatenated_duration_ms: batch.concatenated_duration_ms,
            concatenate_error: batch.concatenate_error,
            metadata: batch.metadata,
            status_url: batch_status_url(public_url, batch.id),
            created_at: batch.created_at,
            cancelled_at: batch.cancelled_at,
            completed_at: batch.completed_at,
        })
    }
}

impl BatchItemView {
    /// Renders an item, presigning its audio's URL when it succeeded.
    pub async fn render(audio: &AudioStore, row: BatchItemRow) -> Result<Self, AudioStoreError> {
        let status = row.status();
        let audio_url = match &row.s3_key {
            Some(key) if status == TaskStatus::Succeeded => Some(audio.presign_get(key).await?),
            _ => None,
        };
        Ok(Self {
            index: row.batch_index,
            task_id: row.task_id,
            custom_id: row.custom_id,
            status,
            cache_hit: row.cache_hit,
            audio_url,
            duration_ms: row.duration_ms,
            error: ErrorView::of(row.error_code, row.error_message),
        })
    }
}
