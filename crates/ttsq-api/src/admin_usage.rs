//! `GET /v1/admin/usage`: every tenant's usage from the finance views, by
//! UTC day or month, as JSON or as CSV, behind the admin token.
//!
//! Bounded twice: a request covers at most 366 days, and answers at most
//! `limit` rows (10,000 at most), with a cursor for the next page — with
//! 100,000 tenants a month of days is millions of rows. Each page is one
//! query over the ledger's days from the cursor's period on, served by the
//! ledger's day index.

use axum::{
    extract::{Query, State, rejection::QueryRejection},
    http::{HeaderMap, HeaderValue, Uri, header},
    response::{IntoResponse, Json, Response},
};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use ttsq_store::{StoreError, UsageCursor, UsageFilter, UsagePeriod, UsageRow};
use utoipa::{IntoParams, ToSchema};

use crate::{
    ApiContext, ApiError,
    auth::Admin,
    csv,
    error::{
        Problem,
        responses::{NoAdminToken, NoSuchTenant, Unavailable},
    },
};

/// Rows per page unless `limit` says otherwise.
const DEFAULT_LIMIT: u32 = 1_000;

/// Most rows one page may hold.
const MAX_LIMIT: u32 = 10_000;

/// Longest provider or dialect a filter may name, in bytes.
const MAX_NAME: usize = 200;

/// Longest cursor accepted: a tenant's name is at most 200 characters.
const MAX_CURSOR: usize = 4_096;

/// `Content-Type` of the CSV answer (RFC 4180, with its header row).
const TEXT_CSV: &str = "text/csv; charset=utf-8; header=present";

/// Query of `GET /v1/admin/usage`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AdminUsageQuery {
    /// First UTC day, `YYYY-MM-DD` from 0001-01-01 to 9999-12-31 (default:
    /// 29 days before `to`).
    #[param(value_type = Option<NaiveDate>, pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    from: Option<String>,
    /// Last UTC day, inclusive, `YYYY-MM-DD` from 0001-01-01 to 9999-12-31
    /// (default: today); at most 366 days after `from`.
    #[param(value_type = Option<NaiveDate>, pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    to: Option<String>,
    /// `day` (default) or `month`: a month covers the whole months that
    /// `from` and `to` fall in.
    #[param(value_type = Option<String>, pattern = "^(day|month)$")]
    by: Option<String>,
    /// Only this tenant, by name (default: all of them).
    tenant: Option<String>,
    /// Only this provider (default: all).
    #[param(max_length = 200)]
    provider: Option<String>,
    /// Only this dialect (default: all).
    #[param(max_length = 200)]
    dialect: Option<String>,
    /// `json` or `csv`; without it, `Accept: text/csv` asks for CSV, and
    /// anything else gets JSON.
    #[param(value_type = Option<String>, pattern = "^(json|csv)$")]
    format: Option<String>,
    /// Rows per page, 1 to 10,000 (default 1,000).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 10000)]
    limit: Option<String>,
    /// `next_cursor` of the previous page (or the `cursor` of its `Link:
    /// rel="next"`), as given; the other parameters stay the same.
    #[param(pattern = "^[0-9a-f]+$")]
    cursor: Option<String>,
}

/// Body of `GET /v1/admin/usage` as JSON.
#[derive(Serialize, ToSchema)]
struct AdminUsage {
    /// First day covered.
    from: NaiveDate,
    /// Last day covered, inclusive.
    to: NaiveDate,
    /// `day` or `month`.
    #[schema(pattern = "^(day|month)$")]
    by: &'static str,
    /// One row per period, tenant, provider, dialect and currency, in that
    /// order (rows without provider or currency last).
    rows: Vec<UsageRow>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// The CSV answer: a header row (`tenant`, `day` or `month`, `provider`,
/// `dialect`, `currency`, `tasks`, `succeeded`, `failed`, `cache_hits`,
/// `characters`, `billable_characters`, `cost`), then one record per row,
/// CRLF-terminated, RFC 4180 quoting; an absent provider or currency is an
/// empty field.
#[derive(ToSchema)]
#[schema(
    value_type = String,
    example = "tenant,day,provider,dialect,currency,tasks,succeeded,failed,cache_hits,characters,billable_characters,cost\r\nacme,2026-11-02,espeak,en-gb,USD,3,3,0,1,96,64,0.000640\r\n"
)]
#[expect(
    dead_code,
    reason = "a schema for the document; the CSV is written as text"
)]
struct UsageCsv(String);

/// How the answer is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
}

