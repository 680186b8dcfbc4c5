//! Batches: many tasks submitted, read and cancelled together.
//!
//! A batch and all its tasks are written in one transaction, the tasks with
//! one UNNEST statement, within the tenant's limits for all of them at once
//! (a batch over a limit is refused whole). Items already in the audio cache
//! finish in that same transaction. A trigger on `tasks` (see the migration
//! `20261124100001`) counts items down as they reach a terminal state, from
//! whatever statement, and completes the batch at 0 — or leaves it
//! `concatenating` when its audio is to be joined. One replica at a time
//! joins such a batch, under a lease taken with one conditional UPDATE
//! ([`Store::take_join_lease`]); every take counts as an attempt (see the
//! migration `20261207100000`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use ttsq_core::{Job, TaskStatus};
use uuid::Uuid;

use crate::{
    Store, StoreError,
    limits::{Charge, admit_jobs},
    new_task::{CostEstimate, NewTask},
    submissions::{insert_long_jobs, push_chunks},
    tasks::{
        BatchPlace, FinishedTask, LEDGER_FROM_DONE, LongPlace, TaskColumns, TaskOutcome, finish,
    },
};

/// One item of a batch to create.
#[derive(Debug, Clone)]
pub struct NewBatchItem<'a> {
    /// Id of its task.
    pub task_id: Uuid,
    /// The validated job.
    pub job: &'a Job,
    /// The client's id for it, unique within the batch.
    pub custom_id: Option<&'a str>,
    /// Set when its audio is already stored: it finishes at once.
    pub cached: Option<TaskOutcome>,
    /// What it is expected to cost when queued, reserved against the budget.
    pub estimate: Option<CostEstimate<'a>>,
    /// A long job's chunks, in order (see [`crate::Submission::chunks`]);
    /// empty for every other item.
    pub chunks: Vec<crate::NewChunk<'a>>,
}

/// A batch to create.
#[derive(Debug, Clone)]
pub struct NewBatch<'a> {
    /// Id to give it.
    pub id: Uuid,
    /// Owner.
    pub tenant_id: Uuid,
    /// Its items, in order.
    pub items: Vec<NewBatchItem<'a>>,
    /// Whether a joined audio file is wanted once every item is terminal.
    pub concatenate: bool,
    /// URL told when every item is terminal.
    pub callback_url: Option<&'a str>,
    /// Client metadata of the batch.
    pub metadata: Option<&'a serde_json::Value>,
    /// Client's `Idempotency-Key`, if sent.
    pub idempotency_key: Option<&'a str>,
    /// Visible prefix of the submitting key.
    pub key_prefix: Option<&'a str>,
    /// W3C `traceparent` of the submitting request, for its items' messages.
    pub traceparent: Option<&'a str>,
}

/// A batch as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BatchRow {
    /// Batch id.
    pub id: Uuid,
    /// Owner.
    pub tenant_id: Uuid,
    /// `running`, `concatenating` or `completed`.
    pub status: String,
    /// Number of items.
    pub items: i32,
    /// Items not yet terminal.
    pub open_items: i32,
    /// Whether a joined audio file was asked for.
    pub concatenate: bool,
    /// Bucket key of the joined audio, once made.
    pub concatenated_key: Option<String>,
    /// Its size.
    pub concatenated_bytes: Option<i64>,
    /// Its playing time.
    pub concatenated_duration_ms: Option<i32>,
    /// Why joining failed, if it did.
    pub concatenate_error: Option<String>,
    /// Callback URL of the batch.
    pub callback_url: Option<String>,
    /// Client metadata.
    pub metadata: Option<serde_json::Value>,
    /// Accepted at.
    pub created_at: DateTime<Utc>,
    /// Cancelled at, if it was.
    pub cancelled_at: Option<DateTime<Utc>>,
    /// Every item terminal (and joined, if asked) at.
    pub completed_at: Option<DateTime<Utc>>,
}

/// One item of a batch as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BatchItemRow {
    /// Position in the batch, from 0.
    pub batch_index: i32,
    /// Its task.
    pub task_id: Uuid,
    /// The client's id.
    pub custom_id: Option<String>,
    /// Task state.
    pub status: String,
    /// Stable error code.
    pub error_code: Option<String>,
    /// Error message.
    pub error_message: Option<String>,
    /// Served from the cache.
    pub cache_hit: bool,
    /// Bucket key of the audio, when succeeded.
    pub s3_key: Option<String>,
    /// Playing time, when succeeded.
    pub duration_ms: Option<i32>,
}

