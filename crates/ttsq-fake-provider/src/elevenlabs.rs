//! The ElevenLabs REST wire format.
//!
//! `POST /v1/text-to-speech/{voice_id}?output_format=…` with `xi-api-key`
//! and `{text, model_id, voice_settings, language_code}`; answers audio.
//! `POST /v1/text-to-speech/{voice_id}/stream` is the same call, its audio
//! sent as it is made (see [`Streaming`](crate::config::Streaming)).
//! `POST /v1/text-to-speech/{voice_id}/with-timestamps` answers the same
//! audio as JSON `{audio_base64, alignment, normalized_alignment}` with
//! per-character start and end times.
//! Errors are `{"detail": {"status": "…", "message": "…"}}`, except request
//! validation errors, which are FastAPI's `{"detail": [{"type", "loc",
//! "msg"}]}` with status 422. `GET /v1/voices` and `GET /v1/user` serve as
//! cheap authenticated health checks.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bytes::Bytes;
use serde::Deserialize;
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

/// What ElevenLabs answers when no `output_format` is given.
const DEFAULT_OUTPUT_FORMAT: &str = "mp3_44100_128";

/// Every `output_format` value of the text-to-speech endpoint, per the
/// published API definition. The fake produces the mp3, pcm and wav ones.
const OUTPUT_FORMATS: &[&str] = &[
    "alaw_8000",
    "mp3_22050_32",
    "mp3_24000_48",
    "mp3_44100_32",
    "mp3_44100_64",
    "mp3_44100_96",
    "mp3_44100_128",
    "mp3_44100_192",
    "opus_48000_32",
    "opus_48000_64",
    "opus_48000_96",
    "opus_48000_128",
    "opus_48000_192",
    "pcm_8000",
    "pcm_16000",
    "pcm_22050",
    "pcm_24000",
    "pcm_32000",
    "pcm_44100",
    "pcm_48000",
    "ulaw_8000",
    "wav_8000",
    "wav_16000",
    "wav_22050",
    "wav_24000",
    "wav_32000",
    "wav_44100",
    "wav_48000",
];

/// `voice_settings.speed` accepts this range.
const SPEED_RANGE: std::ops::RangeInclusive<f64> = 0.7..=1.2;

/// ElevenLabs streams WAV with this placeholder in both size fields.
const WAV_PLACEHOLDER: u32 = 0x7fff_ffff;

/// The ElevenLabs routes.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1/text-to-speech/{voice_id}", post(text_to_speech))
        .route(
            "/v1/text-to-speech/{voice_id}/stream",
            post(text_to_speech_stream),
        )
        .route(
            "/v1/text-to-speech/{voice_id}/with-timestamps",
            post(text_to_speech_with_timestamps),
        )
        .route("/v1/voices", get(voices))
        .route("/v1/user", get(user))
}

#[derive(Debug, Deserialize)]
struct SpeechQuery {
    output_format: Option<String>,
}

async fn text_to_speech(
    State(shared): State<Arc<Shared>>,
    Path(voice_id): Path<String>,
    Query(query): Query<SpeechQuery>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = Call {
        vendor: Vendor::ElevenLabs,
        route: "POST /v1/text-to-speech/{voice_id}",
        method,
        uri,
        headers,
        render_refusal: refusal,
    };
    speak(shared, call, &voice_id, query, &body).await
}

/// `POST /v1/text-to-speech/{voice_id}/stream`: the same checks and audio.
async fn text_to_speech_stream(
    State(shared): State<Arc<Shared>>,
    Path(voice_id): Path<String>,
    Query(query): Query<SpeechQuery>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = Call {
        vendor: Vendor::ElevenLabs,
        route: "POST /v1/text-to-speech/{voice_id}/stream",
        method,
        uri,
        headers,
        render_refusal: refusal,
    };
    speak(shared, call, &voice_id, query, &body).await
}

async fn speak(
    shared: Arc<Shared>,
    call: Call,
    voice_id: &str,
    query: SpeechQuery,
    body: &Bytes,
) -> Response {
    let output_format = query
        .output_format
        .unwrap_or_else(|| DEFAULT_OUTPUT_FORMAT.to_owned());
    pipeline::synthesize(shared, call, body, |config, json| {
        parse(config, voice_id, &output_format, json)
    })
    .await
}

