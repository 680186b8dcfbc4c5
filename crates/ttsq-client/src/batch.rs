//! Batches: `POST /v1/tts/batches` (up to [`MAX_BATCH_ITEMS`] jobs in one
//! request), `GET` and `DELETE /v1/tts/batches/{id}`, and
//! [`Client::run_batch`], which splits any number of jobs into batches,
//! submits them safely and waits for every item.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{Client, ClientError, NewJob, TaskError, TaskStatus, decode};

/// Most jobs the API takes in one batch.
pub const MAX_BATCH_ITEMS: usize = 1_000;

/// Most items `GET /v1/tts/batches/{id}` returns in one page.
const MAX_PAGE: u32 = 1_000;

/// One job of a batch: a job's fields (but `callback_url`, and `priority`
/// other than normal: batches are queued) and the caller's own id of it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct BatchItem {
    /// The job.
    #[serde(flatten)]
    pub job: NewJob,
    /// The caller's id of the item, unique within the batch and returned
    /// with it: 1 to 256 characters, no control characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_id: Option<String>,
}

impl BatchItem {
    /// An item with the caller's id.
    pub fn new(custom_id: impl Into<String>, job: NewJob) -> Self {
        Self {
            job,
            custom_id: Some(custom_id.into()),
        }
    }
}

/// A batch to submit.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct NewBatch {
    /// The jobs, 1 to [`MAX_BATCH_ITEMS`].
    pub items: Vec<BatchItem>,
    /// Join the items' audio into one file, in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concatenate: Option<bool>,
    /// URL told once, when every item is terminal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// The caller's own JSON, returned with the batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

impl NewBatch {
    /// A batch of these items, nothing else set.
    pub fn new(items: Vec<BatchItem>) -> Self {
        Self {
            items,
            ..Self::default()
        }
    }
}

/// A batch accepted (or found by its idempotency key).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BatchAccepted {
    /// Its id.
    pub batch_id: Uuid,
    /// `running`, `concatenating` or `completed`.
    #[serde(default)]
    pub status: String,
    /// The items' tasks, in the order submitted.
    pub task_ids: Vec<Uuid>,
    /// Where to poll it.
    #[serde(default)]
    pub status_url: Option<String>,
}

/// A batch's items per task status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct BatchCounts {
    /// Waiting for a worker.
    #[serde(default)]
    pub queued: u64,
    /// Being synthesized.
    #[serde(default)]
    pub processing: u64,
    /// Audio stored.
    #[serde(default)]
    pub succeeded: u64,
    /// Failed for good.
    #[serde(default)]
    pub failed: u64,
    /// Cancelled.
    #[serde(default)]
    pub cancelled: u64,
}

impl BatchCounts {
    /// Items that will not change again.
    pub fn terminal(&self) -> u64 {
        self.succeeded + self.failed + self.cancelled
    }
}

/// A batch and its counts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Batch {
    /// Its id.
    pub batch_id: Uuid,
    /// `running`, `concatenating` (joining the audio) or `completed`.
    pub status: String,
    /// Items it was submitted with.
    pub items: u32,
    /// Items per task status.
    #[serde(default)]
    pub counts: BatchCounts,
    /// Whether the items' audio is joined into one file.
    #[serde(default)]
    pub concatenate: bool,
    /// Presigned URL of the joined audio, once stored.
    #[serde(default)]
    pub concatenated_audio_url: Option<String>,
    /// Why the audio could not be joined.
    #[serde(default)]
    pub concatenate_error: Option<String>,
    /// The caller's metadata, as given.
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    /// Accepted at.
    pub created_at: DateTime<Utc>,
    /// Every item terminal (and the audio joined, when asked) at.
    #[serde(default)]
    pub completed_at: Option<DateTime<Utc>>,
}

impl Batch {
    /// Whether every item is terminal (and the audio joined, when asked).
    pub fn is_completed(&self) -> bool {
        self.status == "completed"
    }
}

