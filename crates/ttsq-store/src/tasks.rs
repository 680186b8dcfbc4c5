//! Task rows and the usage ledger.
//!
//! A task reaches a terminal state together with its ledger row, in one
//! statement, and `usage_ledger.task_id` is unique: whatever is retried or
//! redelivered, a task is billed at most once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use ttsq_core::TaskStatus;
use uuid::Uuid;

use crate::{Store, StoreError, new_task::NewTask};

/// A task as the API shows it, joined with its audio object when it has one.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TaskRow {
    /// Task id.
    pub id: Uuid,
    /// Owner.
    pub tenant_id: Uuid,
    /// State name; see [`TaskRow::status`].
    pub status: String,
    /// `normal` or `high`.
    pub priority: String,
    /// Dialect id.
    pub dialect: String,
    /// Voice id.
    pub voice: String,
    /// Format name.
    pub format: String,
    /// Characters of the normalised text.
    pub characters: i32,
    /// Served from stored audio without a provider call.
    pub cache_hit: bool,
    /// Content hash of the job inputs.
    pub content_hash: String,
    /// Provider that made the audio.
    pub provider: Option<String>,
    /// Stable error code when failed.
    pub error_code: Option<String>,
    /// Error message when failed.
    pub error_message: Option<String>,
    /// Times a worker claimed the task.
    pub attempts: i32,
    /// Client metadata as given.
    pub metadata: Option<serde_json::Value>,
    /// Accepted at.
    pub created_at: DateTime<Utc>,
    /// First claimed at.
    pub started_at: Option<DateTime<Utc>>,
    /// Reached a terminal state at.
    pub finished_at: Option<DateTime<Utc>>,
    /// Bucket key of the audio, when succeeded.
    pub s3_key: Option<String>,
    /// Size of the audio, when succeeded.
    pub audio_bytes: Option<i64>,
    /// SHA-256 of the audio bytes, when succeeded.
    pub audio_sha256: Option<String>,
    /// Playing time of the audio, when succeeded.
    pub duration_ms: Option<i32>,
    /// Speech marks asked for, if any; their file sits beside the audio.
    #[sqlx(default)]
    pub marks: Option<Vec<String>>,
    /// A long job's number of chunks; `None` for every other task.
    #[sqlx(default)]
    pub chunks_total: Option<i32>,
    /// A long job's chunks synthesized (or found stored) so far.
    #[sqlx(default)]
    pub chunks_done: Option<i32>,
}

impl TaskRow {
    /// The parsed state. Rows are constrained by a CHECK, so an unknown name
    /// means a newer schema; it reads as `processing`, which clients poll on.
    pub fn status(&self) -> TaskStatus {
        self.status.parse().unwrap_or(TaskStatus::Processing)
    }
}

pub(crate) const TASK_SELECT: &str =
    "SELECT t.id, t.tenant_id, t.status, t.priority, t.dialect, t.voice, t.format,
        t.characters, t.cache_hit, t.content_hash, t.provider, t.error_code, t.error_message,
        t.attempts, t.metadata, t.created_at, t.started_at, t.finished_at, t.marks,
        t.chunks_total, t.chunks_done, a.s3_key, a.bytes AS audio_bytes, a.sha256 AS audio_sha256, a.duration_ms
    FROM tasks t LEFT JOIN audio_objects a ON a.hash = t.audio_hash";

/// How a task ended.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskOutcome {
    /// Audio is stored under `audio_hash`.
    Succeeded {
        /// Content hash of the stored audio.
        audio_hash: String,
        /// Served from storage, not synthesized for this task (not billable).
        cache_hit: bool,
        /// Provider that made the audio.
        provider: String,
        /// The provider's price per 1,000 characters, for the ledger's cost.
        price_per_1k: f64,
        /// ISO 4217 code of that price.
        currency: String,
    },
    /// Gave up.
    Failed {
        /// Stable error code.
        code: String,
        /// Message for the client, free of secrets.
        message: String,
    },
}

/// A claimed task to retry later, for [`Store::commit_claim`](crate::Store::commit_claim).
#[derive(Debug, Clone, PartialEq)]
pub struct Reschedule {
    /// Task id.
    pub task_id: Uuid,
    /// Earliest time the outbox may republish it.
    pub not_before: DateTime<Utc>,
    /// Code of the error that caused the retry.
    pub error_code: String,
    /// Its message, shown on the task meanwhile.
    pub error_message: String,
    /// Give the attempt back (the failure was no fault of the job).
    pub refund_attempt: bool,
}

