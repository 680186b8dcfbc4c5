//! `POST /v1/audio/speech`: the OpenAI speech API over ttsq, so that
//! existing OpenAI SDK clients work by changing only their base URL and key.
//!
//! A request becomes a high-priority job: the same validation, cache, quota,
//! task row and ledger row as `POST /v1/tts/jobs` with `priority: high`
//! (it goes through the very same code). What differs is the wire shape:
//! OpenAI's field names, its error body `{"error": {message, type, param,
//! code}}`, and the voice: an OpenAI voice name maps to a dialect through the
//! `[speech]` settings (see `defaults.toml`).
//!
//! Formats and speed are OpenAI's: `mp3`, `opus` (Ogg), `flac`, `wav` and
//! `pcm` (raw 16-bit mono at 24 kHz, as OpenAI sends it, resampled from
//! the voice's own rate); `aac` is refused with a 400 naming
//! `response_format`: the one maintained encoder (FDK AAC) has no patent
//! licence, so ttsq does not include it. `speed` is
//! 0.25–4.0 (the job API keeps 0.5–2.0); what a provider cannot reach
//! itself is made up by a pitch-preserving time-stretch.
//!
//! `model` is accepted for compatibility (`tts-1`, `tts-1-hd`,
//! `gpt-4o-mini-tts`, …) and does not choose anything: the dialect's route
//! does. `instructions` (at most 4,096 characters, as OpenAI allows) go to
//! the route's first provider when it takes them (an OpenAI-compatible
//! one), and then into the content hash: other instructions, other audio.
//! A route that cannot follow them ignores them, and they do not split its
//! cache.
//!
//! `stream_format`: `audio` (the default) answers the audio bytes, passed
//! on as the provider streams them (see `jobs::submit`); `sse` answers
//! `text/event-stream` events `{"type": "speech.audio.delta", "audio":
//! base64}` and a last `{"type": "speech.audio.done", "usage": {…}}`, or
//! `{"type": "error", "error": {…}}` when the synthesis fails midway. OpenAI
//! refuses `sse` with `tts-1`; here `model` chooses nothing, so every model
//! may ask for it. The usage counts characters, which is what ttsq bills,
//! as `input_tokens`; no audio tokens are counted.
//!
//! Refusals keep OpenAI's shape: a tenant limit is 429 `rate_limit_error`
//! with `Retry-After` (as the job API's 429); text the content filter blocks
//! is 400 `invalid_request_error`, `code: content_rejected`, `param: input`
//! (or `instructions`, which the filter reads too) (OpenAI refuses policy violations with 400; the job API answers 422).
//! Both are audited like the job API's refusals.

