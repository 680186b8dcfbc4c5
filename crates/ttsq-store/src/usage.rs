//! Reading the finance views `usage_daily` and `usage_monthly` (defined in
//! the migrations; the README's "For finance" section explains each
//! column). Costs are returned as the exact decimal text Postgres holds.

use chrono::NaiveDate;
use uuid::Uuid;

use crate::{Store, StoreError};

/// The granularity of a usage report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsagePeriod {
    /// Per UTC day: the `usage_daily` view.
    Day,
    /// Per UTC calendar month: the `usage_monthly` view.
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

impl Store {
    /// Usage from `from` to `to` (inclusive, UTC) per `period`, for one
    /// tenant or (with `None`) all of them. A monthly report covers the
    /// months that `from` and `to` fall in.
    pub async fn usage(
        &self,
        tenant_id: Option<Uuid>,
        from: NaiveDate,
        to: NaiveDate,
        period: UsagePeriod,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let (view, column) = match period {
            UsagePeriod::Day => ("usage_daily", "day"),
            UsagePeriod::Month => ("usage_monthly", "month"),
        };
        let sql = format!(
            "SELECT tenant, {column} AS period, provider, dialect, currency, tasks, succeeded, failed,
                    cache_hits, characters, billable_characters, cost::text AS cost
               FROM {view}
              WHERE ($1::uuid IS NULL OR tenant_id = $1)
                AND {column} BETWEEN date_trunc('{column}', $2::date)::date AND $3::date
              ORDER BY {column}, tenant, provider NULLS LAST, dialect, currency NULLS LAST"
        );
        Ok(sqlx::query_as(&sql)
            .bind(tenant_id)
            .bind(from)
            .bind(to)
            .fetch_all(&self.pool)
            .await?)
    }
}
