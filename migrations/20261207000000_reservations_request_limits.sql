-- A queued or claimed task reserves what it is expected to cost, so that a
-- monthly budget counts work accepted but not yet billed: the estimate at
-- the price of the dialect's first provider, in that provider's currency.
-- The reservation ends with the task (succeeded: its ledger row carries the
-- actual cost; failed, cancelled or a cache hit: nothing is billed).
ALTER TABLE tasks
    ADD COLUMN reserved_cost     numeric(18, 6) CHECK (reserved_cost >= 0),
    ADD COLUMN reserved_currency text CHECK (reserved_currency ~ '^[A-Z]{3}$');

COMMENT ON COLUMN tasks.reserved_cost IS
    'Estimated cost reserved against the tenant''s monthly budget while the task is queued or processing.';

-- Requests per UTC day, cache hits included: every accepted task adds rows
-- (task, audit, ledger, webhook) whether or not anything is billed.
ALTER TABLE tenants ADD COLUMN daily_requests bigint CHECK (daily_requests > 0);

COMMENT ON COLUMN tenants.daily_requests IS
    'Most tasks the tenant may submit per UTC day, cache hits and failures included; NULL: unlimited.';

-- The audit log's text digest is keyed (audit.text_key), so short texts
-- cannot be found by hashing guesses; the column keeps its first name.
COMMENT ON COLUMN audit_log.text_sha256 IS
    'HMAC-SHA256 of the normalised text under audit.text_key (hex); never the text, nor a plain hash of it.';
