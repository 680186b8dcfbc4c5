//! The join of a long job's chunks (issue 21; see the migration
//! `20261211100000_long_jobs`).
//!
//! Once every chunk of a long job succeeded, the trigger on `tasks` leaves
//! its `long_jobs` row `joining`. One replica at a time joins it, under a
//! lease taken with one conditional UPDATE ([`Store::take_long_join_lease`]),
//! exactly as batches' joins ([`crate::batches`]): every take counts as an
//! attempt, a lease whose holder died expires and is taken over. The join
//! ends in one transaction fenced by the lease's token
//! ([`Store::finish_long_join`]): the joined object's index row and the
//! long job `succeeded`, whose ledger row, webhook and batch count the
//! trigger writes. A join that fails for good fails the long job
//! (`join_failed`); its chunks were billed already.

use std::time::Duration;

use uuid::Uuid;

use crate::{AudioObject, Store, StoreError, audio::insert_audio};

/// The error code of a long job whose chunks could not be joined.
pub const JOIN_FAILED: &str = "join_failed";

/// A replica's hold on a long job whose chunks it joins (see
/// [`Store::take_long_join_lease`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongJoinLease {
    /// The long job (its task id).
    pub task_id: Uuid,
    /// This take's token: only its holder may renew, release or finish.
    pub token: Uuid,
    /// Which take of the job this is, from 1; interrupted takes count.
    pub attempt: i32,
}

/// A long job waiting for its join: what the joined object is made of.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LongJoinJob {
    /// The long job's task id.
    pub task_id: Uuid,
    /// Its content hash (the chunk hashes in order): the joined object's.
    pub content_hash: String,
    /// Its format name.
    pub format: String,
    /// Speech marks it asked for; empty for none.
    pub marks: Vec<String>,
    /// How many chunks it has.
    pub chunks_total: i32,
}

/// One chunk's stored audio, in the long job's order.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChunkAudio {
    /// Its place in the long job, from 0.
    pub chunk_index: i32,
    /// Where its text starts in the long job's normalised text, in
    /// characters: its marks' `start`/`end` are shifted by it.
    pub chunk_offset: i32,
    /// Hash of its audio object (also of its marks file).
    pub audio_hash: String,
    /// Bucket key of its audio.
    pub s3_key: String,
    /// Format name.
    pub format: String,
    /// Size of its audio.
    pub bytes: i64,
    /// Playing time.
    pub duration_ms: i32,
    /// The chunk's output sample rate, when recorded.
    pub sample_rate_hz: Option<i32>,
    /// Speech marks it asked for; empty for none.
    pub marks: Vec<String>,
    /// Provider that synthesized it.
    pub provider: String,
}

