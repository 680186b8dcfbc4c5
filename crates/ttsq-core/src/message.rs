//! The message a job travels through RabbitMQ as. It is small on purpose:
//! ids, dialect (so a worker can batch without a database read), attempt and
//! trace context. The text stays in Postgres.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Wire version written by this build; decoders refuse others so an old
/// worker never misreads a newer message (it goes to the dead-letter queue).
pub const MESSAGE_VERSION: u32 = 1;

/// One queued job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobMessage {
    /// Wire version; always [`MESSAGE_VERSION`] when encoded by this build.
    pub v: u32,
    /// The task to process.
    pub task_id: Uuid,
    /// Owner of the task, for logs and sanity checks.
    pub tenant_id: Uuid,
    /// Dialect id; the worker batches by it.
    pub dialect: String,
    /// Delivery attempt, starting at 1.
    pub attempt: u32,
    /// W3C `traceparent` of the submitting request, when traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// Why a queue message could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum MessageDecodeError {
    /// Not JSON, or not the shape of a job message.
    #[error("malformed job message: {0}")]
    Malformed(#[from] serde_json::Error),
    /// A version this build does not understand.
    #[error("unsupported job message version {0}")]
    UnsupportedVersion(u32),
}

impl MessageDecodeError {
    /// Short machine-readable reason, used as the dead-letter reason header.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::UnsupportedVersion(_) => "unsupported_version",
        }
    }
}

impl JobMessage {
    /// A first-attempt message for a task.
    pub fn new(task_id: Uuid, tenant_id: Uuid, dialect: impl Into<String>) -> Self {
        Self {
            v: MESSAGE_VERSION,
            task_id,
            tenant_id,
            dialect: dialect.into(),
            attempt: 1,
            traceparent: None,
        }
    }

    /// The JSON bytes published to the queue.
    pub fn encode(&self) -> Vec<u8> {
        // A struct of ids, strings and integers always serialises.
        serde_json::to_vec(self).expect("job message always serialises")
    }

    /// Parses a delivery body, refusing unknown versions.
    pub fn decode(bytes: &[u8]) -> Result<Self, MessageDecodeError> {
        #[derive(Deserialize)]
        struct Versioned {
            v: u32,
        }
        let Versioned { v } = serde_json::from_slice(bytes)?;
        if v != MESSAGE_VERSION {
            return Err(MessageDecodeError::UnsupportedVersion(v));
        }
        Ok(serde_json::from_slice(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode_round_trips() {
        let mut msg = JobMessage::new(Uuid::new_v4(), Uuid::new_v4(), "en-gb");
        msg.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        assert_eq!(JobMessage::decode(&msg.encode()).unwrap(), msg);
    }

    #[test]
    fn garbage_and_other_versions_are_refused_with_a_reason() {
        for junk in [&b""[..], b"\xff\xfe", b"{}", b"[1,2]", b"{\"v\":1}"] {
            let err = JobMessage::decode(junk).unwrap_err();
            assert_eq!(err.code(), "malformed", "{junk:?}");
        }
        let mut future =
            serde_json::to_value(JobMessage::new(Uuid::nil(), Uuid::nil(), "x")).unwrap();
        future["v"] = 2.into();
        let err = JobMessage::decode(future.to_string().as_bytes()).unwrap_err();
        assert!(matches!(err, MessageDecodeError::UnsupportedVersion(2)));
    }
}
