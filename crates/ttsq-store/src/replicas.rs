//! Replica heartbeats, for sharing provider quotas across processes.

use std::time::Duration;

use uuid::Uuid;

use crate::{Store, StoreError};

/// Replicas seen alive, by what they serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LiveReplicas {
    /// Replicas serving the API (role `api` or `all`).
    pub apis: u32,
    /// Replicas consuming the queue (role `worker` or `all`).
    pub workers: u32,
}

impl Store {
    /// Records that replica `id` is alive (a gap longer than `ttl` since its
    /// last heartbeat restarts its unbroken run), then counts the replicas
    /// seen within `ttl` (itself included).
    pub async fn heartbeat(
        &self,
        id: Uuid,
        role: &str,
        ttl: Duration,
    ) -> Result<LiveReplicas, StoreError> {
        sqlx::query(
            "INSERT INTO workers (id, role, pid) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE
                SET heartbeating_since = CASE
                        WHEN workers.last_seen < now() - make_interval(secs => $4) THEN now()
                        ELSE workers.heartbeating_since END,
                    last_seen = now()",
        )
        .bind(id)
        .bind(role)
        .bind(i32::try_from(std::process::id()).unwrap_or(0))
        .bind(ttl.as_secs_f64())
        .execute(&self.pool)
        .await?;
        let (apis, workers): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE role IN ('api', 'all')),
                    count(*) FILTER (WHERE role IN ('worker', 'all'))
               FROM workers
              WHERE last_seen > now() - make_interval(secs => $1)",
        )
        .bind(ttl.as_secs_f64())
        .fetch_one(&self.pool)
        .await?;
        Ok(LiveReplicas {
            apis: u32::try_from(apis).unwrap_or(u32::MAX),
            workers: u32::try_from(workers).unwrap_or(u32::MAX),
        })
    }

    /// Removes replica `id` at shutdown so the others take up its share at
    /// once, and forgets replicas silent for an hour.
    pub async fn deregister(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM workers WHERE id = $1 OR last_seen < now() - interval '1 hour'")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
