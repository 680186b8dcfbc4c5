-- Live replicas (API and worker processes). Each heartbeats every few
-- seconds; provider quotas are split among the replicas seen recently, so
-- that all of them together stay within the vendor account's limits.
CREATE TABLE workers (
    id          uuid PRIMARY KEY,
    role        text NOT NULL CHECK (role IN ('api', 'worker', 'all')),
    pid         integer NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workers_last_seen ON workers (last_seen);
