//! AMQP building blocks shared by the publisher, the consumers and the
//! dead-letter queue: string values and the confirmed publish.

use std::time::Duration;

use lapin::{
    BasicProperties, Channel, Confirmation,
    options::BasicPublishOptions,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use crate::error::QueueError;

/// AMQP delivery mode of messages that survive a broker restart.
const PERSISTENT: u8 = 2;

/// How long a publish waits for the broker's confirm.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// `value` as an AMQP long string, the type RabbitMQ expects of string
/// arguments and headers.
pub(crate) fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Publishes one message on `channel` (confirms enabled) and waits for the
/// broker to take responsibility for it.
pub(crate) async fn publish_confirmed(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    headers: FieldTable,
) -> Result<(), QueueError> {
    let properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_content_type("application/json".into())
        .with_headers(headers);
    let confirm = channel
        .basic_publish(
            ShortString::from(""),
            queue.into(),
            // Mandatory: an unroutable message comes back instead of vanishing.
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            properties,
        )
        .await?;
    let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
        .await
        .map_err(|_| QueueError::ConfirmTimeout(CONFIRM_TIMEOUT))??;
    match confirmation {
        // A returned message is still acked by the broker; it was not queued.
        Confirmation::Ack(Some(_)) => Err(QueueError::NotConfirmed("unroutable (queue missing)")),
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Nack(_) => Err(QueueError::NotConfirmed("negatively acknowledged")),
        Confirmation::NotRequested => Err(QueueError::NotConfirmed("confirms not enabled")),
    }
}
