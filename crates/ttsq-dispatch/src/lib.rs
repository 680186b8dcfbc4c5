#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`fair`]: the scheduling rule, pure.
//! - [`Windows`]: each provider's window.
//! - [`Dispatcher`]: the loop that runs rounds when woken.

pub mod fair;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use tokio::sync::Notify;
use ttsq_config::{DispatchSettings, ProviderQuota, Settings};
use ttsq_core::{Catalog, JobMessage};
use ttsq_queue::Broker;
use ttsq_store::{DispatchQueue, LaneKey, Round, Store, StoreError};

use crate::fair::{Lane, allocate};

/// How long a replica waits before trying again when another replica's
/// round holds the lock, and how often it tries before leaving the work to
/// its next poll (the holder's round may already have published it).
const BUSY_RETRY: Duration = Duration::from_millis(5);
const BUSY_TRIES: u32 = 40;

/// Longest a round waits for one message's confirm: a broker that stops
/// answering must not hold the fleet's dispatch lock.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// Wakes this process's dispatcher: something was queued or finished.
/// Cheap to clone; wakes that arrive during a round fold into one more round.
#[derive(Clone, Debug, Default)]
pub struct Waker(Arc<Notify>);

impl Waker {
    /// Asks for a round as soon as the current one (if any) is over.
    pub fn wake(&self) {
        self.0.notify_one();
    }

    async fn woken(&self) {
        self.0.notified().await;
    }
}

/// The windows of published, unfinished tasks per provider, and which
/// provider a dialect's tasks count against (the first of its chain).
#[derive(Debug, Clone)]
pub struct Windows {
    settings: DispatchSettings,
    utilisation: f64,
    primary: HashMap<String, String>,
    quotas: BTreeMap<String, ProviderQuota>,
}

/// The provider key of dialects no provider serves (their tasks fail at
/// once in the worker); they share one window.
const UNROUTED: &str = "";

impl Windows {
    /// Windows for `settings`' providers over `catalog`'s routes.
    pub fn new(settings: &Settings, catalog: &Catalog) -> Self {
        Self {
            settings: settings.dispatch.clone(),
            utilisation: settings.quota.target_utilisation,
            primary: catalog
                .iter()
                .filter_map(|d| Some((d.id.clone(), d.provider_chain.first()?.clone())))
                .collect(),
            quotas: settings
                .providers
                .iter()
                .map(|(name, p)| (name.clone(), p.quota.clone()))
                .collect(),
        }
    }

    /// The provider whose window `dialect`'s tasks take.
    pub fn provider_of(&self, dialect: &str) -> &str {
        self.primary.get(dialect).map_or(UNROUTED, String::as_str)
    }

    /// `provider`'s window while `workers` worker replicas are live: this
    /// many milliseconds of its request rate when it has one (the quota,
    /// not the workers, is then what drains it), else the workers' own
    /// capacity; never below `dispatch.min_window`.
    pub fn window(&self, provider: &str, workers: u32) -> u64 {
        let fleet = u64::from(self.settings.window_per_worker) * u64::from(workers.max(1));
        let rate = self
            .quotas
            .get(provider)
            .and_then(|q| q.requests_per_second)
            .filter(|r| *r > 0.0);
        let window = match rate {
            Some(rate) => {
                let horizon = self.settings.quota_horizon().as_secs_f64();
                // Saturating float-to-int cast; the rate is positive.
                ((rate * self.utilisation * horizon).ceil() as u64).min(fleet)
            }
            None => fleet,
        };
        window.max(u64::from(self.settings.min_window))
    }

