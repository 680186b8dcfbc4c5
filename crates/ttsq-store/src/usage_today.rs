//! Today's fleet-wide usage, for the `tts_daily_usage` and
//! `tts_cache_hit_ratio` gauges.

use crate::{Store, StoreError};

/// Finished tasks and billable characters since 00:00 UTC, all tenants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageToday {
    /// Ledger rows of tasks tenants see (finished tasks, failed ones
    /// included; a long job counts once, not its chunks).
    pub tasks: i64,
    /// Of those, served from the cache.
    pub cache_hits: i64,
    /// Billable characters (chunks' rows included: they bill).
    pub billable_characters: i64,
}

impl Store {
    /// Sums today's (UTC) ledger rows; one range scan on `created_at`.
    pub async fn usage_today(&self) -> Result<UsageToday, StoreError> {
        let (tasks, cache_hits, billable_characters): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE long_task_id IS NULL), \
                    count(*) FILTER (WHERE long_task_id IS NULL AND cache_hit), \
                    coalesce(sum(billable_characters), 0)::bigint \
             FROM usage_ledger \
             WHERE created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
        )
        .fetch_one(self.pool())
        .await?;
        Ok(UsageToday {
            tasks,
            cache_hits,
            billable_characters,
        })
    }
}
