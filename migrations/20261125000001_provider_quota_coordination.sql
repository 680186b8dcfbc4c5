-- Provider quotas coordinated across every replica (API and workers).
--
-- A vendor's quota belongs to the account, so all replicas take from one
-- limiter here instead of each holding a static share of it. This is soft
-- state: replicas write it on a pool with `synchronous_commit = off`, and
-- losing the last few writes in a crash costs at most a moment of pacing.

-- One row per provider: GCRA "theoretical arrival times" of the request and
-- character limits, and the pause a 429's Retry-After imposes on everyone.
CREATE TABLE provider_quota_state (
    provider       text PRIMARY KEY,
    request_tat    timestamptz NOT NULL DEFAULT '-infinity',
    character_tat  timestamptz NOT NULL DEFAULT '-infinity',
    paused_until   timestamptz NOT NULL DEFAULT '-infinity'
);

-- Concurrency slots 0..max_concurrent of each provider, while held. A lease
-- expires on its own (the provider's request timeout plus a margin), so the
-- slots of a killed replica come back.
CREATE TABLE provider_quota_leases (
    provider    text NOT NULL,
    slot        integer NOT NULL,
    holder      uuid NOT NULL,
    lease       uuid NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (provider, slot)
);

-- Checks and takes one request's worth of a provider's quota in one round
-- trip. The limits come as arguments, so configuration changes take effect
-- at once (NULL: not limited):
--   p_requests_per_second    GCRA rate of requests; one request of burst
--   p_characters_per_second  GCRA rate of characters ...
--   p_character_burst        ... with this many characters of burst; a
--                            larger request passes once the bucket is full
--   p_max_concurrent         slots 0..p_max_concurrent-1
-- Returns granted = true with the slot taken (NULL without a concurrency
-- limit), or granted = false with how long to wait (ms) and why: `paused`,
-- `requests`, `characters` or `concurrency` (whose wait is only a hint: a
-- slot comes back whenever its holder releases it).
CREATE FUNCTION provider_quota_acquire(
    p_provider                text,
    p_holder                  uuid,
    p_lease                   uuid,
    p_characters              integer,
    p_requests_per_second     double precision,
    p_characters_per_second   double precision,
    p_character_burst         double precision,
    p_max_concurrent          integer,
    p_lease_ttl_ms            integer
) RETURNS TABLE (granted boolean, slot integer, wait_ms double precision, reason text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    st          provider_quota_state%ROWTYPE;
    now_ts      timestamptz;
    wait        double precision := 0;
    why         text := NULL;
    candidate   double precision;
    chars       double precision := greatest(p_characters, 0);
    free_slot   integer := NULL;
    held        integer;
    next_expiry timestamptz;
BEGIN
    SELECT * INTO st FROM provider_quota_state WHERE provider = p_provider FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO provider_quota_state (provider) VALUES (p_provider)
            ON CONFLICT (provider) DO NOTHING;
        SELECT * INTO st FROM provider_quota_state WHERE provider = p_provider FOR UPDATE;
    END IF;
    -- After the lock: time spent waiting for it has passed.
    now_ts := clock_timestamp();

    IF st.paused_until > now_ts THEN
        RETURN QUERY SELECT false, NULL::integer,
            (extract(epoch FROM st.paused_until - now_ts) * 1000)::double precision, 'paused'::text;
        RETURN;
    END IF;

    -- Requests: one of burst, so conforming when the TAT has passed.
    IF p_requests_per_second > 0 AND st.request_tat > now_ts THEN
        wait := extract(epoch FROM st.request_tat - now_ts) * 1000;
        why := 'requests';
    END IF;

    -- Characters: conforming when the new TAT is within the burst of now,
    -- or (for a request larger than the burst) when the old TAT has passed.
    IF p_characters_per_second > 0 AND st.character_tat > now_ts THEN
        candidate := extract(epoch FROM st.character_tat - now_ts) * 1000
            + least(0, chars - greatest(p_character_burst, 0)) / p_characters_per_second * 1000;
        IF candidate > 0 AND candidate > wait THEN
            wait := candidate;
            why := 'characters';
        END IF;
    END IF;

    IF p_max_concurrent IS NOT NULL THEN
        SELECT count(*), min(l.expires_at) INTO held, next_expiry
          FROM provider_quota_leases l
         WHERE l.provider = p_provider AND l.expires_at > now_ts;
        IF held < p_max_concurrent THEN
            SELECT s INTO free_slot
              FROM generate_series(0, p_max_concurrent - 1) AS s
             WHERE NOT EXISTS (
                   SELECT 1 FROM provider_quota_leases l
                    WHERE l.provider = p_provider AND l.slot = s AND l.expires_at > now_ts)
             ORDER BY s
             LIMIT 1;
        END IF;
        IF free_slot IS NULL AND wait = 0 THEN
            wait := greatest(coalesce(extract(epoch FROM next_expiry - now_ts) * 1000, 1), 1);
            why := 'concurrency';
        END IF;
    END IF;

    IF wait > 0 THEN
        RETURN QUERY SELECT false, NULL::integer, wait, why;
        RETURN;
    END IF;

    UPDATE provider_quota_state
       SET request_tat = CASE WHEN p_requests_per_second > 0
                THEN greatest(request_tat, now_ts) + make_interval(secs => 1.0 / p_requests_per_second)
                ELSE request_tat END,
           character_tat = CASE WHEN p_characters_per_second > 0
                THEN greatest(character_tat, now_ts) + make_interval(secs => chars / p_characters_per_second)
                ELSE character_tat END
     WHERE provider = p_provider;

    IF free_slot IS NOT NULL THEN
        INSERT INTO provider_quota_leases (provider, slot, holder, lease, expires_at)
        VALUES (p_provider, free_slot, p_holder, p_lease,
                now_ts + make_interval(secs => p_lease_ttl_ms / 1000.0))
        ON CONFLICT ON CONSTRAINT provider_quota_leases_pkey DO UPDATE
           SET holder = EXCLUDED.holder, lease = EXCLUDED.lease, expires_at = EXCLUDED.expires_at;
    END IF;

    RETURN QUERY SELECT true, free_slot, 0::double precision, NULL::text;
END;
$$;
