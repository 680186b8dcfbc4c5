//! The API's one error type and its problem+json rendering.
//!
//! Policy: client mistakes are 4xx with a `detail` a person can act on and,
//! for request bodies, `errors: [{field, reason}]`. Dependency outages are 503
//! with `Retry-After`. Anything else is a 500 whose body says only that; its
//! cause chain is logged. No variant ever carries a secret.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use ttsq_core::{FieldError, ValidationErrors};
use uuid::Uuid;

/// Content type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request body or query is invalid; each field says why.
    #[error(transparent)]
    Validation(#[from] ValidationErrors),
    /// The request is well-formed but cannot be served as asked: speech
    /// marks the dialect's provider cannot time. Answered 422.
    #[error("{0}")]
    Unprocessable(ValidationErrors),
    /// No, malformed, unknown or revoked API key.
    #[error("a valid API key is required: send `Authorization: Bearer <key>`")]
    Unauthorized,
    /// Nothing with this id exists for this tenant.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The body is not JSON by its content type.
    #[error("send the body as `Content-Type: application/json`")]
    UnsupportedMediaType,
    /// The body exceeds the configured limit.
    #[error("the request body exceeds the limit of {0} bytes")]
    PayloadTooLarge(usize),
    /// The request conflicts with the resource's state.
    #[error("{0}")]
    Conflict(String),
    /// The submission would go over one of the tenant's limits; nothing was
    /// written. Answered 429 with `Retry-After`.
    #[error("{}", limit_detail(.0))]
    LimitExceeded(ttsq_store::LimitExceeded),
    /// The text matches a configured blocked pattern. The text and the
    /// pattern are never echoed.
    #[error("the text was refused by the content policy")]
    ContentRejected,
    /// A dependency (queue, database, storage) is down; retry later.
    #[error("{0} is unavailable; retry later")]
    Unavailable(&'static str),
    /// The provider could not synthesize an inline job.
    #[error("synthesis failed: {message}")]
    Synthesis {
        /// The task recorded as failed.
        task_id: Uuid,
        /// Stable error code.
        code: &'static str,
        /// Message free of secrets.
        message: String,
        /// Whether retrying may help.
        retryable: bool,
    },
    /// A bug or an unexpected failure; details are logged, never returned.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// Wraps an unexpected failure.
    pub fn internal(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Internal(Box::new(err))
    }

    /// One invalid field.
    pub fn field(field: &str, reason: impl Into<String>) -> Self {
        Self::Validation(ValidationErrors(vec![FieldError::new(field, reason)]))
    }

    /// The HTTP status this error is answered with.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::Validation(_) => StatusCode::BAD_REQUEST,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::LimitExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::ContentRejected => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Synthesis {
                retryable: true, ..
            } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Synthesis {
                retryable: false, ..
            } => StatusCode::BAD_GATEWAY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            Self::Validation(_) => "validation",
            Self::Unprocessable(_) => "unprocessable",
            Self::Unauthorized => "unauthorized",
            Self::NotFound(_) => "not-found",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::PayloadTooLarge(_) => "payload-too-large",
            Self::Conflict(_) => "conflict",
            Self::LimitExceeded(_) => "limit-exceeded",
            Self::ContentRejected => "content-rejected",
            Self::Unavailable(_) => "unavailable",
            Self::Synthesis { .. } => "synthesis-failed",
            Self::Internal(_) => "internal",
        }
    }
}

/// RFC 7807 body of every error (`application/problem+json`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct Problem<'a> {
    /// `urn:ttsq:problem:{slug}`: stable, for programs to branch on.
    #[schema(example = "urn:ttsq:problem:validation")]
    r#type: String,
    /// The HTTP status's reason phrase.
    #[schema(value_type = String, example = "Bad Request")]
    title: &'a str,
    /// The HTTP status.
    #[schema(example = 400)]
    status: u16,
    /// What went wrong, for a person.
    detail: String,
    /// Each invalid field and why (validation errors only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<FieldError>>)]
    errors: Option<&'a [FieldError]>,
    /// The task recorded as failed (inline synthesis failures only).
    #[serde(skip_serializing_if = "Option::is_none")]
    task_id: Option<Uuid>,
    /// Stable error code (inline synthesis failures only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    code: Option<&'a str>,
    /// Members particular to one kind of problem (a limit's figures).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    extra: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The 429 `limit_exceeded` problem, for the document only: a [`Problem`]
