//! Reading the finance views `usage_daily` and `usage_tenants` (defined in
//! the migrations; the README's "For finance" section explains each
//! column), as any role with finance access may ([`crate::finance`]).
//! Costs are returned as the exact decimal text Postgres holds.
//!
//! Every query names a range of UTC days, which the ledger's day index
//! serves; a month is summed from its days (the same figures as
//! `usage_monthly`, whose month no index serves). All tenants' usage is
//! read a page at a time ([`Store::usage_page`]), in a total order that a
//! [`UsageCursor`] continues.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Store, StoreError};

/// The granularity of a usage report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsagePeriod {
    /// Per UTC day: the `usage_daily` view.
    Day,
    /// Per UTC calendar month: the `usage_monthly` view's figures.
    Month,
}

/// One row of a finance view: a tenant's usage of one provider and dialect
/// in one period and currency.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct UsageRow {
    /// Tenant name.
    pub tenant: String,
    /// The day, or the first day of the month.
    pub period: NaiveDate,
    /// Provider that made the audio; `None` for failed tasks.
    pub provider: Option<String>,
    /// Dialect id.
    pub dialect: String,
    /// Currency of `cost`; `None` where nothing was produced (failed tasks).
    pub currency: Option<String>,
    /// Finished tasks.
    pub tasks: i64,
    /// Of which succeeded.
    pub succeeded: i64,
    /// Of which failed.
    pub failed: i64,
    /// Of which were served from stored audio.
    pub cache_hits: i64,
    /// Characters of all those tasks.
    pub characters: i64,
    /// Characters billed (synthesized for the task itself).
    pub billable_characters: i64,
    /// Cost, an exact decimal with six places.
    pub cost: String,
}

impl UsageRow {
    /// Column names of a usage table or CSV file, in field order, with
    /// `period` (`day` or `month`) naming the period column.
    pub fn columns(period: &str) -> [&str; 12] {
        [
            "tenant",
            period,
            "provider",
            "dialect",
            "currency",
            "tasks",
            "succeeded",
            "failed",
            "cache_hits",
            "characters",
            "billable_characters",
            "cost",
        ]
    }
}

/// Which usage to read, beyond the period and range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageFilter {
    /// One tenant (its id: [`Store::usage_tenant`]); all when `None`.
    pub tenant_id: Option<Uuid>,
    /// One provider; all when `None`.
    pub provider: Option<String>,
    /// One dialect; all when `None`.
    pub dialect: Option<String>,
}

/// Where a page of usage ends: the sort key of its last row, after which
/// the next page starts. Rows are ordered by period, tenant name, provider,
/// dialect and currency (absent provider and currency last).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageCursor {
    /// The row's period.
    pub period: NaiveDate,
    /// Its tenant's name.
    pub tenant: String,
    /// Its provider.
    pub provider: Option<String>,
    /// Its dialect.
    pub dialect: String,
    /// Its currency.
    pub currency: Option<String>,
}

impl UsageCursor {
    /// The cursor continuing after `row`.
    pub fn after(row: &UsageRow) -> Self {
        Self {
            period: row.period,
            tenant: row.tenant.clone(),
            provider: row.provider.clone(),
            dialect: row.dialect.clone(),
            currency: row.currency.clone(),
        }
    }
}

/// One page of usage.
#[derive(Debug, Clone, PartialEq)]
pub struct UsagePage {
    /// The rows, in the cursor's order.
    pub rows: Vec<UsageRow>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<UsageCursor>,
}

/// The rows of `usage_daily` in the range and filter, per period.
/// Parameters: $1 tenant id, $2 from, $3 to, $4 provider, $5 dialect, $6 the
/// cursor's period (also a lower bound on the days read).
fn grouped(period: UsagePeriod) -> &'static str {
    match period {
        UsagePeriod::Day => {
            "SELECT tenant, day AS period, provider, dialect, currency, tasks, succeeded,
                    failed, cache_hits, characters, billable_characters, cost
               FROM usage_daily
              WHERE day BETWEEN $2 AND $3
                AND ($1::uuid IS NULL OR tenant_id = $1)
                AND ($4::text IS NULL OR provider = $4)
                AND ($5::text IS NULL OR dialect = $5)
                AND ($6::date IS NULL OR day >= $6)"
        }
        UsagePeriod::Month => {
            "SELECT tenant, date_trunc('month', day)::date AS period, provider, dialect,
                    currency, sum(tasks)::bigint AS tasks, sum(succeeded)::bigint AS succeeded,
                    sum(failed)::bigint AS failed, sum(cache_hits)::bigint AS cache_hits,
                    sum(characters)::bigint AS characters,
                    sum(billable_characters)::bigint AS billable_characters,
                    sum(cost)::numeric(18, 6) AS cost
               FROM usage_daily
              WHERE day BETWEEN date_trunc('month', $2::date)::date
                            AND (date_trunc('month', $3::date) + interval '1 month - 1 day')::date
                AND ($1::uuid IS NULL OR tenant_id = $1)
                AND ($4::text IS NULL OR provider = $4)
                AND ($5::text IS NULL OR dialect = $5)
                AND ($6::date IS NULL OR day >= $6)
              GROUP BY tenant_id, tenant, 2, provider, dialect, currency"
        }
    }
}

