#![doc = include_str!("../README.md")]

use std::time::Duration;

use futures::StreamExt;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
        BasicPublishOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
        QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
    },
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use secrecy::ExposeSecret;
use ttsq_config::QueueSettings;
use ttsq_core::{JobMessage, MessageDecodeError};

/// AMQP delivery mode of messages that survive a broker restart.
const PERSISTENT: u8 = 2;

/// Header naming why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-ttsq-reason";

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The broker could not be reached or closed the connection or channel.
    #[error("RabbitMQ error: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker refused to take responsibility for a message.
    #[error("RabbitMQ did not accept the message: {0}")]
    NotConfirmed(&'static str),
    /// The broker took longer than allowed to confirm.
    #[error("RabbitMQ did not confirm within {0:?}")]
    ConfirmTimeout(Duration),
}

/// Queue names of one deployment; the prefix lets several share a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueNames {
    /// Main job queue.
    pub jobs: String,
    /// Dead-letter queue.
    pub dlq: String,
}

impl QueueNames {
    /// Names under `prefix` (which may be empty).
    pub fn new(prefix: &str) -> Self {
        Self {
            jobs: format!("{prefix}ttsq.jobs"),
            dlq: format!("{prefix}ttsq.jobs.dlq"),
        }
    }
}

/// A connection to RabbitMQ with ttsq's topology declared on it.
pub struct Broker {
    connection: Connection,
    names: QueueNames,
    delivery_limit: u32,
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

impl Broker {
    /// Connects and declares the topology (idempotent; every replica does it).
    pub async fn connect(
        settings: &QueueSettings,
        connection_name: &str,
    ) -> Result<Self, QueueError> {
        let properties =
            ConnectionProperties::default().with_connection_name(connection_name.into());
        let connection = Connection::connect(settings.url.expose_secret(), properties).await?;
        let broker = Self {
            connection,
            names: QueueNames::new(&settings.prefix),
            delivery_limit: settings.delivery_limit,
        };
        broker.declare_topology().await?;
        Ok(broker)
    }

    /// The queue names in use.
    pub fn names(&self) -> &QueueNames {
        &self.names
    }

    /// Whether the connection is up; feeds readiness.
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// Declares both queues with the same arguments every time, so replicas
    /// of any age agree (RabbitMQ refuses a redeclare with other arguments).
    pub async fn declare_topology(&self) -> Result<(), QueueError> {
        let channel = self.connection.create_channel().await?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };

        let mut dlq_args = FieldTable::default();
        dlq_args.insert("x-queue-type".into(), long_string("quorum"));
        channel
            .queue_declare(self.names.dlq.as_str().into(), durable, dlq_args)
            .await?;

        let mut args = FieldTable::default();
        // Quorum queues replicate and fsync every message: nothing accepted is
        // lost when a broker node dies, and they count deliveries.
        args.insert("x-queue-type".into(), long_string("quorum"));
        // After this many redeliveries (a worker crashing on the message every
        // time) the broker dead-letters it instead of looping forever.
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongUInt(self.delivery_limit),
        );
        // Dead-letter through the default exchange straight into the DLQ.
        args.insert("x-dead-letter-exchange".into(), long_string(""));
        args.insert(
            "x-dead-letter-routing-key".into(),
            long_string(&self.names.dlq),
        );
        // At-least-once dead-lettering keeps a message until the DLQ confirms
        // it; it requires reject-publish overflow.
        args.insert(
            "x-dead-letter-strategy".into(),
            long_string("at-least-once"),
        );
        args.insert("x-overflow".into(), long_string("reject-publish"));
        channel
            .queue_declare(self.names.jobs.as_str().into(), durable, args)
            .await?;
        channel.close(200, "topology declared".into()).await?;
        Ok(())
    }

    /// A publisher on its own channel, with confirms enabled.
    pub async fn publisher(&self) -> Result<Publisher, QueueError> {
        let channel = self.connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher {
            channel,
            names: self.names.clone(),
            confirm_timeout: Duration::from_secs(10),
        })
    }

    /// A consumer of the job queue holding at most `prefetch` unacknowledged
    /// deliveries (per-consumer QoS: quorum queues refuse global QoS).
    pub async fn consume(&self, prefetch: u16, tag: &str) -> Result<JobConsumer, QueueError> {
        let channel = self.connection.create_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions { global: false })
            .await?;
        let consumer = channel
            .basic_consume(
                self.names.jobs.as_str().into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let publisher = self.publisher().await?;
        Ok(JobConsumer {
            channel,
            tag: tag.into(),
            consumer,
            dead_letters: publisher,
        })
    }

    /// Messages ready in the job queue and in the DLQ.
    pub async fn depths(&self) -> Result<(u32, u32), QueueError> {
        let channel = self.connection.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let jobs = channel
            .queue_declare(
                self.names.jobs.as_str().into(),
                passive,
                FieldTable::default(),
            )
            .await?;
        let dlq = channel
            .queue_declare(
                self.names.dlq.as_str().into(),
                passive,
                FieldTable::default(),
            )
            .await?;
        channel.close(200, "depth read".into()).await?;
        Ok((jobs.message_count(), dlq.message_count()))
    }

    /// Takes one message off the DLQ (acknowledged), with its reason header.
    pub async fn take_dead_letter(&self) -> Result<Option<(Vec<u8>, Option<String>)>, QueueError> {
        let channel = self.connection.create_channel().await?;
        let message = channel
            .basic_get(
                self.names.dlq.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await?;
        channel.close(200, "dead letter read".into()).await?;
        Ok(message.map(|m| {
            let reason = header_str(&m.delivery.properties, REASON_HEADER);
            (m.delivery.data, reason)
        }))
    }

    /// Publishes raw bytes straight to the job queue, bypassing encoding;
    /// used by tests and operators to inject a message as it arrived.
    pub async fn publish_raw(&self, body: &[u8]) -> Result<(), QueueError> {
        let publisher = self.publisher().await?;
        publisher
            .send(&self.names.jobs, body, FieldTable::default())
            .await
    }

    /// Deletes both queues and everything in them (tests and teardown only).
    pub async fn delete_queues(&self) -> Result<(), QueueError> {
        let channel = self.connection.create_channel().await?;
        for name in [&self.names.jobs, &self.names.dlq] {
            channel
                .queue_purge(name.as_str().into(), QueuePurgeOptions::default())
                .await?;
            channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        Ok(())
    }

    /// Closes the connection; unacknowledged deliveries return to the queue.
    pub async fn close(&self) {
        if let Err(err) = self.connection.close(200, "shutting down".into()).await {
            tracing::debug!(error = %err, "closing the RabbitMQ connection");
        }
    }
}

fn header_str(properties: &BasicProperties, name: &str) -> Option<String> {
    properties.headers().as_ref().and_then(|h| {
        h.inner().get(name).and_then(|v| match v {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
            _ => None,
        })
    })
}

/// Publishes job messages; a publish returns only once the broker has
/// confirmed the message is stored (persistent, on a quorum queue).
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    names: QueueNames,
    confirm_timeout: Duration,
}

