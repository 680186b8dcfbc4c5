//! Request and response shapes, as a client reads them. Response types
//! ignore fields they do not know, so a newer server does not break them.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A job to submit; see the API's `JobRequest`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NewJob {
    /// Text to speak.
    pub text: String,
    /// Dialect id from [`crate::Client::dialects`].
    pub dialect: String,
    /// Voice of that dialect; its default when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voice: Option<String>,
    /// Speaking rate, 0.5 to 2.0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    /// Emotion, where the dialect offers any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emotion: Option<String>,
    /// `mp3` (default), `wav`, `pcm` or `ogg_opus`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// `normal` (default) or `high`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// URL told of the terminal state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// The client's own JSON, returned as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

impl NewJob {
    /// A job with only the required fields.
    pub fn new(text: impl Into<String>, dialect: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            dialect: dialect.into(),
            ..Self::default()
        }
    }
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Waiting for a worker.
    Queued,
    /// Being synthesized.
    Processing,
    /// Audio is ready.
    Succeeded,
    /// Gave up; the task's `error` says why.
    Failed,
    /// Cancelled while queued.
    Cancelled,
    /// A state this client does not know (a newer server).
    #[serde(other)]
    Unknown,
}

impl TaskStatus {
    /// Whether the task will never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// The API's name of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Processing => "processing",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task created (or found by its idempotency key) by a submission.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Accepted {
    /// Its id.
    pub task_id: Uuid,
    /// Its state now.
    pub status: TaskStatus,
    /// Where to poll it.
    #[serde(default)]
    pub status_url: Option<String>,
}

/// Why a task failed or was cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    /// Stable code.
    pub code: String,
    /// What happened.
    pub message: String,
}

/// A task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Its id.
    pub task_id: Uuid,
    /// Where it is in its life.
    pub status: TaskStatus,
    /// `normal` or `high`.
    #[serde(default)]
    pub priority: String,
    /// Dialect id.
    #[serde(default)]
    pub dialect: String,
    /// Voice id.
    #[serde(default)]
    pub voice: String,
    /// Audio format.
    #[serde(default)]
    pub format: String,
    /// Characters of the text.
    #[serde(default)]
    pub characters: i64,
    /// Served from stored audio.
    #[serde(default)]
    pub cache_hit: bool,
    /// Presigned URL of the audio, once succeeded.
    #[serde(default)]
    pub audio_url: Option<String>,
    /// SHA-256 of the audio.
    #[serde(default)]
    pub audio_sha256: Option<String>,
    /// Size of the audio.
    #[serde(default)]
    pub audio_bytes: Option<i64>,
    /// Playing time of the audio.
    #[serde(default)]
    pub duration_ms: Option<i64>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<TaskError>,
    /// Times a worker claimed it.
    #[serde(default)]
    pub attempts: i64,
    /// The metadata submitted.
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    /// Accepted at.
    pub created_at: DateTime<Utc>,
    /// Finished at.
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
}

/// Which tasks [`crate::Client::list`] returns.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ListOptions {
    /// Only tasks in this state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<TaskStatus>,
    /// Tasks per page (server default 50, at most 200).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// One page of tasks.
#[derive(Debug, Clone, Deserialize)]
pub struct TaskPage {
    /// Newest first.
    pub jobs: Vec<Task>,
    /// Cursor of the next page; `None` on the last.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// A dialect of the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dialect {
    /// Id to submit as `dialect`.
    pub id: String,
    /// Human-readable name.
    #[serde(default)]
    pub name: String,
    /// Voices; the first is the default.
    #[serde(default)]
    pub voices: Vec<String>,
    /// Formats offered.
    #[serde(default)]
    pub formats: Vec<String>,
    /// Emotions offered.
    #[serde(default)]
    pub emotions: Vec<String>,
    /// Providers tried in order.
    #[serde(default)]
    pub provider_chain: Vec<String>,
}

/// The tenant's usage, as `GET /v1/usage` reports it: one entry per day.
/// The entries are kept as the server sends them.
#[derive(Debug, Clone, Deserialize)]
pub struct Usage {
    /// One object per day (`day`, counts and characters).
    pub days: Vec<serde_json::Value>,
}

/// Audio synthesized at high priority.
#[derive(Debug, Clone)]
pub struct Speech {
    /// The task recorded for it.
    pub task_id: Uuid,
    /// Served from stored audio.
    pub cache_hit: bool,
    /// `audio/mpeg`, `audio/wav`, …
    pub content_type: String,
    /// The bytes.
    pub audio: Bytes,
}
