//! JSON shapes of API responses.

use chrono::{DateTime, Utc};
use serde::Serialize;
use ttsq_core::TaskStatus;
use ttsq_store::TaskRow;
use uuid::Uuid;

use crate::{ApiContext, ApiError};

/// A task as clients see it.
#[derive(Serialize)]
pub struct TaskView {
    task_id: Uuid,
    status: TaskStatus,
    priority: String,
    dialect: String,
    voice: String,
    format: String,
    characters: i32,
    cache_hit: bool,
    audio_url: Option<String>,
    audio_sha256: Option<String>,
    audio_bytes: Option<i64>,
    duration_ms: Option<i32>,
    /// Speech marks asked for; absent when none were.
    #[serde(skip_serializing_if = "Option::is_none")]
    marks: Option<Vec<String>>,
    /// Presigned URL of the marks file, when succeeded with marks.
    #[serde(skip_serializing_if = "Option::is_none")]
    marks_url: Option<String>,
    error: Option<TaskErrorView>,
    attempts: i32,
    metadata: Option<serde_json::Value>,
    status_url: String,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

#[derive(Serialize)]
struct TaskErrorView {
    code: String,
    message: String,
}

/// The body of a `202 Accepted`.
#[derive(Serialize)]
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
