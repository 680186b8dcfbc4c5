//! Webhook targets at submission, and tenants' webhook settings in the admin
//! API: default URL, reading and rotating the signing secret.

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
    routing::{post, put},
};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;
use ttsq_config::Settings;
use ttsq_store::TenantWebhook;
use ttsq_webhooks::{TargetGuard, tenant_secret};

use crate::{
    ApiContext, ApiError,
    auth::{ADMIN_ACTOR, Admin},
    error::{
        Problem,
        responses::{NoAdminToken, NoSuchTenant},
    },
    extract::TenantPath,
};

/// What the API needs to accept webhook targets.
#[derive(Debug, Clone)]
pub struct WebhookApi {
    /// Signing key; `None` disables webhooks.
    signing_key: Option<SecretString>,
    /// The SSRF guard.
    guard: TargetGuard,
    /// How long a rotated-out secret keeps signing.
    grace: Duration,
}

impl WebhookApi {
    /// From validated settings.
    pub fn new(settings: &Settings) -> Self {
        Self {
            signing_key: settings.webhooks.enabled_key().cloned(),
            // Settings::load validated the networks.
            guard: TargetGuard::new(settings.webhooks.allowed_networks().unwrap_or_default()),
            grace: Duration::from_secs(settings.webhooks.secret_grace_secs),
        }
    }

    /// Checks a `callback_url` (or webhook URL) named `field`: webhooks on,
    /// an http(s) URL resolving only to allowed addresses.
    pub async fn check_target(&self, field: &str, url: &str) -> Result<(), ApiError> {
        if self.signing_key.is_none() {
            return Err(ApiError::field(
                field,
                "webhooks are not enabled on this server (webhooks.signing_key is unset)",
            ));
        }
        if url.len() > 2048 {
            return Err(ApiError::field(field, "must be at most 2048 characters"));
        }
        // The URL parser would percent-encode these, but the URL is stored
        // as given (and Postgres refuses U+0000 in text).
        if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ApiError::field(
                field,
                "must not contain whitespace or control characters",
            ));
        }
        self.guard
            .check(url)
            .await
            .map(|_| ())
            .map_err(|refused| ApiError::field(field, refused.to_string()))
    }
}

/// The webhook admin routes.
pub fn admin_routes() -> Router<ApiContext> {
    Router::new()
        .route("/v1/admin/tenants/{name}/webhook", put(set_webhook_url))
        .route(
            "/v1/admin/tenants/{name}/webhook-secret",
            post(rotate_secret).get(read_secret),
        )
}

/// Body of `PUT /v1/admin/tenants/{name}/webhook`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetWebhook {
    webhook_url: Option<String>,
}

fn secret_response(context: &ApiContext, settings: &TenantWebhook) -> Result<Response, ApiError> {
    let key = context
        .webhooks
        .signing_key
        .as_ref()
        .ok_or_else(|| ApiError::Conflict("webhooks are not enabled on this server".into()))?;
    let mut response = Json(json!({
        "tenant_id": settings.tenant_id,
        "webhook_url": settings.webhook_url,
        "webhook_secret": tenant_secret(key, settings.tenant_id, settings.secret_version),
        "secret_version": settings.secret_version,
        "previous_version_signing": settings.previous_version,
    }))
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
    request_body(content = Object, description = "`{webhook_url}`; `null` clears it"),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The tenant's webhook settings", body = Object),
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
    Ok(Json(json!({
        "tenant_id": settings.tenant_id,
        "webhook_url": settings.webhook_url,
        "secret_version": settings.secret_version,
    }))
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
        (status = 200, description = "The new secret (the old one signs beside it for the grace period)", body = Object),
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
        (status = 200, description = "The current secret", body = Object),
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

/// Shared handle.
pub type SharedWebhookApi = Arc<WebhookApi>;
