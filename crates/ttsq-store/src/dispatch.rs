//! Dispatching queued tasks to the broker, a window at a time.
//!
//! A normal task is committed `queued` with `published_at` unset; a
//! dispatch round publishes the ones whose turn it is and marks them. The
//! round reads, per tenant and dialect, its single jobs and its batch items
//! apart (two lanes), what is in flight (published and not finished) and
//! what waits; the caller's plan (the scheduling rule of
//! `ttsq-dispatch`) says which queues get the free slots; the round locks
//! the oldest waiting tasks of those queues, publishes them in the plan's
//! order and marks the confirmed ones.
//!
//! Rounds of all replicas take one transaction-scoped advisory lock, so two
//! replicas never fill the same free slots twice; a replica that finds it
//! taken learns so at once and tries again shortly ([`Round::Busy`]).
//! Whatever a round fails to publish stays unpublished and is taken by a
//! later one: this is also the outbox. Messages may be published twice (a
//! confirm lost before the mark); claiming is idempotent and the ledger
//! unique, so a duplicate costs a skipped delivery, never a second bill.

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    sync::LazyLock,
};

use futures::future::join_all;
use uuid::Uuid;

use crate::{Store, StoreError};

/// The advisory lock key of dispatch rounds ("ttsqdisp").
const DISPATCH_LOCK: i64 = 0x7474_7371_6469_7370;

/// A lane: one tenant's single jobs, or its bulk work (batch items and chunks of
/// long jobs), of one dialect.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LaneKey {
    /// The tenant.
    pub tenant_id: Uuid,
    /// The dialect.
    pub dialect: String,
    /// Bulk work: batch items and chunks of long jobs (true), or single jobs.
    pub batched: bool,
}

/// One lane's tasks, as a round sees them.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DispatchQueue {
    /// The tenant.
    pub tenant_id: Uuid,
    /// The dialect.
    pub dialect: String,
    /// Bulk work: batch items and chunks of long jobs (true), or single jobs.
    pub batched: bool,
    /// The tenant's dispatch weight.
    pub weight: i32,
    /// Tasks published and not finished (retries waiting out a back-off in
    /// a delay queue are not counted: they hold no worker).
    pub in_flight: i64,
    /// Tasks waiting to be published, counted up to the round's cap.
    pub waiting: i64,
}

/// A task a round publishes.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Dispatchable {
    /// Task id.
    pub id: Uuid,
    /// Owner.
    pub tenant_id: Uuid,
    /// Dialect, for the message.
    pub dialect: String,
    /// Whether it is bulk work, a batch item or a chunk (its lane).
    pub batched: bool,
    /// The submitting request's trace context, for the message.
    pub traceparent: Option<String>,
}

/// What a dispatch round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Another replica's round held the lock; nothing was read or published.
    Busy,
    /// The round ran.
    Done {
        /// Messages confirmed by the broker and marked.
        published: usize,
        /// Tasks the plan chose that were not confirmed.
        unconfirmed: usize,
    },
}

impl Store {
    /// Runs one dispatch round: reads every queue with work waiting or in
    /// flight (`waiting` counted up to `waiting_cap`), asks `plan` for the
    /// queues to take a task from, in publishing order (one entry per
    /// task), publishes the oldest waiting task of each with `publish`
    /// (which answers the id once confirmed) and marks those published.
    pub async fn dispatch_round<P, F, Fut>(
        &self,
        waiting_cap: i64,
        plan: P,
        publish: F,
    ) -> Result<Round, StoreError>
    where
        P: FnOnce(&[DispatchQueue]) -> Vec<LaneKey>,
        F: Fn(Dispatchable) -> Fut,
        Fut: Future<Output = Option<Uuid>>,
    {
        let mut tx = self.pool.begin().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(DISPATCH_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            return Ok(Round::Busy);
        }
        let queues: Vec<DispatchQueue> = sqlx::query_as(&QUEUES)
            .bind(waiting_cap)
            .fetch_all(&mut *tx)
            .await?;
        let picks = plan(&queues);
        if picks.is_empty() {
            return Ok(Round::Done {
                published: 0,
                unconfirmed: 0,
            });
        }
        let mut counts: HashMap<&LaneKey, i64> = HashMap::new();
        for lane in &picks {
            *counts.entry(lane).or_default() += 1;
        }
        let mut query = sqlx::query_as::<_, Dispatchable>(&TAKE);
        for batched in [false, true] {
            let (tenants, (dialects, limits)): (Vec<Uuid>, (Vec<&str>, Vec<i64>)) = counts
                .iter()
                .filter(|(lane, _)| lane.batched == batched)
                .map(|(lane, n)| (lane.tenant_id, (lane.dialect.as_str(), *n)))
                .unzip();
            query = query.bind(tenants).bind(dialects).bind(limits);
        }
        let rows = query.fetch_all(&mut *tx).await?;
        let ordered = in_plan_order(&picks, rows);
        let chosen = ordered.len();
        // Publishing holds only these rows' locks, and confirms are pipelined.
        let published: Vec<Uuid> = join_all(ordered.into_iter().map(&publish))
            .await
            .into_iter()
            .flatten()
            .collect();
        sqlx::query("UPDATE tasks SET published_at = now() WHERE id = ANY($1)")
            .bind(&published)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Round::Done {
            published: published.len(),
            unconfirmed: chosen - published.len(),
        })
    }

    /// Tasks queued now, fleet-wide: waiting for their turn in Postgres or
    /// published and not yet claimed (the whole backlog, which the job
    /// queue's length no longer shows).
    pub async fn queued_tasks(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM tasks WHERE status = 'queued'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Records the broker's confirm for several tasks' messages at once
    /// (retries a worker published to a delay queue itself).
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
}