/// `GET /v1/admin/usage?from=&to=&by=day|month&tenant=&provider=&dialect=`:
/// every tenant's usage (or one's) from the finance views, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/admin/usage",
    operation_id = "admin_usage",
    tag = "admin",
    params(AdminUsageQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "A page of usage per day or month from the finance views: \
            JSON by default, CSV with `format=csv` or `Accept: text/csv`", content(
            (AdminUsage = "application/json"), (UsageCsv = "text/csv")
        ), headers(
            ("link" = String, description = "`<…&cursor=…>; rel=\"next\"` while another page follows"),
        )),
        (status = 400, description = "Invalid `from`, `to`, `by`, `provider`, `dialect`, `format`, \
            `limit` or `cursor`, or a range over 366 days; `errors` names the field", body = Problem, content_type = "application/problem+json"),
        (status = 401, response = NoAdminToken),
        (status = 404, response = NoSuchTenant),
        (status = 503, response = Unavailable),
    )
)]
#[tracing::instrument(skip_all)]
pub(crate) async fn usage(
    _: Admin,
    State(context): State<ApiContext>,
    headers: HeaderMap,
    uri: Uri,
    query: Result<Query<AdminUsageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::field("", e.body_text()))?;
    let (from, to) = crate::usage::range(query.from, query.to)?;
    let (period, by) = match query.by.as_deref() {
        None | Some("day") => (UsagePeriod::Day, "day"),
        Some("month") => (UsagePeriod::Month, "month"),
        Some(_) => return Err(ApiError::field("by", "must be `day` or `month`")),
    };
    let format = match query.format.as_deref() {
        Some("json") => Format::Json,
        Some("csv") => Format::Csv,
        Some(_) => return Err(ApiError::field("format", "must be `json` or `csv`")),
        None if accepts_csv(&headers) => Format::Csv,
        None => Format::Json,
    };
    let limit = match query.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(raw) => raw
            .parse()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::field(
                    "limit",
                    format!("must be a whole number from 1 to {MAX_LIMIT}"),
                )
            })?,
    };
    let after = query.cursor.as_deref().map(decode_cursor).transpose()?;
    let provider = name_filter("provider", query.provider)?;
    let dialect = name_filter("dialect", query.dialect)?;
    let tenant_id =
        match query.tenant.as_deref() {
            // No tenant's name holds U+0000 (nor can Postgres be asked for one).
            Some(name) if name.contains('\0') => return Err(ApiError::NotFound("tenant")),
            Some(name) => Some(context.store.usage_tenant(name).await.map_err(
                |err| match err {
                    StoreError::NotFound(_) => ApiError::NotFound("tenant"),
                    other => other.into(),
                },
            )?),
            None => None,
        };
    let filter = UsageFilter {
        tenant_id,
        provider,
        dialect,
    };
    let page = context
        .store
        .usage_page(&filter, from, to, period, after.as_ref(), limit)
        .await?;
    let next_cursor = page.next.as_ref().map(encode_cursor);
    let link = next_cursor.as_deref().map(|cursor| next_link(&uri, cursor));
    let mut response = match format {
        Format::Json => Json(AdminUsage {
            from,
            to,
            by,
            rows: page.rows,
            next_cursor,
        })
        .into_response(),
        Format::Csv => csv_response(by, from, to, &page.rows),
    };
    if let Some(link) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(header::LINK, link);
    }
    Ok(response)
}

/// Whether `Accept` prefers `text/csv` to `application/json`: the higher
/// `q` wins, the one named first on a tie; without either, JSON.
fn accepts_csv(headers: &HeaderMap) -> bool {
    let mut best: Option<(f32, bool)> = None;
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for range in value.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or_default().trim();
            let csv = if media.eq_ignore_ascii_case("text/csv") {
                true
            } else if media.eq_ignore_ascii_case("application/json") {
                false
            } else {
                continue;
            };
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .next()
                .map_or(Some(1.0), |q| q.trim().parse::<f32>().ok())
                .unwrap_or(0.0);
            if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
                best = Some((q, csv));
            }
        }
    }
    best.is_some_and(|(_, csv)| csv)
}

/// A provider or dialect to filter on: absent or empty is every one.
fn name_filter(field: &str, raw: Option<String>) -> Result<Option<String>, ApiError> {
    match raw {
        None => Ok(None),
        Some(raw) if raw.is_empty() => Ok(None),
        Some(raw) if raw.len() > MAX_NAME || raw.contains('\0') => Err(ApiError::field(
            field,
            format!("must be at most {MAX_NAME} bytes, without U+0000"),
        )),
        Some(raw) => Ok(Some(raw)),
    }
}