use axum::{
    Json,
    body::{Body, Bytes},
    extract::{State, rejection::BytesRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use ttsq_config::SpeechSettings;
use ttsq_core::{Catalog, EdgeRules, Job, JobRequest, ValidationErrors, job::decode_json};
use utoipa::ToSchema;

use crate::{ApiContext, ApiError, auth::Caller, jobs::submit::submit_high, view::AudioBody};

/// Formats this endpoint serves, by OpenAI's names (which are ours too).
const FORMATS: [&str; 5] = ["mp3", "opus", "flac", "wav", "pcm"];

/// The rate of OpenAI's `pcm`, which has no header to say it.
const PCM_SAMPLE_RATE_HZ: u32 = 24_000;

/// What this endpoint allows beyond the job API: OpenAI's speed range and
/// its `pcm` rate.
fn edge_rules() -> EdgeRules {
    EdgeRules {
        speed_range: 0.25..=4.0,
        pcm_sample_rate_hz: Some(PCM_SAMPLE_RATE_HZ),
    }
}

/// Body of `POST /v1/audio/speech`, as OpenAI defines it.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SpeechRequest {
    /// Accepted for compatibility; the dialect's route picks the provider.
    #[schema(example = "tts-1")]
    model: Option<String>,
    /// Text to speak.
    #[schema(example = "Hello there.")]
    input: Option<String>,
    /// An OpenAI voice name (mapped by configuration), a dialect id such as
    /// `en-gb`, or `dialect/voice`.
    #[schema(example = "alloy")]
    voice: Option<String>,
    /// `mp3` (default), `opus`, `flac`, `wav` or `pcm` (16-bit mono at
    /// 24 kHz); `aac` is refused (its one encoder has no patent licence).
    #[schema(example = "mp3")]
    response_format: Option<String>,
    /// Speaking rate, 0.25 to 4.0 (default 1.0).
    #[schema(minimum = 0.25, maximum = 4.0, example = 1.0)]
    speed: Option<f64>,
    /// How to speak, for providers that follow it (at most 4,096
    /// characters); others ignore it.
    #[schema(example = "Speak in a calm tone.")]
    instructions: Option<String>,
    /// `audio` (default): the audio bytes, streamed as they are made;
    /// `sse`: server-sent events `speech.audio.delta` (base64 audio) and
    /// `speech.audio.done`.
    #[schema(example = "audio")]
    stream_format: Option<String>,
}

/// Longest `instructions`, in characters (OpenAI's limit).
const MAX_INSTRUCTIONS_CHARS: usize = 4_096;

/// How the audio is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamFormat {
    /// The bytes as they are.
    Audio,
    /// Server-sent events with base64 chunks.
    Sse,
}

/// OpenAI's error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiError {
    /// The error.
    error: OpenAiErrorBody,
}

/// The inside of [`OpenAiError`].
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiErrorBody {
    /// What went wrong, for a person.
    message: String,
    /// `invalid_request_error`, `authentication_error`, `rate_limit_error`
    /// or `server_error`.
    r#type: &'static str,
    /// The request field at fault, if one is.
    param: Option<String>,
    /// A stable code, if there is one.
    code: Option<String>,
}

/// An error answered in OpenAI's shape.
struct SpeechError {
    status: StatusCode,
    body: OpenAiErrorBody,
    /// Seconds for `Retry-After`: a tenant limit's period, or a few for an
    /// outage.
    retry_after: Option<u64>,
}

impl SpeechError {
    fn invalid(param: &str, code: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            body: OpenAiErrorBody {
                message: message.into(),
                r#type: "invalid_request_error",
                param: Some(param.to_owned()),
                code: Some(code.to_owned()),
            },
            retry_after: None,
        }
    }
}

impl IntoResponse for SpeechError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(OpenAiError { error: self.body })).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds),
            );
        }
        response
    }
}

impl From<ApiError> for SpeechError {
    fn from(err: ApiError) -> Self {
        if let ApiError::Validation(errors) = &err {
            return from_validation(errors);
        }
        let status = err.status();
        let (r#type, code) = match status {
            StatusCode::UNAUTHORIZED => ("invalid_request_error", Some("invalid_api_key")),
            StatusCode::TOO_MANY_REQUESTS => ("rate_limit_error", Some("rate_limit_exceeded")),
            s if s.is_server_error() => ("server_error", None),
            _ => ("invalid_request_error", None),
        };
        let code = match &err {
            ApiError::Synthesis { code, .. } => Some(*code),
            _ => code,
        };
        // A tenant limit says when it resets, as the job API does.
        let err_retry = match &err {
            ApiError::LimitExceeded(e) => Some(e.retry_after.as_secs()),
            _ => None,
        };
        // The problem+json rendering logs an internal error's cause chain;
        // this keeps that one place the only one that sees it.
        let message = if matches!(err, ApiError::Internal(_)) {
            drop(err.into_response());
            "internal error".to_owned()
        } else {
            err.to_string()
        };
        Self {
            status,
            body: OpenAiErrorBody {
                message,
                r#type,
                param: None,
                code: code.map(str::to_owned),
            },
            retry_after: match &err_retry {
                Some(seconds) => Some(*seconds),
                None => (status == StatusCode::SERVICE_UNAVAILABLE).then_some(5),
            },
        }
    }
}