impl BatchItemRow {
    /// The parsed state (see [`crate::TaskRow::status`]).
    pub fn status(&self) -> TaskStatus {
        self.status.parse().unwrap_or(TaskStatus::Processing)
    }
}

/// A stored item's audio, in batch order, for joining.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BatchAudio {
    /// Position in the batch.
    pub batch_index: i32,
    /// Bucket key.
    pub s3_key: String,
    /// Format name.
    pub format: String,
    /// Playing time.
    pub duration_ms: i32,
    /// The task's output sample rate; `None` for tasks stored before it
    /// was recorded.
    pub sample_rate_hz: Option<i32>,
}

/// The result of joining a batch's audio, for [`Store::finish_concatenation`].
#[derive(Debug, Clone)]
pub enum Concatenated {
    /// Stored under `key`.
    Stored {
        /// Bucket key.
        key: String,
        /// Size.
        bytes: i64,
        /// Playing time.
        duration_ms: i32,
    },
    /// Could not be made; the items' audio stays available.
    Failed(String),
}

/// A replica's hold on a batch whose audio it joins (see
/// [`Store::take_join_lease`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinLease {
    /// The batch.
    pub batch_id: Uuid,
    /// This take's token: only its holder may renew, release or complete.
    pub token: Uuid,
    /// Which take of the batch this is, from 1; interrupted takes count.
    pub attempt: i32,
}

/// Completes the batches in the CTE `b` (`id, tenant_id, callback_url`)
/// with their `batch.completed` events, when they have a target.
const COMPLETED_BATCH_EVENTS: &str = "hook AS (
    INSERT INTO webhook_deliveries (tenant_id, event, batch_id, target_url)
    SELECT b.tenant_id, 'batch.completed', b.id, coalesce(b.callback_url, t.webhook_url)
      FROM b JOIN tenants t ON t.id = b.tenant_id
     WHERE coalesce(b.callback_url, t.webhook_url) IS NOT NULL
 )";

const BATCH_COLUMNS: &str =
    "id, tenant_id, status, items, open_items, concatenate, concatenated_key,
    concatenated_bytes, concatenated_duration_ms, concatenate_error, callback_url, metadata,
    created_at, cancelled_at, completed_at";

impl Store {
    /// Creates a batch and its tasks in one transaction, within the tenant's
    /// limits for all of them together; items with a cache hit finish at
    /// once (with their ledger rows). Returns the batch, its task ids in
    /// order, and whether it was created now: with an `Idempotency-Key`
    /// already used for a batch by this tenant, it is that batch, untouched.
    pub async fn insert_batch(
        &self,
        batch: &NewBatch<'_>,
    ) -> Result<(BatchRow, Vec<Uuid>, bool), StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(key) = batch.idempotency_key {
            let earlier: Option<Uuid> = sqlx::query_scalar(
                "SELECT id FROM batches WHERE tenant_id = $1 AND idempotency_key = $2",
            )
            .bind(batch.tenant_id)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(id) = earlier {
                tx.commit().await?;
                return self.existing_batch(batch.tenant_id, id).await;
            }
        }
        let queued = batch.items.iter().filter(|i| i.cached.is_none()).count();
        let charge = Charge {
            characters: batch
                .items
                .iter()
                .filter(|i| i.cached.is_none())
                .map(|i| i64::from(i.job.characters))
                .sum(),
            costs: batch
                .items
                .iter()
                .filter(|i| i.cached.is_none())
                .filter_map(|i| i.estimate)
                .collect(),
            requests: batch.items.len() as i64,
        };
        let admitted = admit_jobs(&mut tx, batch.tenant_id, &charge, queued as i64).await?;
        let format = batch.items.first().map(|i| i.job.format.as_str());
        let inserted: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO batches (id, tenant_id, status, items, open_items, concatenate, format,
                                  callback_url, metadata, idempotency_key, key_prefix)
             VALUES ($1, $2, 'running', $3, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
             RETURNING id",
        )
        .bind(batch.id)
        .bind(batch.tenant_id)
        .bind(i32::try_from(batch.items.len()).unwrap_or(i32::MAX))
        .bind(batch.concatenate)
        .bind(format)
        .bind(batch.callback_url)
        .bind(batch.metadata)
        .bind(batch.idempotency_key)
        .bind(batch.key_prefix)
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_none() {
            // A concurrent submission with the same key won.
            tx.rollback().await?;
            let id: Uuid = sqlx::query_scalar(
                "SELECT id FROM batches WHERE tenant_id = $1 AND idempotency_key = $2",
            )
            .bind(batch.tenant_id)
            .bind(batch.idempotency_key)
            .fetch_one(&self.pool)
            .await?;
            return self.existing_batch(batch.tenant_id, id).await;
        }