/// with `code: "limit_exceeded"` and the figures of the limit reached. The
/// response also carries `Retry-After`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct LimitProblem {
    /// `type`, `title`, `status`, `detail`, `code` (`limit_exceeded`).
    #[serde(flatten)]
    problem: Problem<'static>,
    /// The limit reached.
    limit: ttsq_store::LimitKind,
    /// The limit: characters, jobs, or money in `currency`.
    #[schema(example = 10000)]
    limit_value: f64,
    /// In use before this submission, in the same unit.
    usage: f64,
    /// What this submission would add, in the same unit.
    requested: f64,
    /// Currency of a `monthly_budget` limit.
    currency: Option<String>,
    /// Seconds until the limit's period ends (the next UTC day or month), or
    /// a few for a full queue; the same as `Retry-After`.
    #[schema(example = 3600)]
    retry_after: u64,
}

fn limit_detail(e: &ttsq_store::LimitExceeded) -> String {
    let unit = match (&e.limit, &e.currency) {
        (ttsq_store::LimitKind::MonthlyBudget, Some(currency)) => format!(" {currency}"),
        (ttsq_store::LimitKind::DailyCharacters, _) => " characters".to_owned(),
        (ttsq_store::LimitKind::MaxQueuedJobs | ttsq_store::LimitKind::DailyRequests, _) => {
            " jobs".to_owned()
        }
        _ => String::new(),
    };
    let period = match e.limit {
        ttsq_store::LimitKind::DailyCharacters => "this UTC day",
        ttsq_store::LimitKind::MonthlyBudget => {
            "this UTC month (billed, or reserved by jobs still open)"
        }
        ttsq_store::LimitKind::MaxQueuedJobs => "queued or processing now",
        ttsq_store::LimitKind::DailyRequests => "submitted this UTC day",
    };
    format!(
        "over the tenant's {} limit: {}{unit} used {period} of {}{unit}; this job needs {}{unit}",
        e.limit,
        number(e.limit, e.used),
        number(e.limit, e.max),
        number(e.limit, e.requested)
    )
}

/// A limit figure as JSON: whole numbers for counts, decimals for money.
fn number(limit: ttsq_store::LimitKind, value: f64) -> serde_json::Value {
    if limit == ttsq_store::LimitKind::MonthlyBudget {
        serde_json::json!((value * 1e6).round() / 1e6)
    } else {
        serde_json::json!(value.round() as i64)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let Self::Internal(cause) = &self {
            let mut chain = cause.to_string();
            let mut source = cause.source();
            while let Some(s) = source {
                chain.push_str(": ");
                chain.push_str(&s.to_string());
                source = s.source();
            }
            tracing::error!(error = %chain, "internal error");
        }
        let problem = Problem {
            r#type: format!("urn:ttsq:problem:{}", self.slug()),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.to_string(),
            errors: match &self {
                Self::Validation(v) | Self::Unprocessable(v) => Some(&v.0),
                _ => None,
            },
            task_id: match &self {
                Self::Synthesis { task_id, .. } => Some(*task_id),
                _ => None,
            },
            code: match &self {
                Self::Synthesis { code, .. } => Some(code),
                Self::LimitExceeded(_) => Some("limit_exceeded"),
                Self::ContentRejected => Some("content_rejected"),
                _ => None,
            },
            extra: match &self {
                Self::LimitExceeded(e) => {
                    let mut extra = serde_json::Map::new();
                    extra.insert("limit".into(), e.limit.as_str().into());
                    extra.insert("limit_value".into(), number(e.limit, e.max));
                    extra.insert("usage".into(), number(e.limit, e.used));
                    extra.insert("requested".into(), number(e.limit, e.requested));
                    if let Some(currency) = &e.currency {
                        extra.insert("currency".into(), currency.as_str().into());
                    }
                    extra.insert("retry_after".into(), e.retry_after.as_secs().into());
                    Some(extra)
                }
                _ => None,
            },
        };
        // A struct of strings and numbers always serialises.
        let body = serde_json::to_vec(&problem).expect("problem serialises");
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Self::LimitExceeded(e) = &self {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(e.retry_after.as_secs()),
            );
        }
        match status {
            StatusCode::UNAUTHORIZED => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
        response
    }
}

