//! Per-tenant limits: characters per UTC day, a budget per UTC month (in the
//! tenant's currency), most open jobs and requests per UTC day. Each is
//! optional (NULL = unlimited).
//!
//! A submission is admitted inside the transaction that inserts its task,
//! after locking the tenant row (`FOR NO KEY UPDATE`): a tenant's
//! submissions are serialized while it has any limit, so concurrent
//! submissions never together overshoot a limit. Tenants without limits
//! take no lock.
//!
//! What counts:
//! - daily characters: characters of the tenant's tasks accepted this UTC
//!   day that may be billed — queued, processing or succeeded without a
//!   cache hit (failed and cancelled ones are not billed, so do not count);
//! - monthly budget: the ledger's cost this UTC month in the tenant's
//!   currency, plus what the tenant's open (queued or processing) tasks
//!   reserved when they were accepted: their characters at the price of
//!   their route's first provider. A job is refused when its own estimate
//!   would pass the budget, so accepted work never overshoots it by more
//!   than what its providers charge beyond their estimates (a fallback to a
//!   dearer provider). A reservation ends with its task: the ledger row
//!   then carries the actual cost, or nothing is billed (failed, cancelled,
//!   a cache hit);
//! - max queued jobs: tasks `queued` or `processing`; only jobs that enter
//!   the queue are refused by it;
//! - daily requests: tasks accepted this UTC day, whatever became of them.
//!   Cache hits bill nothing, but every task still writes rows (task,
//!   ledger, audit, webhook): this is the limit that bounds them.
//!
//! Cache hits are refused by the request limit only.
//!
//! A long job counts once, as the job the tenant submitted (its whole text,
//! one request, one open job): its chunks' rows are left out of the counts.
//! The budget counts the chunks instead, since they reserve and bill.

use std::time::Duration;

use chrono::{Datelike, NaiveDate, Utc};
use uuid::Uuid;

use crate::{
    Store, StoreError,
    limit_usage::{LimitExceeded, LimitKind, LimitUsage},
    new_task::CostEstimate,
};

/// Seconds a client is told to wait when its queue is full: jobs finish
/// within seconds, so retrying soon is right.
const QUEUE_FULL_RETRY: Duration = Duration::from_secs(5);

/// Fraction of a limit at which a warning is logged, once per period.
pub const WARN_FRACTION: f64 = 0.8;

/// What a submission would add, for [`admit_jobs`] and [`Headroom::admit`].
#[derive(Debug, Default, Clone)]
pub(crate) struct Charge<'a> {
    /// Billable characters; 0 for what bills nothing (cache hits, failures).
    pub characters: i64,
    /// What it costs, or is expected to: the actual cost of an inline
    /// synthesis, the estimates of queued or claimed jobs. Only amounts in
    /// the tenant's currency count against its budget.
    pub costs: Vec<CostEstimate<'a>>,
    /// Tasks submitted.
    pub requests: i64,
}

#[derive(Debug, sqlx::FromRow)]
struct LimitsRow {
    daily_characters: Option<i64>,
    monthly_budget: Option<f64>,
    max_queued_jobs: Option<i32>,
    daily_requests: Option<i64>,
    currency: String,
}

impl LimitsRow {
    fn unlimited(&self) -> bool {
        self.daily_characters.is_none()
            && self.monthly_budget.is_none()
            && self.max_queued_jobs.is_none()
            && self.daily_requests.is_none()
    }
}

const LIMITS_SELECT: &str = "SELECT daily_characters, monthly_budget::float8 AS monthly_budget,
        max_queued_jobs, daily_requests, currency FROM tenants WHERE id = $1";

/// Admits `charge` for `jobs` jobs at once (a batch) for `tenant_id` inside
/// `tx`: all of them or none, or [`StoreError::LimitExceeded`]. The charge's
/// characters are their sum. Locks the tenant row until `tx` ends when the
/// tenant has limits; returns the usage of each limit it has.
pub(crate) async fn admit_jobs(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant_id: Uuid,
    charge: &Charge<'_>,
    jobs: i64,
) -> Result<Vec<LimitUsage>, StoreError> {
    let Some(mut headroom) = Headroom::lock(tx, tenant_id).await? else {
        return Ok(Vec::new());
    };
    let usage = headroom.admit(charge, jobs)?;
    warn_once_past_threshold(tx, tenant_id, &usage).await?;
    Ok(usage)
}

