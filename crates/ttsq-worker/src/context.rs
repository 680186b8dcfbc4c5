//! What a worker needs, handed in by the binary.

use std::{sync::Arc, time::Duration};

use ttsq_audio::AudioStore;
use ttsq_config::WorkerSettings;
use ttsq_providers::Router;
use ttsq_queue::Broker;
use ttsq_store::Store;

/// What a worker needs; cheap to clone.
#[derive(Clone)]
pub struct WorkerContext {
    /// Postgres.
    pub store: Store,
    /// RabbitMQ.
    pub broker: Arc<Broker>,
    /// S3 audio.
    pub audio: AudioStore,
    /// Providers.
    pub providers: Arc<Router>,
    /// Batching and shutdown settings.
    pub settings: WorkerSettings,
    /// Unacknowledged deliveries held at once.
    pub prefetch: u16,
    /// Back-off before each retry; a task gets one attempt more than there
    /// are delays.
    pub retry_delays: Vec<Duration>,
    /// The queue's delivery limit: a delivery counted this often is the
    /// message's last.
    pub delivery_limit: u32,
    /// This process's replica id (its heartbeat row), stamped on claims.
    pub replica_id: uuid::Uuid,
    /// A replica silent for this long is presumed dead; tasks it held may be
    /// claimed by others.
    pub replica_ttl: Duration,
    /// Consumer tag, unique per process, shown in the broker's management UI.
    pub name: String,
    /// Wakes the dispatcher when a group is done: its slots are free.
    pub dispatch: ttsq_dispatch::Waker,
    /// Whether fallback providers' audio answers for the text
    /// (`cache.serve_fallback_audio`).
    pub serve_fallback_audio: bool,
}

impl WorkerContext {
    /// Claims of a task after which a passing provider failure fails it.
    pub fn max_attempts(&self) -> i32 {
        i32::try_from(self.retry_delays.len())
            .unwrap_or(i32::MAX)
            .saturating_add(1)
    }
}
