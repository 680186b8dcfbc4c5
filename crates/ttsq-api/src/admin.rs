//! The admin API: tenants, their limits and API keys over HTTP (usage:
//! `admin_usage`).
//!
//! Every route demands `Authorization: Bearer <admin.token>`. With no token
//! configured the admin API is off and its routes answer 404, as any unknown
//! route does. The token is compared by its SHA-256 in constant time and is
//! never logged; actions are written to the audit log as `admin-api`.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{delete, get},
};
use secrecy::ExposeSecret;
use serde::{Deserialize, Deserializer, Serialize, de::DeserializeOwned};
use ttsq_store::{KeyInfo, LimitUsage, StoreError, TenantInfo, TenantLimits, TenantUpdate};
use utoipa::ToSchema;

use crate::{
    ApiContext, ApiError,
    auth::{ADMIN_ACTOR, Admin},
    error::{
        Problem,
        responses::{AdminOff, InvalidBody, NoAdminToken, NoSuchTenant},
    },
    extract::{NamePath, TenantPath},
};

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
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    /// Unique tenant name.
    #[schema(example = "acme", min_length = 1, max_length = 200)]
    name: String,
    /// Characters per UTC day; absent or `null` is unlimited.
    #[serde(default)]
    #[schema(minimum = 1)]
    daily_characters: Option<i64>,
    /// Cost per UTC month in `currency`; absent or `null` is unlimited.
    #[serde(default)]
    #[schema(minimum = 0, exclusive_maximum = 1e12)]
    monthly_budget: Option<f64>,
    /// Jobs queued or processing at once; absent or `null` is unlimited.
    #[serde(default)]
    #[schema(minimum = 1)]
    max_queued_jobs: Option<i32>,
    /// Tasks submitted per UTC day, cache hits included; absent or `null`
    /// is unlimited.
    #[serde(default)]
    #[schema(minimum = 1)]
    daily_requests: Option<i64>,
    /// Currency of the budget (ISO 4217); USD when absent.
    #[serde(default)]
    #[schema(example = "EUR", pattern = "^[A-Z]{3}$")]
    currency: Option<String>,
}

/// A new key as answered once.
#[derive(Serialize, ToSchema)]
struct IssuedKey<'a> {
    /// The key itself: shown this once, never again.
    api_key: &'a str,
    /// Its visible prefix, by which it is listed and revoked.
    key_prefix: &'a str,
}

/// Body of `201` to `POST /v1/admin/tenants`: the tenant and its first key.
#[derive(Serialize, ToSchema)]
struct CreatedTenant<'a> {
    /// The tenant created.
    tenant: TenantInfo,
    /// Its first key.
    #[serde(flatten)]
    key: IssuedKey<'a>,
}

/// `POST /v1/admin/tenants`: a tenant with optional limits and its first key.
#[utoipa::path(
    post,
    path = "/v1/admin/tenants",
    operation_id = "admin_create_tenant",
    tag = "admin",
    request_body = CreateTenant,
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "The tenant and its first key, shown once (`Cache-Control: no-store`)", body = CreatedTenant),
        (status = 400, response = InvalidBody),
        (status = 401, response = NoAdminToken),
        (status = 404, response = AdminOff),
        (status = 409, description = "A tenant with this name exists", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn create_tenant(
    _: Admin,
    State(context): State<ApiContext>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: CreateTenant = parse(body)?;
    let limits = TenantLimits {
        daily_characters: body.daily_characters,
        monthly_budget: body.monthly_budget,
        max_queued_jobs: body.max_queued_jobs,
        daily_requests: body.daily_requests,
    };
    let (tenant, key) = context
        .store
        .create_tenant_with(&body.name, &limits, body.currency.as_deref(), ADMIN_ACTOR)
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

/// Body of `GET /v1/admin/tenants`.
#[derive(Serialize, ToSchema)]
struct Tenants {
    /// Every tenant.
    tenants: Vec<TenantInfo>,
}

/// `GET /v1/admin/tenants`: every tenant with its limits.
#[utoipa::path(
    get,
    path = "/v1/admin/tenants",
    operation_id = "admin_list_tenants",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every tenant with its limits", body = Tenants),
        (status = 401, response = NoAdminToken),
        (status = 404, response = AdminOff),
    )
)]
pub(crate) async fn list_tenants(
    _: Admin,
    State(context): State<ApiContext>,
) -> Result<Response, ApiError> {
    let tenants = context.store.list_tenants().await?;
    Ok(Json(Tenants { tenants }).into_response())
}

