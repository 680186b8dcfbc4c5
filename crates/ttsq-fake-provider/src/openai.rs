//! The OpenAI-compatible wire format.
//!
//! `POST /v1/audio/speech` with `Authorization: Bearer KEY` and `{model,
//! input, voice, response_format?, speed?, instructions?}`; answers audio.
//! Errors are `{"error": {"message", "type", "param", "code"}}`. As OpenAI
//! does, `wav` comes with `0xFFFFFFFF` in both WAV size fields (it is
//! streamed) and `pcm` is raw 16-bit little-endian at 24 kHz.
//! `GET /v1/models` serves as the cheap authenticated health check.

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
    audio::{Encoding, WavSize},
    config::FakeConfig,
    pipeline::{self, Call},
    refusal::{Refusal, json_error, truncated},
    request::{self, Order, Parsed},
    state::{Limit, Shared},
    stats::Vendor,
};

/// OpenAI's speech output rate, for every format.
const SAMPLE_RATE_HZ: u32 = 24_000;

/// Longest `input` OpenAI accepts.
const MAX_INPUT_CHARS: u64 = 4_096;

/// `speed` accepts this range.
const SPEED_RANGE: std::ops::RangeInclusive<f64> = 0.25..=4.0;

/// Models listed by `GET /v1/models`.
const MODELS: [&str; 3] = ["tts-1", "tts-1-hd", "gpt-4o-mini-tts"];

/// The OpenAI routes.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1/audio/speech", post(speech))
        .route("/v1/models", get(models))
}

async fn speech(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = Call {
        vendor: Vendor::OpenAi,
        route: "POST /v1/audio/speech",
        method,
        uri,
        headers,
        render_refusal: refusal,
    };
    pipeline::synthesize(shared, call, &body, parse).await
}

fn parse(config: &FakeConfig, body: Option<&Value>) -> Parsed {
    let input = body.and_then(|b| request::string(b, "/input"));
    let voice = body.and_then(|b| request::string(b, "/voice"));
    let characters = input.map_or(0, request::characters);
    Parsed {
        voice: voice.map(str::to_owned),
        characters,
        order: order(config, body, input, voice, characters),
    }
}

fn order(
    config: &FakeConfig,
    body: Option<&Value>,
    input: Option<&str>,
    voice: Option<&str>,
    characters: u64,
) -> Result<Order, Refusal> {
    let Some(body) = body else {
        return Err(invalid(
            "body",
            "We could not parse the JSON body of your request.",
        ));
    };
    if request::string(body, "/model").is_none_or(str::is_empty) {
        return Err(invalid("model", "'model' is a required property"));
    }
    let Some(input) = input else {
        return Err(invalid("input", "'input' is a required property"));
    };
    let Some(voice) = voice else {
        return Err(invalid("voice", "'voice' is a required property"));
    };
    if input.is_empty() {
        return Err(invalid("input", "'input' must not be empty"));
    }
    if characters > MAX_INPUT_CHARS {
        return Err(Refusal::bad_request(
            "string_above_max_length",
            format!("'input' is longer than {MAX_INPUT_CHARS} characters"),
        ));
    }
    let speed = request::number(body, "/speed").unwrap_or(1.0);
    if !SPEED_RANGE.contains(&speed) {
        return Err(Refusal::bad_request(
            "invalid_value",
            format!("'speed' must be between 0.25 and 4.0, got {speed}"),
        ));
    }
    let encoding = match request::string(body, "/response_format").unwrap_or("mp3") {
        "mp3" => Encoding::new(AudioFormat::Mp3, SAMPLE_RATE_HZ),
        "pcm" => Encoding::new(AudioFormat::Pcm, SAMPLE_RATE_HZ),
        "wav" => Encoding {
            wav_size: WavSize::Placeholder(u32::MAX),
            ..Encoding::new(AudioFormat::Wav, SAMPLE_RATE_HZ)
        },
        other @ ("opus" | "aac" | "flac") => {
            return Err(Refusal::bad_request(
                "unsupported_response_format",
                format!("the fake does not produce '{other}'"),
            ));
        }
        other => {
            return Err(Refusal::bad_request(
                "invalid_value",
                format!(
                    "'{other}' is not one of ['mp3', 'opus', 'aac', 'flac', 'wav', 'pcm'] - 'response_format'"
                ),
            ));
        }
    };
    if !config.knows_voice(voice) {
        return Err(Refusal::bad_request(
            "invalid_value",
            format!("voice '{voice}' is not supported"),
        ));
    }
    Ok(Order {
        characters,
        speed,
        encoding,
    })
}