/// The sort key of a row of [`grouped`], as a row value: `provider IS NULL`
/// and `currency IS NULL` before their values put absent ones last, and
/// keep every member non-null so that row comparison is a total order.
const SORT_KEY: &str = "period, tenant, provider IS NULL, coalesce(provider, ''), dialect, \
                        currency IS NULL, coalesce(currency, '')";

impl Store {
    /// Usage from `from` to `to` (inclusive, UTC) per `period`, for one
    /// tenant or (with `None`) all of them, every row at once: for a
    /// tenant's own usage, whose rows a range bounds. A monthly report
    /// covers the months that `from` and `to` fall in.
    pub async fn usage(
        &self,
        tenant_id: Option<Uuid>,
        from: NaiveDate,
        to: NaiveDate,
        period: UsagePeriod,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let filter = UsageFilter {
            tenant_id,
            ..UsageFilter::default()
        };
        self.read_usage(&filter, from, to, period, None, None).await
    }

    /// Up to `limit` rows of usage from `from` to `to` (inclusive, UTC) per
    /// `period`, after `after` (from the first row when `None`). A monthly
    /// report covers the months that `from` and `to` fall in. Each page
    /// reads the ledger's days from the cursor's period to `to`.
    pub async fn usage_page(
        &self,
        filter: &UsageFilter,
        from: NaiveDate,
        to: NaiveDate,
        period: UsagePeriod,
        after: Option<&UsageCursor>,
        limit: u32,
    ) -> Result<UsagePage, StoreError> {
        let limit = limit.max(1);
        // One more than asked tells whether another page follows.
        let mut rows = self
            .read_usage(filter, from, to, period, after, Some(i64::from(limit) + 1))
            .await?;
        let next = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            rows.last().map(UsageCursor::after)
        } else {
            None
        };
        Ok(UsagePage { rows, next })
    }

    /// The id of the tenant named `name`, read from `usage_tenants` (which
    /// a finance role may read, unlike `tenants`).
    pub async fn usage_tenant(&self, name: &str) -> Result<Uuid, StoreError> {
        sqlx::query_scalar("SELECT tenant_id FROM usage_tenants WHERE tenant = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("tenant `{name}`")))
    }

    async fn read_usage(
        &self,
        filter: &UsageFilter,
        from: NaiveDate,
        to: NaiveDate,
        period: UsagePeriod,
        after: Option<&UsageCursor>,
        limit: Option<i64>,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let sql = format!(
            "WITH grouped AS ({grouped})
             SELECT tenant, period, provider, dialect, currency, tasks, succeeded, failed,
                    cache_hits, characters, billable_characters, cost::text AS cost
               FROM grouped
              WHERE $6::date IS NULL
                 OR ({SORT_KEY}) > ($6, $7, $8::text IS NULL, coalesce($8::text, ''), $9,
                                    $10::text IS NULL, coalesce($10::text, ''))
              ORDER BY {SORT_KEY}
              LIMIT $11",
            grouped = grouped(period),
        );
        sqlx::query_as(&sql)
            .bind(filter.tenant_id)
            .bind(from)
            .bind(to)
            .bind(filter.provider.as_deref())
            .bind(filter.dialect.as_deref())
            .bind(after.map(|c| c.period))
            .bind(after.map(|c| c.tenant.as_str()))
            .bind(after.and_then(|c| c.provider.as_deref()))
            .bind(after.map(|c| c.dialect.as_str()))
            .bind(after.and_then(|c| c.currency.as_deref()))
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(not_migrated)
    }
}

/// A finance view or column this build reads that the database lacks means
/// its schema is older than this build: [`StoreError::Schema`].
fn not_migrated(err: sqlx::Error) -> StoreError {
    const UNDEFINED_TABLE: &str = "42P01";
    const UNDEFINED_COLUMN: &str = "42703";
    match err.as_database_error().and_then(|e| e.code()) {
        Some(code) if code == UNDEFINED_TABLE || code == UNDEFINED_COLUMN => {
            StoreError::Schema(format!(
                "the finance views are not what this version of ttsq reads ({err}): \
                 run `ttsq migrate` as the owner role"
            ))
        }
        _ => err.into(),
    }
}
