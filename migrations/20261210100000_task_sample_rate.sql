-- The sample rate a task's audio is rendered at: its dialect's, or the one
-- its edge fixed (OpenAI's `pcm` is 24 kHz whatever the voice). A worker
-- that picks up a task (an inline one whose replica died, say) renders it
-- at this rate, as its content hash says; a batch join tells rates apart
-- by it. NULL for tasks stored before it was recorded.
ALTER TABLE tasks
    ADD COLUMN sample_rate_hz integer CHECK (sample_rate_hz > 0);