    /// Which queues get the free slots of their provider's window, in
    /// publishing order (one entry per task).
    pub fn plan(&self, queues: &[DispatchQueue], workers: u32) -> Vec<LaneKey> {
        let mut by_provider: BTreeMap<&str, Vec<Lane>> = BTreeMap::new();
        for queue in queues {
            by_provider
                .entry(self.provider_of(&queue.dialect))
                .or_default()
                .push(Lane {
                    tenant_id: queue.tenant_id,
                    dialect: queue.dialect.clone(),
                    batched: queue.batched,
                    weight: u32::try_from(queue.weight).unwrap_or(1).max(1),
                    in_flight: u64::try_from(queue.in_flight).unwrap_or(0),
                    waiting: u64::try_from(queue.waiting).unwrap_or(0),
                });
        }
        let metrics = ttsq_telemetry::metrics::get();
        let mut picks = Vec::new();
        for (provider, lanes) in by_provider {
            let window = self.window(provider, workers);
            if provider != UNROUTED {
                metrics
                    .dispatch_window
                    .with_label_values(&[provider])
                    .set(i64::try_from(window).unwrap_or(i64::MAX));
            }
            let in_flight: u64 = lanes.iter().map(|l| l.in_flight).sum();
            picks.extend(allocate(&lanes, window.saturating_sub(in_flight)));
        }
        picks
    }

    /// The most waiting tasks a round needs to know of per queue: no queue
    /// can take more than the largest window.
    fn waiting_cap(&self, workers: u32) -> i64 {
        let largest = self
            .quotas
            .keys()
            .map(|p| self.window(p, workers))
            .chain([self.window(UNROUTED, workers)])
            .max()
            .unwrap_or(1);
        i64::try_from(largest).unwrap_or(i64::MAX)
    }
}

/// Why a round did not run.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// Postgres failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No publishing channel could be opened.
    #[error("RabbitMQ is unreachable: {0}")]
    Broker(#[from] ttsq_queue::QueueError),
}

/// Runs dispatch rounds when woken or polled.
pub struct Dispatcher {
    store: Store,
    broker: Arc<Broker>,
    windows: Windows,
    workers: Arc<AtomicU32>,
    waker: Waker,
    poll: Duration,
}

impl Dispatcher {
    /// A dispatcher publishing through `broker`; `workers` is the live
    /// worker replica count the heartbeat keeps current, `waker` what the
    /// API and the worker of this process wake it with.
    pub fn new(
        store: Store,
        broker: Arc<Broker>,
        windows: Windows,
        workers: Arc<AtomicU32>,
        waker: Waker,
        poll: Duration,
    ) -> Self {
        Self {
            store,
            broker,
            windows,
            workers,
            waker,
            poll,
        }
    }

    /// Dispatches until `shutdown` resolves.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut ticks = tokio::time::interval(self.poll);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = self.waker.woken() => {}
                _ = ticks.tick() => {}
            }
            for _ in 0..BUSY_TRIES {
                match self.round().await {
                    Ok(Round::Busy) => tokio::time::sleep(BUSY_RETRY).await,
                    Ok(Round::Done {
                        published,
                        unconfirmed,
                    }) => {
                        if unconfirmed > 0 {
                            tracing::warn!(
                                published,
                                unconfirmed,
                                "some tasks were not confirmed by RabbitMQ; a later round publishes them"
                            );
                        }
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "dispatch round failed; retrying at the next poll");
                        break;
                    }
                }
            }
        }
    }

    /// One round: fills every window's free slots in fair order.
    pub async fn round(&self) -> Result<Round, DispatchError> {
        // The broker's shared publishing channel, reopened if it was lost.
        let publisher = self.broker.publisher().await?;
        let workers = self.workers.load(Ordering::Relaxed);
        let windows = &self.windows;
        let round = self
            .store
            .dispatch_round(
                windows.waiting_cap(workers),
                |queues| windows.plan(queues, workers),
                |task| {
                    let publisher = publisher.clone();
                    async move {
                        let mut message = JobMessage::new(task.id, task.tenant_id, task.dialect);
                        message.traceparent = task.traceparent;
                        match tokio::time::timeout(CONFIRM_TIMEOUT, publisher.publish(&message)).await {
                            Ok(Ok(())) => Some(task.id),
                            Ok(Err(err)) => {
                                tracing::debug!(error = %err, task_id = %task.id, "publishing failed; a later round retries");
                                None
                            }
                            Err(_) => {
                                tracing::debug!(task_id = %task.id, "no confirm in time; a later round retries");
                                None
                            }
                        }
                    }
                },
            )
            .await?;
        if let Round::Done { published, .. } = round {
            ttsq_telemetry::metrics::get()
                .dispatched
                .inc_by(published as u64);
        }
        Ok(round)
    }
}
