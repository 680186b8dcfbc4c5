//! `GET /v1/usage`: the calling tenant's own usage by UTC day, read from
//! the `usage_daily` finance view. Only the key's tenant is ever shown.

use axum::{
    Json,
    extract::{Query, State, rejection::QueryRejection},
};
use chrono::{Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use ttsq_store::{UsagePeriod, UsageRow};

use crate::{ApiContext, ApiError, auth::Caller};

/// Longest range one request may cover, in days.
const MAX_DAYS: i64 = 366;

/// Query of `GET /v1/usage`.
#[derive(Deserialize)]
pub struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
}

/// One day's usage of one provider and dialect.
#[derive(Serialize)]
struct DayView {
    day: NaiveDate,
    provider: Option<String>,
    dialect: String,
    currency: Option<String>,
    tasks: i64,
    succeeded: i64,
    failed: i64,
    cache_hits: i64,
    characters: i64,
    billable_characters: i64,
    /// Exact decimal, as a string.
    cost: String,
}

/// Body of `GET /v1/usage`.
#[derive(Serialize)]
pub struct UsageView {
    from: NaiveDate,
    to: NaiveDate,
    days: Vec<DayView>,
}

/// The range of a usage query: `to` defaults to today and `from` to 29
/// days before it; at most [`MAX_DAYS`].
pub(crate) fn range(
    from: Option<String>,
    to: Option<String>,
) -> Result<(NaiveDate, NaiveDate), ApiError> {
    let today = Utc::now().date_naive();
    let to = date("to", to, today)?;
    let from = date("from", from, to - Duration::days(29))?;
    if from > to {
        return Err(ApiError::field("from", "must not be after `to`"));
    }
    if (to - from).num_days() >= MAX_DAYS {
        return Err(ApiError::field(
            "from",
            format!("the range may cover at most {MAX_DAYS} days"),
        ));
    }
    Ok((from, to))
}

fn date(field: &str, raw: Option<String>, default: NaiveDate) -> Result<NaiveDate, ApiError> {
    match raw {
        None => Ok(default),
        Some(raw) => NaiveDate::parse_from_str(&raw, "%Y-%m-%d")
            .map_err(|_| ApiError::field(field, "must be a date as YYYY-MM-DD")),
    }
}

/// `GET /v1/usage?from=YYYY-MM-DD&to=YYYY-MM-DD` (UTC days, inclusive;
/// default: the last 30 days up to today).
#[tracing::instrument(skip_all, fields(tenant = %caller.0.tenant_id))]
pub async fn usage(
    State(context): State<ApiContext>,
    caller: Caller,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Json<UsageView>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::field("", e.body_text()))?;
    let (from, to) = range(query.from, query.to)?;
    let rows = context
        .store
        .usage(Some(caller.0.tenant_id), from, to, UsagePeriod::Day)
        .await?;
    let days = rows
        .into_iter()
        .map(|r: UsageRow| DayView {
            day: r.period,
            provider: r.provider,
            dialect: r.dialect,
            currency: r.currency,
            tasks: r.tasks,
            succeeded: r.succeeded,
            failed: r.failed,
            cache_hits: r.cache_hits,
            characters: r.characters,
            billable_characters: r.billable_characters,
            cost: r.cost,
        })
        .collect();
    Ok(Json(UsageView { from, to, days }))
}
