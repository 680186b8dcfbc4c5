//! The webhook delivery queue: `ttsq.webhooks` (quorum, persistent
//! messages, confirms) and its retry delay queues, which work like the job
//! delay queues — nobody consumes them, a message waits out the queue's TTL
//! and dead-letters back into `ttsq.webhooks`. A message names the delivery
//! row in Postgres and its attempt; the payload is built at delivery time.

use std::time::Duration;

use lapin::types::FieldTable;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    broker::Broker,
    consumer::{Consumer, Delivery},
    error::QueueError,
    message::QueueMessage,
    names::QueueNames,
};

/// One webhook delivery attempt to make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookMessage {
    /// The `webhook_deliveries` row.
    pub delivery_id: Uuid,
    /// Attempt number, from 1.
    pub attempt: u32,
}

impl QueueMessage for WebhookMessage {
    type DecodeError = serde_json::Error;

    // Nothing dead-letters the webhook queue: past its delivery limit the
    // broker drops a message, and so would a reject.
    const BROKER_DEAD_LETTERS: bool = false;

    fn decode(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }

    fn encode(&self) -> Vec<u8> {
        // A struct of a UUID and an integer always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn queue(names: &QueueNames) -> &str {
        &names.webhooks
    }

    fn delay_queues(names: &QueueNames) -> &[(Duration, String)] {
        &names.webhook_delays
    }
}

/// A consumer of the webhook queue.
pub type WebhookConsumer = Consumer<WebhookMessage>;

/// One delivered webhook message. An undecodable one goes to the dead-letter
/// queue (the jobs' DLQ, which lists it as undecodable and never replays it).
pub type WebhookDelivery = Delivery<WebhookMessage>;

impl Broker {
    /// Publishes raw bytes straight to the webhook queue, bypassing
    /// encoding; used by tests and operators to inject a message as it arrived.
    pub async fn publish_raw_webhook(&self, body: &[u8]) -> Result<(), QueueError> {
        self.publisher()
            .await?
            .send(&self.names().webhooks, body, FieldTable::default())
            .await
    }

    /// The webhook retry delays, shortest first.
    pub fn webhook_delays(&self) -> Vec<Duration> {
        self.names()
            .webhook_delays
            .iter()
            .map(|(d, _)| *d)
            .collect()
    }
}

impl WebhookDelivery {
    /// The `delivery_id` an undecodable message still names, if any: a JSON
    /// object whose `delivery_id` is a UUID, whatever else is wrong with it.
    pub fn named_delivery_id(&self) -> Option<Uuid> {
        #[derive(Deserialize)]
        struct Named {
            delivery_id: Uuid,
        }
        serde_json::from_slice::<Named>(self.body())
            .ok()
            .map(|named| named.delivery_id)
    }
}
