//! Task rows and the usage ledger.
//!
//! A task reaches a terminal state together with its ledger row, in one
//! statement, and `usage_ledger.task_id` is unique: whatever is retried or
//! redelivered, a task is billed at most once.

use chrono::{DateTime, Utc};
use ttsq_core::{Job, TaskStatus};
use uuid::Uuid;

use crate::{Store, StoreError};

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
        t.attempts, t.metadata, t.created_at, t.started_at, t.finished_at,
        a.s3_key, a.bytes AS audio_bytes, a.sha256 AS audio_sha256, a.duration_ms
    FROM tasks t LEFT JOIN audio_objects a ON a.hash = t.audio_hash";

/// A task to create.
#[derive(Debug, Clone, Copy)]
pub struct NewTask<'a> {
    /// Id to give it.
    pub id: Uuid,
    /// Owner.
    pub tenant_id: Uuid,
    /// The validated job.
    pub job: &'a Job,
    /// Client's `Idempotency-Key`, if sent.
    pub idempotency_key: Option<&'a str>,
}

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
    },
    /// Gave up.
    Failed {
        /// Stable error code.
        code: String,
        /// Message for the client, free of secrets.
        message: String,
    },
}

/// A claimed task's outcome, for [`Store::finish_tasks`].
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
            } => {
                self.prices.push(*price_per_1k);
                self.statuses.push(TaskStatus::Succeeded.as_str());
                self.audio_hashes.push(Some(audio_hash.clone()));
                self.cache_hits.push(*cache_hit);
                self.providers.push(Some(provider.clone()));
                self.error_codes.push(None);
                self.error_messages.push(None);
            }
            TaskOutcome::Failed { code, message } => {
                self.prices.push(0.0);
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

/// Ledger rows for the tasks a CTE named `done` just finished. Characters
/// are billable only when audio was synthesized for that very task.
pub(crate) const LEDGER_FROM_DONE: &str = "INSERT INTO usage_ledger
        (task_id, tenant_id, provider, dialect, voice, status, characters, billable_characters, cache_hit, cost)
    SELECT id, tenant_id, provider, dialect, voice, status, characters, billable, cache_hit,
           round(billable * price / 1000.0, 6)
    FROM (SELECT *, CASE WHEN status = 'succeeded' AND NOT cache_hit THEN characters ELSE 0 END AS billable
            FROM done) d
    ON CONFLICT (task_id) DO NOTHING";

impl Store {
    /// Creates a `queued` task. Returns the task on file and whether it was
    /// created now; with an `Idempotency-Key` already used by this tenant it
    /// is the earlier task, untouched.
    pub async fn insert_queued(&self, task: &NewTask<'_>) -> Result<(TaskRow, bool), StoreError> {
        let inserted = insert_task(&self.pool, task, TaskStatus::Queued).await?;
        self.created_or_existing(task, inserted).await
    }

    /// Creates a task that is terminal at once (a cache hit at submit, or an
    /// inline synthesis) together with its ledger row, in one statement.
    pub async fn insert_finished(
        &self,
        task: &NewTask<'_>,
        outcome: &TaskOutcome,
    ) -> Result<(TaskRow, bool), StoreError> {
        let mut tx = self.pool.begin().await?;
        // Inserted as `processing` so that `finish` takes it to its end state
        // and writes its ledger row exactly as for a worker-finished task.
        let inserted = insert_task(&mut *tx, task, TaskStatus::Processing).await?;
        if inserted {
            finish(
                &mut *tx,
                &[FinishedTask {
                    task_id: task.id,
                    outcome: outcome.clone(),
                }],
            )
            .await?;
        }
        tx.commit().await?;
        self.created_or_existing(task, inserted).await
    }

    async fn created_or_existing(
        &self,
        task: &NewTask<'_>,
        inserted: bool,
    ) -> Result<(TaskRow, bool), StoreError> {
        let row = if inserted {
            self.get_task(task.tenant_id, task.id).await?
        } else {
            let sql = format!("{TASK_SELECT} WHERE t.tenant_id = $1 AND t.idempotency_key = $2");
            sqlx::query_as(&sql)
                .bind(task.tenant_id)
                .bind(task.idempotency_key)
                .fetch_optional(&self.pool)
                .await?
        };
        let row = row.ok_or_else(|| StoreError::NotFound(format!("task {}", task.id)))?;
        Ok((row, inserted))
    }

    /// A tenant's task; `None` when it does not exist or is another tenant's.
    pub async fn get_task(
        &self,
        tenant_id: Uuid,
        task_id: Uuid,
    ) -> Result<Option<TaskRow>, StoreError> {
        let sql = format!("{TASK_SELECT} WHERE t.id = $1 AND t.tenant_id = $2");
        Ok(sqlx::query_as(&sql)
            .bind(task_id)
            .bind(tenant_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Claims the unfinished tasks among `ids` for a worker batch, in one
    /// statement. Finished or cancelled tasks are not returned, so a
    /// redelivered message for them is simply acknowledged. A task already
    /// `processing` is claimed again: its message was redelivered, which
    /// RabbitMQ only does once the previous consumer is gone.
    pub async fn claim(
        &self,
        ids: &[Uuid],
        batch_id: Uuid,
        replica_id: Uuid,
    ) -> Result<Vec<ClaimedTask>, StoreError> {
        Ok(sqlx::query_as(
            "UPDATE tasks
                SET status = 'processing', attempts = attempts + 1,
                    started_at = coalesce(started_at, now()), worker_batch_id = $2,
                    claimed_by = $3
              WHERE id = ANY($1) AND status IN ('queued', 'processing')
          RETURNING id, tenant_id, text, characters, dialect, voice, speed, emotion, format,
                    content_hash, attempts",
        )
        .bind(ids)
        .bind(batch_id)
        .bind(replica_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Finishes claimed tasks and writes their ledger rows in one statement.
    /// Tasks no longer `processing` are left alone. Returns how many finished.
    pub async fn finish_tasks(&self, finished: &[FinishedTask]) -> Result<u64, StoreError> {
        finish(&self.pool, finished).await
    }
}

async fn insert_task<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    task: &NewTask<'_>,
    status: TaskStatus,
) -> Result<bool, StoreError> {
    let job = task.job;
    let row = sqlx::query(
        "INSERT INTO tasks (id, tenant_id, status, priority, text, characters, dialect, voice, model,
                            speed, emotion, format, content_hash, metadata, callback_url, idempotency_key,
                            started_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                 CASE WHEN $3 = 'processing' THEN now() END)
         ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
         RETURNING id",
    )
    .bind(task.id)
    .bind(task.tenant_id)
    .bind(status.as_str())
    .bind(job.priority.as_str())
    .bind(&job.text)
    .bind(i32::try_from(job.characters).unwrap_or(i32::MAX))
    .bind(&job.dialect)
    .bind(&job.voice)
    .bind(&job.model)
    .bind(job.speed)
    .bind(&job.emotion)
    .bind(job.format.as_str())
    .bind(job.hash.as_str())
    .bind(&job.metadata)
    .bind(&job.callback_url)
    .bind(task.idempotency_key)
    .fetch_optional(executor)
    .await?;
    Ok(row.is_some())
}

async fn finish<'e>(
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
                                 $8::float8[])
                AS o(id, status, audio_hash, cache_hit, provider, error_code, error_message, price)
         ), done AS (
            UPDATE tasks t
               SET status = o.status, audio_hash = o.audio_hash, cache_hit = o.cache_hit,
                   provider = o.provider, error_code = o.error_code, error_message = o.error_message,
                   finished_at = now()
              FROM o
             WHERE t.id = o.id AND t.status = 'processing'
         RETURNING t.id, t.tenant_id, t.provider, t.dialect, t.voice, t.status, t.characters, t.cache_hit,
                   o.price::numeric AS price
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
        .execute(executor)
        .await?;
    Ok(result.rows_affected())
}
