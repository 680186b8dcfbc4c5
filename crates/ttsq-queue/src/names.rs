//! The names of the queues one deployment uses.

use std::time::Duration;

/// Queue names of one deployment; the prefix lets several share a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueNames {
    /// Main job queue.
    pub jobs: String,
    /// Dead-letter queue.
    pub dlq: String,
    /// Retry delay queues, shortest first, with their delays: a message
    /// published to one waits there and then dead-letters back into `jobs`.
    pub delays: Vec<(Duration, String)>,
    /// Webhook delivery queue.
    pub webhooks: String,
    /// Webhook retry delay queues, shortest first; each dead-letters back
    /// into `webhooks`.
    pub webhook_delays: Vec<(Duration, String)>,
}

impl QueueNames {
    /// Names under `prefix` (which may be empty), with one delay queue per
    /// retry delay.
    pub fn new(prefix: &str, retry_delays: &[Duration]) -> Self {
        Self {
            jobs: format!("{prefix}ttsq.jobs"),
            dlq: format!("{prefix}ttsq.jobs.dlq"),
            delays: retry_delays
                .iter()
                .map(|d| (*d, format!("{prefix}ttsq.jobs.delay.{}ms", d.as_millis())))
                .collect(),
            webhooks: format!("{prefix}ttsq.webhooks"),
            webhook_delays: Vec::new(),
        }
    }

    /// With one webhook delay queue per webhook retry delay.
    pub fn with_webhook_delays(mut self, prefix: &str, delays: &[Duration]) -> Self {
        self.webhook_delays = delays
            .iter()
            .map(|d| {
                let name = format!("{prefix}ttsq.webhooks.delay.{}ms", d.as_millis());
                (*d, name)
            })
            .collect();
        self
    }

    /// Every queue of the topology.
    pub fn all(&self) -> impl Iterator<Item = &str> {
        [self.jobs.as_str(), self.dlq.as_str()]
            .into_iter()
            .chain(self.delays.iter().map(|(_, name)| name.as_str()))
            .chain(std::iter::once(self.webhooks.as_str()))
            .chain(self.webhook_delays.iter().map(|(_, name)| name.as_str()))
    }
}
