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
    /// Audio format; the server's default (mp3) when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<AudioFormat>,
    /// Queued (`normal`, the default) or synthesized at once (`high`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// URL told of the terminal state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// The client's own JSON, returned as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// Speech marks to produce with the audio: any of `word`, `sentence`,
    /// `viseme` (read them with [`crate::Client::marks`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub marks: Option<Vec<String>>,
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

/// Defines a string-backed enum: the known values as variants, anything
/// else kept as `Other`, so a value a newer server sends never breaks
/// reading a response, and a value this client does not know yet can still
/// be sent.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        $name:ident {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
            /// A value this client does not know, kept as sent.
            Other(String),
        }

        impl $name {
            /// The API's name of the value.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)+
                    Self::Other(other) => other,
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::convert::Infallible;

            /// Never fails: an unknown name is kept as `Other`, and the
            /// server says whether it takes it.
            fn from_str(raw: &str) -> Result<Self, Self::Err> {
                Ok(match raw {
                    $($text => Self::$variant,)+
                    other => Self::Other(other.to_owned()),
                })
            }
        }

        impl From<&str> for $name {
            fn from(raw: &str) -> Self {
                match raw.parse() {
                    Ok(value) => value,
                    Err(never) => match never {},
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let raw = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
                Ok(Self::from(raw.as_ref()))
            }
        }
    };
}

string_enum! {
    /// An audio format. Which formats a dialect offers is in
    /// [`Dialect::formats`].
    ///
    /// ```
    /// use ttsq_client::AudioFormat;
    ///
    /// assert_eq!("opus".parse::<AudioFormat>().unwrap(), AudioFormat::Opus);
    /// assert_eq!(AudioFormat::Opus.extension(), "opus");
    /// assert_eq!(AudioFormat::from_path("talk.ogg".as_ref()), Some(AudioFormat::Opus));
    /// // A format a newer server offers is kept, not refused.
    /// assert_eq!(AudioFormat::from("speex").as_str(), "speex");
    /// ```
    AudioFormat {
        /// MP3, the server's default.
        #[default]
        Mp3 = "mp3",
        /// WAV (16-bit PCM in a RIFF container).
        Wav = "wav",
        /// Raw 16-bit little-endian PCM, no header.
        Pcm = "pcm",
        /// Opus in an Ogg container, `.opus`.
        Opus = "opus",
        /// FLAC.
        Flac = "flac",
        /// The older name of [`AudioFormat::Opus`], which servers still
        /// accept; they answer `opus`.
        OggOpus = "ogg_opus",
    }
}

impl AudioFormat {
    /// The file extension for audio in this format (`opus` for `ogg_opus`).
    pub fn extension(&self) -> &str {
        match self {
            Self::OggOpus => "opus",
            other => other.as_str(),
        }
    }

    /// The format a file name's extension asks for (`ogg` is `opus`);
    /// `None` without an extension.
    pub fn from_path(path: &std::path::Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        Some(match ext.as_str() {
            "ogg" => Self::Opus,
            other => Self::from(other),
        })
    }
}

string_enum! {
    /// How a job is scheduled.
    ///
    /// ```
    /// use ttsq_client::Priority;
    ///
    /// assert_eq!(Priority::default(), Priority::Normal);
    /// assert_eq!(serde_json::to_string(&Priority::High).unwrap(), r#""high""#);
    /// ```
    Priority {
        /// Through the queue; the submission answers `202` with a task id.
        #[default]
        Normal = "normal",
        /// Synthesized at once; the submission answers with the audio.
        High = "high",
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
    /// How it was scheduled.
    #[serde(default)]
    pub priority: Priority,
    /// Dialect id.
    #[serde(default)]
    pub dialect: String,
    /// Voice id.
    #[serde(default)]
    pub voice: String,
    /// Audio format.
    #[serde(default)]
    pub format: AudioFormat,
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
    /// Presigned URL of the speech marks, once succeeded, when asked for.
    #[serde(default)]
    pub marks_url: Option<String>,
    /// A long job (a text longer than one provider request, split by the
    /// server): how many chunks it was split into. `None` for any other
    /// task, and from servers without long jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks_total: Option<u32>,
    /// A long job: how many of its chunks are synthesized so far, for
    /// showing progress against [`Task::chunks_total`]. `None` for any other
    /// task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks_done: Option<u32>,
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
    pub formats: Vec<AudioFormat>,
    /// Emotions offered.
    #[serde(default)]
    pub emotions: Vec<String>,
    /// Providers tried in order.
    #[serde(default)]
    pub provider_chain: Vec<String>,
    /// Longest text, in characters, synthesized as one request (the least
    /// of its providers' limits): a longer normal-priority job is a long
    /// job, split into chunks by the server, and a longer high-priority job
    /// is refused. `None` from servers that do not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_chars: Option<u32>,
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

/// One speech mark: when a word, a sentence or a viseme is heard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// `word`, `sentence` or `viseme`.
    #[serde(rename = "type")]
    pub kind: String,
    /// When it starts, in ms from the start of the audio.
    pub start_ms: u32,
    /// When it ends, in ms.
    pub end_ms: u32,
    /// The word or sentence, or the viseme's name.
    pub value: String,
    /// Offset of its first character in the normalised text (words, sentences).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<u32>,
    /// Offset after its last character (words, sentences).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_jobs_progress_is_read_and_other_tasks_have_none() {
        let long: Task = serde_json::from_str(
            r#"{"task_id":"0193a0a0-0000-7000-8000-000000000001","status":"processing",
                "created_at":"2026-12-07T12:00:00Z","chunks_total":7,"chunks_done":3}"#,
        )
        .expect("a long job");
        let short: Task = serde_json::from_str(
            r#"{"task_id":"0193a0a0-0000-7000-8000-000000000002","status":"queued",
                "created_at":"2026-12-07T12:00:00Z"}"#,
        )
        .expect("a single job");

        assert_eq!((long.chunks_total, long.chunks_done), (Some(7), Some(3)));
        assert_eq!((short.chunks_total, short.chunks_done), (None, None));
        let written = serde_json::to_value(&short).expect("serializes");
        assert!(written.get("chunks_total").is_none(), "{written}");
    }

    #[test]
    fn a_dialect_reads_its_request_limit_when_the_server_gives_it() {
        let with: Dialect =
            serde_json::from_str(r#"{"id":"en-gb","max_request_chars":4096}"#).expect("a dialect");
        let without: Dialect = serde_json::from_str(r#"{"id":"en-gb"}"#).expect("a dialect");

        assert_eq!(with.max_request_chars, Some(4096));
        assert_eq!(without.max_request_chars, None);
    }
}
