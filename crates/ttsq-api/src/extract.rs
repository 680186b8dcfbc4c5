//! Request parts every handler reads the same way, each turned into a
//! problem+json error when it is wrong: a JSON body within the route's size
//! limit, the `Idempotency-Key` header, a task id in the path, and a tenant
//! named in the path.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Request},
    http::{HeaderMap, StatusCode, header, request::Parts},
};
use uuid::Uuid;

use crate::{ApiContext, ApiError};

/// The header that makes a submission idempotent.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The most bytes a route reads of a body, when it is not the server's
/// `server.max_body_bytes`: set as an extension beside the route's
/// `DefaultBodyLimit`, so that a refusal names the limit that applied.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A body declared `application/json` (415 otherwise), read whole within the
/// route's limit (413 beyond it). Decoding is the handler's: each has its
/// own field-by-field errors.
pub struct JsonBody(pub Bytes);

impl FromRequest<ApiContext> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, context: &ApiContext) -> Result<Self, ApiError> {
        require_json(request.headers())?;
        let limit = request
            .extensions()
            .get::<BodyLimit>()
            .map_or(context.max_body_bytes, |limit| limit.0);
        let body = Bytes::from_request(request, context)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge(limit)
                } else {
                    ApiError::field("", format!("could not read the body: {rejection}"))
                }
            })?;
        Ok(Self(body))
    }
}

fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// The `Idempotency-Key` header, when sent: 1 to 255 visible ASCII
/// characters. Taken as `Result<IdempotencyKey, ApiError>` by handlers that
/// check the job first.
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(IDEMPOTENCY_KEY) else {
            return Ok(Self(None));
        };
        value
            .to_str()
            .ok()
            .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
            .map(|key| Self(Some(key.to_owned())))
            .ok_or_else(|| {
                ApiError::field(
                    "Idempotency-Key",
                    "must be 1 to 255 visible ASCII characters",
                )
            })
    }
}

/// A task id from the path (`{id}`); one that is no UUID names no task, a
/// 404 like any other unknown id.
pub struct TaskId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for TaskId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::field("", rejection.body_text()))?;
        Uuid::parse_str(&raw)
            .map(Self)
            .map_err(|_| ApiError::NotFound("task"))
    }
}

/// A tenant name or key prefix from the path. One holding U+0000 names
/// nothing (Postgres cannot store that character, and refuses it in a query
/// too), so it is a 404 before any lookup.
pub struct NamePath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for NamePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(name) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::field("", rejection.body_text()))?;
        if name.contains('\0') {
            return Err(ApiError::NotFound("name"));
        }
        Ok(Self(name))
    }
}

/// A tenant named in the path (`{name}`) that exists: a 404 naming the
/// tenant otherwise. Taken after [`crate::auth::Admin`], so that only an
/// admin learns whether a tenant exists.
pub struct TenantPath {
    /// The tenant's id.
    pub id: Uuid,
    /// Its name, as given.
    pub name: String,
}

impl FromRequestParts<ApiContext> for TenantPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, context: &ApiContext) -> Result<Self, ApiError> {
        let NamePath(name) = NamePath::from_request_parts(parts, context).await?;
        let id = context
            .store
            .tenant_id_by_name(&name)
            .await
            .map_err(|err| match err {
                ttsq_store::StoreError::NotFound(_) => ApiError::NotFound("tenant"),
                other => other.into(),
            })?;
        Ok(Self { id, name })
    }
}
