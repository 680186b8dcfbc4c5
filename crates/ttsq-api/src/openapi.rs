//! The OpenAPI 3.1 document of the API, generated from the handlers'
//! `#[utoipa::path]` annotations and the response types' schemas, served at
//! `GET /openapi.json`. `docs/openapi.json` is a committed copy; a test fails
//! when it drifts (regenerate with `ttsq openapi > docs/openapi.json` or
//! `UPDATE_OPENAPI=1 cargo nextest run -p ttsq-api --test openapi`).

use axum::Json;
use utoipa::{
    Modify, OpenApi,
    openapi::security::{Http, HttpAuthScheme, SecurityScheme},
};

use crate::{
    admin, admin_usage, batches, error, jobs, speech, system, tenant_webhooks, usage, view,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ttsq",
        description = "Queue-driven batch text-to-speech. Submit jobs, poll tasks, download audio; \
            `POST /v1/audio/speech` speaks the OpenAI speech API. Every error except on the \
            OpenAI-compatible route is RFC 7807 `application/problem+json` (`Problem`).",
        license(name = "MIT", identifier = "MIT"),
    ),
    paths(
        jobs::submit::submit,
        jobs::read::get,
        jobs::read::audio,
        jobs::list::list,
        jobs::cancel::cancel,
        system::dialects,
        system::health,
        system::ready,
        speech::speech,
        jobs::read::marks,
        batches::submit,
        batches::get,
        batches::cancel,
        tenant_webhooks::set_webhook_url,
        tenant_webhooks::rotate_secret,
        tenant_webhooks::read_secret,
        usage::usage,
        admin::list_tenants,
        admin::create_tenant,
        admin::get_tenant,
        admin::update_tenant,
        admin::list_tenant_keys,
        admin::create_key,
        admin::list_keys,
        admin::revoke_key,
        admin_usage::usage,
        openapi_json,
    ),
    components(
        responses(
            error::responses::NoApiKey,
            error::responses::NoAdminToken,
            error::responses::AdminOff,
            error::responses::NoSuchTenant,
            error::responses::NoSuchTask,
            error::responses::NoSuchBatch,
            error::responses::InvalidBody,
            error::responses::BodyTooLarge,
            error::responses::NotJson,
            error::responses::Unavailable,
        ),
        schemas(
        error::Problem,
        error::LimitProblem,
        ttsq_core::FieldError,
        view::TaskView,
        view::AcceptedView,
        view::BatchPage,
        view::CancelledBatch
    )),
    modifiers(&SecuritySchemes),
    tags(
        (name = "jobs", description = "Submit jobs, read tasks and their audio"),
        (name = "batches", description = "Up to 1,000 jobs at once, their progress and cancellation"),
        (name = "openai", description = "OpenAI-compatible speech"),
        (name = "usage", description = "The calling tenant's own usage"),
        (name = "admin", description = "Tenants, limits, keys and usage of all tenants, behind the \
            admin token; off (404) when no admin token is configured"),
        (name = "system", description = "Catalog, health, readiness, this document"),
    )
)]
struct ApiDoc;

/// Declares the schemes the operations name: `bearer`, an API key as
/// `Authorization: Bearer <key>`, and `admin_token`, the admin token the
/// same way.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.description = Some("A ttsq API key; it names the tenant.".to_owned());
        components.add_security_scheme("bearer", SecurityScheme::Http(http));
        let mut admin = Http::new(HttpAuthScheme::Bearer);
        admin.description = Some(
            "The admin token (`admin.token`, `TTSQ_ADMIN_TOKEN`) as \
             `Authorization: Bearer <token>`; API keys are refused."
                .to_owned(),
        );
        components.add_security_scheme("admin_token", SecurityScheme::Http(admin));
    }
}

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    // The crate version would make the committed copy drift on every release.
    doc.info.version = "v1".to_owned();
    doc
}

/// The document as pretty JSON with a trailing newline, as committed.
pub fn document_json() -> String {
    // A document of strings, maps and numbers always serialises.
    let mut json = document()
        .to_pretty_json()
        .expect("OpenAPI document serialises");
    json.push('\n');
    json
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "system",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = Object))
)]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(document())
}
