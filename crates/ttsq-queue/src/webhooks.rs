//! The webhook delivery queue: `ttsq.webhooks` (quorum, persistent
//! messages, confirms) and its retry delay queues, which work like the job
//! delay queues — nobody consumes them, a message waits out the queue's TTL
//! and dead-letters back into `ttsq.webhooks`. A message names the delivery
//! row in Postgres and its attempt; the payload is built at delivery time.

use std::time::Duration;

use futures::StreamExt;
use lapin::{
    Channel,
    options::QueueDeclareOptions,
    types::{AMQPValue, FieldTable},
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    Broker, Publisher, QueueError, QueueNames, Settlement, SideChannel, close_channels,
    long_string, quorum_dead_lettering_to,
};

/// Redeliveries (a worker dying mid-delivery every time) after which the
/// broker drops a webhook message; the delivery row keeps its last state.
const WEBHOOK_DELIVERY_LIMIT: u32 = 10;

/// One webhook delivery attempt to make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookMessage {
    /// The `webhook_deliveries` row.
    pub delivery_id: Uuid,
    /// Attempt number, from 1.
    pub attempt: u32,
}

/// Declares the webhook queue and its delay queues on `channel`.
pub(crate) async fn declare(channel: &Channel, names: &QueueNames) -> Result<(), QueueError> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_string("quorum"));
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongUInt(WEBHOOK_DELIVERY_LIMIT),
    );
    channel
        .queue_declare(names.webhooks.as_str().into(), durable, args)
        .await?;
    for (delay, name) in &names.webhook_delays {
        let mut args = quorum_dead_lettering_to(&names.webhooks);
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
        );
        channel
            .queue_declare(name.as_str().into(), durable, args)
            .await?;
    }
    Ok(())
}

fn encode(message: &WebhookMessage) -> Vec<u8> {
    // A struct of a UUID and an integer always serializes.
    serde_json::to_vec(message).unwrap_or_default()
}

impl Publisher {
    /// Publishes a webhook attempt and waits for the broker's confirm.
    pub async fn publish_webhook(&self, message: &WebhookMessage) -> Result<(), QueueError> {
        let queue = self.broker.inner.names.webhooks.clone();
        self.send(&queue, &encode(message), FieldTable::default())
            .await
    }
}

impl Broker {
    /// Publishes raw bytes straight to the webhook queue, bypassing
    /// encoding; used by tests and operators to inject a message as it arrived.
    pub async fn publish_raw_webhook(&self, body: &[u8]) -> Result<(), QueueError> {
        self.publisher()
            .await?
            .send(&self.inner.names.webhooks, body, FieldTable::default())
            .await
    }

    /// The webhook retry delays, shortest first.
    pub fn webhook_delays(&self) -> Vec<Duration> {
        self.inner
            .names
            .webhook_delays
            .iter()
            .map(|(d, _)| *d)
            .collect()
    }

    /// A consumer of the webhook queue holding at most `prefetch`
    /// unacknowledged deliveries.
    pub async fn consume_webhooks(
        &self,
        prefetch: u16,
        tag: &str,
    ) -> Result<WebhookConsumer, QueueError> {
        let (channel, consumer, side) = self
            .open_consumer(&self.inner.names.webhooks, prefetch, tag)
            .await?;
        Ok(WebhookConsumer {
            channel,
            consumer,
            side,
        })
    }
}

/// A stream of webhook deliveries with manual acknowledgement.
pub struct WebhookConsumer {
    channel: Channel,
    consumer: lapin::Consumer,
    side: SideChannel,
}

impl WebhookConsumer {
    /// The next delivery; `None` when the consumer or its channel ended.
    pub async fn next(&mut self) -> Option<Result<WebhookDelivery, QueueError>> {
        let next = self.consumer.next().await?;
        Some(next.map_err(QueueError::from).map(|inner| WebhookDelivery {
            settlement: Settlement::new(inner, self.side.clone()),
        }))
    }

    /// Closes the channels; unacknowledged deliveries are redelivered.
    pub async fn close(&self) {
        close_channels(&self.channel, &self.side).await;
    }
}

/// One delivered webhook message, to be settled exactly once.
pub struct WebhookDelivery {
    settlement: Settlement,
}

impl WebhookDelivery {
    /// The message; `None` when undecodable (see [`Self::dead_letter`]).
    pub fn message(&self) -> Option<WebhookMessage> {
        serde_json::from_slice(self.settlement.data()).ok()
    }

    /// The `delivery_id` an undecodable message still names, if any: a JSON
    /// object whose `delivery_id` is a UUID, whatever else is wrong with it.
    pub fn named_delivery_id(&self) -> Option<Uuid> {
        #[derive(Deserialize)]
        struct Named {
            delivery_id: Uuid,
        }
        serde_json::from_slice::<Named>(self.settlement.data())
            .ok()
            .map(|named| named.delivery_id)
    }

    /// Never processable: a copy goes to the dead-letter queue (the jobs'
    /// DLQ, which lists it as undecodable and never replays it) with
    /// `reason` in a header, then this delivery is acknowledged. On error
    /// nothing was acknowledged.
    pub async fn dead_letter(&self, reason: &str) -> Result<(), QueueError> {
        self.settlement.copy_to_dlq(reason).await?;
        self.ack().await
    }

    /// Done: the broker forgets the message.
    pub async fn ack(&self) -> Result<(), QueueError> {
        self.settlement.ack().await
    }

    /// Not done; delivered again at once.
    pub async fn requeue(&self) -> Result<(), QueueError> {
        self.settlement.requeue().await
    }

    /// Publishes `next` to the delay queue for `delay_index` (clamped to the
    /// longest), then acknowledges this delivery. On error nothing was
    /// acknowledged.
    pub async fn retry_later(
        &self,
        next: &WebhookMessage,
        delay_index: usize,
    ) -> Result<(), QueueError> {
        let names = &self.settlement.side.names;
        self.settlement
            .retry_later(
                &names.webhook_delays,
                &names.webhooks,
                delay_index,
                &encode(next),
                FieldTable::default(),
            )
            .await
    }
}