/// The condition of each lane kind, matching the predicates of the partial
/// indexes `tasks_dispatch_single` and `tasks_dispatch_batched`.
/// Chunks of long jobs wait in the bulk lane with batch items.
const LANES: [(&str, &str); 2] = [
    ("false", "batch_id IS NULL AND parent_id IS NULL"),
    ("true", "(batch_id IS NOT NULL OR parent_id IS NOT NULL)"),
];

/// Every lane with work waiting or in flight. For each kind of lane, the
/// distinct (tenant, dialect) pairs with waiting tasks are found by skipping
/// through its partial index (one index probe per pair, however long the
/// backlog), and each pair's waiting tasks are counted only up to `$1`. The
/// row comparisons and the index's order, redundant with the equalities,
/// keep the planner on the lane's own index entries: without them it may
/// walk every queued task of the table or of the tenant to find a lane's
/// few (13–40 ms instead of under 2 ms behind a backlog of 100,000).
static QUEUES: LazyLock<String> = LazyLock::new(|| {
    let waiting: Vec<String> = LANES
        .iter()
        .map(|(batched, lane)| {
            format!(
                "SELECT pairs.tenant_id, pairs.dialect, {batched} AS batched,
                        (SELECT count(*) FROM (
                             SELECT 1 FROM tasks t
                              WHERE (t.tenant_id, t.dialect) >= (pairs.tenant_id, pairs.dialect)
                                AND t.tenant_id = pairs.tenant_id AND t.dialect = pairs.dialect
                                AND t.status = 'queued' AND t.published_at IS NULL AND {lane}
                                AND (t.not_before IS NULL OR t.not_before <= now())
                              ORDER BY t.tenant_id, t.dialect, t.created_at
                              LIMIT $1) capped) AS waiting
                   FROM (WITH RECURSIVE pairs AS (
                             (SELECT tenant_id, dialect FROM tasks
                               WHERE status = 'queued' AND published_at IS NULL AND {lane}
                               ORDER BY tenant_id, dialect
                               LIMIT 1)
                           UNION ALL
                             SELECT next.tenant_id, next.dialect
                               FROM pairs p
                              CROSS JOIN LATERAL (
                                    SELECT tenant_id, dialect FROM tasks
                                     WHERE status = 'queued' AND published_at IS NULL AND {lane}
                                       AND (tenant_id, dialect) > (p.tenant_id, p.dialect)
                                     ORDER BY tenant_id, dialect
                                     LIMIT 1) next)
                         SELECT * FROM pairs) pairs"
            )
        })
        .collect();
    format!(
        "WITH waiting AS ({}),
         flying AS (
             SELECT tenant_id, dialect, (batch_id IS NOT NULL OR parent_id IS NOT NULL) AS batched,
                    count(*) AS in_flight
               FROM tasks
              WHERE status IN ('queued', 'processing') AND published_at IS NOT NULL
                AND (not_before IS NULL OR not_before <= now())
              GROUP BY 1, 2, 3
         )
         SELECT q.tenant_id, q.dialect, q.batched, tn.weight, q.in_flight, q.waiting
           FROM (SELECT coalesce(w.tenant_id, f.tenant_id) AS tenant_id,
                        coalesce(w.dialect, f.dialect) AS dialect,
                        coalesce(w.batched, f.batched) AS batched,
                        coalesce(f.in_flight, 0) AS in_flight,
                        coalesce(w.waiting, 0) AS waiting
                   FROM waiting w
                   FULL JOIN flying f
                     ON f.tenant_id = w.tenant_id AND f.dialect = w.dialect
                    AND f.batched = w.batched) q
           JOIN tenants tn ON tn.id = q.tenant_id",
        waiting.join(" UNION ALL ")
    )
});

/// The oldest waiting tasks of each lane a round gives slots to, locked:
/// `$1..$3` the single-job lanes (tenant, dialect, count), `$4..$6` the
/// batch lanes, each through its own partial index.
static TAKE: LazyLock<String> = LazyLock::new(|| {
    LANES
        .iter()
        .enumerate()
        .map(|(i, (batched, lane))| {
            let (t, d, n) = (3 * i + 1, 3 * i + 2, 3 * i + 3);
            format!(
                "SELECT t.id, t.tenant_id, t.dialect, {batched} AS batched, t.traceparent
                   FROM unnest(${t}::uuid[], ${d}::text[], ${n}::int8[]) AS q(tenant_id, dialect, n)
                  CROSS JOIN LATERAL (
                        SELECT id, tenant_id, dialect, traceparent FROM tasks
                         WHERE (tenant_id, dialect) >= (q.tenant_id, q.dialect)
                           AND tenant_id = q.tenant_id AND dialect = q.dialect
                           AND status = 'queued' AND published_at IS NULL AND {lane}
                           AND (not_before IS NULL OR not_before <= now())
                         ORDER BY tenant_id, dialect, created_at
                         LIMIT q.n
                           FOR UPDATE SKIP LOCKED) t"
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
});

/// `rows` (oldest first per lane) in the order of `picks`: each pick takes
/// the next row of its lane, so tenants are interleaved on the queue as
/// the plan interleaved them.
fn in_plan_order(picks: &[LaneKey], rows: Vec<Dispatchable>) -> Vec<Dispatchable> {
    let mut by_lane: HashMap<LaneKey, VecDeque<Dispatchable>> = HashMap::new();
    for row in rows {
        by_lane
            .entry(LaneKey {
                tenant_id: row.tenant_id,
                dialect: row.dialect.clone(),
                batched: row.batched,
            })
            .or_default()
            .push_back(row);
    }
    picks
        .iter()
        .filter_map(|lane| by_lane.get_mut(lane).and_then(VecDeque::pop_front))
        .collect()
}
