-- Tenant limits, which key submitted a task, a richer append-only ledger,
-- the audit log and the finance views.

-- Limits per tenant; NULL means unlimited. The budget is in the tenant's
-- currency and is compared with the ledger's cost in that currency.
ALTER TABLE tenants
    ADD COLUMN daily_characters  bigint CHECK (daily_characters > 0),
    ADD COLUMN monthly_budget    numeric(18, 6) CHECK (monthly_budget >= 0),
    ADD COLUMN max_queued_jobs   integer CHECK (max_queued_jobs > 0),
    ADD COLUMN currency          text NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$'),
    ADD COLUMN updated_at        timestamptz NOT NULL DEFAULT now();

-- The visible prefix of the key that submitted a task (never the key).
ALTER TABLE tasks ADD COLUMN key_prefix text;

-- Today's characters per tenant are summed over this index at submission.
CREATE INDEX tasks_tenant_open ON tasks (tenant_id) WHERE status IN ('queued', 'processing');

ALTER TABLE usage_ledger
    ADD COLUMN key_prefix    text,
    ADD COLUMN currency      text,
    ADD COLUMN submitted_at  timestamptz;
UPDATE usage_ledger l
   SET key_prefix = t.key_prefix,
       submitted_at = t.created_at,
       currency = CASE WHEN l.provider IS NOT NULL THEN 'USD' END
  FROM tasks t
 WHERE t.id = l.task_id;
COMMENT ON TABLE usage_ledger IS
    'One row per finished task; append-only (UPDATE, DELETE and TRUNCATE are refused).';
COMMENT ON COLUMN usage_ledger.created_at IS 'When the task finished and was billed (UTC).';
COMMENT ON COLUMN usage_ledger.submitted_at IS 'When the task was accepted (UTC).';
COMMENT ON COLUMN usage_ledger.currency IS
    'Currency of cost: the producing provider''s configured currency; NULL when no provider made audio (failed).';

-- Append-only tables refuse changes to existing rows, whoever asks.
CREATE FUNCTION ttsq_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER usage_ledger_append_only
    BEFORE UPDATE OR DELETE ON usage_ledger
    FOR EACH ROW EXECUTE FUNCTION ttsq_refuse_change();
CREATE TRIGGER usage_ledger_no_truncate
    BEFORE TRUNCATE ON usage_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION ttsq_refuse_change();

-- Submissions and admin actions: who, with which key, what, when. Texts are
-- never stored here, only their length and SHA-256.
CREATE TABLE audit_log (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    actor        text NOT NULL,
    tenant_id    uuid REFERENCES tenants (id),
    key_prefix   text,
    action       text NOT NULL,
    target       text,
    text_chars   integer,
    text_sha256  text CHECK (text_sha256 ~ '^[0-9a-f]{64}$'),
    detail       jsonb
);
CREATE INDEX audit_log_tenant_at ON audit_log (tenant_id, at);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION ttsq_refuse_change();
CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION ttsq_refuse_change();

-- The role running migrations is the one the app connects as; where it is
-- not a superuser, it keeps only INSERT and SELECT on the append-only tables.
-- (A superuser ignores grants; the triggers above still hold for it.)
DO $$
BEGIN
    EXECUTE format('REVOKE UPDATE, DELETE, TRUNCATE ON usage_ledger, audit_log FROM PUBLIC, %I',
                   current_user);
END
$$;

-- Finance: per tenant, UTC day (of finishing), provider, dialect and currency.
DROP VIEW usage_daily;
CREATE VIEW usage_daily AS
SELECT l.tenant_id,
       t.name                                            AS tenant,
       (l.created_at AT TIME ZONE 'UTC')::date           AS day,
       l.provider,
       l.dialect,
       l.currency,
       count(*)                                          AS tasks,
       count(*) FILTER (WHERE l.status = 'succeeded')    AS succeeded,
       count(*) FILTER (WHERE l.status = 'failed')       AS failed,
       count(*) FILTER (WHERE l.cache_hit)               AS cache_hits,
       sum(l.characters)::bigint                         AS characters,
       sum(l.billable_characters)::bigint                AS billable_characters,
       sum(l.cost)::numeric(18, 6)                       AS cost
FROM usage_ledger l
JOIN tenants t ON t.id = l.tenant_id
GROUP BY l.tenant_id, t.name, 3, l.provider, l.dialect, l.currency;

-- The same per UTC calendar month; `month` is the month's first day.
CREATE VIEW usage_monthly AS
SELECT l.tenant_id,
       t.name                                                            AS tenant,
       date_trunc('month', l.created_at AT TIME ZONE 'UTC')::date        AS month,
       l.provider,
       l.dialect,
       l.currency,
       count(*)                                          AS tasks,
       count(*) FILTER (WHERE l.status = 'succeeded')    AS succeeded,
       count(*) FILTER (WHERE l.status = 'failed')       AS failed,
       count(*) FILTER (WHERE l.cache_hit)               AS cache_hits,
       sum(l.characters)::bigint                         AS characters,
       sum(l.billable_characters)::bigint                AS billable_characters,
       sum(l.cost)::numeric(18, 6)                       AS cost
FROM usage_ledger l
JOIN tenants t ON t.id = l.tenant_id
GROUP BY l.tenant_id, t.name, 3, l.provider, l.dialect, l.currency;

-- Warnings already given: one per tenant, limit and period, across replicas.
CREATE TABLE tenant_limit_warnings (
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    limit_name    text NOT NULL,
    period_start  date NOT NULL,
    at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, limit_name, period_start)
);
