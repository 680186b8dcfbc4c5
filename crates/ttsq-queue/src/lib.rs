#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`Broker`]: the shared, self-healing connection. lapin does not
//!   reconnect by itself; the broker replaces a dead connection on demand
//!   (single-flight), re-declares the topology on every new one, and
//!   [`Broker::supervise`] keeps trying in the background so `/ready` and
//!   publishers recover without a request having to wait.
//! - [`Publisher`]: confirmed publishes over a cached channel, reopened after
//!   a loss.
//! - [`QueueMessage`]: what a message type tells the broker — its wire
//!   form, headers, queue and delay queues; implemented for [`JobMessage`]
//!   and [`webhooks::WebhookMessage`].
//! - [`Consumer`] / [`Delivery`]: manual-ack consumption of one message
//!   type's queue; a consumer ends when its channel or connection dies and
//!   the caller re-subscribes ([`Broker::subscribe_with_backoff`]).
//! - [`dlq`]: operator access to the dead-letter queue.
//! - [`webhooks`]: the webhook delivery queue and its delay queues.

mod consumer;
pub mod dlq;
mod message;
pub mod webhooks;

use std::{sync::Arc, time::Duration};

use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{Mutex, RwLock};
use ttsq_config::QueueSettings;
use ttsq_core::JobMessage;

pub use crate::{
    consumer::{Consumer, Delivery},
    message::QueueMessage,
};

/// A consumer of the job queue.
pub type JobConsumer = Consumer<JobMessage>;

/// One delivered job message.
pub type JobDelivery = Delivery<JobMessage>;

/// AMQP delivery mode of messages that survive a broker restart.
const PERSISTENT: u8 = 2;

/// Header naming why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-ttsq-reason";

/// Header quorum queues set on a redelivery: earlier unsuccessful deliveries.
const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// How long a publish waits for the broker's confirm.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The broker could not be reached or closed the connection or channel.
    #[error("RabbitMQ error: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker did not answer a connection attempt in time.
    #[error("RabbitMQ did not answer within {0:?}")]
    ConnectTimeout(Duration),
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

/// The connection to RabbitMQ with ttsq's topology declared on it. Cheap to
/// clone; clones share the connection and its recovery.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    /// AMQP URL (carries the password).
    url: SecretString,
    /// Name shown in the management UI.
    connection_name: String,
    /// The queues.
    names: QueueNames,
    /// Quorum `x-delivery-limit` of the job queue.
    delivery_limit: u32,
    /// The live connection; replaced whole after a loss.
    connection: RwLock<Connection>,
    /// Serialises reconnects so a burst of failures opens one connection.
    reconnecting: Mutex<()>,
    /// The channel confirmed publishes go through, opened lazily.
    publish_channel: Mutex<Option<Channel>>,
}

pub(crate) fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

async fn open(url: &SecretString, name: &str) -> Result<Connection, QueueError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        Connection::connect(url.expose_secret(), properties),
    )
    .await
    .map_err(|_| QueueError::ConnectTimeout(CONNECT_TIMEOUT))?
    .map_err(QueueError::from)
}

impl Broker {
    /// Connects and declares the topology (idempotent; every replica does it).
    pub async fn connect(
        settings: &QueueSettings,
        connection_name: &str,
    ) -> Result<Self, QueueError> {
        let connection = open(&settings.url, connection_name).await?;
        let broker = Self {
            inner: Arc::new(Inner {
                url: settings.url.clone(),
                connection_name: connection_name.to_owned(),
                names: QueueNames::new(&settings.prefix, &settings.retry_delays())
                    .with_webhook_delays(&settings.prefix, &settings.webhook_retry_delays()),
                delivery_limit: settings.delivery_limit,
                connection: RwLock::new(connection),
                reconnecting: Mutex::new(()),
                publish_channel: Mutex::new(None),
            }),
        };
        broker.declare_topology().await?;
        Ok(broker)
    }

    /// The queue names in use.
    pub fn names(&self) -> &QueueNames {
        &self.inner.names
    }

