-- Retries and crash recovery.
--
-- `claimed_at`: when the current claim was taken (`started_at` keeps the
-- first). A task processing for longer than the claim timeout, or held by a
-- replica that stopped heartbeating, is returned to the outbox.
--
-- `not_before`: a task waiting out a retry back-off. Its message sits in a
-- delay queue; the outbox relay republishes it only if that message was
-- never confirmed and the back-off is over.
ALTER TABLE tasks ADD COLUMN claimed_at timestamptz;
ALTER TABLE tasks ADD COLUMN not_before timestamptz;
UPDATE tasks SET claimed_at = started_at WHERE status = 'processing';
CREATE INDEX tasks_processing ON tasks (claimed_at) WHERE status = 'processing';
