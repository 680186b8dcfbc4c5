//! The bodies of webhook deliveries: an envelope around the view of the
//! task or batch the event is about, typed so that the OpenAPI document's
//! `webhooks` section is derived from what is sent.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::{BatchView, TaskView};

/// The body POSTed for `task.completed`: a task reached a terminal state
/// (`succeeded`, `failed` or `cancelled`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TaskCompletedEvent {
    /// The event's id, the same at every attempt (also `webhook-id`):
    /// receivers dedupe on it.
    pub id: Uuid,
    /// Always `task.completed` (also the `ttsq-event` header).
    #[serde(rename = "type")]
    pub kind: TaskEventType,
    /// When this attempt's body was made.
    pub created_at: DateTime<Utc>,
    /// The task as `GET /v1/tts/jobs/{id}` shows it now.
    pub data: TaskView,
}

/// The body POSTed for `batch.completed`: every item of a batch is terminal
/// (and its audio joined, when asked).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BatchCompletedEvent {
    /// The event's id, the same at every attempt (also `webhook-id`):
    /// receivers dedupe on it.
    pub id: Uuid,
    /// Always `batch.completed` (also the `ttsq-event` header).
    #[serde(rename = "type")]
    pub kind: BatchEventType,
    /// When this attempt's body was made.
    pub created_at: DateTime<Utc>,
    /// The batch as `GET /v1/tts/batches/{id}` shows it now, without items.
    pub data: BatchView,
}

/// The type of a task event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub enum TaskEventType {
    /// The task reached a terminal state.
    #[serde(rename = "task.completed")]
    Completed,
}

/// The type of a batch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub enum BatchEventType {
    /// Every item of the batch is terminal.
    #[serde(rename = "batch.completed")]
    Completed,
}

impl TaskEventType {
    /// The name, as in the `ttsq-event` header and the event log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "task.completed",
        }
    }
}

impl BatchEventType {
    /// The name, as in the `ttsq-event` header and the event log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "batch.completed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_serialise_as_their_names() {
        for (json, name) in [
            (
                serde_json::to_value(TaskEventType::Completed).expect("a unit variant serialises"),
                TaskEventType::Completed.as_str(),
            ),
            (
                serde_json::to_value(BatchEventType::Completed).expect("a unit variant serialises"),
                BatchEventType::Completed.as_str(),
            ),
        ] {
            assert_eq!(json, name);
        }
    }
}