/// Body of `GET /v1/admin/tenants/{name}`.
#[derive(Serialize, ToSchema)]
struct TenantWithUsage {
    /// The tenant.
    #[serde(flatten)]
    tenant: TenantInfo,
    /// How much of each limit it has is in use.
    usage: Vec<LimitUsageView>,
}

/// A limit's usage, with the fraction a dashboard or gauge shows.
#[derive(Serialize, ToSchema)]
struct LimitUsageView {
    /// The limit and its use.
    #[serde(flatten)]
    usage: LimitUsage,
    /// `used / max`; 1 or more means exhausted.
    fraction: f64,
}

/// `GET /v1/admin/tenants/{name}`: the tenant and how much of each limit is used.
#[utoipa::path(
    get,
    path = "/v1/admin/tenants/{name}",
    operation_id = "admin_get_tenant",
    tag = "admin",
    params(("name" = String, Path, description = "Tenant name")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The tenant and the use of each of its limits", body = TenantWithUsage),
        (status = 401, response = NoAdminToken),
        (status = 404, response = NoSuchTenant),
    )
)]
pub(crate) async fn get_tenant(
    _: Admin,
    State(context): State<ApiContext>,
    tenant: TenantPath,
) -> Result<Response, ApiError> {
    let tenant = context.store.tenant(&tenant.name).await?;
    let usage = context
        .store
        .limit_usage(tenant.id)
        .await?
        .into_iter()
        .map(|usage| LimitUsageView {
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
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PatchTenant {
    /// Characters per UTC day; `null` lifts the limit.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 1)]
    daily_characters: Option<Option<i64>>,
    /// Cost per UTC month; `null` lifts the limit.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<f64>, minimum = 0, exclusive_maximum = 1e12)]
    monthly_budget: Option<Option<f64>>,
    /// Jobs queued or processing at once; `null` lifts the limit.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i32>, minimum = 1)]
    max_queued_jobs: Option<Option<i32>>,
    /// Tasks submitted per UTC day, cache hits included; `null` lifts the
    /// limit.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 1)]
    daily_requests: Option<Option<i64>>,
    /// Currency of the budget (ISO 4217).
    #[serde(default)]
    #[schema(pattern = "^[A-Z]{3}$")]
    currency: Option<String>,
    #[serde(default, deserialize_with = "present")]
    retention_days: Option<Option<i32>>,
    /// The shared audio cache pool to join (only tenants in the same pool
    /// see each other's cache hits); `null` makes the cache private again.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    cache_pool: Option<Option<String>>,
    /// Share of dispatch (jobs and webhook deliveries) against the other
    /// tenants with work waiting.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    weight: Option<i32>,
}

/// `PATCH /v1/admin/tenants/{name}`.
#[utoipa::path(
    patch,
    path = "/v1/admin/tenants/{name}",
    operation_id = "admin_update_tenant",
    tag = "admin",
    params(("name" = String, Path, description = "Tenant name")),
    request_body = PatchTenant,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The tenant as updated", body = TenantInfo),
        (status = 400, response = InvalidBody),
        (status = 401, response = NoAdminToken),
        (status = 404, response = NoSuchTenant),
    )
)]
pub(crate) async fn update_tenant(
    _: Admin,
    State(context): State<ApiContext>,
    tenant: TenantPath,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: PatchTenant = parse(body)?;
    let update = TenantUpdate {
        daily_characters: body.daily_characters,
        monthly_budget: body.monthly_budget,
        max_queued_jobs: body.max_queued_jobs,
        daily_requests: body.daily_requests,
        currency: body.currency,
        retention_days: body.retention_days,
        cache_pool: body.cache_pool,
        weight: body.weight,
    };
    let tenant = context
        .store
        .update_tenant(&tenant.name, &update, ADMIN_ACTOR)
        .await?;
    tracing::info!(tenant = %tenant.name, "tenant updated through the admin API");
    Ok(Json(tenant).into_response())
}