/// A job validation error, named by the OpenAI field it concerns.
fn from_validation(errors: &ValidationErrors) -> SpeechError {
    let first = errors.0.first();
    let param = match first.map(|e| e.field.as_str()) {
        Some("text") => "input",
        Some("dialect" | "voice") => "voice",
        Some("format") => "response_format",
        Some("speed") => "speed",
        Some(other) => other,
        None => "",
    };
    SpeechError::invalid(param, "invalid_value", errors.to_string())
}

/// The dialect and voice an OpenAI `voice` speaks with: a configured name,
/// else a dialect id or `dialect/voice` of the catalog, else the default
/// dialect.
fn resolve_voice(
    voice: &str,
    settings: &SpeechSettings,
    catalog: &Catalog,
) -> (String, Option<String>) {
    let target = settings
        .voices
        .get(voice)
        .or_else(|| settings.voices.get(&voice.to_ascii_lowercase()))
        .map(String::as_str)
        .unwrap_or(voice);
    let (dialect, named) = match target.split_once('/') {
        Some((dialect, voice)) => (dialect, Some(voice.to_owned())),
        None => (target, None),
    };
    if catalog.get(dialect).is_some() {
        (dialect.to_owned(), named)
    } else {
        (settings.default_dialect.clone(), None)
    }
}

