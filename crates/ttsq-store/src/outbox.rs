//! The transactional outbox and orphan recovery.
//!
//! A normal task is committed `queued` with `published_at` unset; the API
//! publishes its message and then marks it. Whatever stays unmarked — the
//! broker was down, the process died between commit and publish — is found
//! here by a relay and published again. Tasks claimed by a replica that
//! stopped heartbeating go back to the outbox the same way. Messages may so
//! be published twice; claiming is idempotent and the ledger unique, so a
//! duplicate costs a skipped delivery, never a second bill.

use std::{future::Future, time::Duration};

use futures::future::join_all;
use uuid::Uuid;

use crate::{Store, StoreError};

/// A queued task whose message is not known to be published.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Unpublished {
    /// Task id.
    pub id: Uuid,
    /// Owner.
    pub tenant_id: Uuid,
    /// Dialect, for the message.
    pub dialect: String,
}

impl Store {
    /// Records the broker's confirm for a task's message.
    pub async fn mark_published(&self, task_id: Uuid) -> Result<(), StoreError> {
        sqlx::query("UPDATE tasks SET published_at = now() WHERE id = $1")
            .bind(task_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Publishes up to `limit` queued tasks left unpublished for longer than
    /// `older_than`, with `publish` (true = confirmed), and marks those that
    /// went out. Rows are locked with `SKIP LOCKED`, so relays of several
    /// replicas never publish the same task at once. Returns how many went out.
    pub async fn relay_unpublished<F, Fut>(
        &self,
        older_than: Duration,
        limit: i64,
        publish: F,
    ) -> Result<usize, StoreError>
    where
        F: Fn(Unpublished) -> Fut,
        Fut: Future<Output = Option<Uuid>>,
    {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<Unpublished> = sqlx::query_as(
            "SELECT id, tenant_id, dialect FROM tasks
              WHERE status = 'queued' AND published_at IS NULL
                AND created_at < now() - make_interval(secs => $1)
              ORDER BY created_at
              LIMIT $2
              FOR UPDATE SKIP LOCKED",
        )
        .bind(older_than.as_secs_f64())
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        // Publishing holds only these rows' locks, and confirms are pipelined.
        let published: Vec<Uuid> = join_all(rows.into_iter().map(&publish))
            .await
            .into_iter()
            .flatten()
            .collect();
        sqlx::query("UPDATE tasks SET published_at = now() WHERE id = ANY($1)")
            .bind(&published)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(published.len())
    }

    /// Returns to the outbox every `processing` task whose claiming replica
    /// has not heartbeated within `ttl`. Returns how many.
    pub async fn recover_orphans(&self, ttl: Duration) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "UPDATE tasks t
                SET status = 'queued', published_at = NULL, claimed_by = NULL
              WHERE t.status = 'processing'
                AND t.started_at < now() - make_interval(secs => $1)
                AND NOT EXISTS (
                    SELECT 1 FROM workers w
                     WHERE w.id = t.claimed_by AND w.last_seen > now() - make_interval(secs => $1))",
        )
        .bind(ttl.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }
}