/// `POST /v1/text-to-speech/{voice_id}/with-timestamps`: the same checks
/// and audio, answered as JSON `{audio_base64, alignment,
/// normalized_alignment}`; the alignment spreads the audio's length evenly
/// over the text's characters (spaces included, as ElevenLabs does).
async fn text_to_speech_with_timestamps(
    State(shared): State<Arc<Shared>>,
    Path(voice_id): Path<String>,
    Query(query): Query<SpeechQuery>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = Call {
        vendor: Vendor::ElevenLabs,
        route: "POST /v1/text-to-speech/{voice_id}/with-timestamps",
        method,
        uri,
        headers,
        render_refusal: refusal,
    };
    let output_format = query
        .output_format
        .unwrap_or_else(|| DEFAULT_OUTPUT_FORMAT.to_owned());
    let config = shared.config();
    let json: Option<Value> = serde_json::from_slice(&body).ok();
    let response = pipeline::synthesize(shared, call, &body, |config, json| {
        parse(config, &voice_id, &output_format, json)
    })
    .await;
    if response.status() != StatusCode::OK {
        return response;
    }
    let Ok(audio) = axum::body::to_bytes(response.into_body(), usize::MAX).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let text = json
        .as_ref()
        .and_then(|b| request::string(b, "/text"))
        .unwrap_or_default();
    let speed = json
        .as_ref()
        .and_then(|b| request::number(b, "/voice_settings/speed"))
        .unwrap_or(1.0);
    let duration_s = f64::from(crate::audio::duration_ms(
        request::characters(text),
        config.ms_per_char,
        speed,
        config.max_audio_ms,
    )) / 1000.0;
    let characters: Vec<String> = text.chars().map(String::from).collect();
    let step = duration_s / characters.len().max(1) as f64;
    let starts: Vec<f64> = (0..characters.len()).map(|i| i as f64 * step).collect();
    let ends: Vec<f64> = (1..=characters.len()).map(|i| i as f64 * step).collect();
    let alignment = json!({
        "characters": characters,
        "character_start_times_seconds": starts,
        "character_end_times_seconds": ends,
    });
    Json(json!({
        "audio_base64": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &audio),
        "alignment": alignment,
        "normalized_alignment": alignment,
    }))
    .into_response()
}

fn parse(config: &FakeConfig, voice: &str, output_format: &str, body: Option<&Value>) -> Parsed {
    let text = body.and_then(|b| request::string(b, "/text"));
    let characters = text.map_or(0, request::characters);
    let order = order(config, voice, output_format, body, text, characters);
    Parsed {
        voice: Some(voice.to_owned()),
        characters,
        order,
    }
}

fn order(
    config: &FakeConfig,
    voice: &str,
    output_format: &str,
    body: Option<&Value>,
    text: Option<&str>,
    characters: u64,
) -> Result<Order, Refusal> {
    let Some(body) = body else {
        return Err(validation("body", "json_invalid", "JSON decode error"));
    };
    let Some(text) = text else {
        return Err(validation("body.text", "missing", "Field required"));
    };
    if !OUTPUT_FORMATS.contains(&output_format) {
        return Err(validation(
            "query.output_format",
            "enum",
            "Input should be one of the published output formats",
        ));
    }
    let encoding = encoding(output_format).ok_or_else(|| {
        Refusal::bad_request(
            "unsupported_output_format",
            format!("the fake does not produce `{output_format}`"),
        )
    })?;
    let speed = request::number(body, "/voice_settings/speed").unwrap_or(1.0);
    if !SPEED_RANGE.contains(&speed) {
        return Err(Refusal::bad_request(
            "invalid_voice_settings",
            format!("voice_settings.speed must be between 0.7 and 1.2, got {speed}"),
        ));
    }
    if text.trim().is_empty() {
        return Err(Refusal::bad_request("empty_text", "text must not be empty"));
    }
    if !config.knows_voice(voice) {
        return Err(Refusal::bad_request(
            "voice_not_found",
            format!("A voice with the voice_id {voice} was not found."),
        ));
    }
    Ok(Order {
        characters,
        speed,
        encoding,
    })
}

/// The encoding of an `output_format` the fake produces: `codec_rate[_kbps]`.
fn encoding(output_format: &str) -> Option<Encoding> {
    let mut parts = output_format.split('_');
    let codec = parts.next()?;
    let rate: u32 = parts.next()?.parse().ok()?;
    let format = match codec {
        "mp3" => AudioFormat::Mp3,
        "pcm" => AudioFormat::Pcm,
        "wav" => AudioFormat::Wav,
        _ => return None,
    };
    let mut encoding = Encoding::new(format, rate);
    if format == AudioFormat::Wav {
        encoding.wav_size = WavSize::Placeholder(WAV_PLACEHOLDER);
    }
    Some(encoding)
}