/// A claimed task's outcome, for [`Store::commit_claim`](crate::Store::commit_claim).
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedTask {
    /// The task.
    pub task_id: Uuid,
    /// How it ended.
    pub outcome: TaskOutcome,
}

/// What a worker needs of a task it claimed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedTask {
    /// Task id.
    pub id: Uuid,
    /// Owner.
    pub tenant_id: Uuid,
    /// Normalised text.
    pub text: String,
    /// Characters of the text.
    pub characters: i32,
    /// Dialect id.
    pub dialect: String,
    /// Voice id.
    pub voice: String,
    /// Speaking rate factor.
    pub speed: f64,
    /// Emotion, if any.
    pub emotion: Option<String>,
    /// Format name.
    pub format: String,
    /// Content hash.
    pub content_hash: String,
    /// Claims so far, this one included.
    pub attempts: i32,
    /// Speech marks asked for, if any.
    pub marks: Option<Vec<String>>,
    /// How to speak, for providers that take it (part of the hash).
    pub instructions: Option<String>,
    /// Output sample rate; `None` for tasks stored before it was recorded
    /// (the dialect's rate then).
    pub sample_rate_hz: Option<i32>,
}

/// Column vectors of tasks to create, for one UNNEST statement: single
/// submissions grouped together and the items of a batch alike.
#[derive(Default)]
pub(crate) struct TaskColumns {
    ids: Vec<Uuid>,
    tenant_ids: Vec<Uuid>,
    statuses: Vec<&'static str>,
    priorities: Vec<&'static str>,
    texts: Vec<String>,
    characters: Vec<i32>,
    dialects: Vec<String>,
    voices: Vec<String>,
    models: Vec<String>,
    speeds: Vec<f64>,
    emotions: Vec<Option<String>>,
    formats: Vec<&'static str>,
    hashes: Vec<String>,
    metadata: Vec<Option<String>>,
    callback_urls: Vec<Option<String>>,
    idempotency_keys: Vec<Option<String>>,
    key_prefixes: Vec<Option<String>>,
    /// Mark kinds joined by commas: a column of arrays cannot be unnested.
    marks: Vec<Option<String>>,
    batch_ids: Vec<Option<Uuid>>,
    batch_indexes: Vec<Option<i32>>,
    custom_ids: Vec<Option<String>>,
    reserved_costs: Vec<Option<f64>>,
    reserved_currencies: Vec<Option<String>>,
    traceparents: Vec<Option<String>>,
    instructions: Vec<Option<String>>,
    sample_rates: Vec<Option<i32>>,
    parent_ids: Vec<Option<Uuid>>,
    chunk_indexes: Vec<Option<i32>>,
    chunk_offsets: Vec<Option<i32>>,
    chunks_totals: Vec<Option<i32>>,
    chunks_dones: Vec<Option<i32>>,
}

/// A task's part in a long job, for [`TaskColumns::push_long`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum LongPlace {
    /// The long job itself: `total` chunks, `done` of them succeeded.
    Job {
        /// Its number of chunks.
        total: i32,
        /// Its chunks done already.
        done: i32,
    },
    /// One of its chunks.
    Chunk {
        /// The long job.
        parent_id: Uuid,
        /// Its place, from 0.
        index: i32,
        /// Where its text starts in the long job's, in characters.
        offset: i32,
    },
}

/// Where a task sits in its batch, for [`TaskColumns::push`].
pub(crate) struct BatchPlace<'a> {
    /// The batch.
    pub batch_id: Uuid,
    /// Position in it, from 0.
    pub index: i32,
    /// The client's id for the item.
    pub custom_id: Option<&'a str>,
}

