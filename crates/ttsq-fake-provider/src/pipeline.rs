//! The path every vendor request takes, whatever its wire format: count it,
//! check down / key / body / credits / quota, wait the latency, maybe inject
//! a fault, then answer audio. Vendor modules only parse bodies and shape
//! error answers: each hands its parser and its refusal renderer in with the
//! [`Call`], so this path knows no vendor.

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
    config::{FakeConfig, Streaming},
    refusal::Refusal,
    request::{Order, Parsed},
    state::Shared,
    stats::{Outcome, RequestRecord, Vendor},
};

/// Body of a "malformed" 200: odd-length (so not 16-bit PCM), no MP3 frame
/// sync, no RIFF header, not JSON.
const GARBAGE: &[u8] = b"\x00\x13 this is not audio, whatever the content type says!!\x7f";
const _: () = assert!(
    GARBAGE.len() % 2 == 1,
    "garbage must not pass as 16-bit PCM"
);

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
    /// The vendor's wire format of a refusal.
    pub render_refusal: fn(&Refusal) -> Response,
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
            traceparent: self.header("traceparent"),
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
        Err(refusal) => return refuse(&shared, &config, &call, record, &refusal),
    };
    if let Some(phrase) = config
        .refuse_texts_containing
        .iter()
        .find(|phrase| contains(body, phrase.as_bytes()))
    {
        let refusal = Refusal::bad_request(
            "text_refused",
            format!("the text contains the refused phrase {phrase:?}"),
        );
        return refuse(&shared, &config, &call, record, &refusal);
    }

    let slow = config
        .slow_texts_containing
        .iter()
        .any(|phrase| contains(body, phrase.as_bytes()));
    let latency = if slow {
        config.slow_texts_latency_ms
    } else {
        config.latency.fixed_ms
            + (shared.random() * (config.latency.jitter_ms as f64 + 1.0)).floor() as u64
    };
    if latency > 0 {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(latency)) => {}
            () = shared.shutdown.cancelled() => {
                return refuse(&shared, &config, &call, record, &Refusal::Down);
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
        return vendor_refusal(&call, &Refusal::ServerError(StatusCode::GATEWAY_TIMEOUT));
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
            &call,
            record,
            &Refusal::ServerError(status),
        );
    }
    if draw < malformed {
        if shared.random() < 0.5 {
            return refuse(&shared, &config, &call, record, &Refusal::Truncated);
        }
        record.outcome = Outcome::Malformed;
        record.status = Some(200);
        shared.finish(record, config.log_capacity);
        return audio_response(
            order.encoding,
            Bytes::from_static(GARBAGE),
            config.streaming,
        );
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
            audio_response(order.encoding, bytes, config.streaming)
        }
        Err(message) => refuse(
            &shared,
            &config,
            &call,
            record,
            &Refusal::bad_request("unsupported_output_format", message),
        ),
    }
}

/// Whether `needle` occurs in `haystack` (an empty needle never does).
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
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
        return refuse(shared, &config, call, record, &Refusal::Down);
    }
    if check_key && !record.auth_matched {
        return refuse(shared, &config, call, record, &Refusal::Unauthorized);
    }
    let response = answer(&config);
    record.status = Some(response.status().as_u16());
    shared.finish(record, config.log_capacity);
    response
}

/// Logs `refusal` and renders it in the wire format of `call`'s vendor.
fn refuse(
    shared: &Shared,
    config: &FakeConfig,
    call: &Call,
    mut record: RequestRecord,
    refusal: &Refusal,
) -> Response {
    let response = vendor_refusal(call, refusal);
    record.outcome = refusal.outcome();
    record.status = Some(response.status().as_u16());
    shared.finish(record, config.log_capacity);
    response
}

fn vendor_refusal(call: &Call, refusal: &Refusal) -> Response {
    let mut response = (call.render_refusal)(refusal);
    if let Refusal::Throttled(throttled) = refusal {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(throttled.retry_after_secs),
        );
    }
    response
}

fn audio_response(encoding: Encoding, bytes: Bytes, streaming: Streaming) -> Response {
    let body = if streaming.chunks > 1 {
        Body::from_stream(chunked(bytes, streaming))
    } else {
        Body::from(bytes)
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, encoding.format.content_type())],
        body,
    )
        .into_response()
}

/// `bytes` in `streaming.chunks` pieces, the first at once and the others
/// evenly over `streaming.spread_ms`; an error (which aborts the chunked
/// body) after `fail_after_chunks` pieces.
fn chunked(
    bytes: Bytes,
    streaming: Streaming,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let pieces = streaming.chunks.max(1) as usize;
    let size = bytes.len().div_ceil(pieces).max(1);
    let gap = Duration::from_millis(streaming.spread_ms / (pieces as u64 - 1).max(1));
    let fail_after = streaming.fail_after_chunks.map(|n| n as usize);
    futures::stream::unfold((bytes, 0usize), move |(mut rest, sent)| async move {
        if fail_after == Some(sent) {
            if sent > 0 {
                tokio::time::sleep(gap).await;
            }
            let err = std::io::Error::other("the fake broke the stream");
            return Some((Err(err), (Bytes::new(), usize::MAX)));
        }
        if rest.is_empty() || sent == usize::MAX {
            return None;
        }
        if sent > 0 {
            tokio::time::sleep(gap).await;
        }
        let piece = rest.split_to(size.min(rest.len()));
        Some((Ok(piece), (rest, sent + 1)))
    })
}

/// A fault rate as a usable fraction.
fn rate(value: f64) -> f64 {
    if value.is_nan() {
        0.0
    } else {
        value.clamp(0.0, 1.0)
    }
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
