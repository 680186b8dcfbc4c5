-- Long-poll wake-ups and per-tenant retention.

-- A task reaching a terminal state tells listeners at commit: the payload is
-- the task id. `GET /v1/tts/jobs/{id}?wait=N` waits on this channel (with a
-- poll as well, since a listener misses what is sent while it reconnects).
-- A trigger rather than a pg_notify in each statement, so that every path to
-- a terminal state (finish, fail, cancel, attempt exhaustion) is covered.
CREATE FUNCTION ttsq_notify_task_finished() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ttsq_task_finished', NEW.id::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_notify_finished
    AFTER UPDATE OF status ON tasks
    FOR EACH ROW
    WHEN (NEW.status IN ('succeeded', 'failed', 'cancelled')
          AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION ttsq_notify_task_finished();

-- Days a tenant's tasks (and the audio only they use) are kept after they
-- were created; NULL falls back to the configured default, which may itself
-- be "forever".
ALTER TABLE tenants ADD COLUMN retention_days integer CHECK (retention_days >= 1);
COMMENT ON COLUMN tenants.retention_days IS
    'Days tasks are kept; NULL = the deployment default (retention.default_days).';

-- The ledger is kept forever, also for tasks the retention sweeper removed:
-- its task_id stays unique but no longer references a live row. (An ON
-- DELETE action would have to update the append-only ledger.)
ALTER TABLE usage_ledger DROP CONSTRAINT usage_ledger_task_id_fkey;

-- "Is this audio still used by any task?" is one index probe.
CREATE INDEX tasks_audio_hash ON tasks (audio_hash);
