#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`run`]: the consume → batch → process loop and graceful shutdown.
//! - [`batcher`]: grouping deliveries by dialect, flushed on size or window.
//! - [`pipeline`]: one batch end to end.

pub mod batcher;
pub mod pipeline;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use tokio::{sync::Semaphore, task::JoinSet};
use ttsq_audio::AudioStore;
use ttsq_config::WorkerSettings;
use ttsq_providers::Router;
use ttsq_queue::{Broker, QueueError};
use ttsq_store::Store;

use crate::{batcher::Batcher, pipeline::Item};

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
    /// Claims of a task after which a passing provider failure fails it.
    pub max_attempts: i32,
    /// This process's replica id (its heartbeat row), stamped on claims.
    pub replica_id: uuid::Uuid,
    /// Consumer tag, unique per process, shown in the broker's management UI.
    pub name: String,
}

/// Why the worker stopped other than by being asked to.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The broker connection or channel failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The broker ended the consumer (queue deleted, node shutting down).
    #[error("the broker closed the consumer")]
    ConsumerClosed,
}

/// Consumes until `shutdown` resolves, then stops consuming, finishes the
/// batches it holds within the grace period and returns.
pub async fn run(
    context: WorkerContext,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let mut consumer = context
        .broker
        .consume(context.prefetch, &context.name)
        .await?;
    let mut batcher: Batcher<Item> =
        Batcher::new(context.settings.batch_size, context.settings.batch_window());
    let slots = Arc::new(Semaphore::new(context.settings.concurrent_batches));
    let mut in_flight = JoinSet::new();
    tokio::pin!(shutdown);
    tracing::info!(worker = %context.name, "worker consuming");

    // Set on shutdown: batches still waiting for a slot then go back to the
    // queue instead of starting, so the drain only finishes claimed work.
    let stopping = Arc::new(AtomicBool::new(false));
    let spawn = |in_flight: &mut JoinSet<()>, items: Vec<Item>| {
        let context = context.clone();
        let slots = Arc::clone(&slots);
        let stopping = Arc::clone(&stopping);
        in_flight.spawn(async move {
            // The semaphore lives as long as the loop and is never closed.
            let _slot = slots
                .acquire_owned()
                .await
                .expect("batch semaphore is never closed");
            if stopping.load(Ordering::Acquire) {
                pipeline::requeue_all(&items).await;
            } else {
                pipeline::process_batch(&context, items).await;
            }
        });
    };

    let outcome = loop {
        let deadline = batcher.next_deadline();
        tokio::select! {
            biased;
            () = &mut shutdown => break Ok(()),
            Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Err(err) = joined {
                    tracing::error!(error = %err, "a batch task panicked; its deliveries will be redelivered");
                }
            }
            () = sleep_until(deadline), if deadline.is_some() => {
                for items in batcher.take_expired(Instant::now()) {
                    spawn(&mut in_flight, items);
                }
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => match delivery.decode() {
                    Ok(message) => {
                        let dialect = message.dialect.clone();
                        if let Some(items) = batcher.push(&dialect, Item { delivery, message }, Instant::now()) {
                            spawn(&mut in_flight, items);
                        }
                    }
                    Err(err) => {
                        tracing::warn!(reason = err.code(), error = %err, "undecodable message sent to the dead-letter queue");
                        if let Err(err) = delivery.dead_letter(err.code()).await {
                            tracing::warn!(error = %err, "dead-lettering failed");
                        }
                    }
                },
                Some(Err(err)) => break Err(WorkerError::from(err)),
                None => break Err(WorkerError::ConsumerClosed),
            },
        }
    };

    tracing::info!(
        held = batcher.len(),
        in_flight = in_flight.len(),
        "worker draining"
    );
    if let Err(err) = consumer.cancel().await {
        tracing::debug!(error = %err, "cancelling the consumer");
    }
    stopping.store(true, Ordering::Release);
    for items in batcher.drain() {
        pipeline::requeue_all(&items).await;
    }
    let drained = tokio::time::timeout(context.settings.shutdown_grace(), async {
        while in_flight.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = in_flight.len(),
            "grace period over; unfinished batches return to the queue"
        );
        in_flight.abort_all();
    }
    consumer.close().await;
    tracing::info!("worker stopped");
    outcome
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