impl Publisher {
    /// Publishes a job and waits for the broker's confirm.
    pub async fn publish(&self, message: &JobMessage) -> Result<(), QueueError> {
        let mut headers = FieldTable::default();
        if let Some(traceparent) = &message.traceparent {
            headers.insert("traceparent".into(), long_string(traceparent));
        }
        self.send(&self.names.jobs, &message.encode(), headers)
            .await
    }

    /// Whether the publishing channel is usable.
    pub fn is_connected(&self) -> bool {
        self.channel.status().connected()
    }

    async fn send(&self, queue: &str, body: &[u8], headers: FieldTable) -> Result<(), QueueError> {
        let properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type("application/json".into())
            .with_headers(headers);
        let confirm = self
            .channel
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
        let confirmation = tokio::time::timeout(self.confirm_timeout, confirm)
            .await
            .map_err(|_| QueueError::ConfirmTimeout(self.confirm_timeout))??;
        match confirmation {
            // A returned message is still acked by the broker; it was not queued.
            Confirmation::Ack(Some(_)) => {
                Err(QueueError::NotConfirmed("unroutable (queue missing)"))
            }
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Nack(_) => Err(QueueError::NotConfirmed("negatively acknowledged")),
            Confirmation::NotRequested => Err(QueueError::NotConfirmed("confirms not enabled")),
        }
    }
}

/// A stream of job deliveries with manual acknowledgement.
pub struct JobConsumer {
    channel: Channel,
    tag: String,
    consumer: lapin::Consumer,
    dead_letters: Publisher,
}

impl JobConsumer {
    /// The next delivery; `None` when the consumer was cancelled or the
    /// channel closed (the caller decides whether to re-subscribe).
    pub async fn next(&mut self) -> Option<Result<JobDelivery, QueueError>> {
        let next = self.consumer.next().await?;
        Some(next.map_err(QueueError::from).map(|inner| JobDelivery {
            inner,
            dead_letters: self.dead_letters.clone(),
        }))
    }

    /// Asks the broker to stop sending; deliveries already sent still arrive
    /// and must be settled. Unsettled ones return to the queue when the channel closes.
    pub async fn cancel(&self) -> Result<(), QueueError> {
        self.channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
            .await?;
        Ok(())
    }

    /// Closes the channel; unacknowledged deliveries are redelivered to others.
    pub async fn close(&self) {
        if let Err(err) = self.channel.close(200, "consumer closed".into()).await {
            tracing::debug!(error = %err, "closing the consumer channel");
        }
    }
}

/// One delivered message, to be settled exactly once.
pub struct JobDelivery {
    inner: Delivery,
    dead_letters: Publisher,
}

impl JobDelivery {
    /// Decodes the body.
    pub fn decode(&self) -> Result<JobMessage, MessageDecodeError> {
        JobMessage::decode(&self.inner.data)
    }

    /// Whether the broker delivered it before (a consumer died holding it).
    pub fn redelivered(&self) -> bool {
        self.inner.redelivered
    }

    /// W3C trace context of the submitting request, if any.
    pub fn traceparent(&self) -> Option<String> {
        header_str(&self.inner.properties, "traceparent")
    }

    /// Done: the broker forgets the message.
    pub async fn ack(&self) -> Result<(), QueueError> {
        self.inner.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    /// Not done: the broker delivers it again (counting toward the delivery limit).
    pub async fn requeue(&self) -> Result<(), QueueError> {
        self.inner
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await?;
        Ok(())
    }

    /// Never processable: a copy goes to the DLQ with `reason` in a header,
    /// then the original is acknowledged. Should the copy fail, the message is
    /// rejected so the broker dead-letters it itself (without the reason).
    pub async fn dead_letter(&self, reason: &str) -> Result<(), QueueError> {
        let mut headers = self.inner.properties.headers().clone().unwrap_or_default();
        headers.insert(REASON_HEADER.into(), long_string(reason));
        match self
            .dead_letters
            .send(&self.dead_letters.names.dlq, &self.inner.data, headers)
            .await
        {
            Ok(()) => self.ack().await,
            Err(err) => {
                tracing::warn!(error = %err, "copy to the DLQ failed; rejecting instead");
                self.inner
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
                Ok(())
            }
        }
    }
}
