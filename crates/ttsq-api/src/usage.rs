//! `GET /v1/usage`: the calling tenant's own usage by UTC day, read from
//! the `usage_daily` finance view. Only the key's tenant is ever shown.

use axum::{
    Json,
    extract::{Query, State, rejection::QueryRejection},
};
use chrono::{Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use ttsq_store::{UsagePeriod, UsageRow};
use utoipa::{IntoParams, ToSchema};

use crate::{ApiContext, ApiError, auth::Caller, error::Problem};

/// Longest range one request may cover, in days.
const MAX_DAYS: i64 = 366;

/// Query of `GET /v1/usage`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// First UTC day, `YYYY-MM-DD` (default: 29 days before `to`).
    #[param(value_type = Option<NaiveDate>)]
    from: Option<String>,
    /// Last UTC day, inclusive, `YYYY-MM-DD` (default: today); at most 366
    /// days after `from`.
    #[param(value_type = Option<NaiveDate>)]
    to: Option<String>,
}

/// One day's usage of one provider and dialect.
#[derive(Serialize, ToSchema)]
struct DayView {
    /// The UTC day.
    day: NaiveDate,
    /// Provider that made the audio; `null` for failed tasks.
    provider: Option<String>,
    /// Dialect id.
    dialect: String,
    /// Currency of `cost`; `null` where nothing was produced.
    currency: Option<String>,
    /// Finished tasks.
    tasks: i64,
    /// Of which succeeded.
    succeeded: i64,
    /// Of which failed.
    failed: i64,
    /// Of which were served from stored audio.
    cache_hits: i64,
    /// Characters of all those tasks.
    characters: i64,
    /// Characters billed (synthesized for the task itself).
    billable_characters: i64,
    /// Exact decimal, as a string.
    #[schema(example = "0.001200")]
    cost: String,
}

/// Body of `GET /v1/usage`.
#[derive(Serialize, ToSchema)]
pub struct UsageView {
    /// First day covered.
    from: NaiveDate,
    /// Last day covered, inclusive.
    to: NaiveDate,
    /// Usage per day, provider and dialect; days without finished tasks
    /// are absent.
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
#[utoipa::path(
    get,
    path = "/v1/usage",
    operation_id = "get_usage",
    tag = "usage",
    params(UsageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The calling tenant's usage by UTC day", body = UsageView),
        (status = 400, description = "Invalid `from` or `to`, or a range over 366 days", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid API key", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable; retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
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
