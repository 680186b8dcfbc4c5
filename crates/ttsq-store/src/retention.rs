//! Retention: removing finished tasks older than their tenant's retention,
//! and the audio objects no remaining task uses.
//!
//! Audio is content-addressed and shared across tenants, so an object goes
//! only when no task of any tenant refers to it any more. The usage ledger
//! is append-only and kept forever; its `task_id` outlives the task row.
//!
//! A long job's chunks go with it, never before: their audio stays while
//! the long job may still be joining it, and goes (when nothing else uses
//! it) in the sweep that removes the long job.

use crate::{Store, StoreError};

/// What one sweep batch removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweptBatch {
    /// Task rows deleted.
    pub tasks: u64,
    /// Audio objects whose index rows were deleted, as `(hash, s3_key)`: the
    /// caller deletes the S3 objects (and anything stored beside them).
    pub audio: Vec<(String, String)>,
}

/// Who holds the leases of the hashes a sweep batch removes.
#[derive(Debug, Clone, Copy)]
pub struct SweepLease {
    /// The sweeping replica (its heartbeat row).
    pub holder: uuid::Uuid,
    /// This batch's token, to release with.
    pub token: uuid::Uuid,
    /// Longest the leases last should the sweeper die holding them.
    pub ttl: std::time::Duration,
}

impl Store {
    /// Deletes up to `batch_size` finished tasks (long jobs with their
    /// chunks, which count in [`SweptBatch::tasks`]) older than their tenant's
    /// `retention_days` (or `default_days` for tenants without one; `None`
    /// keeps those forever), then the index rows of the audio those tasks
    /// used that no task refers to any more, all in one transaction.
    ///
    /// Rows locked by someone else are skipped (`SKIP LOCKED`), so replicas
    /// sweeping at once share the work. Age counts from when a task
    /// finished. Queued and processing tasks are never removed.
    ///
    /// The hashes whose index rows go are leased to `lease` in the same
    /// transaction, so nobody synthesizes them again until the caller has
    /// deleted their objects and released the lease
    /// ([`Store::release_leases`]): a new object indexed meanwhile would be
    /// deleted under its index row.
    pub async fn sweep_expired_tasks(
        &self,
        default_days: Option<u32>,
        batch_size: u32,
        lease: SweepLease,
    ) -> Result<SweptBatch, StoreError> {
        let default_days = default_days.map(|d| i32::try_from(d).unwrap_or(i32::MAX));
        let mut tx = self.pool.begin().await?;
        let (tasks, hashes): (i64, Vec<String>) = sqlx::query_as(
            "WITH expired AS (
                SELECT t.id
                  FROM tasks t
                  JOIN tenants n ON n.id = t.tenant_id
                 WHERE t.status IN ('succeeded', 'failed', 'cancelled') AND t.parent_id IS NULL
                   AND COALESCE(n.retention_days, $1) IS NOT NULL
                   AND COALESCE(t.finished_at, t.created_at)
                       < now() - make_interval(days => COALESCE(n.retention_days, $1))
                 ORDER BY t.created_at
                 LIMIT $2
                   FOR UPDATE OF t SKIP LOCKED
             ), gone AS (
                DELETE FROM tasks t
                 WHERE t.id IN (SELECT id FROM expired
                                UNION ALL
                                SELECT c.id FROM tasks c JOIN expired e ON c.parent_id = e.id)
             RETURNING t.audio_hash
             )
             SELECT count(*),
                    COALESCE(array_agg(DISTINCT audio_hash) FILTER (WHERE audio_hash IS NOT NULL), '{}')
               FROM gone",
        )
        .bind(default_days)
        .bind(i64::from(batch_size))
        .fetch_one(&mut *tx)
        .await?;
        // Audio stays while a queued or processing task will produce or
        // reference it (a worker about to finish with this very hash), and
        // an index row locked elsewhere is left for a later sweep.
        let audio: Vec<(String, String)> = sqlx::query_as(
            "DELETE FROM audio_objects a
              WHERE a.hash IN (
                    SELECT o.hash FROM audio_objects o
                     WHERE o.hash = ANY($1)
                       AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.audio_hash = o.hash)
                       AND NOT EXISTS (SELECT 1 FROM tasks t
                                        WHERE t.content_hash = o.hash
                                          AND t.status IN ('queued', 'processing'))
                       FOR UPDATE SKIP LOCKED)
             RETURNING a.hash, a.s3_key",
        )
        .bind(&hashes)
        .fetch_all(&mut *tx)
        .await?;
        let mut gone: Vec<&str> = audio.iter().map(|(hash, _)| hash.as_str()).collect();
        gone.sort_unstable();
        sqlx::query(
            "INSERT INTO synthesis_leases AS l (hash, holder, token, expires_at)
             SELECT h, $2, $3, now() + make_interval(secs => $4) FROM UNNEST($1::text[]) AS h
             ON CONFLICT (hash) DO UPDATE
                SET holder = EXCLUDED.holder, token = EXCLUDED.token,
                    acquired_at = now(), expires_at = EXCLUDED.expires_at",
        )
        .bind(&gone)
        .bind(lease.holder)
        .bind(lease.token)
        .bind(lease.ttl.as_secs_f64())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(SweptBatch {
            tasks: u64::try_from(tasks).unwrap_or(0),
            audio,
        })
    }
}