/// `POST /v1/audio/speech`: OpenAI-compatible speech, served at high priority.
#[utoipa::path(
    post,
    path = "/v1/audio/speech",
    operation_id = "create_speech",
    tag = "openai",
    request_body = SpeechRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The audio, streamed as the provider makes it when it streams \
            (chunked; a failure midway cuts the body off); with `stream_format: sse`, server-sent events \
            `speech.audio.delta` (base64 audio), then `speech.audio.done` or `error`", content(
            (AudioBody = "audio/mpeg"), (AudioBody = "audio/ogg"), (AudioBody = "audio/flac"),
            (AudioBody = "audio/wav"), (AudioBody = "audio/pcm"), (String = "text/event-stream")
        ), headers(
            ("x-task-id" = Uuid, description = "The task recorded for this request"),
            ("x-cache" = String, description = "`hit` or `miss`"),
        )),
        (status = 400, description = "Invalid request; also the text refused by the content policy \
            (`code: content_rejected`, `param: input` or `instructions`), where the job API answers 422", body = OpenAiError),
        (status = 401, description = "No valid API key", body = OpenAiError),
        (status = 429, description = "Over one of the tenant's limits (`type: rate_limit_error`, \
            `code: rate_limit_exceeded`); nothing was synthesized", body = OpenAiError, headers(
            ("Retry-After" = u64, description = "Seconds until the limit's period ends, or a few for a full queue"),
        )),
        (status = 502, description = "Synthesis failed", body = OpenAiError),
        (status = 503, description = "A dependency or every provider is unavailable; retry later", body = OpenAiError),
    )
)]
#[tracing::instrument(skip_all, fields(task_id, dialect))]
pub async fn speech(
    State(context): State<ApiContext>,
    caller: Result<Caller, ApiError>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match speak(context, caller, body).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn speak(
    context: ApiContext,
    caller: Result<Caller, ApiError>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, SpeechError> {
    let caller = caller?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            SpeechError::from(ApiError::PayloadTooLarge(context.max_body_bytes))
        } else {
            SpeechError::invalid("", "invalid_body", "could not read the request body")
        }
    })?;
    let request: SpeechRequest = decode_json(&body).map_err(|errors| {
        let param = errors
            .0
            .first()
            .map(|e| e.field.clone())
            .unwrap_or_default();
        SpeechError::invalid(&param, "invalid_value", errors.to_string())
    })?;
    if request.model.as_deref().is_none_or(|m| m.trim().is_empty()) {
        return Err(SpeechError::invalid(
            "model",
            "missing_required_parameter",
            "`model` is required",
        ));
    }
    let input = request.input.ok_or_else(|| {
        SpeechError::invalid("input", "missing_required_parameter", "`input` is required")
    })?;
    let voice = request.voice.ok_or_else(|| {
        SpeechError::invalid("voice", "missing_required_parameter", "`voice` is required")
    })?;
    let format = request.response_format.unwrap_or_else(|| "mp3".to_owned());
    if format == "aac" {
        return Err(SpeechError::invalid(
            "response_format",
            "unsupported_value",
            "response_format `aac` is not available: the one maintained AAC encoder, \
             Fraunhofer FDK AAC, comes with no patent licence (Debian ships it as non-free), \
             so ttsq does not include it; use mp3, opus, flac, wav or pcm",
        ));
    }
    if !FORMATS.contains(&format.as_str()) {
        return Err(SpeechError::invalid(
            "response_format",
            "unsupported_value",
            format!(
                "response_format `{}` is not supported; use mp3, opus, flac, wav or pcm",
                format.chars().take(40).collect::<String>()
            ),
        ));
    }
    let stream_format = match request.stream_format.as_deref() {
        None | Some("audio") => StreamFormat::Audio,
        Some("sse") => StreamFormat::Sse,
        Some(other) => {
            return Err(SpeechError::invalid(
                "stream_format",
                "unsupported_value",
                format!(
                    "stream_format `{}` is not supported; use audio or sse",
                    other.chars().take(40).collect::<String>()
                ),
            ));
        }
    };
    let instructions = request
        .instructions
        .map(|i| i.trim().to_owned())
        .filter(|i| !i.is_empty());
    if let Some(instructions) = &instructions
        && instructions.chars().count() > MAX_INSTRUCTIONS_CHARS
    {
        return Err(SpeechError::invalid(
            "instructions",
            "string_above_max_length",
            format!("`instructions` is longer than {MAX_INSTRUCTIONS_CHARS} characters"),
        ));
    }
    let (dialect, voice) = resolve_voice(&voice, &context.speech, context.providers.catalog());
    let mut job = Job::validate_at(
        JobRequest {
            text: Some(input),
            dialect: Some(dialect),
            voice,
            speed: request.speed,
            format: Some(format),
            priority: Some("high".to_owned()),
            ..JobRequest::default()
        },
        context.providers.catalog(),
        &context.limits,
        &edge_rules(),
    )
    .map_err(|errors| from_validation(&errors))?;
    if let Some(instructions) = instructions
        && context.providers.takes_instructions(&job.dialect)
    {
        job.instruct(instructions);
    }
    job.scope_cache(&caller.0.cache_scope());
    let blocked = |text: &str| context.content_filter.blocks(text);
    let refused = if blocked(&job.text) {
        Some("input")
    } else if job.instructions.as_deref().is_some_and(blocked) {
        Some("instructions")
    } else {
        None
    };
    if let Some(param) = refused {
        tracing::info!(tenant = %caller.0.tenant_id, param, "speech refused by the content filter");
        context
            .audit_refusal(&caller.0, &job, "content_rejected", json!({}))
            .await;
        return Err(SpeechError::invalid(
            param,
            "content_rejected",
            ApiError::ContentRejected.to_string(),
        ));
    }
    let traceparent = ttsq_telemetry::trace_context::current_traceparent();
    let task = context.new_task(&caller.0, &job, None, traceparent.as_deref());
    let cached = context
        .store
        .find_audio(job.hash.as_str())
        .await
        .map_err(ApiError::from)?;
    let result = submit_high(&context, &task, cached, false).await;
    if let Err(ApiError::LimitExceeded(e)) = &result {
        tracing::info!(limit = e.limit.as_str(), "speech refused by a tenant limit");
        let detail = json!({"limit": e.limit.as_str(), "limit_value": e.max, "usage": e.used});
        context
            .audit_refusal(&caller.0, &job, "limit_exceeded", detail)
            .await;
    }
    let response = result?;
    Ok(match stream_format {
        StreamFormat::Sse if response.status() == StatusCode::OK => {
            server_sent_events(response, job.characters)
        }
        _ => response,
    })
}