/// One item of a batch as it is now.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BatchItemStatus {
    /// Position in the submitted batch, from 0.
    pub index: u32,
    /// The item's task.
    pub task_id: Uuid,
    /// The caller's id of the item, as given.
    #[serde(default)]
    pub custom_id: Option<String>,
    /// Where the task is in its life.
    pub status: TaskStatus,
    /// Served from stored audio, not billed.
    #[serde(default)]
    pub cache_hit: bool,
    /// Presigned URL of the audio, once succeeded.
    #[serde(default)]
    pub audio_url: Option<String>,
    /// Playing time of the audio.
    #[serde(default)]
    pub duration_ms: Option<i64>,
    /// Why it failed or was cancelled.
    #[serde(default)]
    pub error: Option<TaskError>,
}

/// One page of a batch's items, with the batch.
#[derive(Debug, Clone, Deserialize)]
pub struct BatchPage {
    /// The batch and its counts.
    #[serde(flatten)]
    pub batch: Batch,
    /// Items in batch order, from the cursor on.
    pub data: Vec<BatchItemStatus>,
    /// Cursor of the next page; `None` on the last.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// A batch after [`Client::cancel_batch`].
#[derive(Debug, Clone, Deserialize)]
pub struct CancelledBatch {
    /// The batch as it is now.
    #[serde(flatten)]
    pub batch: Batch,
    /// Items this call cancelled.
    pub cancelled_items: u64,
}

/// The idempotency key [`Client::run_batch`] submits a chunk with: the
/// SHA-256 of its JSON, so that submitting the same jobs again (a rerun
/// after a crash) returns the batch already made, never a second one.
pub fn batch_idempotency_key<B: Serialize + ?Sized>(batch: &B) -> Result<String, ClientError> {
    let body = serde_json::to_vec(batch)
        .map_err(|e| ClientError::Config(format!("cannot encode the batch: {e}")))?;
    Ok(format!(
        "ttsq-batch-{}",
        &hex::encode(Sha256::digest(&body))[..48]
    ))
}

impl Client {
    /// Submits up to [`MAX_BATCH_ITEMS`] jobs in one request. The API
    /// takes all or none: an invalid item refuses the batch with a `400`
    /// whose errors name it (`items[3].text`; see
    /// [`crate::Problem::item_errors`]). With an `idempotency_key` the call
    /// is retried on transient failures, and a repeat answers the first
    /// batch.
    ///
    /// ```no_run
    /// # async fn demo(client: ttsq_client::Client) -> Result<(), ttsq_client::ClientError> {
    /// use ttsq_client::{BatchItem, NewBatch, NewJob};
    ///
    /// let batch = NewBatch::new(vec![
    ///     BatchItem::new("intro", NewJob::new("Welcome.", "en-gb")),
    ///     BatchItem::new("outro", NewJob::new("Goodbye.", "en-gb")),
    /// ]);
    /// let accepted = client.submit_batch(&batch, Some("my-batch-1")).await?;
    /// let done = client.wait_batch(accepted.batch_id, std::time::Duration::from_secs(600)).await?;
    /// println!("{} succeeded", done.counts.succeeded);
    /// # Ok(()) }
    /// ```
    pub async fn submit_batch<B: Serialize + ?Sized>(
        &self,
        batch: &B,
        idempotency_key: Option<&str>,
    ) -> Result<BatchAccepted, ClientError> {
        let response = self
            .send(
                Method::POST,
                "/v1/tts/batches",
                idempotency_key.is_some(),
                |r| {
                    let r = r.json(batch);
                    match idempotency_key {
                        Some(key) => r.header("idempotency-key", key),
                        None => r,
                    }
                },
            )
            .await?;
        decode(response).await
    }

    /// A batch with one page of its items: from `cursor` (the previous
    /// page's `next_cursor`), `limit` items (server default 100, at most
    /// 1,000).
    pub async fn get_batch(
        &self,
        batch_id: Uuid,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<BatchPage, ClientError> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(cursor) = cursor {
            query.push(("cursor", cursor.to_owned()));
        }
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        let response = self
            .send(
                Method::GET,
                &format!("/v1/tts/batches/{batch_id}"),
                true,
                |r| r.query(&query),
            )
            .await?;
        decode(response).await
    }

