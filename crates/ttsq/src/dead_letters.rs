//! The operator's view of the dead-letter queue (`ttsq dlq …`): each dead
//! letter joined with the state of its task, and replay of the ones whose
//! task is still unfinished.
//!
//! A task that ended `failed` keeps its ledger row and stays failed: its
//! copy in the DLQ is there to be inspected, not replayed (the ledger is
//! append-only, so a failed task is never reopened). Resubmit such a job.

use std::collections::HashMap;

use serde::Serialize;
use ttsq_core::TaskStatus;
use ttsq_queue::{Broker, QueueError, dlq::ReplayOutcome};
use ttsq_store::{Store, StoreError};
use uuid::Uuid;

/// Why a DLQ command failed.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// RabbitMQ.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// Postgres.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One dead letter as `ttsq dlq list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterView {
    /// The task the message is for; `None` when the body does not decode.
    pub task_id: Option<Uuid>,
    /// Its dialect.
    pub dialect: Option<String>,
    /// The attempt the message was for.
    pub attempt: Option<u32>,
    /// Why it is here: ttsq's reason, or `delivery_limit` when the broker
    /// dead-lettered it itself.
    pub reason: String,
    /// The task's state now; `None` when unknown (undecodable, or no such task).
    pub task_status: Option<TaskStatus>,
    /// Whether `ttsq dlq replay` would send it back to the job queue.
    pub replayable: bool,
    /// Size of the body in bytes.
    pub bytes: usize,
}

/// Up to `limit` dead letters with their tasks' states; the queue is unchanged.
pub async fn list(
    broker: &Broker,
    store: &Store,
    limit: usize,
) -> Result<Vec<DeadLetterView>, DeadLetterError> {
    let letters = broker.dlq_list(limit).await?;
    let messages: Vec<_> = letters.iter().map(|l| l.decode().ok()).collect();
    let ids: Vec<Uuid> = messages.iter().flatten().map(|m| m.task_id).collect();
    let statuses = store.task_statuses(&ids).await?;
    Ok(letters
        .iter()
        .zip(messages)
        .map(|(letter, message)| {
            let task_status = message
                .as_ref()
                .and_then(|m| statuses.get(&m.task_id).copied());
            DeadLetterView {
                task_id: message.as_ref().map(|m| m.task_id),
                dialect: message.as_ref().map(|m| m.dialect.clone()),
                attempt: message.as_ref().map(|m| m.attempt),
                reason: letter
                    .reason
                    .clone()
                    .unwrap_or_else(|| "delivery_limit".to_owned()),
                replayable: task_status.is_some_and(|s| !s.is_terminal()),
                task_status,
                bytes: letter.body.len(),
            }
        })
        .collect())
}

/// Sends back to the job queue the dead letters (up to `limit`) whose task
/// is still unfinished; the others stay in the DLQ.
pub async fn replay(
    broker: &Broker,
    store: &Store,
    limit: usize,
) -> Result<ReplayOutcome, DeadLetterError> {
    let replayable: HashMap<Uuid, bool> = list(broker, store, limit)
        .await?
        .into_iter()
        .filter_map(|view| view.task_id.map(|id| (id, view.replayable)))
        .collect();
    Ok(broker
        .dlq_replay(limit, |message| {
            replayable.get(&message.task_id).copied().unwrap_or(false)
        })
        .await?)
}
