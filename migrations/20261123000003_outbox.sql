-- Transactional outbox: a queued task is committed before its message is
-- published, and `published_at` records the broker's confirm. A relay
-- publishes tasks the API could not (broker down, process killed between
-- commit and publish), so nothing accepted waits forever.
ALTER TABLE tasks ADD COLUMN published_at timestamptz;
UPDATE tasks SET published_at = created_at;
CREATE INDEX tasks_unpublished ON tasks (created_at) WHERE status = 'queued' AND published_at IS NULL;

-- The replica (see `workers`) whose batch claimed the task, so tasks held by
-- a replica that stopped heartbeating can be handed to another.
ALTER TABLE tasks ADD COLUMN claimed_by uuid;
