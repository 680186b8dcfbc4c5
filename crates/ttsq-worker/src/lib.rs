#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! Two things are called a group elsewhere; here they keep apart. A *dialect
//! group* is what the worker synthesizes together: deliveries of one
//! dialect, flushed at `worker.batch_size` or after `worker.batch_window_ms`
//! (the settings keep their names). A *client batch* is what a tenant
//! submitted with `POST /v1/tts/groups`; the worker only joins its audio.
//!
//! - [`run`]: the consume → group → process loop and graceful shutdown.
//! - [`grouper`]: grouping deliveries by dialect, flushed on size or window.
//! - [`pipeline`]: one dialect group end to end.
//! - [`batches`]: joined audio of client batches ([`batches::Joiner`]).
//! - [`long_jobs`]: the join of long jobs' chunks, their speech marks
//!   merged ([`long_jobs::LongJoiner`]).
//! - [`join`]: joining audio files by streaming them through a multipart
//!   upload, format by format.

pub mod batches;
pub mod grouper;
pub mod join;
pub mod long_jobs;
pub mod pipeline;

mod context;
mod leased;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{sync::Semaphore, task::JoinSet};
use ttsq_core::backoff::Backoff;
use ttsq_queue::{JobConsumer, QueueError};

pub use context::WorkerContext;

use crate::{grouper::DialectGroups, pipeline::Item};

/// Why the worker stopped other than by being asked to.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The broker connection or channel failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Consumes until `shutdown` resolves, then stops consuming, finishes the
/// groups it holds within the grace period and returns.
pub async fn run(
    context: WorkerContext,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let mut resubscribe = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    tokio::pin!(shutdown);
    // RabbitMQ may be down when the worker starts: it waits for it rather
    // than exiting, so a pod restarted during a broker outage does not
    // crash-loop (it stays unready until it consumes).
    let Some(mut consumer) = context
        .broker
        .subscribe_with_backoff::<ttsq_core::JobMessage>(
            context.prefetch,
            &context.name,
            &mut resubscribe,
            shutdown.as_mut(),
        )
        .await
    else {
        return Ok(());
    };
    let mut groups: DialectGroups<Item> =
        DialectGroups::new(context.settings.batch_size, context.settings.batch_window());
    let slots = Arc::new(Semaphore::new(context.settings.concurrent_batches));
    let mut in_flight = JoinSet::new();
    tracing::info!(worker = %context.name, "worker consuming");

    // Set on shutdown: groups still waiting for a slot then go back to the
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
                pipeline::process_group(&context, items).await;
                context.dispatch.wake();
            }
        });
    };

    let outcome = loop {
        let deadline = groups.next_deadline();
        tokio::select! {
            biased;
            () = &mut shutdown => break Ok(()),
            Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Err(err) = joined {
                    tracing::error!(error = %err, "a batch task panicked; its deliveries will be redelivered");
                }
            }
            () = sleep_until(deadline), if deadline.is_some() => {
                for items in groups.take_expired(Instant::now()) {
                    spawn(&mut in_flight, items);
                }
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => match delivery.decode() {
                    Ok(message) => {
                        let dialect = message.dialect.clone();
                        if let Some(items) = groups.push(&dialect, Item { delivery, message }, Instant::now()) {
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
                end => {
                    match end {
                        Some(Err(err)) => tracing::warn!(error = %err, "consumer failed"),
                        _ => tracing::warn!("the broker ended the consumer"),
                    }
                    match resubscribed(&context, &mut groups, &mut resubscribe, &mut shutdown).await {
                        Some(fresh) => consumer = fresh,
                        None => break Ok(()),
                    }
                }
            },
        }
    };

    tracing::info!(
        held = groups.len(),
        in_flight = in_flight.len(),
        "worker draining"
    );
    if let Err(err) = consumer.cancel().await {
        tracing::debug!(error = %err, "cancelling the consumer");
    }
    stopping.store(true, Ordering::Release);
    for items in groups.drain() {
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

/// A new consumer after the old one died (connection lost, broker restart,
/// queue deleted), retried with back-off until it works or `shutdown`.
/// Deliveries held in the groups died with their channel: the broker
/// redelivers them, so they are dropped here unsettled. Batches already
/// running finish their database work; their acks fail harmlessly and the
/// redeliveries find the tasks finished.
async fn resubscribed(
    context: &WorkerContext,
    groups: &mut DialectGroups<Item>,
    backoff: &mut Backoff,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Option<JobConsumer> {
    let dropped: usize = groups.drain().iter().map(Vec::len).sum();
    if dropped > 0 {
        tracing::info!(
            dropped,
            "deliveries of the lost channel return through the broker"
        );
    }
    // The broker just ended the consumer: give it a moment before the
    // first attempt.
    tokio::select! {
        () = shutdown.as_mut() => return None,
        () = tokio::time::sleep(backoff.next_delay()) => {}
    }
    let consumer = context
        .broker
        .subscribe_with_backoff(context.prefetch, &context.name, backoff, shutdown.as_mut())
        .await?;
    tracing::info!("consuming again");
    Some(consumer)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
