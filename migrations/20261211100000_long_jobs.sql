-- Long-form synthesis (issue 21): one job whose text is longer than one
-- provider request takes is split into chunks. The job is one task (the
-- "long job": polled, listed, cancelled and webhooked like any other); each
-- chunk is an ordinary task of its own, hidden from the tenant, queued,
-- batched, quota-limited and content-hashed like any job, so that an edited
-- paragraph re-synthesizes one chunk and equal sentences share audio.
--
-- A long job is `processing` from its submission until a worker has joined
-- its chunks' audio into one object under its own content hash (the chunk
-- hashes in order) or until it fails (a chunk failed after its retries) or
-- is cancelled (its chunks not started are cancelled with it).
--
-- Billing: every chunk bills itself when it ends, exactly as a single task
-- does (its ledger row names the long job in `long_task_id`), so no crash
-- point leaves synthesized audio unbilled and chunks never synthesized are
-- never billed. The long job's own ledger row, written when it ends, counts
-- the job and its characters and bills nothing; the finance views count
-- jobs and characters from job rows and billable characters and cost from
-- all rows.

ALTER TABLE tasks
    -- A chunk: the long job it belongs to (deleted with it).
    ADD COLUMN parent_id    uuid REFERENCES tasks (id) ON DELETE CASCADE,
    -- A chunk: its place in the long job, from 0.
    ADD COLUMN chunk_index  integer CHECK (chunk_index >= 0),
    -- A chunk: where its text starts in the long job's normalised text, in
    -- characters (Unicode scalar values), for shifting its speech marks.
    ADD COLUMN chunk_offset integer CHECK (chunk_offset >= 0),
    -- A long job: how many chunks it has, and how many succeeded so far.
    ADD COLUMN chunks_total integer CHECK (chunks_total > 0),
    ADD COLUMN chunks_done  integer CHECK (chunks_done >= 0),
    ADD CONSTRAINT tasks_chunk_place CHECK (
        (parent_id IS NULL) = (chunk_index IS NULL)
        AND (parent_id IS NULL) = (chunk_offset IS NULL)),
    ADD CONSTRAINT tasks_long_counts CHECK (
        (chunks_total IS NULL) = (chunks_done IS NULL)
        AND (chunks_total IS NULL OR parent_id IS NULL)
        AND coalesce(chunks_done <= chunks_total, true));

COMMENT ON COLUMN tasks.parent_id IS 'A chunk''s long job; NULL for every other task.';
COMMENT ON COLUMN tasks.chunks_total IS 'A long job''s number of chunks; NULL for every other task.';

CREATE UNIQUE INDEX tasks_chunks ON tasks (parent_id, chunk_index) WHERE parent_id IS NOT NULL;

-- The join of a long job's chunks: one replica at a time, under a lease,
-- like a batch's join (`batches.join_*`). `state` is `running` while chunks
-- are outstanding, `joining` once all succeeded, `done` when the job ended.
CREATE TABLE long_jobs (
    task_id          uuid PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
    state            text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'joining', 'done')),
    join_holder      uuid,
    join_token       uuid,
    join_expires_at  timestamptz,
    join_attempts    integer NOT NULL DEFAULT 0 CHECK (join_attempts >= 0),
    join_error       text
);
CREATE INDEX long_jobs_joining ON long_jobs (task_id) WHERE state = 'joining';

ALTER TABLE usage_ledger ADD COLUMN long_task_id uuid;
COMMENT ON COLUMN usage_ledger.long_task_id IS
    'For a chunk of a long job: the long job (the task the tenant sees) this row bills for.';
CREATE INDEX usage_ledger_long_task ON usage_ledger (long_task_id) WHERE long_task_id IS NOT NULL;

-- Chunks wait in the bulk lane with batch items, so that a tenant's long
-- job does not hold up its own single jobs.
DROP INDEX tasks_dispatch_single;
DROP INDEX tasks_dispatch_batched;
CREATE INDEX tasks_dispatch_single ON tasks (tenant_id, dialect, created_at)
    WHERE status = 'queued' AND published_at IS NULL AND batch_id IS NULL AND parent_id IS NULL;
CREATE INDEX tasks_dispatch_batched ON tasks (tenant_id, dialect, created_at)
    WHERE status = 'queued' AND published_at IS NULL AND (batch_id IS NOT NULL OR parent_id IS NOT NULL);

-- The finance views: a long job is one task of its characters; its
-- chunks' rows add their billable characters and cost.
DROP VIEW usage_daily;
CREATE VIEW usage_daily AS
SELECT l.tenant_id,
       t.name                                                                  AS tenant,
       (l.created_at AT TIME ZONE 'UTC')::date                                 AS day,
       l.provider,
       l.dialect,
       l.currency,
       count(*) FILTER (WHERE l.long_task_id IS NULL)                         AS tasks,
       count(*) FILTER (WHERE l.long_task_id IS NULL AND l.status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE l.long_task_id IS NULL AND l.status = 'failed')  AS failed,
       count(*) FILTER (WHERE l.long_task_id IS NULL AND l.cache_hit)          AS cache_hits,
       coalesce(sum(l.characters) FILTER (WHERE l.long_task_id IS NULL), 0)::bigint AS characters,
       sum(l.billable_characters)::bigint                                      AS billable_characters,
       sum(l.cost)::numeric(18, 6)                                             AS cost
