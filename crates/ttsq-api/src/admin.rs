//! The admin API: tenants, their limits and API keys over HTTP.
//!
//! Every route demands `Authorization: Bearer <admin.token>`. With no token
//! configured the admin API is off and its routes answer 404, as any unknown
//! route does. The token is compared by its SHA-256 in constant time and is
//! never logged; actions are written to the audit log as `admin-api`.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{
        FromRequestParts, Path, Query, State,
        rejection::{BytesRejection, QueryRejection},
    },
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::{delete, get},
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use ttsq_store::{
    KeyInfo, LimitUsage, StoreError, TenantInfo, TenantLimits, TenantUpdate, UsagePeriod, UsageRow,
};

use crate::{ApiContext, ApiError};

/// Who the admin API records as the actor of its changes.
const ACTOR: &str = "admin-api";

/// SHA-256 of the admin token: what a replica keeps of it.
#[derive(Debug)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// The digest of `token`.
    pub fn of(token: &SecretString) -> Self {
        Self(digest(token.expose_secret()))
    }

    /// Whether `presented` is the token; hashing first makes the time taken
    /// independent of where, and of whether the lengths, differ.
    fn matches(&self, presented: &str) -> bool {
        digest(presented).ct_eq(&self.0).into()
    }
}

fn digest(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

/// An authenticated admin.
pub struct Admin;

impl FromRequestParts<ApiContext> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        context: &ApiContext,
    ) -> Result<Self, Self::Rejection> {
        let Some(token) = &context.admin_token else {
            return Err(ApiError::NotFound("route"));
        };
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or(ApiError::Unauthorized)?;
        if token.matches(presented) {
            Ok(Self)
        } else {
            tracing::warn!("admin API call with a wrong or missing token");
            Err(ApiError::Unauthorized)
        }
    }
}

/// The admin routes, to merge into the API's router.
pub fn routes() -> Router<ApiContext> {
    Router::new()
        .route("/v1/admin/tenants", get(list_tenants).post(create_tenant))
        .route(
            "/v1/admin/tenants/{name}",
            get(get_tenant).patch(update_tenant),
        )
        .route(
            "/v1/admin/tenants/{name}/keys",
            get(list_tenant_keys).post(create_key),
        )
        .route("/v1/admin/keys", get(list_keys))
        .route("/v1/admin/usage", get(usage))
        .route("/v1/admin/keys/{key}", delete(revoke_key))
}

fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|r| ApiError::field("", format!("could not read the body: {r}")))?;
    let body: &[u8] = if body.is_empty() { b"{}" } else { &body };
    serde_json::from_slice(body).map_err(|e| ApiError::field("", e.to_string()))
}

/// Maps a store's "not found" to a 404 naming `what`.
fn or_not_found(what: &'static str) -> impl Fn(StoreError) -> ApiError {
    move |err| match err {
        StoreError::NotFound(_) => ApiError::NotFound(what),
        other => other.into(),
    }
}

/// A freshly issued key: the only time it is shown.
fn no_store(status: StatusCode, body: impl Serialize) -> Response {
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Body of `POST /v1/admin/tenants`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    name: String,
    #[serde(default)]
    daily_characters: Option<i64>,
    #[serde(default)]
    monthly_budget: Option<f64>,
    #[serde(default)]
    max_queued_jobs: Option<i32>,
    #[serde(default)]
    currency: Option<String>,
}

/// A new key as answered once.
#[derive(Serialize)]
struct IssuedKey<'a> {
    api_key: &'a str,
    key_prefix: &'a str,
}

#[derive(Serialize)]
struct CreatedTenant<'a> {
    tenant: TenantInfo,
    #[serde(flatten)]
    key: IssuedKey<'a>,
}

/// `POST /v1/admin/tenants`: a tenant with optional limits and its first key.
async fn create_tenant(
    _: Admin,
    State(context): State<ApiContext>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: CreateTenant = parse(body)?;
    let limits = TenantLimits {
        daily_characters: body.daily_characters,
        monthly_budget: body.monthly_budget,
        max_queued_jobs: body.max_queued_jobs,
    };
    let (tenant, key) = context
        .store
        .create_tenant_with(&body.name, &limits, body.currency.as_deref(), ACTOR)
        .await?;
    tracing::info!(tenant = %tenant.name, key_prefix = %key.prefix, "tenant created through the admin API");
    Ok(no_store(
        StatusCode::CREATED,
        CreatedTenant {
            tenant,
            key: IssuedKey {
                api_key: key.key.expose_secret(),
                key_prefix: &key.prefix,
            },
        },
    ))
}

#[derive(Serialize)]
struct Tenants {
    tenants: Vec<TenantInfo>,
}

/// `GET /v1/admin/tenants`.
async fn list_tenants(_: Admin, State(context): State<ApiContext>) -> Result<Response, ApiError> {
    let tenants = context.store.list_tenants().await?;
    Ok(Json(Tenants { tenants }).into_response())
}

#[derive(Serialize)]
struct TenantWithUsage {
    #[serde(flatten)]
    tenant: TenantInfo,
    usage: Vec<UsageView>,
}