    /// A batch with all its items, page by page.
    pub async fn batch_items(
        &self,
        batch_id: Uuid,
    ) -> Result<(Batch, Vec<BatchItemStatus>), ClientError> {
        let mut page = self.get_batch(batch_id, None, Some(MAX_PAGE)).await?;
        let mut items = std::mem::take(&mut page.data);
        while let Some(cursor) = page.next_cursor.take() {
            let next = self
                .get_batch(batch_id, Some(&cursor), Some(MAX_PAGE))
                .await?;
            items.extend(next.data);
            page.next_cursor = next.next_cursor;
            page.batch = next.batch;
        }
        Ok((page.batch, items))
    }

    /// Polls a batch until it is completed; [`ClientError::BatchTimeout`]
    /// when it is not within `timeout`. Polls every half second at first,
    /// less often (up to every 5 s) while nothing changes.
    pub async fn wait_batch(
        &self,
        batch_id: Uuid,
        timeout: Duration,
    ) -> Result<Batch, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(500);
        let mut last = None;
        loop {
            let batch = self.get_batch(batch_id, None, Some(1)).await?.batch;
            if batch.is_completed() {
                return Ok(batch);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(ClientError::BatchTimeout { batch_id, timeout });
            }
            if last == Some(batch.counts) {
                pause = (pause * 2).min(Duration::from_secs(5));
            } else {
                pause = Duration::from_millis(500);
            }
            last = Some(batch.counts);
            tokio::time::sleep(pause.min(left)).await;
        }
    }

    /// Cancels a batch's items that are still queued; finished and running
    /// items are kept.
    pub async fn cancel_batch(&self, batch_id: Uuid) -> Result<CancelledBatch, ClientError> {
        let response = self
            .send(
                Method::DELETE,
                &format!("/v1/tts/batches/{batch_id}"),
                true,
                |r| r,
            )
            .await?;
        decode(response).await
    }

    /// Runs any number of jobs as batches: splits them into batches of
    /// [`MAX_BATCH_ITEMS`], submits each with the idempotency key of its
    /// content ([`batch_idempotency_key`], so running the same jobs again
    /// makes nothing twice), waits for every batch within `timeout`, and
    /// returns every item in input order. A refused batch stops it with
    /// the server's problem (batches before it are submitted already).
    ///
    /// ```no_run
    /// # async fn demo(client: ttsq_client::Client) -> Result<(), ttsq_client::ClientError> {
    /// use std::time::Duration;
    /// use ttsq_client::{BatchItem, NewJob, TaskStatus};
    ///
    /// let items: Vec<BatchItem> = (0..2_500)
    ///     .map(|n| BatchItem::new(format!("line-{n}"), NewJob::new(format!("Line {n}."), "en-gb")))
    ///     .collect();
    /// let done = client.run_batch(&items, Duration::from_secs(3_600)).await?;
    /// for item in done.iter().filter(|i| i.status == TaskStatus::Succeeded) {
    ///     let audio = client.download(item.task_id).await?;
    ///     # let _ = audio;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn run_batch(
        &self,
        items: &[BatchItem],
        timeout: Duration,
    ) -> Result<Vec<BatchItemStatus>, ClientError> {
        let mut batches = Vec::new();
        for chunk in items.chunks(MAX_BATCH_ITEMS) {
            let body = NewBatch {
                items: chunk.to_vec(),
                ..NewBatch::default()
            };
            let key = batch_idempotency_key(&body)?;
            batches.push(self.submit_batch(&body, Some(&key)).await?.batch_id);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut done = Vec::with_capacity(items.len());
        for batch_id in batches {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.wait_batch(batch_id, left).await?;
            done.extend(self.batch_items(batch_id).await?.1);
        }
        Ok(done)
    }
}
