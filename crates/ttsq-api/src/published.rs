//! Recording that a task's message was confirmed, batched.
//!
//! Every normal submit used to end with its own `UPDATE tasks SET
//! published_at` — a second commit (and WAL flush) per job after the insert.
//! The API now hands confirmed task ids to one background task that marks
//! everything that arrived while its previous statement ran, in one
//! `UPDATE … WHERE id = ANY($1)`.
//!
//! A mark lost to a crash is harmless: the outbox relay republishes a queued,
//! unmarked task after a couple of seconds, and the worker's claim turns the
//! duplicate message into a no-op.

use tokio::sync::mpsc;
use ttsq_store::Store;
use uuid::Uuid;

/// Most task ids marked by one statement.
const MAX_BATCH: usize = 1_000;

/// The sending side; cheap to clone. The marking task ends (after marking
/// what it holds) once every clone is dropped.
#[derive(Clone, Debug)]
pub struct PublishedMarks {
    sender: mpsc::UnboundedSender<Uuid>,
}

impl PublishedMarks {
    /// Starts the marking task on the current runtime.
    pub fn start(store: Store) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(mark_loop(store, receiver));
        Self { sender }
    }

    /// Queues `task_id` to be marked published.
    pub fn mark(&self, task_id: Uuid) {
        if self.sender.send(task_id).is_err() {
            // Only while shutting down; the relay marks it later.
            tracing::debug!(%task_id, "publish mark dropped: marking task stopped");
        }
    }
}

async fn mark_loop(store: Store, mut receiver: mpsc::UnboundedReceiver<Uuid>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if let Err(err) = store.mark_published_many(&batch).await {
            tracing::warn!(error = %err, tasks = batch.len(), "recording published tasks failed; the outbox relay republishes them");
        }
        batch.clear();
    }
}