/// A limit's usage, with the fraction a dashboard or gauge shows.
#[derive(Serialize)]
struct UsageView {
    #[serde(flatten)]
    usage: LimitUsage,
    fraction: f64,
}

/// `GET /v1/admin/tenants/{name}`: the tenant and how much of each limit is used.
async fn get_tenant(
    _: Admin,
    State(context): State<ApiContext>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = context
        .store
        .tenant(&name)
        .await
        .map_err(or_not_found("tenant"))?;
    let usage = context
        .store
        .limit_usage(tenant.id)
        .await?
        .into_iter()
        .map(|usage| UsageView {
            fraction: usage.fraction(),
            usage,
        })
        .collect();
    Ok(Json(TenantWithUsage { tenant, usage }).into_response())
}

/// Absent → `None` (unchanged); `null` → `Some(None)` (no limit).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Body of `PATCH /v1/admin/tenants/{name}`: fields left out stay as they
/// are; `null` lifts a limit.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchTenant {
    #[serde(default, deserialize_with = "present")]
    daily_characters: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    monthly_budget: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    max_queued_jobs: Option<Option<i32>>,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default, deserialize_with = "present")]
    retention_days: Option<Option<i32>>,
}

/// `PATCH /v1/admin/tenants/{name}`.
async fn update_tenant(
    _: Admin,
    State(context): State<ApiContext>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: PatchTenant = parse(body)?;
    let update = TenantUpdate {
        daily_characters: body.daily_characters,
        monthly_budget: body.monthly_budget,
        max_queued_jobs: body.max_queued_jobs,
        currency: body.currency,
        retention_days: body.retention_days,
    };
    let tenant = context
        .store
        .update_tenant(&name, &update, ACTOR)
        .await
        .map_err(or_not_found("tenant"))?;
    tracing::info!(tenant = %tenant.name, "tenant updated through the admin API");
    Ok(Json(tenant).into_response())
}

/// `POST /v1/admin/tenants/{name}/keys`: another key, shown once.
async fn create_key(
    _: Admin,
    State(context): State<ApiContext>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let key = context
        .store
        .create_key_as(&name, ACTOR)
        .await
        .map_err(or_not_found("tenant"))?;
    tracing::info!(tenant = %name, key_prefix = %key.prefix, "key created through the admin API");
    Ok(no_store(
        StatusCode::CREATED,
        IssuedKey {
            api_key: key.key.expose_secret(),
            key_prefix: &key.prefix,
        },
    ))
}

#[derive(Serialize)]
struct Keys {
    keys: Vec<KeyInfo>,
}

/// `GET /v1/admin/tenants/{name}/keys`.
async fn list_tenant_keys(
    _: Admin,
    State(context): State<ApiContext>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let keys = context
        .store
        .list_keys(Some(&name))
        .await
        .map_err(or_not_found("tenant"))?;
    Ok(Json(Keys { keys }).into_response())
}

/// `GET /v1/admin/keys`: every tenant's keys.
async fn list_keys(_: Admin, State(context): State<ApiContext>) -> Result<Response, ApiError> {
    let keys = context.store.list_keys(None).await?;
    Ok(Json(Keys { keys }).into_response())
}

/// `DELETE /v1/admin/keys/{id or prefix}`: revokes the key at once, on
/// every replica.
async fn revoke_key(
    _: Admin,
    State(context): State<ApiContext>,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let key = context
        .store
        .revoke_key(&key, ACTOR)
        .await
        .map_err(or_not_found("key"))?;
    tracing::info!(key_prefix = %key.prefix, tenant = %key.tenant, "key revoked through the admin API");
    Ok(Json(key).into_response())
}

/// Query of `GET /v1/admin/usage`.
#[derive(Deserialize)]
struct AdminUsageQuery {
    tenant: Option<String>,
    from: Option<String>,
    to: Option<String>,
    by: Option<String>,
}

#[derive(Serialize)]
struct AdminUsage {
    from: chrono::NaiveDate,
    to: chrono::NaiveDate,
    rows: Vec<UsageRow>,
}

/// `GET /v1/admin/usage?tenant=&from=&to=&by=day|month`: the finance views
/// for one tenant or all of them.
async fn usage(
    _: Admin,
    State(context): State<ApiContext>,
    query: Result<Query<AdminUsageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::field("", e.body_text()))?;
    let (from, to) = crate::usage::range(query.from, query.to)?;
    let period = match query.by.as_deref() {
        None | Some("day") => UsagePeriod::Day,
        Some("month") => UsagePeriod::Month,
        Some(_) => return Err(ApiError::field("by", "must be `day` or `month`")),
    };
    let tenant_id = match &query.tenant {
        Some(name) => Some(
            context
                .store
                .tenant(name)
                .await
                .map_err(or_not_found("tenant"))?
                .id,
        ),
        None => None,
    };
    let rows = context.store.usage(tenant_id, from, to, period).await?;
    Ok(Json(AdminUsage { from, to, rows }).into_response())
}