/// The page's rows as CSV with a header row, as an attachment named after
/// the range.
fn csv_response(by: &str, from: NaiveDate, to: NaiveDate, rows: &[UsageRow]) -> Response {
    let mut out = String::with_capacity(128 * (rows.len() + 1));
    csv::record(&mut out, UsageRow::columns(by));
    for row in rows {
        let figures = [
            row.tasks,
            row.succeeded,
            row.failed,
            row.cache_hits,
            row.characters,
            row.billable_characters,
        ]
        .map(|n| n.to_string());
        let period = row.period.to_string();
        csv::record(
            &mut out,
            [
                row.tenant.as_str(),
                &period,
                row.provider.as_deref().unwrap_or_default(),
                &row.dialect,
                row.currency.as_deref().unwrap_or_default(),
            ]
            .into_iter()
            .chain(figures.iter().map(String::as_str))
            .chain([row.cost.as_str()]),
        );
    }
    let disposition = format!("attachment; filename=\"ttsq-usage-{by}-{from}-{to}.csv\"");
    (
        [
            (header::CONTENT_TYPE, TEXT_CSV.to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        out,
    )
        .into_response()
}

/// The request's own URI with `cursor` set to `cursor`, as a `Link` header
/// value with `rel="next"`. The other parameters are kept as the client sent
/// them (a hex cursor needs no escaping).
fn next_link(uri: &Uri, cursor: &str) -> String {
    let mut query: Vec<&str> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty() && !pair.starts_with("cursor="))
        .collect();
    let cursor = format!("cursor={cursor}");
    query.push(&cursor);
    format!("<{}?{}>; rel=\"next\"", uri.path(), query.join("&"))
}

/// The cursor is opaque to clients: the hex of the JSON of the last row's
/// sort key ([`UsageCursor`]).
fn encode_cursor(cursor: &UsageCursor) -> String {
    // A struct of strings and a date always serializes.
    hex::encode(serde_json::to_vec(cursor).unwrap_or_default())
}

fn decode_cursor(raw: &str) -> Result<UsageCursor, ApiError> {
    let invalid = || ApiError::field("cursor", "is not a cursor this API returned");
    if raw.len() > MAX_CURSOR {
        return Err(invalid());
    }
    let bytes = hex::decode(raw).map_err(|_| invalid())?;
    let cursor: UsageCursor = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    // Only what Postgres can be asked for: text without U+0000, and the
    // days a usage query may name.
    let texts = [
        Some(cursor.tenant.as_str()),
        cursor.provider.as_deref(),
        Some(cursor.dialect.as_str()),
        cursor.currency.as_deref(),
    ];
    if texts.into_iter().flatten().any(|t| t.contains('\0'))
        || !crate::usage::DAYS.contains(&cursor.period)
    {
        return Err(invalid());
    }
    Ok(cursor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).expect("ascii"));
        headers
    }

    #[test]
    fn csv_is_chosen_only_when_preferred() {
        assert!(accepts_csv(&accept("text/csv")));
        assert!(accepts_csv(&accept("text/csv, application/json")));
        assert!(accepts_csv(&accept("application/json;q=0.5, text/csv")));
        assert!(!accepts_csv(&accept("application/json, text/csv")));
        assert!(!accepts_csv(&accept(
            "text/csv;q=0.2, application/json;q=0.9"
        )));
        assert!(!accepts_csv(&accept("text/csv;q=0")));
        assert!(!accepts_csv(&accept("*/*")));
        assert!(!accepts_csv(&HeaderMap::new()));
    }

    #[test]
    fn a_cursor_survives_its_round_trip() {
        let cursor = UsageCursor {
            period: NaiveDate::from_ymd_opt(2026, 11, 2).expect("a day"),
            tenant: "Acme, \"Inc\"".to_owned(),
            provider: None,
            dialect: "en-gb".to_owned(),
            currency: Some("EUR".to_owned()),
        };
        assert_eq!(
            decode_cursor(&encode_cursor(&cursor)).expect("decodes"),
            cursor
        );
    }

    #[test]
    fn a_forged_cursor_is_a_bad_request() {
        let forged = |json: &str| hex::encode(json);
        for raw in [
            "zz".to_owned(),
            forged("{}"),
            forged(
                r#"{"period":"2026-01-01","tenant":"a\u0000b","provider":null,"dialect":"d","currency":null}"#,
            ),
            forged(
                r#"{"period":"+12026-01-01","tenant":"a","provider":null,"dialect":"d","currency":null}"#,
            ),
            "0".repeat(MAX_CURSOR + 2),
        ] {
            assert!(
                matches!(decode_cursor(&raw), Err(ApiError::Validation(_))),
                "{raw}"
            );
        }
    }

    #[test]
    fn the_next_link_keeps_the_query_and_replaces_the_cursor() {
        let uri: Uri = "/v1/admin/usage?from=2026-11-01&cursor=ab&tenant=a%20b&format=csv"
            .parse()
            .expect("a URI");
        assert_eq!(
            next_link(&uri, "cd"),
            "</v1/admin/usage?from=2026-11-01&tenant=a%20b&format=csv&cursor=cd>; rel=\"next\""
        );
    }
}
