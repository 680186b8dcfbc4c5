//! The generic contract of self-hosted and regional dialect TTS services.
//!
//! `POST /tts {text, dialect, voice, speed?, emotion?}` with the configured
//! auth header answers `audio/wav` (16-bit mono, 22.05 kHz); `GET /voices`
//! lists `{"voices": [{"id", "dialect"}]}`; `GET /health` answers
//! `{"status": "ok"}`, or 503 when the fake is down. Errors are
//! `{"error": "code", "message": "…"}`.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bytes::Bytes;
use serde_json::{Value, json};
use ttsq_core::AudioFormat;

use crate::{
    audio::Encoding,
    config::FakeConfig,
    pipeline::{self, Call},
    refusal::{Refusal, json_error, truncated},
    request::{self, Order, Parsed},
    state::{Limit, Shared},
    stats::Vendor,
};

/// Rate of the WAV answers.
const SAMPLE_RATE_HZ: u32 = 22_050;

/// `speed` accepts this range.
const SPEED_RANGE: std::ops::RangeInclusive<f64> = 0.25..=4.0;

/// The generic routes.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/tts", post(tts))
        .route("/voices", get(voices))
        .route("/health", get(health))
}

async fn tts(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = Call {
        vendor: Vendor::Http,
        route: "POST /tts",
        method,
        uri,
        headers,
        render_refusal: refusal,
    };
    pipeline::synthesize(shared, call, &body, parse).await
}

fn parse(config: &FakeConfig, body: Option<&Value>) -> Parsed {
    let text = body.and_then(|b| request::string(b, "/text"));
    let voice = body.and_then(|b| request::string(b, "/voice"));
    let characters = text.map_or(0, request::characters);
    Parsed {
        voice: voice.map(str::to_owned),
        characters,
        order: order(config, body, text, voice, characters),
    }
}

fn order(
    config: &FakeConfig,
    body: Option<&Value>,
    text: Option<&str>,
    voice: Option<&str>,
    characters: u64,
) -> Result<Order, Refusal> {
    let Some(body) = body else {
        return Err(Refusal::bad_request("invalid_json", "the body is not JSON"));
    };
    let (Some(text), Some(dialect), Some(voice)) = (text, request::string(body, "/dialect"), voice)
    else {
        return Err(Refusal::bad_request(
            "invalid_request",
            "`text`, `dialect` and `voice` are required strings",
        ));
    };
    if text.trim().is_empty() {
        return Err(Refusal::bad_request(
            "invalid_request",
            "`text` must not be empty",
        ));
    }
    let speed = request::number(body, "/speed").unwrap_or(1.0);
    if !SPEED_RANGE.contains(&speed) {
        return Err(Refusal::bad_request(
            "invalid_request",
            format!("`speed` must be between 0.25 and 4.0, got {speed}"),
        ));
    }
    if !config.knows_dialect(dialect) {
        return Err(Refusal::bad_request(
            "unknown_dialect",
            format!("no voice speaks dialect `{dialect}`"),
        ));
    }
    if !config.knows_voice(voice) {
        return Err(Refusal::bad_request(
            "unknown_voice",
            format!("unknown voice `{voice}`"),
        ));
    }
    Ok(Order {
        characters,
        speed,
        encoding: Encoding::new(AudioFormat::Wav, SAMPLE_RATE_HZ),
    })
}

async fn voices(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let call = listing_call("GET /voices", method, uri, headers);
    pipeline::listing(&shared, &call, false, |config| {
        Json(json!({ "voices": config.voices })).into_response()
    })
}

async fn health(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let call = listing_call("GET /health", method, uri, headers);
    pipeline::listing(&shared, &call, false, |_| {
        Json(json!({"status": "ok"})).into_response()
    })
}

fn listing_call(route: &'static str, method: Method, uri: Uri, headers: HeaderMap) -> Call {
    Call {
        vendor: Vendor::Http,
        route,
        method,
        uri,
        headers,
        render_refusal: refusal,
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    json_error(status, &json!({"error": code, "message": message}))
}

/// A refusal in the generic wire format.
pub(crate) fn refusal(refusal: &Refusal) -> Response {
    match refusal {
        Refusal::Down => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "down", "error": "unavailable", "message": "the service is down"}),
        ),
        Refusal::Unauthorized => error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid API key",
        ),
        Refusal::CreditsExhausted => error(
            StatusCode::PAYMENT_REQUIRED,
            "quota_exhausted",
            "the account has no characters left",
        ),
        Refusal::Throttled(throttled) => {
            let what = match throttled.limit {
                Limit::Concurrency => "too many concurrent requests",
                Limit::Requests => "too many requests per second",
                Limit::Characters => "too many characters per minute",
            };
            error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", what)
        }
        Refusal::ServerError(status) => error(*status, "internal", "internal error"),
        Refusal::Invalid {
            status,
            code,
            message,
        } => error(*status, code, message),
        Refusal::Validation { message, .. } => {
            error(StatusCode::BAD_REQUEST, "invalid_request", message)
        }
        Refusal::Truncated => truncated(&json!({"error": "internal", "message": "internal error"})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dialect_and_voice_must_be_known() {
        let config = FakeConfig::default();
        let order = |dialect: &str, voice: &str| {
            parse(
                &config,
                Some(&json!({"text": "hi", "dialect": dialect, "voice": voice})),
            )
            .order
        };

        assert!(order("en-us", "alloy").is_ok());
        assert!(order("xx", "alloy").is_err());
        assert!(order("en-us", "nobody").is_err());
    }
}