/// The audio of `response` as server-sent events, in OpenAI's shape: one
/// `speech.audio.delta` per chunk as it comes, then `speech.audio.done`
/// with the usage; an `error` event instead when the audio breaks off.
fn server_sent_events(response: Response, characters: u32) -> Response {
    let (mut parts, body) = response.into_parts();
    let event = |value: serde_json::Value| Bytes::from(format!("data: {value}\n\n"));
    let deltas = body.into_data_stream().map(move |chunk| match chunk {
        Ok(chunk) => Ok(event(json!({
            "type": "speech.audio.delta",
            "audio": base64::engine::general_purpose::STANDARD.encode(&chunk),
        }))),
        Err(err) => Err(event(json!({
            "type": "error",
            "error": {"message": err.to_string(), "type": "server_error", "code": "synthesis_failed"},
        }))),
    });
    // The stream ends after its first error event, without `done`.
    let tokens = u64::from(characters);
    let done = event(json!({
        "type": "speech.audio.done",
        "usage": {"input_tokens": tokens, "output_tokens": 0, "total_tokens": tokens},
    }));
    let events = futures::stream::unfold(
        (Box::pin(deltas), Some(done)),
        |(mut deltas, done)| async move {
            let done = done?;
            match deltas.next().await {
                Some(Ok(delta)) => Some((delta, (deltas, Some(done)))),
                Some(Err(error)) => Some((error, (deltas, None))),
                None => Some((done, (deltas, None))),
            }
        },
    )
    .map(Ok::<_, std::convert::Infallible>);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    parts
        .headers
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from_stream(events))
}

#[cfg(test)]
mod tests {
    use ttsq_core::{AudioFormat, DialectInfo};

    use super::*;

    fn dialect(id: &str) -> DialectInfo {
        DialectInfo {
            id: id.to_owned(),
            name: id.to_owned(),
            voices: vec!["default".to_owned(), "m3".to_owned()],
            formats: vec![AudioFormat::Mp3],
            emotions: Vec::new(),
            provider_chain: vec!["espeak".to_owned()],
            model: "espeak-ng".to_owned(),
            sample_rate_hz: 22_050,
            marks: Vec::new(),
            max_request_chars: 5_000,
        }
    }

    fn settings() -> SpeechSettings {
        SpeechSettings {
            default_dialect: "en-us".to_owned(),
            voices: [
                ("alloy", "en-us"),
                ("fable", "en-gb/m3"),
                ("ghost", "xx-yy"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        }
    }

    #[test]
    fn voices_map_by_table_then_dialect_id_then_default() {
        let catalog = Catalog::new([dialect("en-us"), dialect("en-gb")]);
        let s = settings();
        assert_eq!(resolve_voice("alloy", &s, &catalog), ("en-us".into(), None));
        assert_eq!(
            resolve_voice("fable", &s, &catalog),
            ("en-gb".into(), Some("m3".into()))
        );
        assert_eq!(resolve_voice("en-gb", &s, &catalog), ("en-gb".into(), None));
        assert_eq!(
            resolve_voice("en-gb/m3", &s, &catalog),
            ("en-gb".into(), Some("m3".into()))
        );
        assert_eq!(resolve_voice("marin", &s, &catalog), ("en-us".into(), None));
        // A table entry naming a dialect this deployment lacks falls back too.
        assert_eq!(resolve_voice("ghost", &s, &catalog), ("en-us".into(), None));
    }
}
