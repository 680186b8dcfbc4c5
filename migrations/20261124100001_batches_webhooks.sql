-- Batches of jobs and signed webhooks.

-- A tenant's default webhook target and the version of its signing secret.
-- The secret itself is never stored: it is derived from the deployment's
-- signing key, the tenant id and the version (see ttsq-worker's webhooks).
-- Rotating bumps the version; the previous one keeps signing (as a second
-- `v1=` entry) until `webhook_previous_until`.
ALTER TABLE tenants
    ADD COLUMN webhook_url               text,
    ADD COLUMN webhook_secret_version    integer NOT NULL DEFAULT 1 CHECK (webhook_secret_version > 0),
    ADD COLUMN webhook_previous_version  integer,
    ADD COLUMN webhook_previous_until    timestamptz;

-- A batch: up to 1,000 tasks submitted together. `open_items` counts items
-- not yet terminal; a trigger on tasks brings it down, and at 0 the batch is
-- `completed` (or `concatenating` first, when a joined audio file is wanted).
CREATE TABLE batches (
    id                uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL REFERENCES tenants (id),
    status            text NOT NULL CHECK (status IN ('running', 'concatenating', 'completed')),
    items             integer NOT NULL CHECK (items > 0),
    open_items        integer NOT NULL CHECK (open_items >= 0),
    concatenate       boolean NOT NULL DEFAULT false,
    format            text,
    concatenated_key  text,
    concatenated_bytes bigint,
    concatenated_duration_ms integer,
    concatenate_error text,
    callback_url      text,
    metadata          jsonb,
    idempotency_key   text,
    key_prefix        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    cancelled_at      timestamptz,
    completed_at      timestamptz
);
CREATE UNIQUE INDEX batches_idempotency ON batches (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX batches_concatenating ON batches (created_at) WHERE status = 'concatenating';

ALTER TABLE tasks
    ADD COLUMN batch_id     uuid REFERENCES batches (id),
    ADD COLUMN batch_index  integer,
    ADD COLUMN custom_id    text;
CREATE INDEX tasks_batch ON tasks (batch_id, batch_index) WHERE batch_id IS NOT NULL;

-- One row per webhook event to deliver; `attempts` and the last result are
-- kept current, every attempt is also logged in webhook_attempts. Rows are
-- written by the trigger below in the transaction that finishes the task, so
-- no terminal task misses its event; `published_at` is the outbox mark of
-- its queue message (a relay publishes what stays unmarked).
CREATE TABLE webhook_deliveries (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id         uuid NOT NULL REFERENCES tenants (id),
    event             text NOT NULL CHECK (event IN ('task.completed', 'batch.completed')),
    task_id           uuid,
    batch_id          uuid,
    target_url        text NOT NULL,
    status            text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts          integer NOT NULL DEFAULT 0,
    last_status_code  integer,
    last_error        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    published_at      timestamptz,
    last_attempt_at   timestamptz,
    delivered_at      timestamptz
);
CREATE INDEX webhook_deliveries_unpublished ON webhook_deliveries (created_at)
    WHERE status = 'pending' AND published_at IS NULL;
CREATE INDEX webhook_deliveries_created ON webhook_deliveries (created_at);
CREATE INDEX webhook_deliveries_task ON webhook_deliveries (task_id) WHERE task_id IS NOT NULL;
CREATE INDEX webhook_deliveries_batch ON webhook_deliveries (batch_id) WHERE batch_id IS NOT NULL;

-- The delivery log: one row per HTTP attempt.
CREATE TABLE webhook_attempts (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id  uuid NOT NULL REFERENCES webhook_deliveries (id),
    tenant_id    uuid NOT NULL,
    target_url   text NOT NULL,
    event        text NOT NULL,
    attempt      integer NOT NULL,
    status_code  integer,
    error        text,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, attempt);

-- Whatever statement takes tasks to a terminal state (a worker's finish, a
-- cache hit at submit, a cancel), this records the consequences in the same
-- transaction: a `task.completed` event for a task outside a batch with a
-- target, and for batch items the batch's open count, completing the batch
-- (with its `batch.completed` event) when it reaches 0.
CREATE FUNCTION ttsq_tasks_terminal() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Most statements (publishing, claiming, rescheduling) make nothing
    -- terminal: one scan of the new rows, and done.
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
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_terminal
    AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ttsq_tasks_terminal();
