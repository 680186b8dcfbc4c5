//! The OpenAPI 3.1 document of the API, generated from the handlers'
//! `#[utoipa::path]` annotations and the response types' schemas, served at
//! `GET /openapi.json` and rendered as the reference page at `GET /docs`.
//! Its `webhooks` section (which utoipa 5 does not model) is added here,
//! with the delivery bodies' schemas derived from the types
//! `ttsq-webhooks` sends. `docs/openapi.json` is a committed copy; a test fails
//! when it drifts (regenerate with `ttsq openapi > docs/openapi.json` or
//! `UPDATE_OPENAPI=1 cargo nextest run -p ttsq-api --test openapi`).

use std::sync::OnceLock;

use axum::{
    Json,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};
use ttsq_views::{BatchCompletedEvent, TaskCompletedEvent};
use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::{
        HttpMethod, PathItem, Ref, RefOr, Required, ResponseBuilder,
        content::ContentBuilder,
        path::{OperationBuilder, ParameterBuilder, ParameterIn},
        request_body::RequestBodyBuilder,
        schema::{ObjectBuilder, Type},
        security::{Http, HttpAuthScheme, SecurityScheme},
    },
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
        docs,
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
        view::CancelledBatch,
        TaskCompletedEvent,
        BatchCompletedEvent,
    )),
    modifiers(&SecuritySchemes, &Webhooks),
    tags(
        (name = "jobs", description = "Submit jobs, read tasks and their audio"),
        (name = "batches", description = "Up to 1,000 jobs at once, their progress and cancellation"),
        (name = "openai", description = "OpenAI-compatible speech"),
        (name = "usage", description = "The calling tenant's own usage"),
        (name = "admin", description = "Tenants, limits, keys and usage of all tenants, behind the \
            admin token; off (404) when no admin token is configured"),
        (name = "system", description = "Catalog, health, readiness, this document and its reference page"),
        (name = "webhooks", description = "What ttsq POSTs to a job's or batch's `callback_url` (or the \
            tenant's default `webhook_url`), signed the Standard Webhooks way"),
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

/// Adds the document's `webhooks`: one POST per event ttsq sends, its body
/// a component schema derived from the type `ttsq-webhooks` serialises.
/// utoipa 5 has no field for this OpenAPI 3.1 member, so it goes in through
/// the document's flattened extensions, which serialise at the top level.
struct Webhooks;

impl Webhooks {
    /// The events: name, summary, body schema.
    fn events() -> [(&'static str, &'static str, String); 2] {
        [
            (
                "task.completed",
                "A task reached a terminal state",
                TaskCompletedEvent::name().into_owned(),
            ),
            (
                "batch.completed",
                "Every item of a batch is terminal",
                BatchCompletedEvent::name().into_owned(),
            ),
        ]
    }

    fn header(name: &str, description: &str) -> utoipa::openapi::path::Parameter {
        ParameterBuilder::new()
            .name(name)
            .parameter_in(ParameterIn::Header)
            .required(Required::True)
            .description(Some(description))
            .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
            .build()
    }

    fn path_item(event: &str, summary: &str, schema: &str) -> PathItem {
        let operation = OperationBuilder::new()
            .operation_id(Some(event.replace('.', "_")))
            .tag("webhooks")
            .summary(Some(summary))
            .description(Some(
                "POSTed to the job's or batch's `callback_url`, else the tenant's \
                 `webhook_url`, once per event (an attempt that is not answered 2xx \
                 within `webhooks.timeout_secs` is retried with growing back-off). \
                 Verify `webhook-signature` with the tenant's secret and any Standard \
                 Webhooks library before trusting the body; dedupe on `webhook-id`.",
            ))
            .parameter(Self::header(
                "webhook-id",
                "The event's id, the same at every attempt (the body's `id`)",
            ))
            .parameter(Self::header(
                "webhook-timestamp",
                "Unix seconds of this attempt; refuse old ones to stop replays",
            ))
            .parameter(Self::header(
                "webhook-signature",
                "`v1,<base64>`: HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}` \
                 under the tenant's secret; space-separated, one per signing secret \
                 (two during a rotation's grace period)",
            ))
            .parameter(Self::header("ttsq-event", &format!("`{event}`")))
            .request_body(Some(
                RequestBodyBuilder::new()
                    .required(Some(Required::True))
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(RefOr::Ref(Ref::from_schema_name(schema))))
                            .build(),
                    )
                    .build(),
            ))
            .response(
                "2XX",
                ResponseBuilder::new()
                    .description("Received: the event is delivered and not sent again")
                    .build(),
            )
            .response(
                "default",
                ResponseBuilder::new()
                    .description("Any other answer, or none in time: retried later")
                    .build(),
            )
            .build();
        PathItem::new(HttpMethod::Post, operation)
    }
}

