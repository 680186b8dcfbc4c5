//! Why a request gets no audio, and the JSON answers vendor modules render
//! it with. The pipeline decides on a refusal; each vendor's wire format
//! shapes it, so both import this and neither imports the other.

use axum::{
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::Value;

use crate::{state::Throttled, stats::Outcome};

/// Why a request gets no audio. Each vendor module renders these in its
/// own wire format.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Refusal {
    /// The fake is set down: 503.
    Down,
    /// Missing or wrong key: 401.
    Unauthorized,
    /// The account's credits are gone.
    CreditsExhausted,
    /// Over the fake's quota: 429 with `Retry-After`.
    Throttled(Throttled),
    /// An injected server error with this 5xx status.
    ServerError(StatusCode),
    /// Something wrong with the request: a 4xx with a vendor code.
    Invalid {
        /// A 4xx.
        status: StatusCode,
        /// The vendor's machine-readable code.
        code: &'static str,
        /// Human-readable detail.
        message: String,
    },
    /// A request that does not match the endpoint's schema: ElevenLabs
    /// answers FastAPI's 422, the others a 400.
    Validation {
        /// Where, dotted (`body.text`, `query.output_format`).
        location: &'static str,
        /// The validator's kind (`missing`, `enum`, `json_invalid`).
        kind: &'static str,
        /// Human-readable detail.
        message: String,
    },
    /// A 500 whose JSON error body is cut off.
    Truncated,
}

impl Refusal {
    /// A 400 with `code` and `message`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
        }
    }

    /// How the request log records it.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Down => Outcome::Unavailable,
            Self::Unauthorized => Outcome::Unauthorized,
            Self::CreditsExhausted => Outcome::CreditsExhausted,
            Self::Throttled(_) => Outcome::RateLimited,
            Self::ServerError(_) => Outcome::ServerError,
            Self::Invalid { .. } | Self::Validation { .. } => Outcome::Rejected,
            Self::Truncated => Outcome::Malformed,
        }
    }
}

/// The JSON answer of a refusal whose body is `json`.
pub(crate) fn json_error(status: StatusCode, json: &Value) -> Response {
    (status, axum::Json(json)).into_response()
}

/// A JSON error body cut in the middle, served as JSON.
pub(crate) fn truncated(json: &Value) -> Response {
    let text = json.to_string();
    let cut = text.len() / 2;
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(header::CONTENT_TYPE, "application/json")],
        text.as_bytes()[..cut].to_vec(),
    )
        .into_response()
}
