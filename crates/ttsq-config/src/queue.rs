//! `[queue]`: RabbitMQ.

use std::time::Duration;

use schemars::JsonSchema;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::validation::{Checked, Invalid, at_least_one};

/// RabbitMQ settings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// AMQP URL; secret because it carries a password.
    #[serde(serialize_with = "crate::secret::redacted")]
    #[schemars(with = "String", extend("writeOnly" = true))]
    pub url: SecretString,
    /// Prefix of every queue name.
    pub prefix: String,
    /// Unacknowledged deliveries a worker holds at once.
    pub prefetch: u16,
    /// Redeliveries before RabbitMQ dead-letters a message.
    pub delivery_limit: u32,
    /// Back-off before each retry of a job whose provider call failed, in
    /// seconds; one delay queue each. A job gets `len + 1` attempts.
    pub retry_delays_secs: Vec<u64>,
    /// Back-off before each retry of a webhook delivery, in milliseconds;
    /// one delay queue each. A delivery gets `len + 1` attempts.
    pub webhook_retry_delays_ms: Vec<u64>,
}

impl QueueSettings {
    /// [`Self::retry_delays_secs`] as durations.
    pub fn retry_delays(&self) -> Vec<Duration> {
        self.retry_delays_secs
            .iter()
            .map(|s| Duration::from_secs(*s))
            .collect()
    }

    /// [`Self::webhook_retry_delays_ms`] as durations.
    pub fn webhook_retry_delays(&self) -> Vec<Duration> {
        self.webhook_retry_delays_ms
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect()
    }

    /// Attempts a job gets before a passing failure fails it.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.retry_delays_secs.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1)
    }

    /// Range checks serde cannot express.
    pub(crate) fn check(&self) -> Checked {
        let url = self.url.expose_secret();
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            return Err(Invalid::new(
                "queue.url",
                "must be an amqp:// or amqps:// URL",
            ));
        }
        at_least_one("queue.prefetch", self.prefetch.into())
    }
}
