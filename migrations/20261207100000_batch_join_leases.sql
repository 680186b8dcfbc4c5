-- One replica at a time joins a batch's audio (`concatenate: true`), and
-- only so many times (issue 16: a batch too large to join crash-looped
-- every worker in turn).
--
-- A replica takes a `concatenating` batch with one conditional UPDATE that
-- sets these columns and counts the take in `join_attempts`, so that a
-- replica killed mid-join (OOM, kill -9) uses an attempt too. It renews
-- `join_expires_at` while it joins; a lease that expired (its holder died)
-- is taken over. Only the token that holds the lease may complete the
-- batch. Once `join_attempts` reaches `batches.join_attempts` and no lease
-- is live, the batch completes with `concatenate_error`.
ALTER TABLE batches
    -- The replica joining it (`workers.id`), for operators.
    ADD COLUMN join_holder     uuid,
    -- The current take; every write of the holder checks it (fencing).
    ADD COLUMN join_token      uuid,
    -- Until when the take holds; also when a failed join may be tried again.
    ADD COLUMN join_expires_at timestamptz,
    -- Takes so far, interrupted ones included.
    ADD COLUMN join_attempts   integer NOT NULL DEFAULT 0 CHECK (join_attempts >= 0),
    -- Why the last take failed, when it failed rather than vanished.
    ADD COLUMN join_error      text;
