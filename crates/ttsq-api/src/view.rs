//! JSON shapes of API responses.

use chrono::{DateTime, Utc};
use serde::Serialize;
use ttsq_core::TaskStatus;
use ttsq_store::TaskRow;
use uuid::Uuid;

use crate::{ApiContext, ApiError};

/// A task as clients see it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TaskView {
    /// Task id.
    task_id: Uuid,
    /// Where the task is in its life.
    status: TaskStatus,
    /// `normal` or `high`.
    priority: String,
    /// Dialect id.
    dialect: String,
    /// Voice id.
    voice: String,
    /// Audio format.
    format: String,
    /// Characters of the normalised text.
    characters: i32,
    /// Served from stored audio, not billed.
    cache_hit: bool,
    /// Presigned URL of the audio, once succeeded.
    audio_url: Option<String>,
    /// SHA-256 of the audio bytes.
    audio_sha256: Option<String>,
    /// Size of the audio in bytes.
    audio_bytes: Option<i64>,
    /// Playing time of the audio.
    duration_ms: Option<i32>,
    /// Speech marks asked for; absent when none were.
    #[serde(skip_serializing_if = "Option::is_none")]
    marks: Option<Vec<String>>,
    /// Presigned URL of the marks file, when succeeded with marks.
    #[serde(skip_serializing_if = "Option::is_none")]
    marks_url: Option<String>,
    /// Why it failed or was cancelled.
    error: Option<TaskErrorView>,
    /// Times a worker claimed it.
    attempts: i32,
    /// The client's metadata, as given.
    metadata: Option<serde_json::Value>,
    /// Where to poll it.
    status_url: String,
    /// Accepted at.
    created_at: DateTime<Utc>,
    /// First claimed at.
    started_at: Option<DateTime<Utc>>,
    /// Reached a terminal state at.
    finished_at: Option<DateTime<Utc>>,
}

/// Why a task failed.
#[derive(Serialize, utoipa::ToSchema)]
struct TaskErrorView {
    /// Stable error code.
    code: String,
    /// What happened, for a person.
    message: String,
}

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

/// URL of a task's status.
pub fn status_url(context: &ApiContext, id: Uuid) -> String {
    format!("{}/v1/tts/jobs/{id}", context.public_url)
}

impl TaskView {
    /// Renders a row, presigning the audio URL when it has audio.
    pub async fn render(context: &ApiContext, row: TaskRow) -> Result<Self, ApiError> {
        let status = row.status();
        let audio_url = match (&row.s3_key, status) {
            (Some(key), TaskStatus::Succeeded) => Some(context.audio.presign_get(key).await?),
            _ => None,
        };
        let marks = row.marks.filter(|m| !m.is_empty());
        let marks_url = match (
            &marks,
            status,
            ttsq_core::ContentHash::parse(&row.content_hash),
        ) {
            (Some(_), TaskStatus::Succeeded, Some(hash)) => {
                Some(context.audio.presign_get(&hash.marks_key()).await?)
            }
            _ => None,
        };
        let error = match (row.error_code, row.error_message) {
            (Some(code), message) => Some(TaskErrorView {
                code,
                message: message.unwrap_or_default(),
            }),
            _ => None,
        };
        Ok(Self {
            task_id: row.id,
            status,
            priority: row.priority,
            dialect: row.dialect,
            voice: row.voice,
            format: row.format,
            characters: row.characters,
            cache_hit: row.cache_hit,
            audio_url,
            audio_sha256: row.audio_sha256,
            audio_bytes: row.audio_bytes,
            duration_ms: row.duration_ms,
            marks,
            marks_url,
            error,
            attempts: row.attempts,
            metadata: row.metadata,
            status_url: status_url(context, row.id),
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
        })
    }
}