    /// The quorum delivery limit: a delivery whose
    /// [`Delivery::delivery_count`] of a job reaches it is the message's last.
    pub fn delivery_limit(&self) -> u32 {
        self.inner.delivery_limit
    }

    /// Whether the connection is up; feeds readiness.
    pub fn is_connected(&self) -> bool {
        self.inner
            .connection
            .try_read()
            .map(|c| c.status().connected())
            // A writer holds it: a reconnect is under way.
            .unwrap_or(false)
    }

    /// A channel on a live connection, reconnecting first when the current
    /// connection is dead (one attempt; callers retry on their own schedule).
    pub async fn channel(&self) -> Result<Channel, QueueError> {
        {
            let connection = self.inner.connection.read().await;
            if connection.status().connected() {
                match connection.create_channel().await {
                    Ok(channel) => return Ok(channel),
                    Err(err) if connection.status().connected() => return Err(err.into()),
                    Err(_) => {}
                }
            }
        }
        self.reconnect().await?;
        Ok(self.inner.connection.read().await.create_channel().await?)
    }

    /// Replaces a dead connection with a new one and re-declares the
    /// topology; a no-op when another caller already did.
    pub async fn reconnect(&self) -> Result<(), QueueError> {
        let _single_flight = self.inner.reconnecting.lock().await;
        if self.inner.connection.read().await.status().connected() {
            return Ok(());
        }
        let fresh = open(&self.inner.url, &self.inner.connection_name).await?;
        // The cached publishing channel died with the old connection; the
        // next publish sees that and opens another.
        *self.inner.connection.write().await = fresh;
        self.declare_topology().await?;
        tracing::info!("reconnected to RabbitMQ");
        Ok(())
    }

    /// Keeps the connection alive until `shutdown`: checks it every second
    /// and reconnects with exponential back-off (capped at 10 s) while down.
    pub async fn supervise(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff =
            ttsq_core::backoff::Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
        loop {
            let wait = if self.is_connected() {
                backoff.reset();
                Duration::from_secs(1)
            } else {
                match self.reconnect().await {
                    Ok(()) => {
                        backoff.reset();
                        Duration::from_secs(1)
                    }
                    Err(err) => {
                        let wait = backoff.next_delay();
                        tracing::warn!(error = %err, retry_in = ?wait, "RabbitMQ unreachable");
                        wait
                    }
                }
            };
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Declares every queue with the same arguments every time, so replicas
    /// of any age agree (RabbitMQ refuses a redeclare with other arguments).
    pub async fn declare_topology(&self) -> Result<(), QueueError> {
        let names = &self.inner.names;
        let channel = self.inner.connection.read().await.create_channel().await?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };

        let mut dlq_args = FieldTable::default();
        dlq_args.insert("x-queue-type".into(), long_string("quorum"));
        channel
            .queue_declare(names.dlq.as_str().into(), durable, dlq_args)
            .await?;

        let mut args = quorum_dead_lettering_to(&names.dlq);
        // After this many redeliveries (a worker crashing on the message every
        // time) the broker dead-letters it instead of looping forever.
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongUInt(self.inner.delivery_limit),
        );
        channel
            .queue_declare(names.jobs.as_str().into(), durable, args)
            .await?;

        for (delay, name) in &names.delays {
            // Nobody consumes a delay queue: every message waits out the
            // queue's TTL and is dead-lettered back into the job queue. One
            // queue per delay keeps expiry in order (expired messages only
            // leave from the head).
            let mut args = quorum_dead_lettering_to(&names.jobs);
            args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
            );
            channel
                .queue_declare(name.as_str().into(), durable, args)
                .await?;
        }
        webhooks::declare(&channel, names).await?;
        channel.close(200, "topology declared".into()).await?;
        Ok(())
    }

    /// A publisher of job messages; it shares the broker's publishing channel
    /// and reopens it after a loss.
    pub async fn publisher(&self) -> Result<Publisher, QueueError> {
        let publisher = Publisher {
            broker: self.clone(),
        };
        publisher.channel().await?;
        Ok(publisher)
    }

    /// A consumer of the job queue: [`Self::subscribe`] for [`JobMessage`].
    pub async fn consume(&self, prefetch: u16, tag: &str) -> Result<JobConsumer, QueueError> {
        self.subscribe(prefetch, tag).await
    }

    /// Messages ready in the job queue and in the DLQ.
    pub async fn depths(&self) -> Result<(u32, u32), QueueError> {
        let channel = self.channel().await?;
        let jobs = passive_count(&channel, &self.inner.names.jobs).await?;
        let dlq = passive_count(&channel, &self.inner.names.dlq).await?;
        channel.close(200, "depth read".into()).await?;
        Ok((jobs, dlq))
    }

    /// Takes one message off the DLQ (acknowledged), with its reason header.
    pub async fn take_dead_letter(&self) -> Result<Option<(Vec<u8>, Option<String>)>, QueueError> {
        let channel = self.channel().await?;
        let message = channel
            .basic_get(
                self.inner.names.dlq.as_str().into(),
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
        self.publisher()
            .await?
            .send(&self.inner.names.jobs, body, FieldTable::default())
            .await
    }

    /// Deletes every queue and everything in them (tests and teardown
    /// only). A queue that is already gone is no error for RabbitMQ's
    /// `queue.delete` (a purge of it would be, and would close the channel
    /// before the remaining queues are deleted).
    pub async fn delete_queues(&self) -> Result<(), QueueError> {
        let channel = self.channel().await?;
        for name in self.inner.names.all() {
            channel
                .queue_delete(name.into(), QueueDeleteOptions::default())
                .await?;
        }
        Ok(())
    }

    /// Closes the connection; unacknowledged deliveries return to the queue.
    pub async fn close(&self) {
        let connection = self.inner.connection.read().await;
        if let Err(err) = connection.close(200, "shutting down".into()).await {
            tracing::debug!(error = %err, "closing the RabbitMQ connection");
        }
    }
}

