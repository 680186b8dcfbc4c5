//! The path every vendor request takes, whatever its wire format: count it,
//! check down / key / body / credits / quota, wait the latency, maybe inject
//! a fault, then answer audio. Vendor modules only parse bodies and shape
//! error answers.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use serde_json::Value;

use crate::{
    audio::{self, Encoding},
    config::FakeConfig,
    elevenlabs, http, openai,
    state::{Shared, Throttled},
    stats::{Outcome, RequestRecord, Vendor},
};

/// Body of a "malformed" 200: odd-length (so not 16-bit PCM), no MP3 frame
/// sync, no RIFF header, not JSON.
const GARBAGE: &[u8] = b"\x00\x13 this is not audio, whatever the content type says!!\x7f";
const _: () = assert!(
    GARBAGE.len() % 2 == 1,
    "garbage must not pass as 16-bit PCM"
);

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

    fn outcome(&self) -> Outcome {
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

/// A well-formed synthesis request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Order {
    /// Characters of text.
    pub characters: u64,
    /// Speaking rate factor; shortens or lengthens the audio.
    pub speed: f64,
    /// What to answer.
    pub encoding: Encoding,
}

/// What a vendor module made of a synthesis request body.
pub(crate) struct Parsed {
    /// Voice named, even when the request is otherwise refused.
    pub voice: Option<String>,
    /// Characters of text, 0 when there is none.
    pub characters: u64,
    /// The order, or why it is refused.
    pub order: Result<Order, Refusal>,
}

/// One request to a vendor route.
pub(crate) struct Call {
    /// Wire format of the route.
    pub vendor: Vendor,
    /// `METHOD /template`, the key of `by_route`.
    pub route: &'static str,
    /// Request method.
    pub method: Method,
    /// Request URI.
    pub uri: Uri,
    /// Request headers.
    pub headers: HeaderMap,
}

impl Call {
    /// The log entry for this call, before its answer is known.
    fn record(&self, config: &FakeConfig) -> RequestRecord {
        let (auth_header, presented) = match self.vendor {
            Vendor::ElevenLabs => ("xi-api-key", self.header("xi-api-key")),
            Vendor::OpenAi => (
                "authorization",
                self.header("authorization")
                    .map(|v| bearer_token(&v).unwrap_or_default().to_owned()),
            ),
            Vendor::Http => (config.http_auth_header.as_str(), {
                self.header(&config.http_auth_header)
            }),
        };
        let expected = match self.vendor {
            Vendor::ElevenLabs => config.keys.elevenlabs.as_deref(),
            Vendor::OpenAi => config.keys.openai.as_deref(),
            Vendor::Http => config.keys.http.as_deref(),
        };
        let auth_matched = match expected {
            None => true,
            Some(key) => presented.as_deref() == Some(key),
        };
        RequestRecord {
            seq: 0,
            elapsed_ms: 0,
            vendor: self.vendor,
            method: self.method.to_string(),
            path: self.uri.path().to_owned(),
            query: self.uri.query().map(str::to_owned),
            header_names: self.headers.keys().map(|k| k.as_str().to_owned()).collect(),
            auth_header: presented
                .is_some()
                .then(|| auth_header.to_ascii_lowercase()),
            auth_matched,
            request_id: self.header("x-request-id"),
            accept: self.header("accept"),
            body: None,
            voice: None,
            characters: 0,
            status: None,
            outcome: Outcome::Listing,
        }
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

/// The token of an `Authorization: Bearer …` value.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Answers a synthesis request.
pub(crate) async fn synthesize(
    shared: Arc<Shared>,
    call: Call,
    body: &Bytes,
    parse: impl FnOnce(&FakeConfig, Option<&Value>) -> Parsed,
) -> Response {
    let config = shared.config();
    shared.count_request(call.vendor, call.route);
    let _flight = shared.enter();
    let mut record = call.record(&config);
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let parsed = parse(&config, json.as_ref());
    record.body = json;
    record.voice = parsed.voice.clone();
    record.characters = parsed.characters;
    if let Some(voice) = &parsed.voice {
        shared.count_order(voice, parsed.characters);
    }

    let order = match admit(&shared, &config, &record, parsed) {
        Ok(order) => order,
        Err(refusal) => return refuse(&shared, &config, call.vendor, record, &refusal),
    };

    let latency = config.latency.fixed_ms
        + (shared.random() * (config.latency.jitter_ms as f64 + 1.0)).floor() as u64;
    if latency > 0 {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(latency)) => {}
            () = shared.shutdown.cancelled() => {
                return refuse(&shared, &config, call.vendor, record, &Refusal::Down);
            }
        }
    }

