//! `GET /v1/usage`: the calling tenant's own usage by UTC day, read from
//! the `usage_daily` finance view. Only the key's tenant is ever shown.

use axum::{
    Json,
    extract::{Query, State, rejection::QueryRejection},
};
use chrono::{Days, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use ttsq_core::ValidationErrors;
use ttsq_store::{UsagePeriod, UsageRow};
use utoipa::{IntoParams, ToSchema};

use crate::{
    ApiContext, ApiError,
    auth::Caller,
    error::{Problem, responses::NoApiKey},
};

/// Longest range one request may cover, in days.
const MAX_DAYS: i64 = 366;

/// Query of `GET /v1/usage`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// First UTC day, `YYYY-MM-DD` from 0001-01-01 to 9999-12-31 (default:
    /// 29 days before `to`).
    #[param(value_type = Option<NaiveDate>, pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    from: Option<String>,
    /// Last UTC day, inclusive, `YYYY-MM-DD` from 0001-01-01 to 9999-12-31
    /// (default: today); at most 366 days after `from`.
    #[param(value_type = Option<NaiveDate>, pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
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
/// days before it; at most [`MAX_DAYS`], within [`DAYS`].
pub(crate) fn range(
    from: Option<String>,
    to: Option<String>,
) -> Result<(NaiveDate, NaiveDate), ApiError> {
    let mut errors = ValidationErrors::default();
    let mut parse = |field: &str, raw: Option<String>| match day(raw.as_deref()) {
        Ok(day) => day,
        Err(reason) => {
            errors.push(field, reason);
            None
        }
    };
    let (from, to) = (parse("from", from), parse("to", to));
    if !errors.0.is_empty() {
        return Err(errors.into());
    }
    let to = to.unwrap_or_else(|| Utc::now().date_naive());
    let from = from.unwrap_or_else(|| {
        to.checked_sub_days(Days::new(29))
            .map_or(*DAYS.start(), |day| day.max(*DAYS.start()))
    });
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

/// The days a usage query may name. Postgres dates start in 4713 BC and
/// chrono's arithmetic overflows near year ±262,143, so a query must stay
/// between; no ledger row is older than year 1 or newer than 9999.
pub(crate) const DAYS: std::ops::RangeInclusive<NaiveDate> = {
    // Both are valid calendar days, so neither `expect` can fire (and a
    // const is evaluated at compile time).
    let first = NaiveDate::from_ymd_opt(1, 1, 1).expect("a valid day");
    let last = NaiveDate::from_ymd_opt(9999, 12, 31).expect("a valid day");
    first..=last
};

/// A day given as `YYYY-MM-DD` within [`DAYS`], if given.
fn day(raw: Option<&str>) -> Result<Option<NaiveDate>, &'static str> {
    raw.map(|raw| {
        NaiveDate::parse_from_str(raw, "%Y-%m-%d")
            .ok()
            .filter(|day| DAYS.contains(day))
            .ok_or("must be a date as YYYY-MM-DD from 0001-01-01 to 9999-12-31")
    })
    .transpose()
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
        (status = 401, response = NoApiKey),
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
