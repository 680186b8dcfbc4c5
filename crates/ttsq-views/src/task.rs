//! A task as clients see it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use ttsq_audio::{AudioStore, AudioStoreError};
use ttsq_core::{ContentHash, TaskStatus};
use ttsq_store::TaskRow;
use uuid::Uuid;

use crate::task_status_url;

/// A task as `GET /v1/tts/jobs/{id}` answers it and a `task.*` webhook
/// carries it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TaskView {
    /// Task id.
    pub task_id: Uuid,
    /// Where the task is in its life.
    pub status: TaskStatus,
    /// `normal` or `high`.
    pub priority: String,
    /// Dialect id.
    pub dialect: String,
    /// Voice id.
    pub voice: String,
    /// Audio format.
    pub format: String,
    /// Characters of the normalised text.
    pub characters: i32,
    /// Served from stored audio, not billed.
    pub cache_hit: bool,
    /// Presigned URL of the audio, once succeeded.
    pub audio_url: Option<String>,
    /// SHA-256 of the audio bytes.
    pub audio_sha256: Option<String>,
    /// Size of the audio in bytes.
    pub audio_bytes: Option<i64>,
    /// Playing time of the audio.
    pub duration_ms: Option<i32>,
    /// Speech marks asked for; absent when none were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub marks: Option<Vec<String>>,
    /// Presigned URL of the marks file, when succeeded with marks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub marks_url: Option<String>,
    /// A long job's number of chunks (its text is longer than one provider
    /// request takes, so it is synthesized in parts, joined when all are
    /// done); absent for every other task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks_total: Option<u32>,
    /// A long job's chunks synthesized (or found stored) so far, of
    /// `chunks_total`: its progress. Absent for every other task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks_done: Option<u32>,
    /// Why it failed or was cancelled.
    pub error: Option<ErrorView>,
    /// Times a worker claimed it.
    pub attempts: i32,
    /// The client's metadata, as given.
    pub metadata: Option<serde_json::Value>,
    /// Where to poll it.
    pub status_url: String,
    /// Accepted at.
    pub created_at: DateTime<Utc>,
    /// First claimed at.
    pub started_at: Option<DateTime<Utc>>,
    /// Reached a terminal state at.
    pub finished_at: Option<DateTime<Utc>>,
}

/// Why a task failed or was cancelled.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorView {
    /// Stable error code.
    pub code: String,
    /// What happened, for a person.
    pub message: String,
}

impl ErrorView {
    /// The error a row records, when it records one.
    pub fn of(code: Option<String>, message: Option<String>) -> Option<Self> {
        code.map(|code| Self {
            code,
            message: message.unwrap_or_default(),
        })
    }
}

impl TaskView {
    /// Renders a row, presigning the audio and marks URLs when it
    /// succeeded.
    pub async fn render(
        audio: &AudioStore,
        public_url: &str,
        row: TaskRow,
    ) -> Result<Self, AudioStoreError> {
        let status = row.status();
        let succeeded = status == TaskStatus::Succeeded;
        let audio_url = match &row.s3_key {
            Some(key) if succeeded => Some(audio.presign_get(key).await?),
            _ => None,
        };
        let marks = row.marks.filter(|m| !m.is_empty());
        let marks_url = match (&marks, ContentHash::parse(&row.content_hash)) {
            (Some(_), Some(hash)) if succeeded => Some(audio.presign_get(&hash.marks_key()).await?),
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
            chunks_total: row.chunks_total.and_then(|n| u32::try_from(n).ok()),
            chunks_done: row.chunks_done.and_then(|n| u32::try_from(n).ok()),
            error: ErrorView::of(row.error_code, row.error_message),
            attempts: row.attempts,
            metadata: row.metadata,
            status_url: task_status_url(public_url, row.id),
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
        })
    }
}