fn validation(location: &'static str, kind: &'static str, message: &str) -> Refusal {
    Refusal::Validation {
        location,
        kind,
        message: message.to_owned(),
    }
}

async fn voices(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let call = listing_call("GET /v1/voices", method, uri, headers);
    pipeline::listing(&shared, &call, true, |config| {
        let voices: Vec<Value> = config
            .voices
            .iter()
            .map(|v| {
                json!({
                    "voice_id": v.id,
                    "name": v.id,
                    "category": "premade",
                    "labels": {"language": v.dialect},
                })
            })
            .collect();
        Json(json!({ "voices": voices })).into_response()
    })
}

async fn user(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let call = listing_call("GET /v1/user", method, uri, headers);
    let used = shared.characters_synthesized();
    pipeline::listing(&shared, &call, true, |config| {
        Json(json!({
            "subscription": {
                "tier": "fake",
                "status": if config.credits_exhausted { "quota_exhausted" } else { "active" },
                "character_count": used,
                "character_limit": Value::Null,
            },
            "is_new_user": false,
        }))
        .into_response()
    })
}

fn listing_call(route: &'static str, method: Method, uri: Uri, headers: HeaderMap) -> Call {
    Call {
        vendor: Vendor::ElevenLabs,
        route,
        method,
        uri,
        headers,
        render_refusal: refusal,
    }
}

/// `{"detail": {"status", "message"}}` with the status ElevenLabs uses.
fn detail(status: StatusCode, code: &str, message: &str) -> Response {
    json_error(
        status,
        &json!({"detail": {"status": code, "message": message}}),
    )
}

/// A refusal in ElevenLabs' wire format.
pub(crate) fn refusal(refusal: &Refusal) -> Response {
    match refusal {
        Refusal::Down => detail(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "The service is temporarily unavailable.",
        ),
        Refusal::Unauthorized => detail(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "Invalid API key",
        ),
        // ElevenLabs reports exhausted credits with 401, not 402 or 429.
        Refusal::CreditsExhausted => detail(
            StatusCode::UNAUTHORIZED,
            "quota_exceeded",
            "You have insufficient quota to complete this request",
        ),
        Refusal::Throttled(throttled) => match throttled.limit {
            Limit::Concurrency => detail(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_concurrent_requests",
                "Too many concurrent requests for your subscription.",
            ),
            Limit::Requests | Limit::Characters => detail(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                "You are sending requests too quickly.",
            ),
        },
        Refusal::ServerError(status) => detail(
            *status,
            "internal_server_error",
            "An internal error occurred.",
        ),
        // FastAPI's request validation: 422 with a list under `detail`.
        Refusal::Validation {
            location,
            kind,
            message,
        } => json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({"detail": [{
                "type": kind,
                "loc": location.split('.').collect::<Vec<_>>(),
                "msg": message,
            }]}),
        ),
        Refusal::Invalid {
            status,
            code,
            message,
        } => detail(*status, code, message),
        Refusal::Truncated => truncated(&json!({
            "detail": {"status": "internal_server_error", "message": "An internal error occurred."}
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_formats_map_to_encodings() {
        assert_eq!(
            encoding("mp3_44100_128"),
            Some(Encoding::new(AudioFormat::Mp3, 44_100))
        );
        assert_eq!(
            encoding("pcm_22050"),
            Some(Encoding::new(AudioFormat::Pcm, 22_050))
        );
        assert_eq!(
            encoding("wav_24000").map(|e| e.wav_size),
            Some(WavSize::Placeholder(WAV_PLACEHOLDER))
        );
        assert_eq!(encoding("ulaw_8000"), None);
        assert_eq!(encoding("opus_48000_64"), None);
    }

    #[test]
    fn a_missing_text_is_a_fastapi_validation_error() {
        let parsed = parse(
            &FakeConfig::default(),
            "rachel",
            "mp3_44100_128",
            Some(&json!({"model_id": "m"})),
        );

        let refusal = parsed.order.unwrap_err();
        assert!(
            matches!(
                &refusal,
                Refusal::Validation {
                    location: "body.text",
                    kind: "missing",
                    ..
                }
            ),
            "{refusal:?}"
        );
    }
}
