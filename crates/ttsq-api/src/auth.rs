//! Bearer API keys. The key names the tenant; an unknown or revoked key is
//! a 401 before the body is even read.

use axum::{extract::FromRequestParts, http::request::Parts};
use ttsq_store::Principal;

use crate::{ApiContext, ApiError};

/// The authenticated caller.
pub struct Caller(pub Principal);

impl FromRequestParts<ApiContext> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        context: &ApiContext,
    ) -> Result<Self, Self::Rejection> {
        let key = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
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
