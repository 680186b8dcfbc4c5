//! A tenant's webhook settings in the admin API: its default URL, reading
//! and rotating its signing secret.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
    routing::{post, put},
};
use serde::{Deserialize, Serialize};
use ttsq_store::TenantWebhook;
use ttsq_webhooks::tenant_secret;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    ApiContext, ApiError,
    auth::{ADMIN_ACTOR, Admin},
    error::{
        Problem,
        responses::{NoAdminToken, NoSuchTenant},
    },
    extract::TenantPath,
};

/// The routes of tenants' webhook settings.
pub fn routes() -> Router<ApiContext> {
    Router::new()
        .route("/v1/admin/tenants/{name}/webhook", put(set_webhook_url))
        .route(
            "/v1/admin/tenants/{name}/webhook-secret",
            post(rotate_secret).get(read_secret),
        )
}

/// Body of `PUT /v1/admin/tenants/{name}/webhook`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SetWebhook {
    /// Where the tenant's events go when a job or batch names no
    /// `callback_url`: a public `http(s)` URL; `null` clears it.
    webhook_url: Option<String>,
}

/// A tenant's webhook target: the answer of `PUT
/// /v1/admin/tenants/{name}/webhook`.
#[derive(Serialize, ToSchema)]
struct TenantWebhookTarget {
    /// The tenant.
    tenant_id: Uuid,
    /// The tenant's default webhook target, if set.
    webhook_url: Option<String>,
    /// The current signing secret's version.
    secret_version: i32,
}

/// A tenant's webhook secret, the body of `GET` and `POST
/// /v1/admin/tenants/{name}/webhook-secret`.
#[derive(Serialize, ToSchema)]
pub struct WebhookSecret {
    /// The tenant.
    tenant_id: Uuid,
    /// The tenant's default webhook target, if set.
    webhook_url: Option<String>,
    /// The current secret, `whsec_<base64 of the HMAC-SHA256 key>`: give it
    /// as it is to any Standard Webhooks library
    /// (<https://www.standardwebhooks.com>). Deliveries carry `webhook-id`,
    /// `webhook-timestamp` and `webhook-signature: v1,<base64>` (the
    /// HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}`), one entry
    /// per signing secret, space-separated.
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    webhook_secret: String,
    /// The current secret's version; rotating increments it.
    secret_version: i32,
    /// The version of the previous secret while it still signs beside the
    /// current one (`webhooks.secret_grace_secs` after a rotation).
    previous_version_signing: Option<i32>,
}

fn secret_response(context: &ApiContext, settings: &TenantWebhook) -> Result<Response, ApiError> {
    let key = context
        .webhooks
        .signing_key
        .as_ref()
        .ok_or_else(|| ApiError::Conflict("webhooks are not enabled on this server".into()))?;
    let mut response = Json(WebhookSecret {
        tenant_id: settings.tenant_id,
        webhook_url: settings.webhook_url.clone(),
        webhook_secret: tenant_secret(key, settings.tenant_id, settings.secret_version),
        secret_version: settings.secret_version,
        previous_version_signing: settings.previous_version,
    })
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `PUT /v1/admin/tenants/{name}/webhook`: the tenant's default target
/// (`null` clears it).
#[utoipa::path(
    put,
    path = "/v1/admin/tenants/{name}/webhook",
    operation_id = "set_tenant_webhook",
    tag = "admin",
    params(("name" = String, Path, description = "Tenant name")),
    request_body = SetWebhook,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The tenant's webhook settings", body = TenantWebhookTarget),
        (status = 400, description = "Refused target (`webhook_url`)", body = Problem, content_type = "application/problem+json"),
        (status = 401, response = NoAdminToken),
        (status = 404, response = NoSuchTenant),
    )
)]
async fn set_webhook_url(
    _: Admin,
    State(context): State<ApiContext>,
    tenant: TenantPath,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|r| ApiError::field("", format!("could not read the body: {r}")))?;
    let body: SetWebhook =
        serde_json::from_slice(&body).map_err(|e| ApiError::field("", e.to_string()))?;
    if let Some(url) = &body.webhook_url {
        context.webhooks.check_target("webhook_url", url).await?;
    }
    let settings = context
        .store
        .set_tenant_webhook_url(&tenant.name, body.webhook_url.as_deref(), ADMIN_ACTOR)
        .await?;
    tracing::info!(tenant = %tenant.name, "tenant webhook URL set through the admin API");
    Ok(Json(TenantWebhookTarget {
        tenant_id: settings.tenant_id,
        webhook_url: settings.webhook_url,
        secret_version: settings.secret_version,
    })
    .into_response())
}

/// `POST /v1/admin/tenants/{name}/webhook-secret`: a new signing secret;
/// the old one keeps signing beside it for `webhooks.secret_grace_secs`.
#[utoipa::path(
    post,
    path = "/v1/admin/tenants/{name}/webhook-secret",
    operation_id = "rotate_tenant_webhook_secret",
    tag = "admin",
    params(("name" = String, Path, description = "Tenant name")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The new secret (the old one signs beside it for the grace period)", body = WebhookSecret),
        (status = 401, response = NoAdminToken),
        (status = 404, response = NoSuchTenant),
    )
)]
async fn rotate_secret(
    _: Admin,
    State(context): State<ApiContext>,
    tenant: TenantPath,
) -> Result<Response, ApiError> {
    let settings = context
        .store
        .rotate_webhook_secret(&tenant.name, context.webhooks.grace, ADMIN_ACTOR)
        .await?;
    tracing::info!(tenant = %tenant.name, version = settings.secret_version, "webhook secret rotated");
    secret_response(&context, &settings)
}

/// `GET /v1/admin/tenants/{name}/webhook-secret`: the current secret.
#[utoipa::path(
    get,
    path = "/v1/admin/tenants/{name}/webhook-secret",
    operation_id = "read_tenant_webhook_secret",
    tag = "admin",
    params(("name" = String, Path, description = "Tenant name")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The current secret", body = WebhookSecret),
        (status = 401, response = NoAdminToken),
        (status = 404, response = NoSuchTenant),
    )
)]
async fn read_secret(
    _: Admin,
    State(context): State<ApiContext>,
    tenant: TenantPath,
) -> Result<Response, ApiError> {
    let settings = context.store.tenant_webhook(tenant.id).await?;
    secret_response(&context, &settings)
}