/// A tenant's limits and what is in use, read under its row lock: admits a
/// run of submissions in memory with the outcomes they would have one after
/// another, each admitted one counting against the next.
#[derive(Debug)]
pub(crate) struct Headroom {
    limits: LimitsRow,
    /// Billable characters today (0 when there is no daily limit).
    characters: i64,
    /// Cost this month in the tenant's currency (0 when there is no budget).
    spent: f64,
    /// Jobs queued or processing (0 when there is no queue limit).
    open: i64,
    /// Tasks submitted today (0 when there is no request limit).
    requests: i64,
}

impl Headroom {
    /// Locks the tenant row (`FOR NO KEY UPDATE`) and reads what is in use
    /// of each limit it has; `None`, taking no lock, when it has none.
    pub(crate) async fn lock(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        tenant_id: Uuid,
    ) -> Result<Option<Self>, StoreError> {
        let Some(limits) = sqlx::query_as::<_, LimitsRow>(LIMITS_SELECT)
            .bind(tenant_id)
            .fetch_optional(&mut **tx)
            .await?
        else {
            return Ok(None);
        };
        if limits.unlimited() {
            return Ok(None);
        }
        // Serializes this tenant's submissions until the task is committed. NO
        // KEY UPDATE, so foreign-key checks of other inserts are not blocked.
        let limits = sqlx::query_as::<_, LimitsRow>(&format!("{LIMITS_SELECT} FOR NO KEY UPDATE"))
            .bind(tenant_id)
            .fetch_one(&mut **tx)
            .await?;
        let characters = match limits.daily_characters {
            Some(_) => characters_today(tx, tenant_id).await?,
            None => 0,
        };
        let spent = match limits.monthly_budget {
            Some(_) => spent_this_month(tx, tenant_id, &limits.currency).await?,
            None => 0.0,
        };
        let open = match limits.max_queued_jobs {
            Some(_) => open_jobs(tx, tenant_id).await?,
            None => 0,
        };
        let requests = match limits.daily_requests {
            Some(_) => requests_today(tx, tenant_id).await?,
            None => 0,
        };
        Ok(Some(Self {
            limits,
            characters,
            spent,
            open,
            requests,
        }))
    }

    /// Admits `charge` for `jobs` queued jobs, or refuses it; an admitted
    /// charge is counted as in use. Returns the usage of each limit.
    pub(crate) fn admit(
        &mut self,
        charge: &Charge<'_>,
        jobs: i64,
    ) -> Result<Vec<LimitUsage>, LimitExceeded> {
        let billable = charge.characters > 0;
        let characters = if billable { charge.characters } else { 0 };
        let cost: f64 = charge
            .costs
            .iter()
            .filter(|c| c.currency == self.limits.currency)
            .map(|c| c.cost)
            .sum();
        let mut usage = Vec::new();
        if let Some(max) = self.limits.daily_requests {
            let (used, more) = (self.requests, charge.requests);
            self.weigh(
                &mut usage,
                (LimitKind::DailyRequests, max as f64),
                (used as f64, more as f64),
                used + more > max,
            )?;
        }
        if let Some(max) = self.limits.daily_characters {
            let used = self.characters;
            self.weigh(
                &mut usage,
                (LimitKind::DailyCharacters, max as f64),
                (used as f64, characters as f64),
                billable && used + characters > max,
            )?;
        }
        if let Some(max) = self.limits.monthly_budget {
            let spent = self.spent;
            self.weigh(
                &mut usage,
                (LimitKind::MonthlyBudget, max),
                (spent, cost),
                billable && (spent >= max || spent + cost > max),
            )?;
        }
        if let Some(max) = self.limits.max_queued_jobs {
            let open = self.open;
            self.weigh(
                &mut usage,
                (LimitKind::MaxQueuedJobs, f64::from(max)),
                (open as f64, jobs as f64),
                jobs > 0 && open + jobs > i64::from(max),
            )?;
        }
        self.characters += characters;
        if billable {
            self.spent += cost;
        }
        self.open += jobs;
        self.requests += charge.requests;
        Ok(usage)
    }

