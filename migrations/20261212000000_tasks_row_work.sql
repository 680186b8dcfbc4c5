-- Less work per task row. A task row is written four times in its life
-- (submitted, published, claimed, finished), and none of the updates can be
-- HOT: each changes `status` or `published_at`, which index keys or partial
-- index predicates name. Every version so gets an entry in every index whose
-- predicate it meets; these were 22 index entries per job, now 15.

-- `tasks_unfinished (status, created_at)`, `tasks_tenant_open (tenant_id)`
-- and `tasks_processing (claimed_at)` covered the same open rows three
-- times. One index serves all their readers: a tenant's open jobs and
-- reservations at submission (by `tenant_id`, as before), and the periodic
-- scans by state, the queued count (index only) and orphan recovery (whose
-- `coalesce(claimed_at, started_at)` bound never was an index condition on
-- `tasks_processing`), which now read the open rows' entries, not only
-- those of their state.
CREATE INDEX tasks_open ON tasks (tenant_id, status) WHERE status IN ('queued', 'processing');
DROP INDEX tasks_unfinished;
DROP INDEX tasks_tenant_open;
DROP INDEX tasks_processing;

-- Only a finished task has audio: the versions before it (three per job)
-- no longer each add a NULL entry. Every reader looks a hash up by
-- equality (retention, the foreign key's check), which implies NOT NULL.
CREATE INDEX tasks_audio_hash_set ON tasks (audio_hash) WHERE audio_hash IS NOT NULL;
DROP INDEX tasks_audio_hash;
