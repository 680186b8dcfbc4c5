-- Fleet-wide single flight: one synthesis per content hash at a time,
-- across every replica (workers and the API's high-priority path).
--
-- A replica inserts the hash's row before it calls a provider and deletes
-- it in the very transaction that indexes the audio and bills the task that
-- paid for it. Everyone else needing the hash waits for that commit and
-- takes the audio as a cache hit. A lease is taken over when its holder
-- stops heartbeating (see `workers`) or when it expires, so the hashes of a
-- replica killed mid-call come back; `token` fences the old holder out:
-- only the token that holds the row may index the hash.
CREATE TABLE synthesis_leases (
    hash        text PRIMARY KEY,
    -- The replica holding it (`workers.id`).
    holder      uuid NOT NULL,
    -- The claim that holds it: a worker batch, or a high-priority request.
    token       uuid NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX synthesis_leases_token ON synthesis_leases (token);

-- An index row whose object was found missing from the bucket (deleted by
-- hand or by a bucket lifecycle rule). Lookups treat it as absent, so the
-- next job for the text synthesizes it again; that synthesis restores the
-- object under the same key and revives the row (and is billed as usual).
ALTER TABLE audio_objects ADD COLUMN lost_at timestamptz;

-- Since when a replica has heartbeated without a gap longer than its TTL.
-- After a Postgres outage every replica looks silent until its next
-- heartbeat; a replica takes over a silent holder's lease only once its own
-- heartbeats have run unbroken for a whole TTL, so it never mistakes a live
-- holder that could not reach Postgres either for a dead one.
ALTER TABLE workers ADD COLUMN heartbeating_since timestamptz NOT NULL DEFAULT now();

COMMENT ON COLUMN tasks.worker_batch_id IS
    'The claim that holds the task: a worker batch, or a high-priority request. Every write of a claim checks it (fencing).';