/// `POST /v1/admin/tenants/{name}/keys`: another key, shown once.
#[utoipa::path(
    post,
    path = "/v1/admin/tenants/{name}/keys",
    operation_id = "admin_create_key",
    tag = "admin",
    params(("name" = String, Path, description = "Tenant name")),
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "The new key, shown once (`Cache-Control: no-store`)", body = IssuedKey),
        (status = 401, response = NoAdminToken),
        (status = 404, response = NoSuchTenant),
    )
)]
pub(crate) async fn create_key(
    _: Admin,
    State(context): State<ApiContext>,
    tenant: TenantPath,
) -> Result<Response, ApiError> {
    let key = context
        .store
        .create_key_as(&tenant.name, ADMIN_ACTOR)
        .await?;
    tracing::info!(tenant = %tenant.name, key_prefix = %key.prefix, "key created through the admin API");
    Ok(no_store(
        StatusCode::CREATED,
        IssuedKey {
            api_key: key.key.expose_secret(),
            key_prefix: &key.prefix,
        },
    ))
}

/// Body of the key listings.
#[derive(Serialize, ToSchema)]
struct Keys {
    /// The keys, never their secret part.
    keys: Vec<KeyInfo>,
}

/// `GET /v1/admin/tenants/{name}/keys`.
#[utoipa::path(
    get,
    path = "/v1/admin/tenants/{name}/keys",
    operation_id = "admin_list_tenant_keys",
    tag = "admin",
    params(("name" = String, Path, description = "Tenant name")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The tenant's keys, revoked ones included", body = Keys),
        (status = 401, response = NoAdminToken),
        (status = 404, response = NoSuchTenant),
    )
)]
pub(crate) async fn list_tenant_keys(
    _: Admin,
    State(context): State<ApiContext>,
    tenant: TenantPath,
) -> Result<Response, ApiError> {
    let keys = context.store.list_keys(Some(&tenant.name)).await?;
    Ok(Json(Keys { keys }).into_response())
}

/// `GET /v1/admin/keys`: every tenant's keys.
#[utoipa::path(
    get,
    path = "/v1/admin/keys",
    operation_id = "admin_list_keys",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every tenant's keys, revoked ones included", body = Keys),
        (status = 401, response = NoAdminToken),
        (status = 404, response = AdminOff),
    )
)]
pub(crate) async fn list_keys(
    _: Admin,
    State(context): State<ApiContext>,
) -> Result<Response, ApiError> {
    let keys = context.store.list_keys(None).await?;
    Ok(Json(Keys { keys }).into_response())
}

/// `DELETE /v1/admin/keys/{id or prefix}`: revokes the key at once, on
/// every replica.
#[utoipa::path(
    delete,
    path = "/v1/admin/keys/{key}",
    operation_id = "admin_revoke_key",
    tag = "admin",
    params(("key" = String, Path, description = "The key's id or its visible prefix")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The key as revoked", body = KeyInfo),
        (status = 401, response = NoAdminToken),
        (status = 404, description = "No such key, or the admin API is off", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn revoke_key(
    _: Admin,
    State(context): State<ApiContext>,
    NamePath(key): NamePath,
) -> Result<Response, ApiError> {
    let key = context
        .store
        .revoke_key(&key, ADMIN_ACTOR)
        .await
        .map_err(or_not_found("key"))?;
    tracing::info!(key_prefix = %key.prefix, tenant = %key.tenant, "key revoked through the admin API");
    Ok(Json(key).into_response())
}
