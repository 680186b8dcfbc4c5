//! The shared, self-healing connection to RabbitMQ. lapin does not
//! reconnect by itself: the broker replaces a dead connection on demand
//! (single-flight) and re-declares the topology on every new one.

use std::{sync::Arc, time::Duration};

use lapin::{
    Channel, Connection, ConnectionProperties,
    options::{QueueDeclareOptions, QueueDeleteOptions},
    types::FieldTable,
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{Mutex, RwLock};
use ttsq_config::QueueSettings;

use crate::{
    error::QueueError,
    headers::{REASON_HEADER, header_str},
    names::QueueNames,
    topology,
};

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// The live connection, replaced whole after a loss; `None` until the
    /// first connection succeeds.
    connection: RwLock<Option<Connection>>,
    /// Serialises reconnects so a burst of failures opens one connection.
    reconnecting: Mutex<()>,
    /// The channel confirmed publishes go through, opened lazily.
    publish_channel: Mutex<Option<Channel>>,
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
    /// Connects and declares the topology (idempotent; every replica does
    /// it). For tools that need the broker now; a service uses
    /// [`Broker::new`] so that it starts while RabbitMQ is down.
    pub async fn connect(
        settings: &QueueSettings,
        connection_name: &str,
    ) -> Result<Self, QueueError> {
        let broker = Self::new(settings, connection_name);
        broker.reconnect().await?;
        Ok(broker)
    }

    /// A broker that is not connected yet: the first [`Broker::channel`],
    /// [`Broker::reconnect`] or round of [`Broker::supervise`] connects and
    /// declares the topology. Until then [`Broker::is_connected`] is false.
    pub fn new(settings: &QueueSettings, connection_name: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                url: settings.url.clone(),
                connection_name: connection_name.to_owned(),
                names: QueueNames::new(&settings.prefix, &settings.retry_delays())
                    .with_webhook_delays(&settings.prefix, &settings.webhook_retry_delays()),
                delivery_limit: settings.delivery_limit,
                connection: RwLock::new(None),
                reconnecting: Mutex::new(()),
                publish_channel: Mutex::new(None),
            }),
        }
    }

    /// The queue names in use.
    pub fn names(&self) -> &QueueNames {
        &self.inner.names
    }

    /// The quorum delivery limit: a delivery whose
    /// [`Delivery::delivery_count`](crate::Delivery::delivery_count) of a job reaches it is the message's last.
    pub fn delivery_limit(&self) -> u32 {
        self.inner.delivery_limit
    }

    /// Whether the connection is up; feeds readiness.
    pub fn is_connected(&self) -> bool {
        self.inner
            .connection
            .try_read()
            .map(|c| c.as_ref().is_some_and(connected))
            // A writer holds it: a reconnect is under way.
            .unwrap_or(false)
    }

    /// A channel on a live connection, reconnecting first when the current
    /// connection is dead (one attempt; callers retry on their own schedule).
    pub async fn channel(&self) -> Result<Channel, QueueError> {
        {
            let connection = self.inner.connection.read().await;
            if let Some(connection) = connection.as_ref().filter(|c| connected(c)) {
                match connection.create_channel().await {
                    Ok(channel) => return Ok(channel),
                    Err(err) if connected(connection) => return Err(err.into()),
                    Err(_) => {}
                }
            }
        }
        self.reconnect().await?;
        self.live_channel().await
    }

    /// A channel on the current connection, without reconnecting.
    async fn live_channel(&self) -> Result<Channel, QueueError> {
        match self.inner.connection.read().await.as_ref() {
            Some(connection) => Ok(connection.create_channel().await?),
            None => Err(QueueError::NotConnected),
        }
    }

    /// Replaces a dead connection with a new one and re-declares the
    /// topology; a no-op when another caller already did.
    pub async fn reconnect(&self) -> Result<(), QueueError> {
        let _single_flight = self.inner.reconnecting.lock().await;
        let first = match self.inner.connection.read().await.as_ref() {
            Some(connection) if connected(connection) => return Ok(()),
            Some(_) => false,
            None => true,
        };
        let fresh = open(&self.inner.url, &self.inner.connection_name).await?;
        // The cached publishing channel died with the old connection; the
        // next publish sees that and opens another.
        *self.inner.connection.write().await = Some(fresh);
        self.declare_topology().await?;
        if first {
            tracing::info!("connected to RabbitMQ");
        } else {
            tracing::info!("reconnected to RabbitMQ");
        }
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
        let channel = self.live_channel().await?;
        topology::declare(&channel, &self.inner.names, self.inner.delivery_limit).await?;
        channel.close(200, "topology declared".into()).await?;
        Ok(())
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

    /// The channel confirmed publishes go through, shared by every
    /// [`Publisher`](crate::Publisher); `None` until the first publish or
    /// after a loss.
    pub(crate) fn publish_channel(&self) -> &Mutex<Option<Channel>> {
        &self.inner.publish_channel
    }

    /// Closes the connection; unacknowledged deliveries return to the queue.
    pub async fn close(&self) {
        let connection = self.inner.connection.read().await;
        let Some(connection) = connection.as_ref() else {
            return;
        };
        if let Err(err) = connection.close(200, "shutting down".into()).await {
            tracing::debug!(error = %err, "closing the RabbitMQ connection");
        }
    }
}

fn connected(connection: &Connection) -> bool {
    connection.status().connected()
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
