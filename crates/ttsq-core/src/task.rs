//! Task states. A task is created `queued` (or directly terminal on a cache
//! hit or inline synthesis), becomes `processing` when a worker claims it and
//! ends in exactly one terminal state. Its id, a UUIDv7, tells when it was
//! submitted.

use std::{
    fmt,
    str::FromStr,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Accepted and waiting for a worker.
    Queued,
    /// Claimed by a worker; being synthesized.
    Processing,
    /// Audio is stored and linked.
    Succeeded,
    /// Gave up; `error` says why.
    Failed,
    /// Cancelled by the client while still queued.
    Cancelled,
}

impl TaskStatus {
    /// Every state, in life order.
    pub const ALL: [TaskStatus; 5] = [
        Self::Queued,
        Self::Processing,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The name stored in Postgres and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Processing => "processing",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the task will never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status name that is not one of [`TaskStatus::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown task status `{0}`")]
pub struct UnknownStatus(pub String);

impl FromStr for TaskStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// When a task was submitted: its id is a UUIDv7, stamped at submission.
pub fn submitted_at(task_id: Uuid) -> Option<SystemTime> {
    let (seconds, nanos) = task_id.get_timestamp()?.to_unix();
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(seconds, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_only_end_states_are_terminal() {
        for status in TaskStatus::ALL {
            assert_eq!(status.as_str().parse::<TaskStatus>().unwrap(), status);
        }
        let terminal: Vec<_> = TaskStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [
                TaskStatus::Succeeded,
                TaskStatus::Failed,
                TaskStatus::Cancelled
            ]
        );
        assert!("done".parse::<TaskStatus>().is_err());
    }
}
