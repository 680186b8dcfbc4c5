//! Who is calling: a tenant by its bearer API key ([`Caller`]), or an
//! operator by the admin token ([`Admin`]). An unknown or revoked key is a
//! 401 before the body is even read; with no admin token configured the
//! admin routes answer 404, as any unknown route does.

use axum::{
    extract::FromRequestParts,
    http::{header, request::Parts},
};
use ttsq_store::Principal;

use crate::{ApiContext, ApiError};

/// Who the admin API records as the actor of its changes.
pub const ADMIN_ACTOR: &str = "admin-api";

/// The authenticated caller.
pub struct Caller(pub Principal);

impl FromRequestParts<ApiContext> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        context: &ApiContext,
    ) -> Result<Self, Self::Rejection> {
        let key = bearer(parts)
            .filter(|k| !k.is_empty() && k.len() <= 256)
            .ok_or(ApiError::Unauthorized)?;
        let principal = context
            .store
            .authenticate(key)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        Ok(Self(principal))
    }
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
        let presented = bearer(parts).ok_or(ApiError::Unauthorized)?;
        if token.matches(presented) {
            Ok(Self)
        } else {
            tracing::warn!("admin API call with a wrong or missing token");
            Err(ApiError::Unauthorized)
        }
    }
}

/// The credential of an `Authorization: Bearer …` header, trimmed.
fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}
