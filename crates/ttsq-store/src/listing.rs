//! What a client does with its own tasks besides submitting: list them,
//! newest first, a page at a time, and cancel one that is still queued.
//!
//! A cancelled task is terminal like any other: it gets its one ledger row
//! (nothing billable) in the same statement that cancels it, so "every
//! terminal task has exactly one ledger row" holds for it too. Workers skip
//! it: [`Store::claim`] only takes `queued` and `processing` tasks, and a
//! message for a task it did not claim is acknowledged.

use chrono::{DateTime, Utc};
use ttsq_core::TaskStatus;
use uuid::Uuid;

use crate::{
    Store, StoreError,
    tasks::{LEDGER_FROM_DONE, TASK_SELECT, TaskRow},
};

/// Where a page of [`Store::list_tasks`] continues: the sort key of the last
/// row of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskCursor {
    /// `created_at` of the last row shown.
    pub created_at: DateTime<Utc>,
    /// Its id, which breaks ties between equal timestamps.
    pub id: Uuid,
}

/// One page of a tenant's tasks.
#[derive(Debug, Clone)]
pub struct TaskPage {
    /// The tasks, newest first.
    pub tasks: Vec<TaskRow>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<TaskCursor>,
}

/// What [`Store::cancel_task`] did.
#[derive(Debug, Clone)]
pub enum Cancellation {
    /// The task was `queued` (or a long job not ended) and is `cancelled` now.
    Cancelled(TaskRow),
    /// The task is past `queued`; it is left as it is.
    TooLate(TaskRow),
    /// No such task for this tenant.
    NotFound,
}

impl Store {
    /// Up to `limit` of a tenant's tasks (not the chunks of its long jobs), newest first, optionally only those
    /// in `status`, after `cursor`. Uses the `(tenant_id, created_at DESC,
    /// id DESC)` index.
    pub async fn list_tasks(
        &self,
        tenant_id: Uuid,
        status: Option<TaskStatus>,
        cursor: Option<TaskCursor>,
        limit: u32,
    ) -> Result<TaskPage, StoreError> {
        let sql = format!(
            "{TASK_SELECT}
             WHERE t.tenant_id = $1 AND t.parent_id IS NULL
               AND ($2::text IS NULL OR t.status = $2)
               AND ($3::timestamptz IS NULL OR (t.created_at, t.id) < ($3, $4))
             ORDER BY t.created_at DESC, t.id DESC
             LIMIT $5"
        );
        let mut tasks: Vec<TaskRow> = sqlx::query_as(&sql)
            .bind(tenant_id)
            .bind(status.map(TaskStatus::as_str))
            .bind(cursor.map(|c| c.created_at))
            .bind(cursor.map(|c| c.id))
            // One more than asked tells whether another page follows.
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.pool)
            .await?;
        let next = if tasks.len() > limit as usize {
            tasks.truncate(limit as usize);
            tasks.last().map(|t| TaskCursor {
                created_at: t.created_at,
                id: t.id,
            })
        } else {
            None
        };
        Ok(TaskPage { tasks, next })
    }

    /// Cancels a tenant's task if it is still `queued`, or a long job not
    /// ended yet, writing its ledger row (0 billable characters) in the same
    /// statement; a trigger cancels the long job's chunks not started
    /// (chunks being synthesized finish and bill). A worker's claim and this
    /// update lock the same row, so exactly one of them wins. A chunk of a
    /// long job is [`Cancellation::NotFound`].
    pub async fn cancel_task(
        &self,
        tenant_id: Uuid,
        task_id: Uuid,
    ) -> Result<Cancellation, StoreError> {
        let sql = format!(
            "WITH done AS (
                UPDATE tasks t
                   SET status = 'cancelled', finished_at = now(),
                       error_code = 'cancelled', error_message = 'cancelled by the client'
                 WHERE t.id = $1 AND t.tenant_id = $2 AND t.parent_id IS NULL
                   AND (t.status = 'queued'
                        OR (t.status = 'processing' AND t.chunks_total IS NOT NULL))
             RETURNING t.id, t.tenant_id, t.key_prefix, t.provider, t.dialect, t.voice, t.status,
                       t.characters, t.cache_hit, 0::numeric AS price, ''::text AS currency,
                       t.created_at AS submitted_at, t.parent_id, t.chunks_total
             )
             {LEDGER_FROM_DONE}"
        );
        let cancelled = sqlx::query(&sql)
            .bind(task_id)
            .bind(tenant_id)
            .execute(&self.pool)
            .await?
            .rows_affected()
            > 0;
        Ok(match self.get_task(tenant_id, task_id).await? {
            None => Cancellation::NotFound,
            Some(row) if cancelled => Cancellation::Cancelled(row),
            Some(row) => Cancellation::TooLate(row),
        })
    }
}