impl Modify for Webhooks {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let webhooks: serde_json::Map<String, serde_json::Value> = Self::events()
            .into_iter()
            .map(|(event, summary, schema)| {
                let item = Self::path_item(event, summary, &schema);
                // A path item of strings and maps always serialises.
                let item = serde_json::to_value(item).expect("a path item serialises");
                (event.to_owned(), item)
            })
            .collect();
        openapi
            .extensions
            .get_or_insert_with(Default::default)
            .insert("webhooks".to_owned(), serde_json::Value::Object(webhooks));
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
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = OpenApiDocument))
)]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(document())
}

/// The reference page, rendered from the document once, on first request.
struct DocsPage {
    html: String,
    content_security_policy: HeaderValue,
    etag: HeaderValue,
}

fn docs_page() -> &'static DocsPage {
    static PAGE: OnceLock<DocsPage> = OnceLock::new();
    PAGE.get_or_init(|| {
        // A document of strings, maps and numbers always serialises.
        let document = serde_json::to_value(document()).expect("OpenAPI document serialises");
        let page = ttsq_apidoc::render(&document);
        let digest = Sha256::digest(page.html.as_bytes());
        let etag = format!("\"{}\"", hex::encode(&digest[..16]));
        DocsPage {
            html: page.html,
            // The policy and the tag are ASCII made here, valid header values.
            content_security_policy: HeaderValue::from_str(&page.content_security_policy)
                .expect("the policy is a valid header value"),
            etag: HeaderValue::from_str(&etag).expect("a quoted hex tag is a valid header value"),
        }
    })
}

/// `GET /docs`: the API reference, one HTML page rendered from this
/// document (operations by tag, webhooks, schemas). It loads nothing from
/// elsewhere and runs no script, and its policy says so.
#[utoipa::path(
    get,
    path = "/docs",
    operation_id = "docs",
    tag = "system",
    params(("If-None-Match" = Option<String>, Header, description = "The `ETag` of a copy held: `304` when it is current")),
    responses(
        (status = 200, description = "The API reference page: self-contained HTML, no script", body = String, content_type = "text/html"),
        (status = 304, description = "The copy held is current"),
    )
)]
pub async fn docs(headers: HeaderMap) -> Response {
    let page = docs_page();
    let current = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/").as_bytes() == page.etag.as_bytes());
    let mut response = if current {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            )],
            page.html.as_str(),
        )
            .into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, page.etag.clone());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        page.content_security_policy.clone(),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// An OpenAPI 3.1 document (<https://spec.openapis.org/oas/v3.1.0>), for
/// the document's own description of `GET /openapi.json`.
#[derive(ToSchema)]
#[expect(
    dead_code,
    reason = "a schema for the document; the body is utoipa's `OpenApi`"
)]
struct OpenApiDocument {
    /// The OpenAPI version.
    #[schema(example = "3.1.0")]
    openapi: String,
    /// Title, description, version (`v1`) and licence.
    #[schema(value_type = Object)]
    info: (),
    /// The operations, by path and method.
    #[schema(value_type = Object)]
    paths: (),
    /// The events POSTed to tenants' webhook targets, by event type.
    #[schema(value_type = Object)]
    webhooks: (),
    /// Schemas, responses and security schemes the operations refer to.
    #[schema(value_type = Object)]
    components: (),
    /// The operations' groups.
    #[schema(value_type = Vec<Object>)]
    tags: (),
}
