-- Today's fleet-wide usage (the tts_daily_usage and tts_cache_hit_ratio
-- gauges, read at every scrape) is a range scan on created_at alone; the
-- existing index leads with tenant_id.
CREATE INDEX IF NOT EXISTS usage_ledger_created_at ON usage_ledger (created_at);