impl Store {
    /// Takes the oldest long job waiting for its join that no replica holds
    /// (or whose holder's lease expired: it died or stalled) and that has
    /// attempts left, for `token` of replica `holder`, for `ttl`. One
    /// conditional UPDATE, so two replicas never hold one job at once. The
    /// take counts as an attempt, also if its holder never comes back.
    pub async fn take_long_join_lease(
        &self,
        holder: Uuid,
        token: Uuid,
        ttl: Duration,
        max_attempts: u32,
    ) -> Result<Option<LongJoinLease>, StoreError> {
        let taken: Option<(Uuid, i32)> = sqlx::query_as(
            "WITH next AS (
                SELECT task_id FROM long_jobs
                 WHERE state = 'joining'
                   AND (join_expires_at IS NULL OR join_expires_at < now())
                   AND join_attempts < $4
                 ORDER BY task_id
                 LIMIT 1
                   FOR UPDATE SKIP LOCKED
             )
             UPDATE long_jobs l
                SET join_holder = $1, join_token = $2,
                    join_expires_at = now() + make_interval(secs => $3),
                    join_attempts = l.join_attempts + 1, join_error = NULL
               FROM next
              WHERE l.task_id = next.task_id
          RETURNING l.task_id, l.join_attempts",
        )
        .bind(holder)
        .bind(token)
        .bind(ttl.as_secs_f64())
        .bind(i32::try_from(max_attempts).unwrap_or(i32::MAX))
        .fetch_optional(&self.pool)
        .await?;
        Ok(taken.map(|(task_id, attempt)| LongJoinLease {
            task_id,
            token,
            attempt,
        }))
    }

    /// Extends a long join's lease to `ttl` from now; false when `lease` no
    /// longer holds the job (another replica took it over, or it ended).
    pub async fn renew_long_join_lease(
        &self,
        lease: &LongJoinLease,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let renewed = sqlx::query(
            "UPDATE long_jobs SET join_expires_at = now() + make_interval(secs => $3)
              WHERE task_id = $1 AND join_token = $2 AND state = 'joining'",
        )
        .bind(lease.task_id)
        .bind(lease.token)
        .bind(ttl.as_secs_f64())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(renewed > 0)
    }

    /// Gives a long join's lease up after a failure that may pass, noting
    /// `error` (the long job's message if no attempt is left); no replica
    /// takes the job again for `retry_after`.
    pub async fn release_long_join_lease(
        &self,
        lease: &LongJoinLease,
        error: &str,
        retry_after: Duration,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE long_jobs
                SET join_holder = NULL, join_token = NULL, join_error = $3,
                    join_expires_at = now() + make_interval(secs => $4)
              WHERE task_id = $1 AND join_token = $2 AND state = 'joining'",
        )
        .bind(lease.task_id)
        .bind(lease.token)
        .bind(error)
        .bind(retry_after.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Fails every long job waiting for its join whose `max_attempts` takes
    /// are all used up and none of which still holds (their replicas died
    /// or failed), with `join_failed` and the last attempt's error; the
    /// trigger closes them. Returns how many it failed.
    pub async fn fail_exhausted_long_joins(&self, max_attempts: u32) -> Result<u64, StoreError> {
        let failed = sqlx::query(
            "UPDATE tasks p
                SET status = 'failed', finished_at = now(), error_code = $2,
                    error_message = 'the chunks'' audio could not be joined in '
                        || l.join_attempts || ' attempts: '
                        || coalesce(l.join_error,
                                    'the replicas joining it stopped before they finished')
               FROM long_jobs l
              WHERE l.task_id = p.id AND l.state = 'joining' AND l.join_attempts >= $1
                AND (l.join_expires_at IS NULL OR l.join_expires_at < now())
                AND p.status = 'processing'",
        )
        .bind(i32::try_from(max_attempts).unwrap_or(i32::MAX))
        .bind(JOIN_FAILED)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(failed)
    }

    /// The long job `task_id` and its succeeded chunks' audio, in order;
    /// `None` when it is not a long job still processing.
    pub async fn long_join_input(
        &self,
        task_id: Uuid,
    ) -> Result<Option<(LongJoinJob, Vec<ChunkAudio>)>, StoreError> {
        let job: Option<LongJoinJob> = sqlx::query_as(
            "SELECT id AS task_id, content_hash, format, coalesce(marks, '{}') AS marks, chunks_total
               FROM tasks
              WHERE id = $1 AND chunks_total IS NOT NULL AND status = 'processing'",
        )
        .bind(task_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(job) = job else {
            return Ok(None);
        };
        let chunks = sqlx::query_as(
            "SELECT t.chunk_index, t.chunk_offset, a.hash AS audio_hash, a.s3_key, a.format,
                    a.bytes, a.duration_ms, t.sample_rate_hz, coalesce(t.marks, '{}') AS marks,
                    coalesce(t.provider, a.provider) AS provider
               FROM tasks t JOIN audio_objects a ON a.hash = t.audio_hash
              WHERE t.parent_id = $1 AND t.status = 'succeeded'
              ORDER BY t.chunk_index",
        )
        .bind(task_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(Some((job, chunks)))
    }

    /// Ends a long job's join, if `lease` still holds it, in one
    /// transaction: indexes `object` (the joined audio under the job's
    /// content hash; a row on file already is kept) and sets the job
    /// `succeeded` with it, `provider` naming its first chunk's provider.
    /// The trigger then writes its ledger row (billing nothing: its chunks
    /// billed themselves), its webhook and batch count, and closes its
    /// join. Returns whether this call finished it.
    pub async fn finish_long_join(
        &self,
        lease: &LongJoinLease,
        object: &AudioObject,
        provider: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        if !holds(&mut tx, lease).await? {
            return Ok(false);
        }
        insert_audio(&mut *tx, std::slice::from_ref(object)).await?;
        let finished = sqlx::query(
            "UPDATE tasks
                SET status = 'succeeded', audio_hash = content_hash, cache_hit = false,
                    provider = $2, finished_at = now(), error_code = NULL, error_message = NULL
              WHERE id = $1 AND status = 'processing' AND content_hash = $3",
        )
        .bind(lease.task_id)
        .bind(provider)
        .bind(&object.hash)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if finished == 0 {
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Fails a long job whose chunks cannot be joined (or whose last
    /// attempt failed), if `lease` still holds it: `join_failed` with
    /// `message`; the trigger writes its ledger row and webhook and closes
    /// its join. Returns whether this call failed it.
    pub async fn fail_long_join(
        &self,
        lease: &LongJoinLease,
        message: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        if !holds(&mut tx, lease).await? {
            return Ok(false);
        }
        sqlx::query("UPDATE long_jobs SET join_error = $2 WHERE task_id = $1")
            .bind(lease.task_id)
            .bind(message)
            .execute(&mut *tx)
            .await?;
        let failed = sqlx::query(
            "UPDATE tasks
                SET status = 'failed', finished_at = now(), error_code = $2, error_message = $3
              WHERE id = $1 AND status = 'processing'",
        )
        .bind(lease.task_id)
        .bind(JOIN_FAILED)
        .bind(message)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if failed == 0 {
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }
}

/// Whether `lease` still holds its long job. Locks the job's task row, then
/// its join's row, until the transaction ends, so that neither a take-over
/// nor a cancel slips in between; in the order a cancel takes them (the
/// task, then the trigger's update of the join), so the two never deadlock.
async fn holds(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    lease: &LongJoinLease,
) -> Result<bool, StoreError> {
    let task: Option<Uuid> = sqlx::query_scalar("SELECT id FROM tasks WHERE id = $1 FOR UPDATE")
        .bind(lease.task_id)
        .fetch_optional(&mut **tx)
        .await?;
    if task.is_none() {
        return Ok(false);
    }
    let held: Option<Uuid> = sqlx::query_scalar(
        "SELECT task_id FROM long_jobs
          WHERE task_id = $1 AND join_token = $2 AND state = 'joining'
            FOR UPDATE",
    )
    .bind(lease.task_id)
    .bind(lease.token)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(held.is_some())
}