fn invalid(field: &'static str, message: &str) -> Refusal {
    Refusal::Validation {
        location: field,
        kind: "invalid_request_error",
        message: message.to_owned(),
    }
}

async fn models(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let call = Call {
        vendor: Vendor::OpenAi,
        route: "GET /v1/models",
        method,
        uri,
        headers,
        render_refusal: refusal,
    };
    pipeline::listing(&shared, &call, true, |_| {
        let data: Vec<Value> = MODELS
            .iter()
            .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "ttsq-fake"}))
            .collect();
        Json(json!({"object": "list", "data": data})).into_response()
    })
}

/// `{"error": {"message", "type", "param", "code"}}`.
fn error(status: StatusCode, kind: &str, code: Option<&str>, message: &str) -> Response {
    json_error(status, &body(kind, code, None, message))
}

fn body(kind: &str, code: Option<&str>, param: Option<&str>, message: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
}

/// A refusal in OpenAI's wire format.
pub(crate) fn refusal(refusal: &Refusal) -> Response {
    match refusal {
        Refusal::Down => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            None,
            "The engine is currently overloaded, please try again later.",
        ),
        Refusal::Unauthorized => error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            Some("invalid_api_key"),
            "Incorrect API key provided.",
        ),
        // OpenAI reports exhausted credits as a 429, like a rate limit;
        // only the code tells them apart.
        Refusal::CreditsExhausted => error(
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            Some("insufficient_quota"),
            "You exceeded your current quota, please check your plan and billing details.",
        ),
        Refusal::Throttled(throttled) => {
            let kind = match throttled.limit {
                Limit::Concurrency | Limit::Requests => "requests",
                Limit::Characters => "tokens",
            };
            error(
                StatusCode::TOO_MANY_REQUESTS,
                kind,
                Some("rate_limit_exceeded"),
                &format!(
                    "Rate limit reached for {kind}. Please try again in {}s.",
                    throttled.retry_after_secs
                ),
            )
        }
        Refusal::ServerError(status) => error(
            *status,
            "server_error",
            None,
            "The server had an error while processing your request.",
        ),
        Refusal::Invalid {
            status,
            code,
            message,
        } => error(*status, "invalid_request_error", Some(code), message),
        Refusal::Validation {
            location, message, ..
        } => json_error(
            StatusCode::BAD_REQUEST,
            &body("invalid_request_error", None, Some(location), message),
        ),
        Refusal::Truncated => truncated(&body(
            "server_error",
            None,
            None,
            "The server had an error while processing your request.",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order_of(body: Value) -> Result<Order, Refusal> {
        parse(&FakeConfig::default(), Some(&body)).order
    }

    #[test]
    fn wav_is_streamed_style_and_everything_is_24_khz() {
        let order = order_of(
            json!({"model": "tts-1", "input": "hi", "voice": "alloy", "response_format": "wav"}),
        )
        .unwrap();

        assert_eq!(order.encoding.sample_rate_hz, 24_000);
        assert_eq!(order.encoding.wav_size, WavSize::Placeholder(u32::MAX));
    }

    #[test]
    fn unknown_voices_formats_and_speeds_are_refused() {
        let base = json!({"model": "tts-1", "input": "hi", "voice": "alloy"});
        let with = |key: &str, value: Value| {
            let mut body = base.clone();
            body[key] = value;
            order_of(body)
        };

        assert!(with("voice", json!("nobody")).is_err());
        assert!(with("response_format", json!("opus")).is_err());
        assert!(with("response_format", json!("ogg")).is_err());
        assert!(with("speed", json!(5.0)).is_err());
        assert!(with("input", json!("x".repeat(4_097))).is_err());
        assert!(order_of(base).is_ok());
    }
}
