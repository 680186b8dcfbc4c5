//! The JSON views of tasks and batches, rendered from their rows once for
//! API responses and webhook payloads alike, so the two cannot drift, and
//! the webhook bodies around them.
//!
//! It does not own the rows (`ttsq-store`), the responses around a view
//! (`ttsq-api`) or webhook delivery (`ttsq-webhooks`).

mod batch;
mod event;
mod task;

pub use batch::{BatchItemView, BatchView, StatusCounts};
pub use event::{BatchCompletedEvent, BatchEventType, TaskCompletedEvent, TaskEventType};
pub use task::{ErrorView, TaskView};

/// Why a view could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// Postgres could not be read.
    #[error(transparent)]
    Store(#[from] ttsq_store::StoreError),
    /// An audio URL could not be presigned.
    #[error(transparent)]
    Storage(#[from] ttsq_audio::AudioStoreError),
}

/// Where a task's status is polled.
pub fn task_status_url(public_url: &str, id: uuid::Uuid) -> String {
    format!("{public_url}/v1/tts/jobs/{id}")
}

/// Where a batch's status is polled.
pub fn batch_status_url(public_url: &str, id: uuid::Uuid) -> String {
    format!("{public_url}/v1/tts/batches/{id}")
}