    /// One limit of `(kind, max)` with `used` in use and `requested` more:
    /// refused when `over`, else its usage (this submission included) goes
    /// to `usage`.
    fn weigh(
        &self,
        usage: &mut Vec<LimitUsage>,
        (limit, max): (LimitKind, f64),
        (used, requested): (f64, f64),
        over: bool,
    ) -> Result<(), LimitExceeded> {
        if over {
            return Err(LimitExceeded {
                limit,
                max,
                used,
                requested,
                currency: (limit == LimitKind::MonthlyBudget).then(|| self.limits.currency.clone()),
                retry_after: match limit {
                    LimitKind::DailyCharacters | LimitKind::DailyRequests => until_next_utc_day(),
                    LimitKind::MonthlyBudget => until_next_utc_month(),
                    LimitKind::MaxQueuedJobs => QUEUE_FULL_RETRY,
                },
            });
        }
        usage.push(LimitUsage {
            limit,
            max,
            used: used + requested,
        });
        Ok(())
    }
}

async fn characters_today(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant_id: Uuid,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(sum(characters), 0)::bigint FROM tasks
          WHERE tenant_id = $1 AND parent_id IS NULL
            AND created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
            AND NOT cache_hit AND status NOT IN ('failed', 'cancelled')",
    )
    .bind(tenant_id)
    .fetch_one(&mut **tx)
    .await?)
}

/// The ledger's cost this UTC month in `currency`, plus what the tenant's
/// open tasks reserved in it.
async fn spent_this_month(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant_id: Uuid,
    currency: &str,
) -> Result<f64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT ((SELECT coalesce(sum(cost), 0) FROM usage_ledger
                   WHERE tenant_id = $1 AND currency = $2
                     AND created_at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')
               + (SELECT coalesce(sum(reserved_cost), 0) FROM tasks
                   WHERE tenant_id = $1 AND status IN ('queued', 'processing')
                     AND reserved_currency = $2))::float8",
    )
    .bind(tenant_id)
    .bind(currency)
    .fetch_one(&mut **tx)
    .await?)
}

async fn requests_today(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant_id: Uuid,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM tasks
          WHERE tenant_id = $1 AND parent_id IS NULL
            AND created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
    )
    .bind(tenant_id)
    .fetch_one(&mut **tx)
    .await?)
}

async fn open_jobs(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant_id: Uuid,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM tasks
          WHERE tenant_id = $1 AND parent_id IS NULL AND status IN ('queued', 'processing')",
    )
    .bind(tenant_id)
    .fetch_one(&mut **tx)
    .await?)
}

/// Logs a warning the first time in a period (UTC day; month for the
/// budget) that a limit passes [`WARN_FRACTION`]; a row per tenant, limit
/// and period makes it once across all replicas.
pub(crate) async fn warn_once_past_threshold(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant_id: Uuid,
    usage: &[LimitUsage],
) -> Result<(), StoreError> {
    for u in usage.iter().filter(|u| u.fraction() >= WARN_FRACTION) {
        let period = match u.limit {
            LimitKind::MonthlyBudget => "date_trunc('month', now() AT TIME ZONE 'UTC')::date",
            _ => "(now() AT TIME ZONE 'UTC')::date",
        };
        let first: Option<i32> = sqlx::query_scalar(&format!(
            "INSERT INTO tenant_limit_warnings (tenant_id, limit_name, period_start)
             VALUES ($1, $2, {period})
             ON CONFLICT DO NOTHING RETURNING 1"
        ))
        .bind(tenant_id)
        .bind(u.limit.as_str())
        .fetch_optional(&mut **tx)
        .await?;
        if first.is_some() {
            tracing::warn!(
                tenant = %tenant_id,
                limit = u.limit.as_str(),
                used = u.used,
                max = u.max,
                fraction = u.fraction(),
                "tenant passed 80 % of a limit"
            );
        }
    }
    Ok(())
}