impl TaskColumns {
    /// Adds `task` in state `status` (`queued`, or `processing` for one that
    /// [`finish`] takes to its end state in the same transaction).
    pub(crate) fn push(
        &mut self,
        task: &NewTask<'_>,
        status: TaskStatus,
        place: Option<BatchPlace<'_>>,
    ) {
        let job = task.job;
        self.ids.push(task.id);
        self.tenant_ids.push(task.tenant_id);
        self.statuses.push(status.as_str());
        self.priorities.push(job.priority.as_str());
        self.texts.push(job.text.clone());
        self.characters
            .push(i32::try_from(job.characters).unwrap_or(i32::MAX));
        self.dialects.push(job.dialect.clone());
        self.voices.push(job.voice.clone());
        self.models.push(job.model.clone());
        self.speeds.push(job.speed);
        self.emotions.push(job.emotion.clone());
        self.instructions.push(job.instructions.clone());
        self.formats.push(job.format.as_str());
        self.hashes.push(job.hash.as_str().to_owned());
        self.metadata
            .push(job.metadata.as_ref().map(ToString::to_string));
        self.callback_urls.push(job.callback_url.clone());
        self.idempotency_keys
            .push(task.idempotency_key.map(str::to_owned));
        self.key_prefixes.push(task.key_prefix.map(str::to_owned));
        self.marks.push((!job.marks.is_empty()).then(|| {
            job.marks
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(",")
        }));
        self.batch_ids.push(place.as_ref().map(|p| p.batch_id));
        self.batch_indexes.push(place.as_ref().map(|p| p.index));
        self.custom_ids
            .push(place.and_then(|p| p.custom_id.map(str::to_owned)));
        self.reserved_costs.push(task.estimate.map(|e| e.cost));
        self.reserved_currencies
            .push(task.estimate.map(|e| e.currency.to_owned()));
        self.traceparents.push(task.traceparent.map(str::to_owned));
        self.sample_rates
            .push(i32::try_from(job.output_rate_hz).ok());
        self.parent_ids.push(None);
        self.chunk_indexes.push(None);
        self.chunk_offsets.push(None);
        self.chunks_totals.push(None);
        self.chunks_dones.push(None);
    }

    /// Adds `task` as [`TaskColumns::push`] does, as a long job or one of
    /// its chunks. A chunk carries no idempotency key, metadata, callback
    /// or batch place: those are its long job's.
    pub(crate) fn push_long(
        &mut self,
        task: &NewTask<'_>,
        status: TaskStatus,
        place: Option<BatchPlace<'_>>,
        long: LongPlace,
    ) {
        match long {
            LongPlace::Job { total, done } => {
                self.push(task, status, place);
                self.chunks_totals.pop();
                self.chunks_totals.push(Some(total));
                self.chunks_dones.pop();
                self.chunks_dones.push(Some(done));
            }
            LongPlace::Chunk {
                parent_id,
                index,
                offset,
            } => {
                let chunk = NewTask {
                    idempotency_key: None,
                    ..*task
                };
                self.push(&chunk, status, None);
                self.metadata.pop();
                self.metadata.push(None);
                self.callback_urls.pop();
                self.callback_urls.push(None);
                self.parent_ids.pop();
                self.parent_ids.push(Some(parent_id));
                self.chunk_indexes.pop();
                self.chunk_indexes.push(Some(index));
                self.chunk_offsets.pop();
                self.chunk_offsets.push(Some(offset));
            }
        }
    }