/// Quorum queue arguments that dead-letter, losing nothing, into `target`
/// through the default exchange.
pub(crate) fn quorum_dead_lettering_to(target: &str) -> FieldTable {
    let mut args = FieldTable::default();
    // Quorum queues replicate and fsync every message: nothing accepted is
    // lost when a broker node dies, and they count deliveries.
    args.insert("x-queue-type".into(), long_string("quorum"));
    args.insert("x-dead-letter-exchange".into(), long_string(""));
    args.insert("x-dead-letter-routing-key".into(), long_string(target));
    // At-least-once dead-lettering keeps a message until the target confirms
    // it; it requires reject-publish overflow.
    args.insert(
        "x-dead-letter-strategy".into(),
        long_string("at-least-once"),
    );
    args.insert("x-overflow".into(), long_string("reject-publish"));
    args
}

async fn passive_count(channel: &Channel, queue: &str) -> Result<u32, QueueError> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    Ok(channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await?
        .message_count())
}

fn header(properties: &BasicProperties, name: &str) -> Option<AMQPValue> {
    properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name).cloned())
}

fn header_str(properties: &BasicProperties, name: &str) -> Option<String> {
    match header(properties, name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn header_u64(properties: &BasicProperties, name: &str) -> Option<u64> {
    match header(properties, name)? {
        AMQPValue::ShortShortUInt(n) => Some(n.into()),
        AMQPValue::ShortUInt(n) => Some(n.into()),
        AMQPValue::LongUInt(n) => Some(n.into()),
        AMQPValue::ShortShortInt(n) => u64::try_from(n).ok(),
        AMQPValue::ShortInt(n) => u64::try_from(n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(n).ok(),
        AMQPValue::LongLongInt(n) => u64::try_from(n).ok(),
        _ => None,
    }
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
        let queue = M::queue(&self.broker.inner.names).to_owned();
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
            let mut cached = self.broker.inner.publish_channel.lock().await;
            if cached.as_ref().is_some_and(|c| c.id() == channel.id()) {
                *cached = None;
            }
        }
        result
    }

    async fn channel(&self) -> Result<Channel, QueueError> {
        let mut cached = self.broker.inner.publish_channel.lock().await;
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
