//! Orphan recovery: tasks claimed by a replica that stopped heartbeating go
//! back to waiting (`queued`, unpublished), where the dispatcher
//! ([`crate::dispatch`]) publishes them again in their tenant's turn.
//! Messages may so be published twice; claiming is idempotent and the
//! ledger unique, so a duplicate costs a skipped delivery, never a second
//! bill.

use std::time::Duration;

use crate::{Store, StoreError};

impl Store {
    /// Returns to waiting every `processing` task (long jobs aside: they are
    /// never claimed, their chunks are) whose claiming replica
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
                AND t.chunks_total IS NULL
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

    /// Returns to waiting every task published (or due back from a delay
    /// queue) longer than `claim_timeout` ago and never claimed: its message
    /// was lost (a queue deleted, a broker's data gone). Such a task would
    /// otherwise hold a slot of its provider's dispatch window for good.
    /// The dispatcher publishes it again; should the message only have been
    /// slow, the duplicate costs a skipped delivery. Returns how many.
    pub async fn recover_lost_messages(&self, claim_timeout: Duration) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "UPDATE tasks SET published_at = NULL
              WHERE status = 'queued' AND published_at IS NOT NULL
                AND greatest(published_at, coalesce(not_before, published_at))
                    < now() - make_interval(secs => $1)",
        )
        .bind(claim_timeout.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }
}
