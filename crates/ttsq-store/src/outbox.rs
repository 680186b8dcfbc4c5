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
        self.mark_published_many(&[task_id]).await
    }

    /// Records the broker's confirm for several tasks' messages at once.
    pub async fn mark_published_many(&self, task_ids: &[Uuid]) -> Result<(), StoreError> {
        if task_ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE tasks SET published_at = now()
              WHERE id = ANY($1) AND status = 'queued' AND published_at IS NULL",
        )
        .bind(task_ids)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Publishes up to `limit` queued tasks left unpublished for longer than
    /// `older_than` (counted from the end of a retry back-off, if any), with `publish` (true = confirmed), and marks those that
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
                AND coalesce(not_before, created_at) < now() - make_interval(secs => $1)
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
    /// has not heartbeated within `replica_ttl`, or that was claimed longer
    /// than `claim_timeout` ago (its holder is alive but lost track of it,
    /// e.g. Postgres was away when it tried to hand it back). Returns how many.
    pub async fn recover_orphans(
        &self,
        replica_ttl: Duration,
        claim_timeout: Duration,
    ) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "UPDATE tasks t
                SET status = 'queued', published_at = NULL, claimed_by = NULL, not_before = NULL
              WHERE t.status = 'processing'
                AND coalesce(t.claimed_at, t.started_at) < now() - make_interval(secs => $1)
                AND (coalesce(t.claimed_at, t.started_at) < now() - make_interval(secs => $2)
                     OR NOT EXISTS (
                        SELECT 1 FROM workers w
                         WHERE w.id = t.claimed_by AND w.last_seen > now() - make_interval(secs => $1)))",
        )
        .bind(replica_ttl.as_secs_f64())
        .bind(claim_timeout.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }
}
