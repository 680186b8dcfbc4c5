-- Finance access: a read-only role (`ttsq migrate --finance-role ROLE`,
-- docs/operations.md "Finance access") may read the finance relations —
-- usage_daily, usage_monthly, usage_ledger and usage_tenants — and nothing
-- else: no texts, tasks, keys, webhook secrets nor the audit log.

-- Tenant names for finance, which may not read `tenants` (limits, cache
-- pools, webhook settings): the ledger names a tenant by its id only. The
-- views run with their owner's rights, so they need no grant on `tenants`.
CREATE VIEW usage_tenants AS
SELECT id AS tenant_id,
       name AS tenant
FROM tenants;
COMMENT ON VIEW usage_tenants IS
    'Every tenant''s id and name, for finance: what the ledger''s tenant_id stands for.';

-- The finance views filter on a range of UTC days (a page of
-- GET /v1/admin/usage, a dashboard's time range): with the day indexed that
-- is an index range scan, not a scan of the whole ledger.
CREATE INDEX usage_ledger_day ON usage_ledger (((created_at AT TIME ZONE 'UTC')::date));

-- The roles given finance access. A migration that replaces a view drops
-- its grants; every `ttsq migrate` run (and every run that applies
-- migrations) grants these roles again, from this list. The service role
-- may not read nor write it.
CREATE TABLE finance_roles (
    role        text PRIMARY KEY CHECK (length(role) BETWEEN 1 AND 63),
    granted_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE finance_roles IS
    'Database roles with read-only finance access, granted again after every migration run.';
