//! Operator access to the dead-letter queue: look, replay, purge.
//!
//! Messages are read with `basic.get` on a channel of their own and left
//! unacknowledged while looked at, so a crash or an early exit puts every
//! one back; only a confirmed replay or a purge removes them.

use lapin::{
    Channel,
    options::{BasicAckOptions, BasicGetOptions, ConfirmSelectOptions, QueuePurgeOptions},
};
use ttsq_core::{JobMessage, MessageDecodeError};

use crate::{
    amqp::publish_confirmed,
    broker::Broker,
    error::QueueError,
    headers::{DELIVERY_COUNT_HEADER, REASON_HEADER, header_str, header_u64},
    message::QueueMessage,
};

/// One message in the dead-letter queue.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The body as it arrived.
    pub body: Vec<u8>,
    /// Why it was dead-lettered (`x-ttsq-reason`), when ttsq put it there;
    /// `None` when the broker did (delivery limit).
    pub reason: Option<String>,
    /// Earlier deliveries counted by the broker.
    pub delivery_count: u64,
}

impl DeadLetter {
    /// The job message, when the body is one.
    pub fn decode(&self) -> Result<JobMessage, MessageDecodeError> {
        JobMessage::decode(&self.body)
    }
}

/// What `replay` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayOutcome {
    /// Published back to the job queue and removed from the DLQ.
    pub replayed: usize,
    /// Left in the DLQ (not chosen, or undecodable).
    pub kept: usize,
}

impl Broker {
    /// Up to `limit` dead letters, oldest first, left in the queue.
    pub async fn dlq_list(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let channel = self.channel().await?;
        let mut letters = Vec::new();
        while letters.len() < limit {
            let Some((letter, _)) = get(&channel, &self.names().dlq).await? else {
                break;
            };
            letters.push(letter);
        }
        // Closing without acks returns every message to the queue.
        close(&channel).await;
        Ok(letters)
    }

    /// Looks at up to `limit` dead letters and publishes back to the job
    /// queue, with confirms, those that decode and `choose` picks; each
    /// replayed one is then removed from the DLQ. The rest stay.
    pub async fn dlq_replay(
        &self,
        limit: usize,
        mut choose: impl FnMut(&JobMessage) -> bool,
    ) -> Result<ReplayOutcome, QueueError> {
        let channel = self.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut outcome = ReplayOutcome::default();
        for _ in 0..limit {
            let Some((letter, tag)) = get(&channel, &self.names().dlq).await? else {
                break;
            };
            match letter.decode() {
                Ok(message) if choose(&message) => {
                    publish_confirmed(
                        &channel,
                        &self.names().jobs,
                        &message.encode(),
                        message.headers(),
                    )
                    .await?;
                    channel.basic_ack(tag, BasicAckOptions::default()).await?;
                    outcome.replayed += 1;
                }
                _ => outcome.kept += 1,
            }
        }
        close(&channel).await;
        Ok(outcome)
    }

    /// Deletes every dead letter; returns how many there were.
    pub async fn dlq_purge(&self) -> Result<u32, QueueError> {
        let channel = self.channel().await?;
        let purged = channel
            .queue_purge(
                self.names().dlq.as_str().into(),
                QueuePurgeOptions::default(),
            )
            .await?;
        close(&channel).await;
        Ok(purged)
    }
}

async fn get(channel: &Channel, queue: &str) -> Result<Option<(DeadLetter, u64)>, QueueError> {
    let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await?
    else {
        return Ok(None);
    };
    let properties = &message.delivery.properties;
    let letter = DeadLetter {
        reason: header_str(properties, REASON_HEADER),
        delivery_count: header_u64(properties, DELIVERY_COUNT_HEADER).unwrap_or(0),
        body: message.delivery.data.clone(),
    };
    Ok(Some((letter, message.delivery.delivery_tag)))
}

async fn close(channel: &Channel) {
    if let Err(err) = channel.close(200, "dead letters read".into()).await {
        tracing::debug!(error = %err, "closing the DLQ channel");
    }
}