FROM usage_ledger l
JOIN tenants t ON t.id = l.tenant_id
GROUP BY l.tenant_id, t.name, 3, l.provider, l.dialect, l.currency;

DROP VIEW usage_monthly;
CREATE VIEW usage_monthly AS
SELECT l.tenant_id,
       t.name                                                                  AS tenant,
       date_trunc('month', l.created_at AT TIME ZONE 'UTC')::date              AS month,
       l.provider,
       l.dialect,
       l.currency,
       count(*) FILTER (WHERE l.long_task_id IS NULL)                         AS tasks,
       count(*) FILTER (WHERE l.long_task_id IS NULL AND l.status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE l.long_task_id IS NULL AND l.status = 'failed')  AS failed,
       count(*) FILTER (WHERE l.long_task_id IS NULL AND l.cache_hit)          AS cache_hits,
       coalesce(sum(l.characters) FILTER (WHERE l.long_task_id IS NULL), 0)::bigint AS characters,
       sum(l.billable_characters)::bigint                                      AS billable_characters,
       sum(l.cost)::numeric(18, 6)                                             AS cost
FROM usage_ledger l
JOIN tenants t ON t.id = l.tenant_id
GROUP BY l.tenant_id, t.name, 3, l.provider, l.dialect, l.currency;

-- Whatever statement takes tasks to a terminal state, this records the
-- consequences in the same transaction (see 20261124100001 for events and
-- batches). For long jobs:
--
-- - a chunk that succeeded counts in its job's `chunks_done`; the last one
--   leaves the job `joining`, for a worker's joiner;
-- - a chunk that failed (after its retries) fails its job with the chunk's
--   error;
-- - a long job that ended gets its ledger row (its characters, nothing
--   billable: its chunks' rows bill what was synthesized) and its chunks
--   not started are cancelled, each with a ledger row billing nothing.
--
-- The updates of long jobs and chunks fire this trigger again, for their
-- own events and batches.
CREATE OR REPLACE FUNCTION ttsq_tasks_terminal() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM new_rows WHERE status IN ('succeeded', 'failed', 'cancelled')) THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_deliveries (tenant_id, event, task_id, target_url)
    SELECT n.tenant_id, 'task.completed', n.id, coalesce(n.callback_url, t.webhook_url)
      FROM new_rows n
      JOIN old_rows o ON o.id = n.id
      JOIN tenants t ON t.id = n.tenant_id
     WHERE n.status IN ('succeeded', 'failed', 'cancelled')
       AND o.status NOT IN ('succeeded', 'failed', 'cancelled')
       AND n.batch_id IS NULL
       AND n.parent_id IS NULL
       AND coalesce(n.callback_url, t.webhook_url) IS NOT NULL;

    WITH done AS (
        SELECT n.batch_id, count(*)::integer AS finished
          FROM new_rows n
          JOIN old_rows o ON o.id = n.id
         WHERE n.batch_id IS NOT NULL
           AND n.status IN ('succeeded', 'failed', 'cancelled')
           AND o.status NOT IN ('succeeded', 'failed', 'cancelled')
         GROUP BY n.batch_id
    ), updated AS (
        UPDATE batches b
           SET open_items = greatest(b.open_items - done.finished, 0),
               status = CASE
                   WHEN b.status <> 'running' OR b.open_items - done.finished > 0 THEN b.status
                   WHEN b.concatenate THEN 'concatenating'
                   ELSE 'completed' END,
               completed_at = CASE
                   WHEN b.status = 'running' AND b.open_items - done.finished <= 0 AND NOT b.concatenate
                   THEN now() ELSE b.completed_at END
          FROM done
         WHERE b.id = done.batch_id
     RETURNING b.id, b.tenant_id, b.status, b.callback_url, b.completed_at
    )
    INSERT INTO webhook_deliveries (tenant_id, event, batch_id, target_url)
    SELECT u.tenant_id, 'batch.completed', u.id, coalesce(u.callback_url, t.webhook_url)
      FROM updated u
      JOIN tenants t ON t.id = u.tenant_id
     WHERE u.status = 'completed'
       AND u.completed_at = now()
       AND coalesce(u.callback_url, t.webhook_url) IS NOT NULL;

    -- Chunks that just ended: progress, and a failure fails their job.
    IF EXISTS (SELECT 1 FROM new_rows
                WHERE parent_id IS NOT NULL AND status IN ('succeeded', 'failed', 'cancelled')) THEN
        -- Their long jobs locked in id order first: two workers committing
        -- chunks of the same long jobs would otherwise lock them in the
        -- order of their joins, and could deadlock.
        PERFORM 1 FROM tasks p
          WHERE p.id IN (SELECT n.parent_id FROM new_rows n
                          WHERE n.parent_id IS NOT NULL
                            AND n.status IN ('succeeded', 'failed', 'cancelled'))
          ORDER BY p.id
            FOR NO KEY UPDATE;
        WITH ended AS (
            SELECT n.parent_id, n.chunk_index, n.status, n.error_code, n.error_message
              FROM new_rows n
              JOIN old_rows o ON o.id = n.id
             WHERE n.parent_id IS NOT NULL
               AND n.status IN ('succeeded', 'failed', 'cancelled')
               AND o.status NOT IN ('succeeded', 'failed', 'cancelled')
        ), progress AS (
            SELECT parent_id, count(*)::integer AS succeeded
              FROM ended WHERE status = 'succeeded' GROUP BY parent_id
        ), counted AS (
            UPDATE tasks p
               SET chunks_done = least(p.chunks_done + g.succeeded, p.chunks_total)
              FROM progress g
             WHERE p.id = g.parent_id
         RETURNING p.id, p.status, p.chunks_done, p.chunks_total
        )
        UPDATE long_jobs l
           SET state = 'joining'
          FROM counted c
         WHERE l.task_id = c.id AND l.state = 'running'
           AND c.status = 'processing' AND c.chunks_done >= c.chunks_total;

        -- A second statement: one statement cannot update a row twice.
        WITH failed AS (
            SELECT DISTINCT ON (n.parent_id) n.parent_id, n.chunk_index, n.error_code, n.error_message
              FROM new_rows n
              JOIN old_rows o ON o.id = n.id
             WHERE n.parent_id IS NOT NULL AND n.status = 'failed' AND o.status <> 'failed'
             ORDER BY n.parent_id, n.chunk_index
        )
        UPDATE tasks p
           SET status = 'failed', finished_at = now(),
               error_code = coalesce(f.error_code, 'chunk_failed'),
               error_message = format('chunk %s of %s failed: %s', f.chunk_index + 1, p.chunks_total,
                                      coalesce(f.error_message, 'no reason given'))
          FROM failed f
         WHERE p.id = f.parent_id AND p.status IN ('queued', 'processing');
    END IF;

    -- Long jobs that just ended: their ledger row, their join closed, and
    -- their chunks not started cancelled.
    IF EXISTS (SELECT 1 FROM new_rows
                WHERE chunks_total IS NOT NULL AND status IN ('succeeded', 'failed', 'cancelled')) THEN
        WITH ended AS (
            SELECT n.*
              FROM new_rows n
              JOIN old_rows o ON o.id = n.id
             WHERE n.chunks_total IS NOT NULL
               AND n.status IN ('succeeded', 'failed', 'cancelled')
               AND o.status NOT IN ('succeeded', 'failed', 'cancelled')
        ), billed AS (
            INSERT INTO usage_ledger
                   (task_id, tenant_id, key_prefix, provider, dialect, voice, status, characters,
                    billable_characters, cache_hit, cost, currency, submitted_at)
            SELECT e.id, e.tenant_id, e.key_prefix,
                   coalesce(e.provider, c.provider), e.dialect, e.voice, e.status, e.characters,
                   0, e.cache_hit, 0, c.currency, e.created_at
              FROM ended e
              LEFT JOIN LATERAL (
                    SELECT l.provider, l.currency FROM usage_ledger l
                     WHERE l.long_task_id = e.id AND l.currency IS NOT NULL
                     ORDER BY l.id LIMIT 1) c ON true
            ON CONFLICT (task_id) DO NOTHING
        ), closed AS (
            UPDATE long_jobs l
               SET state = 'done', join_holder = NULL, join_token = NULL, join_expires_at = NULL
              FROM ended e
             WHERE l.task_id = e.id
        ), cancelled AS (
            UPDATE tasks c
               SET status = 'cancelled', finished_at = now(), error_code = 'cancelled',
                   error_message = CASE e.status
                       WHEN 'failed' THEN 'not synthesized: another chunk of its long job failed'
                       ELSE 'not synthesized: its long job ended' END
              FROM ended e
             WHERE c.parent_id = e.id AND c.status = 'queued'
         RETURNING c.id, c.tenant_id, c.key_prefix, c.dialect, c.voice, c.characters, c.parent_id,
                   c.created_at
        )
        INSERT INTO usage_ledger
               (task_id, tenant_id, key_prefix, provider, dialect, voice, status, characters,
                billable_characters, cache_hit, cost, currency, submitted_at, long_task_id)
        SELECT id, tenant_id, key_prefix, NULL, dialect, voice, 'cancelled', characters,
               0, false, 0, NULL, created_at, parent_id
          FROM cancelled
        ON CONFLICT (task_id) DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;