    /// Inserts every task in one statement. A task whose tenant already has
    /// a task with its `Idempotency-Key` is skipped, and so are the chunks
    /// of a long job skipped; returns the ids of those inserted.
    pub(crate) async fn insert<'e>(
        &self,
        executor: impl sqlx::PgExecutor<'e>,
    ) -> Result<Vec<Uuid>, StoreError> {
        if self.ids.is_empty() {
            return Ok(Vec::new());
        }
        // Long jobs and other tasks first, then the chunks of the long jobs
        // inserted: a long job that lost its key to another submission
        // leaves its chunks out.
        Ok(sqlx::query_scalar(
            "WITH u AS (
                SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::int4[],
                           $7::text[], $8::text[], $9::text[], $10::float8[], $11::text[], $12::text[],
                           $13::text[], $14::text[], $15::text[], $16::text[], $17::text[], $18::text[],
                           $19::uuid[], $20::int4[], $21::text[], $22::float8[], $23::text[],
                           $24::text[], $25::text[], $26::int4[], $27::uuid[], $28::int4[],
                           $29::int4[], $30::int4[], $31::int4[])
                    AS u(id, tenant_id, status, priority, text, characters, dialect, voice, model, speed,
                         emotion, format, hash, metadata, callback_url, idempotency_key, key_prefix,
                         marks, batch_id, batch_index, custom_id, reserved_cost, reserved_currency,
                         traceparent, instructions, sample_rate_hz, parent_id, chunk_index,
                         chunk_offset, chunks_total, chunks_done)
             ), tops AS (
                INSERT INTO tasks (id, tenant_id, status, priority, text, characters, dialect, voice, model,
                                   speed, emotion, format, content_hash, metadata, callback_url,
                                   idempotency_key, key_prefix, marks, batch_id, batch_index, custom_id,
                                   started_at, reserved_cost, reserved_currency, traceparent,
                                   instructions, sample_rate_hz, chunks_total, chunks_done)
                SELECT u.id, u.tenant_id, u.status, u.priority, u.text, u.characters, u.dialect, u.voice,
                       u.model, u.speed, u.emotion, u.format, u.hash, u.metadata::jsonb, u.callback_url,
                       u.idempotency_key, u.key_prefix, string_to_array(u.marks, ','), u.batch_id,
                       u.batch_index, u.custom_id, CASE WHEN u.status = 'processing' THEN now() END,
                       round(u.reserved_cost::numeric, 6), u.reserved_currency, u.traceparent,
                       u.instructions, u.sample_rate_hz, u.chunks_total, u.chunks_done
                  FROM u
                 WHERE u.parent_id IS NULL
                ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
                RETURNING id
             ), chunks AS (
                INSERT INTO tasks (id, tenant_id, status, priority, text, characters, dialect, voice, model,
                                   speed, emotion, format, content_hash, key_prefix, marks, started_at,
                                   reserved_cost, reserved_currency, traceparent, instructions,
                                   sample_rate_hz, parent_id, chunk_index, chunk_offset)
                SELECT u.id, u.tenant_id, u.status, u.priority, u.text, u.characters, u.dialect, u.voice,
                       u.model, u.speed, u.emotion, u.format, u.hash, u.key_prefix,
                       string_to_array(u.marks, ','), CASE WHEN u.status = 'processing' THEN now() END,
                       round(u.reserved_cost::numeric, 6), u.reserved_currency, u.traceparent,
                       u.instructions, u.sample_rate_hz, u.parent_id, u.chunk_index, u.chunk_offset
                  FROM u
                 WHERE u.parent_id IN (SELECT id FROM tops)
                RETURNING id
             )
             SELECT id FROM tops UNION ALL SELECT id FROM chunks",
        )
        .bind(&self.ids)
        .bind(&self.tenant_ids)
        .bind(&self.statuses)
        .bind(&self.priorities)
        .bind(&self.texts)
        .bind(&self.characters)
        .bind(&self.dialects)
        .bind(&self.voices)
        .bind(&self.models)
        .bind(&self.speeds)
        .bind(&self.emotions)
        .bind(&self.formats)
        .bind(&self.hashes)
        .bind(&self.metadata)
        .bind(&self.callback_urls)
        .bind(&self.idempotency_keys)
        .bind(&self.key_prefixes)
        .bind(&self.marks)
        .bind(&self.batch_ids)
        .bind(&self.batch_indexes)
        .bind(&self.custom_ids)
        .bind(&self.reserved_costs)
        .bind(&self.reserved_currencies)
        .bind(&self.traceparents)
        .bind(&self.instructions)
        .bind(&self.sample_rates)
        .bind(&self.parent_ids)
        .bind(&self.chunk_indexes)
        .bind(&self.chunk_offsets)
        .bind(&self.chunks_totals)
        .bind(&self.chunks_dones)
        .fetch_all(executor)
        .await?)
    }
}

/// Column vectors of a set of outcomes, for one UNNEST statement.
#[derive(Default)]
struct OutcomeColumns {
    ids: Vec<Uuid>,
    statuses: Vec<&'static str>,
    audio_hashes: Vec<Option<String>>,
    cache_hits: Vec<bool>,
    providers: Vec<Option<String>>,
    error_codes: Vec<Option<String>>,
    error_messages: Vec<Option<String>>,
    prices: Vec<f64>,
    currencies: Vec<Option<String>>,
}

impl OutcomeColumns {
    fn push(&mut self, id: Uuid, outcome: &TaskOutcome) {
        self.ids.push(id);
        match outcome {
            TaskOutcome::Succeeded {
                audio_hash,
                cache_hit,
                provider,
                price_per_1k,
                currency,
            } => {
                self.prices.push(*price_per_1k);
                self.currencies.push(Some(currency.clone()));
                self.statuses.push(TaskStatus::Succeeded.as_str());
                self.audio_hashes.push(Some(audio_hash.clone()));
                self.cache_hits.push(*cache_hit);
                self.providers.push(Some(provider.clone()));
                self.error_codes.push(None);
                self.error_messages.push(None);
            }
            TaskOutcome::Failed { code, message } => {
                self.prices.push(0.0);
                self.currencies.push(None);
                self.statuses.push(TaskStatus::Failed.as_str());
                self.audio_hashes.push(None);
                self.cache_hits.push(false);
                self.providers.push(None);
                self.error_codes.push(Some(code.clone()));
                self.error_messages.push(Some(message.clone()));
            }
        }
    }
}

