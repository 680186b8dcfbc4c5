//! Confirmed publishes over the broker's cached channel, reopened after a
//! loss.

use lapin::{Channel, options::ConfirmSelectOptions, types::FieldTable};

use crate::{amqp::publish_confirmed, broker::Broker, error::QueueError, message::QueueMessage};

/// Publishes messages of any [`QueueMessage`] type to their queue; a publish
/// returns only once the broker has confirmed the message is stored
/// (persistent, on a quorum queue).
#[derive(Clone)]
pub struct Publisher {
    broker: Broker,
}

impl Publisher {
    /// Publishes a message to its queue and waits for the broker's confirm.
    pub async fn publish<M: QueueMessage>(&self, message: &M) -> Result<(), QueueError> {
        let queue = M::queue(self.broker.names()).to_owned();
        self.send(&queue, &message.encode(), message.headers())
            .await
    }

    /// Whether the connection under the publishing channel is up.
    pub fn is_connected(&self) -> bool {
        self.broker.is_connected()
    }

    pub(crate) async fn send(
        &self,
        queue: &str,
        body: &[u8],
        headers: FieldTable,
    ) -> Result<(), QueueError> {
        let channel = self.channel().await?;
        let result = publish_confirmed(&channel, queue, body, headers).await;
        if result.is_err() && !channel.status().connected() {
            // Forget the dead channel; the next publish opens another.
            let mut cached = self.broker.publish_channel().lock().await;
            if cached.as_ref().is_some_and(|c| c.id() == channel.id()) {
                *cached = None;
            }
        }
        result
    }

    async fn channel(&self) -> Result<Channel, QueueError> {
        let mut cached = self.broker.publish_channel().lock().await;
        if let Some(channel) = cached.as_ref().filter(|c| c.status().connected()) {
            return Ok(channel.clone());
        }
        let channel = self.broker.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        *cached = Some(channel.clone());
        Ok(channel)
    }
}

impl Broker {
    /// A publisher of job messages; it shares the broker's publishing channel
    /// and reopens it after a loss.
    pub async fn publisher(&self) -> Result<Publisher, QueueError> {
        let publisher = Publisher {
            broker: self.clone(),
        };
        publisher.channel().await?;
        Ok(publisher)
    }

    /// Publishes raw bytes straight to the job queue, bypassing encoding;
    /// used by tests and operators to inject a message as it arrived.
    pub async fn publish_raw(&self, body: &[u8]) -> Result<(), QueueError> {
        self.publisher()
            .await?
            .send(&self.names().jobs, body, FieldTable::default())
            .await
    }
}