impl From<ttsq_store::StoreError> for ApiError {
    fn from(err: ttsq_store::StoreError) -> Self {
        match err {
            ttsq_store::StoreError::Database(sqlx_err) if is_connectivity(&sqlx_err) => {
                tracing::warn!(error = %sqlx_err, "database unavailable");
                Self::Unavailable("the database")
            }
            ttsq_store::StoreError::LimitExceeded(e) => Self::LimitExceeded(e),
            ttsq_store::StoreError::Conflict(message) => Self::Conflict(message),
            ttsq_store::StoreError::Invalid(message) => match message.split_once(": ") {
                Some((field, reason)) => Self::field(field, reason),
                None => Self::field("", message),
            },
            other => Self::internal(other),
        }
    }
}

fn is_connectivity(err: &ttsq_store::sqlx::Error) -> bool {
    use ttsq_store::sqlx::Error;
    matches!(
        err,
        Error::Io(_) | Error::PoolTimedOut | Error::PoolClosed | Error::WorkerCrashed
    )
}

impl From<ttsq_audio::AudioStoreError> for ApiError {
    fn from(err: ttsq_audio::AudioStoreError) -> Self {
        if err.is_transient() {
            tracing::warn!(error = %err, "audio storage unavailable");
            Self::Unavailable("audio storage")
        } else {
            Self::internal(err)
        }
    }
}

impl From<ttsq_views::ViewError> for ApiError {
    fn from(err: ttsq_views::ViewError) -> Self {
        match err {
            ttsq_views::ViewError::Store(e) => e.into(),
            ttsq_views::ViewError::Storage(e) => e.into(),
        }
    }
}

/// Declares a problem+json response the OpenAPI document defines once, under
/// `components.responses`, for the operations to refer to.
macro_rules! problem_responses {
    ($($(#[$doc:meta])* $name:ident => $description:literal;)+) => {$(
        $(#[$doc])*
        pub struct $name;

        impl<'r> utoipa::ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<Response>) {
                let body = ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build();
                let response = ResponseBuilder::new()
                    .description($description)
                    .content("application/problem+json", body)
                    .build();
                (stringify!($name), response.into())
            }
        }
    )+};
}

/// The error responses many operations share, declared once.
pub mod responses {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder, response::Response};

    problem_responses! {
        /// `401` on the tenant routes.
        NoApiKey => "No valid API key";
        /// `401` on the admin routes.
        NoAdminToken => "No valid admin token";
        /// `404` on the admin routes without a path.
        AdminOff => "The admin API is off (no admin token configured)";
        /// `404` on the admin routes that name a tenant.
        NoSuchTenant => "No such tenant, or the admin API is off";
        /// `404` on the routes that name a task.
        NoSuchTask => "No such task for this tenant";
        /// `404` on the routes that name a batch.
        NoSuchBatch => "No such batch for this tenant";
        /// `400` on a body that is not the operation's JSON.
        InvalidBody => "Invalid body";
        /// `413`.
        BodyTooLarge => "Body too large";
        /// `415`.
        NotJson => "Body is not JSON";
        /// `503`.
        Unavailable => "A dependency is unavailable; retry later";
    }
}