fn until_next_utc_day() -> Duration {
    let now = Utc::now();
    let next = now.date_naive().succ_opt().unwrap_or(NaiveDate::MAX);
    until(now, next)
}

fn until_next_utc_month() -> Duration {
    let now = Utc::now();
    let today = now.date_naive();
    let (year, month) = if today.month() == 12 {
        (today.year() + 1, 1)
    } else {
        (today.year(), today.month() + 1)
    };
    let next = NaiveDate::from_ymd_opt(year, month, 1).unwrap_or(NaiveDate::MAX);
    until(now, next)
}

/// Whole seconds from `now` to the start of `day` (UTC), at least 1.
fn until(now: chrono::DateTime<Utc>, day: NaiveDate) -> Duration {
    let start = day.and_time(chrono::NaiveTime::MIN).and_utc();
    let millis = u64::try_from((start - now).num_milliseconds()).unwrap_or(0);
    Duration::from_secs(millis.div_ceil(1000).max(1))
}

impl Store {
    /// The usage of each limit `tenant_id` has, as of now.
    pub async fn limit_usage(&self, tenant_id: Uuid) -> Result<Vec<LimitUsage>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let Some(limits) = sqlx::query_as::<_, LimitsRow>(LIMITS_SELECT)
            .bind(tenant_id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(Vec::new());
        };
        let mut usage = Vec::new();
        if let Some(max) = limits.daily_characters {
            usage.push(LimitUsage {
                limit: LimitKind::DailyCharacters,
                max: max as f64,
                used: characters_today(&mut tx, tenant_id).await? as f64,
            });
        }
        if let Some(max) = limits.monthly_budget {
            usage.push(LimitUsage {
                limit: LimitKind::MonthlyBudget,
                max,
                used: spent_this_month(&mut tx, tenant_id, &limits.currency).await?,
            });
        }
        if let Some(max) = limits.max_queued_jobs {
            usage.push(LimitUsage {
                limit: LimitKind::MaxQueuedJobs,
                max: f64::from(max),
                used: open_jobs(&mut tx, tenant_id).await? as f64,
            });
        }
        if let Some(max) = limits.daily_requests {
            usage.push(LimitUsage {
                limit: LimitKind::DailyRequests,
                max: max as f64,
                used: requests_today(&mut tx, tenant_id).await? as f64,
            });
        }
        tx.rollback().await?;
        Ok(usage)
    }

    /// The latest usage fraction of each limit of each tenant this process
    /// admitted a job for: what a metrics gauge reports.
    pub fn limit_fractions(&self) -> Vec<(Uuid, LimitKind, f64)> {
        self.fractions
            .lock()
            .map(|map| map.iter().map(|(&(t, k), &f)| (t, k, f)).collect())
            .unwrap_or_default()
    }

    /// Remembers the usage an admission reported, for [`Store::limit_fractions`].
    pub(crate) fn record_usage(&self, tenant_id: Uuid, usage: &[LimitUsage]) {
        if usage.is_empty() {
            return;
        }
        if let Ok(mut map) = self.fractions.lock() {
            for u in usage {
                map.insert((tenant_id, u.limit), u.fraction());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_runs_to_the_next_utc_midnight() {
        let now = "2026-03-31T23:59:58.5Z"
            .parse::<chrono::DateTime<Utc>>()
            .unwrap();
        let next_day = NaiveDate::from_ymd_opt(2026, 4, 1).unwrap();
        assert_eq!(until(now, next_day), Duration::from_secs(2));
        assert!(until_next_utc_day() <= Duration::from_secs(86_400));
        assert!(until_next_utc_month() <= Duration::from_secs(31 * 86_400));
    }

    #[test]
    fn a_zero_budget_is_exhausted() {
        let u = LimitUsage {
            limit: LimitKind::MonthlyBudget,
            max: 0.0,
            used: 0.0,
        };
        assert_eq!(u.fraction(), 1.0);
    }
}