/// Ledger rows for the tasks a CTE named `done` just finished (it returns
/// `parent_id`: a chunk's row names its long job in `long_task_id`; and
/// `chunks_total`, set on a long job's row).
/// Characters are billable only when audio was synthesized for that very
/// task, and never on a long job's own row: its chunks' rows bill them.
pub(crate) const LEDGER_FROM_DONE: &str = "INSERT INTO usage_ledger
        (task_id, tenant_id, key_prefix, provider, dialect, voice, status, characters,
         billable_characters, cache_hit, cost, currency, submitted_at, long_task_id)
    SELECT id, tenant_id, key_prefix, provider, dialect, voice, status, characters, billable, cache_hit,
           round(billable * price / 1000.0, 6), currency, submitted_at, parent_id
    FROM (SELECT *, CASE WHEN status = 'succeeded' AND NOT cache_hit AND chunks_total IS NULL
                         THEN characters ELSE 0 END AS billable
            FROM done) d
    ON CONFLICT (task_id) DO NOTHING";

impl Store {
    /// Frees the `Idempotency-Key` of a task that failed for a passing
    /// reason, so that a retry with the same key makes a new attempt instead
    /// of being answered with the old failure.
    pub async fn forget_idempotency_key(&self, task_id: Uuid) -> Result<(), StoreError> {
        sqlx::query("UPDATE tasks SET idempotency_key = NULL WHERE id = $1 AND status = 'failed'")
            .bind(task_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A tenant's task; `None` when it does not exist, is another tenant's
    /// or is a chunk of a long job (chunks are not the tenant's to see).
    pub async fn get_task(
        &self,
        tenant_id: Uuid,
        task_id: Uuid,
    ) -> Result<Option<TaskRow>, StoreError> {
        let sql =
            format!("{TASK_SELECT} WHERE t.id = $1 AND t.tenant_id = $2 AND t.parent_id IS NULL");
        Ok(sqlx::query_as(&sql)
            .bind(task_id)
            .bind(tenant_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Claims the claimable tasks among `ids` for a worker batch, in one
    /// statement: those `queued`, and those `processing` under a replica that
    /// has not heartbeated within `replica_ttl` (it died holding them).
    /// Finished and cancelled tasks are not returned, nor tasks a live replica
    /// is working on: a redelivered message for them is acknowledged, as the
    /// live holder finishes them or hands them back through the outbox.
    /// Claiming again with the same `batch_id` (a retry after the answer to
    /// a claim that did commit was lost) returns those tasks again without
    /// counting another attempt. A long job is never claimed: its chunks are.
    pub async fn claim(
        &self,
        ids: &[Uuid],
        batch_id: Uuid,
        replica_id: Uuid,
        replica_ttl: Duration,
    ) -> Result<Vec<ClaimedTask>, StoreError> {
        Ok(sqlx::query_as(
            "UPDATE tasks t
                SET status = 'processing',
                    attempts = attempts + CASE WHEN t.worker_batch_id = $2 THEN 0 ELSE 1 END,
                    started_at = coalesce(started_at, now()), claimed_at = now(),
                    worker_batch_id = $2, claimed_by = $3, not_before = NULL
              WHERE t.id = ANY($1) AND t.chunks_total IS NULL
                AND (t.status = 'queued'
                     OR (t.status = 'processing' AND t.worker_batch_id = $2)
                     OR (t.status = 'processing' AND NOT EXISTS (
                            SELECT 1 FROM workers w
                             WHERE w.id = t.claimed_by
                               AND w.last_seen > now() - make_interval(secs => $4))))
          RETURNING id, tenant_id, text, characters, dialect, voice, speed, emotion, format,
                    content_hash, attempts, marks, instructions, sample_rate_hz",
        )
        .bind(ids)
        .bind(batch_id)
        .bind(replica_id)
        .bind(replica_ttl.as_secs_f64())
        .fetch_all(&self.pool)
        .await?)
    }

    /// The states of the tasks among `ids` that exist, for operators'
    /// tools (which know ids from queue messages, not tenants).
    pub async fn task_statuses(
        &self,
        ids: &[Uuid],
    ) -> Result<std::collections::HashMap<Uuid, TaskStatus>, StoreError> {
        let rows: Vec<(Uuid, String)> =
            sqlx::query_as("SELECT id, status FROM tasks WHERE id = ANY($1)")
                .bind(ids)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, status)| status.parse().ok().map(|s| (id, s)))
            .collect())
    }

    /// The W3C `traceparent` a task was submitted with, or with `batch_id`
    /// the one of the batch (all its items share it): the trace that work
    /// done later for it, a webhook delivery say, joins.
    pub async fn submitted_traceparent(
        &self,
        task_id: Option<Uuid>,
        batch_id: Option<Uuid>,
    ) -> Result<Option<String>, StoreError> {
        let traceparent: Option<Option<String>> = sqlx::query_scalar(
            "SELECT traceparent FROM tasks
              WHERE id = $1 OR (batch_id = $2 AND batch_index = 0)
              LIMIT 1",
        )
        .bind(task_id)
        .bind(batch_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(traceparent.flatten())
    }
}

/// Hands claimed tasks back for a later attempt: `queued` again, not to be
/// republished by the outbox before `not_before` (their message waits in a
/// delay queue meanwhile), with the error that caused the retry. A task
/// whose failure was no fault of its own (a vendor's 429) gets its attempt
/// back. Tasks no longer `processing` are left alone; callers fence on the
/// claim ([`Store::commit_claim`]).
pub(crate) async fn reschedule<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    retries: &[Reschedule],
) -> Result<u64, StoreError> {
    if retries.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = retries.iter().map(|r| r.task_id).collect();
    let not_before: Vec<DateTime<Utc>> = retries.iter().map(|r| r.not_before).collect();
    let codes: Vec<&str> = retries.iter().map(|r| r.error_code.as_str()).collect();
    let messages: Vec<&str> = retries.iter().map(|r| r.error_message.as_str()).collect();
    let refunds: Vec<i32> = retries
        .iter()
        .map(|r| i32::from(r.refund_attempt))
        .collect();
    let result = sqlx::query(
        "UPDATE tasks t
            SET status = 'queued', claimed_by = NULL, published_at = NULL,
                not_before = r.not_before, error_code = r.code, error_message = r.message,
                attempts = greatest(t.attempts - r.refund, 0)
           FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::int4[])
                AS r(id, not_before, code, message, refund)
          WHERE t.id = r.id AND t.status = 'processing'",
    )
    .bind(&ids)
    .bind(&not_before)
    .bind(&codes)
    .bind(&messages)
    .bind(&refunds)
    .execute(executor)
    .await?;
    Ok(result.rows_affected())
}

pub(crate) async fn finish<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    finished: &[FinishedTask],
) -> Result<u64, StoreError> {
    if finished.is_empty() {
        return Ok(0);
    }
    let mut cols = OutcomeColumns::default();
    for f in finished {
        cols.push(f.task_id, &f.outcome);
    }
    let sql = format!(
        "WITH o AS (
            SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bool[], $5::text[], $6::text[], $7::text[],
                                 $8::float8[], $9::text[])
                AS o(id, status, audio_hash, cache_hit, provider, error_code, error_message, price, currency)
         ), done AS (
            UPDATE tasks t
               SET status = o.status, audio_hash = o.audio_hash, cache_hit = o.cache_hit,
                   provider = o.provider, error_code = o.error_code, error_message = o.error_message,
                   finished_at = now()
              FROM o
             WHERE t.id = o.id AND t.status = 'processing'
         RETURNING t.id, t.tenant_id, t.key_prefix, t.provider, t.dialect, t.voice, t.status, t.characters,
                   t.cache_hit, o.price::numeric AS price, o.currency, t.created_at AS submitted_at,
                   t.parent_id, t.chunks_total
         )
         {LEDGER_FROM_DONE}"
    );
    let result = sqlx::query(&sql)
        .bind(&cols.ids)
        .bind(&cols.statuses)
        .bind(&cols.audio_hashes)
        .bind(&cols.cache_hits)
        .bind(&cols.providers)
        .bind(&cols.error_codes)
        .bind(&cols.error_messages)
        .bind(&cols.prices)
        .bind(&cols.currencies)
        .execute(executor)
        .await?;
    Ok(result.rows_affected())
}
