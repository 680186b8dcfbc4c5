-- ttsq initial schema: tenants and hashed API keys, tasks, content-addressed
-- audio objects and the per-task usage ledger.

CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Only the SHA-256 of a key is stored; `prefix` is its visible start, so an
-- operator can tell keys apart without being able to use them.
CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    prefix      text NOT NULL,
    key_hash    bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

-- One row per stored audio object, keyed by content hash: the cache check
-- is one indexed lookup instead of an S3 round trip. Rows are never updated.
CREATE TABLE audio_objects (
    hash         text PRIMARY KEY CHECK (hash ~ '^[0-9a-f]{64}$'),
    s3_key       text NOT NULL,
    bytes        bigint NOT NULL CHECK (bytes >= 0),
    format       text NOT NULL,
    duration_ms  integer NOT NULL CHECK (duration_ms >= 0),
    provider     text NOT NULL,
    sha256       text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tasks (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants (id),
    status           text NOT NULL CHECK (status IN ('queued', 'processing', 'succeeded', 'failed', 'cancelled')),
    priority         text NOT NULL CHECK (priority IN ('normal', 'high')),
    text             text NOT NULL,
    characters       integer NOT NULL CHECK (characters > 0),
    dialect          text NOT NULL,
    voice            text NOT NULL,
    model            text NOT NULL,
    speed            double precision NOT NULL,
    emotion          text,
    format           text NOT NULL,
    content_hash     text NOT NULL,
    cache_hit        boolean NOT NULL DEFAULT false,
    audio_hash       text REFERENCES audio_objects (hash),
    provider         text,
    error_code       text,
    error_message    text,
    attempts         integer NOT NULL DEFAULT 0,
    metadata         jsonb,
    callback_url     text,
    idempotency_key  text,
    -- The worker batch that last claimed the task; lets ops (and tests) see
    -- how deliveries were grouped.
    worker_batch_id  uuid,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    CHECK ((status = 'succeeded') = (audio_hash IS NOT NULL))
);
CREATE INDEX tasks_tenant_created ON tasks (tenant_id, created_at DESC, id DESC);
CREATE INDEX tasks_unfinished ON tasks (status, created_at) WHERE status IN ('queued', 'processing');
CREATE UNIQUE INDEX tasks_idempotency ON tasks (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- One row per finished task: what finance bills from. `task_id` is unique,
-- so no task is ever billed twice, whatever retries or redeliveries happen.
CREATE TABLE usage_ledger (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id              uuid NOT NULL UNIQUE REFERENCES tasks (id),
    tenant_id            uuid NOT NULL REFERENCES tenants (id),
    provider             text,
    dialect              text NOT NULL,
    voice                text NOT NULL,
    status               text NOT NULL,
    characters           integer NOT NULL,
    billable_characters  integer NOT NULL CHECK (billable_characters >= 0),
    cache_hit            boolean NOT NULL,
    cost                 numeric(18, 6) NOT NULL DEFAULT 0,
    created_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_ledger_tenant_day ON usage_ledger (tenant_id, created_at);

-- Per tenant, UTC day, provider and dialect: what finance reads.
CREATE VIEW usage_daily AS
SELECT tenant_id,
       (created_at AT TIME ZONE 'UTC')::date AS day,
       provider,
       dialect,
       count(*)                                  AS tasks,
       count(*) FILTER (WHERE cache_hit)         AS cache_hits,
       sum(characters)::bigint                   AS characters,
       sum(billable_characters)::bigint          AS billable_characters,
       sum(cost)                                 AS cost
FROM usage_ledger
GROUP BY 1, 2, 3, 4;
