-- Fair dispatch between tenants. A normal task is committed `queued` and
-- unpublished; a dispatcher publishes it to `ttsq.jobs` only while its
-- provider's window of published, unfinished tasks has room, choosing the
-- tenant furthest below its weighted share. A backlog so waits here, in
-- Postgres, where every tenant's turn is visible, instead of in one FIFO
-- queue behind which another tenant's job would wait.

-- A tenant's share of every window, relative to the other tenants with work.
ALTER TABLE tenants ADD COLUMN weight integer NOT NULL DEFAULT 1
    CHECK (weight BETWEEN 1 AND 1000);

COMMENT ON COLUMN tenants.weight IS
    'Relative share of dispatch (jobs and webhook deliveries) against the other tenants with work waiting; 1 by default.';

-- The W3C traceparent of the submitting request, so the message published
-- later by the dispatcher continues the request's trace.
ALTER TABLE tasks ADD COLUMN traceparent text
    CHECK (traceparent IS NULL OR length(traceparent) <= 128);

-- Each tenant's waiting tasks per dialect, oldest first, its single jobs
-- and its batch items apart (two lanes sharing the tenant's turns, so its
-- single jobs do not wait behind its own batches): the dispatcher walks the
-- distinct (tenant, dialect) pairs of each index and takes the head of the
-- lanes whose turn it is. Two partial indexes, not one on an expression: a
-- row comparison over an expression column is no index condition.
CREATE INDEX tasks_dispatch_single ON tasks (tenant_id, dialect, created_at)
    WHERE status = 'queued' AND published_at IS NULL AND batch_id IS NULL;
CREATE INDEX tasks_dispatch_batched ON tasks (tenant_id, dialect, created_at)
    WHERE status = 'queued' AND published_at IS NULL AND batch_id IS NOT NULL;

-- The published, unfinished tasks: what occupies the windows.
CREATE INDEX tasks_in_flight ON tasks (tenant_id, dialect)
    WHERE status IN ('queued', 'processing') AND published_at IS NOT NULL;

-- The outbox relay's scan in creation order is replaced by the dispatcher.
DROP INDEX IF EXISTS tasks_unpublished;