        let mut cols = TaskColumns::default();
        let mut finished = Vec::new();
        let mut long = Vec::new();
        for (index, item) in batch.items.iter().enumerate() {
            let is_long = !item.chunks.is_empty();
            let task = NewTask {
                id: item.task_id,
                tenant_id: batch.tenant_id,
                job: item.job,
                idempotency_key: None,
                key_prefix: batch.key_prefix,
                // A long job reserves nothing itself: its chunks do.
                estimate: item.estimate.filter(|_| item.cached.is_none() && !is_long),
                traceparent: batch.traceparent,
            };
            // Cache hits go in `processing` so that `finish` takes them to
            // their end state and ledger row exactly as for single jobs; a
            // long job is `processing` until joined.
            let status = if item.cached.is_some() || is_long {
                TaskStatus::Processing
            } else {
                TaskStatus::Queued
            };
            let place = BatchPlace {
                batch_id: batch.id,
                index: i32::try_from(index).unwrap_or(i32::MAX),
                custom_id: item.custom_id,
            };
            if is_long {
                let total = i32::try_from(item.chunks.len()).unwrap_or(i32::MAX);
                let stored = matches!(item.cached, Some(TaskOutcome::Succeeded { .. }));
                let done = if stored { total } else { 0 };
                cols.push_long(&task, status, Some(place), LongPlace::Job { total, done });
                if item.cached.is_none() {
                    push_chunks(&mut cols, &task, &item.chunks);
                    long.push(item.task_id);
                    finished.extend(item.chunks.iter().filter_map(|c| {
                        c.cached.as_ref().map(|outcome| FinishedTask {
                            task_id: c.task_id,
                            outcome: outcome.clone(),
                        })
                    }));
                }
            } else {
                cols.push(&task, status, Some(place));
            }
            if let Some(outcome) = &item.cached {
                let mut outcome = outcome.clone();
                // A long job's joined audio was stored already: a cache hit.
                if is_long && let TaskOutcome::Succeeded { cache_hit, .. } = &mut outcome {
                    *cache_hit = true;
                }
                finished.push(FinishedTask {
                    task_id: item.task_id,
                    outcome,
                });
            }
        }
        cols.insert(&mut *tx).await?;
        insert_long_jobs(&mut tx, &long).await?;
        finish(&mut *tx, &finished).await?;
        let cache_hits = batch.items.iter().filter(|i| i.cached.is_some()).count();
        let characters: i64 = batch
            .items
            .iter()
            .map(|i| i64::from(i.job.characters))
            .sum();
        let actor = batch
            .key_prefix
            .map_or_else(|| "key".to_owned(), |p| format!("key:{p}"));
        sqlx::query(
            "INSERT INTO audit_log (actor, tenant_id, key_prefix, action, target, text_chars, detail)
             VALUES ($1, $2, $3, 'batch.submit', $4, $5, $6)",
        )
        .bind(actor)
        .bind(batch.tenant_id)
        .bind(batch.key_prefix)
        .bind(batch.id.to_string())
        .bind(i32::try_from(characters).unwrap_or(i32::MAX))
        .bind(json!({
            "items": batch.items.len(),
            "cache_hits": cache_hits,
            "idempotency_key": batch.idempotency_key.is_some(),
        }))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.record_usage(batch.tenant_id, &admitted);
        let row = self
            .get_batch(batch.tenant_id, batch.id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("batch {}", batch.id)))?;
        Ok((row, batch.items.iter().map(|i| i.task_id).collect(), true))
    }

    async fn existing_batch(
        &self,
        tenant_id: Uuid,
        id: Uuid,
    ) -> Result<(BatchRow, Vec<Uuid>, bool), StoreError> {
        let row = self
            .get_batch(tenant_id, id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("batch {id}")))?;
        let ids =
            sqlx::query_scalar("SELECT id FROM tasks WHERE batch_id = $1 ORDER BY batch_index")
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
        Ok((row, ids, false))
    }

    /// A tenant's batch; `None` when it does not exist or is another tenant's.
    pub async fn get_batch(
        &self,
        tenant_id: Uuid,
        id: Uuid,
    ) -> Result<Option<BatchRow>, StoreError> {
        let sql = format!("SELECT {BATCH_COLUMNS} FROM batches WHERE id = $1 AND tenant_id = $2");
        Ok(sqlx::query_as(&sql)
            .bind(id)
            .bind(tenant_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// A batch by id alone, for workers and operators.
    pub async fn batch_by_id(&self, id: Uuid) -> Result<Option<BatchRow>, StoreError> {
        let sql = format!("SELECT {BATCH_COLUMNS} FROM batches WHERE id = $1");
        Ok(sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// How many of a batch's items are in each state.
    pub async fn batch_counts(&self, id: Uuid) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT status, count(*) FROM tasks WHERE batch_id = $1 GROUP BY status ORDER BY status",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Up to `limit` items of a batch after position `after` (exclusive), in order.
    pub async fn batch_items(
        &self,
        id: Uuid,
        after: Option<i32>,
        limit: i64,
    ) -> Result<Vec<BatchItemRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT t.batch_index, t.id AS task_id, t.custom_id, t.status, t.error_code,
                    t.error_message, t.cache_hit, a.s3_key, a.duration_ms
               FROM tasks t LEFT JOIN audio_objects a ON a.hash = t.audio_hash
              WHERE t.batch_id = $1 AND t.batch_index > $2 AND t.parent_id IS NULL
              ORDER BY t.batch_index
              LIMIT $3",
        )
        .bind(id)
        .bind(after.unwrap_or(-1))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Cancels a tenant's batch: its `queued` items and its long jobs not
    /// ended become `cancelled`, each with its ledger row (nothing
    /// billable), in one statement (a trigger cancels the long jobs' chunks
    /// not started; chunks being synthesized finish and bill); items being
    /// processed or finished are kept. Returns how many were cancelled, or
    /// `None` when the batch is not this tenant's.
    pub async fn cancel_batch(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<u64>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let found: Option<Uuid> = sqlx::query_scalar(
            "UPDATE batches SET cancelled_at = coalesce(cancelled_at, now())
              WHERE id = $1 AND tenant_id = $2 RETURNING id",
        )
        .bind(id)
        .bind(tenant_id)
        .fetch_optional(&mut *tx)
        .await?;
        if found.is_none() {
            return Ok(None);
        }
        let sql = format!(
            "WITH done AS (
                UPDATE tasks t
                   SET status = 'cancelled', finished_at = now(), error_code = 'cancelled',
                       error_message = 'the batch was cancelled before this item started',
                       not_before = NULL
                 WHERE t.batch_id = $1 AND t.tenant_id = $2
                   AND (t.status = 'queued'
                        OR (t.status = 'processing' AND t.chunks_total IS NOT NULL))
             RETURNING t.id, t.tenant_id, t.key_prefix, t.provider, t.dialect, t.voice, t.status,
                       t.characters, t.cache_hit, 0::numeric AS price, NULL::text AS currency,
                       t.created_at AS submitted_at, t.parent_id, t.chunks_total
             )
             {LEDGER_FROM_DONE}"
        );
        let cancelled = sqlx::query(&sql)
            .bind(id)
            .bind(tenant_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(Some(cancelled))
    }

    /// Takes the oldest batch waiting for its joined audio that no replica
    /// holds (or whose holder's lease expired: it died or stalled) and that
    /// has attempts left, for `token` of replica `holder`, for `ttl`. One
    /// conditional UPDATE, so two replicas never hold one batch at once.
    /// The take counts as an attempt, also if its holder never comes back.
    pub async fn take_join_lease(
        &self,
        holder: Uuid,
        token: Uuid,
        ttl: Duration,
        max_attempts: u32,
    ) -> Result<Option<JoinLease>, StoreError> {
        let taken: Option<(Uuid, i32)> = sqlx::query_as(
            "WITH next AS (
                SELECT id FROM batches
                 WHERE status = 'concatenating'
                   AND (join_expires_at IS NULL OR join_expires_at < now())
                   AND join_attempts < $4
                 ORDER BY created_at
                 LIMIT 1
                   FOR UPDATE SKIP LOCKED
             )
             UPDATE batches b
                SET join_holder = $1, join_token = $2,
                    join_expires_at = now() + make_interval(secs => $3),
                    join_attempts = b.join_attempts + 1, join_error = NULL
               FROM next
              WHERE b.id = next.id
          RETURNING b.id, b.join_attempts",
        )
        .bind(holder)
        .bind(token)
        .bind(ttl.as_secs_f64())
        .bind(i32::try_from(max_attempts).unwrap_or(i32::MAX))
        .fetch_optional(&self.pool)
        .await?;
        Ok(taken.map(|(batch_id, attempt)| JoinLease {
            batch_id,
            token,
            attempt,
        }))
    }

    /// Extends a join lease to `ttl` from now; false when `lease` no longer
    /// holds the batch (it expired and another replica took it, or the
    /// batch completed).
    pub async fn renew_join_lease(
        &self,
        lease: &JoinLease,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let renewed = sqlx::query(
            "UPDATE batches SET join_expires_at = now() + make_interval(secs => $3)
              WHERE id = $1 AND join_token = $2 AND status = 'concatenating'",
        )
        .bind(lease.batch_id)
        .bind(lease.token)
        .bind(ttl.as_secs_f64())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(renewed > 0)
    }

    /// Gives a join lease up after a failure that may pass, noting `error`
    /// (shown to the tenant if no attempt is left); no replica takes the
    /// batch again for `retry_after`.
    pub async fn release_join_lease(
        &self,
        lease: &JoinLease,
        error: &str,
        retry_after: Duration,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE batches
                SET join_holder = NULL, join_token = NULL, join_error = $3,
                    join_expires_at = now() + make_interval(secs => $4)
              WHERE id = $1 AND join_token = $2 AND status = 'concatenating'",
        )
        .bind(lease.batch_id)
        .bind(lease.token)
        .bind(error)
        .bind(retry_after.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Completes every batch waiting for its joined audio whose
    /// `max_attempts` takes are all used up and none of which still holds
    /// (their replicas died or failed), with a `concatenate_error` saying so
    /// and its `batch.completed` event. Returns how many it completed.
    pub async fn fail_exhausted_joins(&self, max_attempts: u32) -> Result<u64, StoreError> {
        let sql = format!(
            "WITH b AS (
                UPDATE batches
                   SET status = 'completed', completed_at = now(), join_expires_at = NULL,
                       concatenate_error = 'the joined audio could not be made in '
                           || join_attempts || ' attempts: '
                           || coalesce(join_error,
                                       'the replicas joining it stopped before they finished')
                 WHERE status = 'concatenating' AND join_attempts >= $1
                   AND (join_expires_at IS NULL OR join_expires_at < now())
             RETURNING id, tenant_id, callback_url
             ), {COMPLETED_BATCH_EVENTS}
             SELECT id FROM b"
        );
        let rows = sqlx::query(&sql)
            .bind(i32::try_from(max_attempts).unwrap_or(i32::MAX))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.len() as u64)
    }

    /// The stored audio of a batch's succeeded items, in batch order.
    pub async fn batch_audio(&self, id: Uuid) -> Result<Vec<BatchAudio>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT t.batch_index, a.s3_key, a.format, a.duration_ms, t.sample_rate_hz
               FROM tasks t JOIN audio_objects a ON a.hash = t.audio_hash
              WHERE t.batch_id = $1 AND t.status = 'succeeded'
              ORDER BY t.batch_index",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Completes a batch that was waiting for its joined audio, with its
    /// `batch.completed` event when it has a target, if `lease` still holds
    /// it. Returns whether this call completed it.
    pub async fn finish_concatenation(
        &self,
        lease: &JoinLease,
        result: &Concatenated,
    ) -> Result<bool, StoreError> {
        let (key, bytes, duration, error) = match result {
            Concatenated::Stored {
                key,
                bytes,
                duration_ms,
            } => (Some(key.as_str()), Some(*bytes), Some(*duration_ms), None),
            Concatenated::Failed(message) => (None, None, None, Some(message.as_str())),
        };
        let sql = format!(
            "WITH b AS (
                UPDATE batches
                   SET status = 'completed', completed_at = now(), concatenated_key = $3,
                       concatenated_bytes = $4, concatenated_duration_ms = $5,
                       concatenate_error = $6, join_expires_at = NULL
                 WHERE id = $1 AND join_token = $2 AND status = 'concatenating'
             RETURNING id, tenant_id, callback_url
             ), {COMPLETED_BATCH_EVENTS}
             SELECT id FROM b"
        );
        let rows = sqlx::query(&sql)
            .bind(lease.batch_id)
            .bind(lease.token)
            .bind(key)
            .bind(bytes)
            .bind(duration)
            .bind(error)
            .fetch_all(&self.pool)
            .await?;
        Ok(!rows.is_empty())
    }
}