    let faults = config.faults;
    let draw = shared.random();
    let timeout = rate(faults.timeout_rate);
    let server_error = timeout + rate(faults.server_error_rate);
    let malformed = server_error + rate(faults.malformed_rate);
    if draw < timeout {
        record.outcome = Outcome::Timeout;
        shared.finish(record, config.log_capacity);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(faults.timeout_hold_ms)) => {}
            () = shared.shutdown.cancelled() => {}
        }
        return vendor_refusal(
            call.vendor,
            &Refusal::ServerError(StatusCode::GATEWAY_TIMEOUT),
        );
    }
    if draw < server_error {
        let status = if shared.random() < 0.5 {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return refuse(
            &shared,
            &config,
            call.vendor,
            record,
            &Refusal::ServerError(status),
        );
    }
    if draw < malformed {
        if shared.random() < 0.5 {
            return refuse(&shared, &config, call.vendor, record, &Refusal::Truncated);
        }
        record.outcome = Outcome::Malformed;
        record.status = Some(200);
        shared.finish(record, config.log_capacity);
        return audio_response(order.encoding, Bytes::from_static(GARBAGE));
    }

    let duration = audio::duration_ms(
        order.characters,
        config.ms_per_char,
        order.speed,
        config.max_audio_ms,
    );
    match shared.audio.render(duration, order.encoding).await {
        Ok(bytes) => {
            record.outcome = Outcome::Audio;
            record.status = Some(200);
            shared.finish(record, config.log_capacity);
            audio_response(order.encoding, bytes)
        }
        Err(message) => refuse(
            &shared,
            &config,
            call.vendor,
            record,
            &Refusal::bad_request("unsupported_output_format", message),
        ),
    }
}

/// The checks before any work, in the order a vendor makes them.
fn admit(
    shared: &Shared,
    config: &FakeConfig,
    record: &RequestRecord,
    parsed: Parsed,
) -> Result<Order, Refusal> {
    if config.down {
        return Err(Refusal::Down);
    }
    if !record.auth_matched {
        return Err(Refusal::Unauthorized);
    }
    let order = parsed.order?;
    if config.credits_exhausted {
        return Err(Refusal::CreditsExhausted);
    }
    shared
        .admit(&config.quota, order.characters)
        .map_err(Refusal::Throttled)?;
    Ok(order)
}

/// Answers a listing or health route: down and key checks, then `answer`.
pub(crate) fn listing(
    shared: &Shared,
    call: &Call,
    check_key: bool,
    answer: impl FnOnce(&FakeConfig) -> Response,
) -> Response {
    let config = shared.config();
    shared.count_request(call.vendor, call.route);
    let mut record = call.record(&config);
    if config.down {
        return refuse(shared, &config, call.vendor, record, &Refusal::Down);
    }
    if check_key && !record.auth_matched {
        return refuse(shared, &config, call.vendor, record, &Refusal::Unauthorized);
    }
    let response = answer(&config);
    record.status = Some(response.status().as_u16());
    shared.finish(record, config.log_capacity);
    response
}

/// Logs `refusal` and renders it in `vendor`'s wire format.
fn refuse(
    shared: &Shared,
    config: &FakeConfig,
    vendor: Vendor,
    mut record: RequestRecord,
    refusal: &Refusal,
) -> Response {
    let response = vendor_refusal(vendor, refusal);
    record.outcome = refusal.outcome();
    record.status = Some(response.status().as_u16());
    shared.finish(record, config.log_capacity);
    response
}

fn vendor_refusal(vendor: Vendor, refusal: &Refusal) -> Response {
    let mut response = match vendor {
        Vendor::ElevenLabs => elevenlabs::refusal(refusal),
        Vendor::OpenAi => openai::refusal(refusal),
        Vendor::Http => http::refusal(refusal),
    };
    if let Refusal::Throttled(throttled) = refusal {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(throttled.retry_after_secs),
        );
    }
    response
}

/// The JSON answer of a refusal whose body is `json`, or a cut-off JSON body
/// for [`Refusal::Truncated`].
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

fn audio_response(encoding: Encoding, bytes: Bytes) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, encoding.format.content_type())],
        Body::from(bytes),
    )
        .into_response()
}

/// A fault rate as a usable fraction.
fn rate(value: f64) -> f64 {
    if value.is_nan() {
        0.0
    } else {
        value.clamp(0.0, 1.0)
    }
}

/// A float field of `body`, if present.
pub(crate) fn number(body: &Value, pointer: &str) -> Option<f64> {
    body.pointer(pointer).and_then(Value::as_f64)
}

/// A string field of `body`, if present.
pub(crate) fn string<'a>(body: &'a Value, pointer: &str) -> Option<&'a str> {
    body.pointer(pointer).and_then(Value::as_str)
}

/// Characters of `text` as the quota counts them.
pub(crate) fn characters(text: &str) -> u64 {
    text.chars().count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("abc"), None);
    }

    #[test]
    fn rates_are_clamped_fractions() {
        assert_eq!(rate(f64::NAN), 0.0);
        assert_eq!(rate(-1.0), 0.0);
        assert_eq!(rate(2.0), 1.0);
        assert_eq!(rate(0.25), 0.25);
    }
}
