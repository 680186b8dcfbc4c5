//! What the HTTP adapters share: their configuration, one pooled client
//! with connect and total timeouts, the auth header, a request id per call,
//! capability checks before any request, and the mapping of vendor answers
//! to [`Audio`] or [`ProviderError`].
//!
//! # Secrets
//!
//! The key lives in a [`SecretString`] and, once built into a header value,
//! in a `HeaderValue` marked sensitive (so reqwest's `Debug` hides it). It is
//! never logged or put into an error: auth failures carry the vendor's status
//! and code only (OpenAI's 401 message echoes part of the key), and every
//! other vendor message is truncated and scrubbed of the key before use.
//!
//! # Error mapping
//!
//! Vendor error bodies are read whatever their shape — ElevenLabs'
//! `{"detail": {"status", "message"}}`, FastAPI's 422 `{"detail": [{"msg"}]}`,
//! OpenAI's `{"error": {"message", "type", "code"}}`, the generic
//! `{"error": "code", "message"}` — then:
//!
//! | answer | error |
//! |---|---|
//! | code `quota_exceeded` / `insufficient_quota` / `quota_exhausted`, or 402 | [`ProviderError::QuotaExhausted`] (final) |
//! | 401, 403, or code `invalid_api_key` | [`ProviderError::Auth`] (final) |
//! | 429 | [`ProviderError::RateLimited`] with `Retry-After` |
//! | 408, 5xx, connection failure, malformed 200 | [`ProviderError::Transient`] |
//! | client timeout | [`ProviderError::Timeout`] |
//! | other 4xx | [`ProviderError::Rejected`] with the vendor's message |
//!
//! The credit check comes first because vendors report exhausted credits
//! with the status of another error: ElevenLabs with 401, OpenAI with 429.

use std::{fmt::Write as _, time::Duration};

use bytes::{Bytes, BytesMut};
use reqwest::{
    Method, RequestBuilder, StatusCode, Url,
    header::{self, HeaderMap, HeaderName, HeaderValue},
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use ttsq_core::{AudioFormat, DialectInfo};
use uuid::Uuid;

use crate::{
    Audio, AudioSink, ProviderError, SynthesisRequest, dsp,
    encode::{self, Rendering, Waveform},
    probe,
};

/// Largest audio body read; a longer one is a vendor fault, not audio.
const MAX_AUDIO_BYTES: usize = 64 * 1024 * 1024;

/// Most bytes reserved for a body before it arrives, whatever its
/// `Content-Length` says.
const PREALLOCATED_BODY_BYTES: usize = 1024 * 1024;

/// Largest error body read; vendor error bodies are small JSON.
const MAX_ERROR_BYTES: usize = 64 * 1024;

/// Longest vendor message kept in an error, in characters.
const MESSAGE_CHARS: usize = 300;

/// Longest `Retry-After` honoured: a bigger one is more likely a bug than
/// a plan, and would park the provider for good.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3_600);

/// Vendor codes that mean the account's credits or quota are gone.
const CREDIT_CODES: [&str; 3] = ["quota_exceeded", "insufficient_quota", "quota_exhausted"];

/// How one HTTP provider is reached and what it serves. The same shape for
/// the three HTTP adapters; fields one adapter does not use are noted.
#[derive(Debug, Clone)]
pub struct HttpProviderConfig {
    /// Provider name in routes, the ledger and metrics.
    pub name: String,
    /// Scheme, host and optional path prefix, e.g. `https://api.elevenlabs.io`;
    /// routes are appended (`/v1/text-to-speech/…`, `/v1/audio/speech`, `/tts`).
    pub base_url: String,
    /// The credential; `None` sends no auth header (self-hosted servers).
    pub api_key: Option<SecretString>,
    /// Header carrying the key. Defaults: `xi-api-key` (elevenlabs),
    /// `Authorization: Bearer <key>` (openai), `X-Api-Key` (http). With a
    /// custom name the key is sent as is, without `Bearer`.
    pub auth_header: Option<String>,
    /// Model used for dialects whose `model` is empty. Defaults:
    /// `eleven_multilingual_v2` (elevenlabs), `tts-1` (openai), the provider
    /// name (http, which sends no model).
    pub model: Option<String>,
    /// Bound on establishing a connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Bound on a whole call, connection to last body byte.
    pub timeout: Duration,
    /// The dialects served with their voices, formats, emotions, model and
    /// sample rate; requests are checked against them before anything is sent.
    /// An empty `voices` list accepts any voice.
    pub dialects: Vec<DialectInfo>,
    /// Longest text sent, in characters; longer is
    /// [`ProviderError::Unsupported`], so the router can fall back. Also the
    /// `max_request_chars` the dialects declare (longer jobs are split into
    /// chunks that fit). `None`: the adapter's own limit (OpenAI 4,096,
    /// ElevenLabs and `http` 5,000).
    pub max_text_chars: Option<usize>,
}

impl HttpProviderConfig {
    /// A configuration without a key, with 5 s connect and 60 s total timeouts.
    pub fn new(
        name: impl Into<String>,
        base_url: impl Into<String>,
        dialects: Vec<DialectInfo>,
    ) -> Self {
        Self {
            name: name.into(),
            base_url: base_url.into(),
            api_key: None,
            auth_header: None,
            model: None,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(60),
            dialects,
            max_text_chars: None,
        }
    }
}

/// A configuration an adapter cannot be built from. Never contains the key.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// `base_url` is not an absolute http(s) URL.
    #[error("provider `{provider}`: invalid base URL: {reason}")]
    BaseUrl {
        /// Provider name.
        provider: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `auth_header` is not a valid header name.
    #[error("provider `{provider}`: `{name}` is not a valid header name")]
    AuthHeader {
        /// Provider name.
        provider: String,
        /// The name given.
        name: String,
    },
    /// The key cannot be sent in a header (control characters, non-ASCII).
    #[error("provider `{provider}`: the API key is not a valid header value")]
    ApiKey {
        /// Provider name.
        provider: String,
    },
    /// No dialect is declared.
    #[error("provider `{provider}` declares no dialects")]
    NoDialects {
        /// Provider name.
        provider: String,
    },
    /// A dialect asks for something the adapter cannot produce.
    #[error("provider `{provider}`, dialect `{dialect}`: {what}")]
    Capability {
        /// Provider name.
        provider: String,
        /// Dialect id.
        dialect: String,
        /// What cannot be produced.
        what: String,
    },
    /// The HTTP client could not be built (TLS backend).
    #[error("provider `{provider}`: cannot build the HTTP client: {reason}")]
    Client {
        /// Provider name.
        provider: String,
        /// The builder's message.
        reason: String,
    },
}

/// How an adapter presents its key by default.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AuthStyle {
    /// The raw key in this header.
    Header(&'static str),
    /// `Authorization: Bearer <key>`.
    Bearer,
}

/// Whether an adapter passes `emotion` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Emotions {
    /// Sent: an emotion the dialect does not list is refused.
    Checked,
    /// Not sent (the vendor has none); ignored like espeak does.
    Ignored,
}

/// What came back in a 2xx.
pub(crate) struct Reply {
    /// The body.
    pub bytes: Bytes,
    /// The request id sent, for logs.
    pub request_id: Uuid,
}

/// What the vendor sent, before it becomes [`Audio`].
pub(crate) enum Payload {
    /// An MP3 stream, kept as is.
    Mp3(Bytes),
    /// Raw 16-bit little-endian mono PCM at this rate.
    Pcm(Bytes, u32),
    /// A RIFF WAVE file, possibly with placeholder sizes.
    Wav(Bytes),
}

/// One HTTP provider's connection and capabilities.
pub(crate) struct Upstream {
    /// Provider name.
    pub name: String,
    /// Base URL; routes are appended as path segments.
    base: Url,
    /// Pooled client with the configured timeouts.
    client: reqwest::Client,
    /// The auth header, its value marked sensitive.
    auth: Option<(HeaderName, HeaderValue)>,
    /// The key, only to scrub it out of vendor messages.
    secret: Option<SecretString>,
    /// The total timeout, reported by [`ProviderError::Timeout`].
    timeout: Duration,
    /// Served dialects, with `provider_chain`, `model` and
    /// `max_request_chars` filled in.
    dialects: Vec<DialectInfo>,
    /// Longest text sent, in characters (at least 1).
    max_text_chars: usize,
}

impl Upstream {
    /// Checks `config` and builds the client; `default_max_chars` is the
    /// adapter's request limit, used unless the config sets one.
    pub fn new(
        config: HttpProviderConfig,
        auth_style: AuthStyle,
        default_model: &str,
        default_max_chars: u32,
    ) -> Result<Self, BuildError> {
        let provider = config.name.clone();
        let base = parse_base_url(&config.base_url).map_err(|reason| BuildError::BaseUrl {
            provider: provider.clone(),
            reason,
        })?;
        if config.dialects.is_empty() {
            return Err(BuildError::NoDialects { provider });
        }
        let auth = match &config.api_key {
            None => None,
            Some(key) => Some(auth_header(
                &provider,
                &config.auth_header,
                auth_style,
                key,
            )?),
        };
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout)
            .user_agent(concat!("ttsq/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BuildError::Client {
                provider: provider.clone(),
                reason: e.to_string(),
            })?;
        let model = config
            .model
            .clone()
            .unwrap_or_else(|| default_model.to_owned());
        let max_text_chars = config
            .max_text_chars
            .unwrap_or(default_max_chars as usize)
            .max(1);
        let max_request_chars = u32::try_from(max_text_chars).unwrap_or(u32::MAX);
        let dialects = config
            .dialects
            .into_iter()
            .map(|mut d| {
                d.provider_chain = vec![provider.clone()];
                if d.model.is_empty() {
                    d.model.clone_from(&model);
                }
                d.max_request_chars = max_request_chars;
                d
            })
            .collect();
        Ok(Self {
            name: provider,
            base,
            client,
            auth,
            secret: config.api_key,
            timeout: config.timeout,
            dialects,
            max_text_chars,
        })
    }

    /// The served dialects.
    pub fn dialects(&self) -> &[DialectInfo] {
        &self.dialects
    }

    /// Refuses, at build time, a dialect format for which `supported` is false.
    pub fn require_formats(
        &self,
        supported: impl Fn(&DialectInfo, AudioFormat) -> Result<(), String>,
    ) -> Result<(), BuildError> {
        for dialect in &self.dialects {
            for &format in &dialect.formats {
                supported(dialect, format).map_err(|what| BuildError::Capability {
                    provider: self.name.clone(),
                    dialect: dialect.id.clone(),
                    what,
                })?;
            }
        }
        Ok(())
    }

    /// The dialect of `request`, once its voice, format, emotion and text
    /// length are known to be served. Nothing is sent otherwise.
    pub fn check(
        &self,
        request: &SynthesisRequest<'_>,
        emotions: Emotions,
    ) -> Result<&DialectInfo, ProviderError> {
        let dialect = self
            .dialects
            .iter()
            .find(|d| d.id == request.dialect)
            .ok_or_else(|| self.unsupported(format!("dialect `{}`", request.dialect)))?;
        if !dialect.voices.is_empty() && !dialect.voices.iter().any(|v| v == request.voice) {
            return Err(self.unsupported(format!(
                "voice `{}` for dialect `{}`",
                request.voice, dialect.id
            )));
        }
        if !dialect.formats.contains(&request.format) {
            return Err(self.unsupported(format!(
                "format `{}` for dialect `{}`",
                request.format, dialect.id
            )));
        }
        if let (Emotions::Checked, Some(emotion)) = (emotions, request.emotion)
            && !dialect.emotions.iter().any(|e| e == emotion)
        {
            return Err(
                self.unsupported(format!("emotion `{emotion}` for dialect `{}`", dialect.id))
            );
        }
        let max = self.max_text_chars;
        let chars = request.text.chars().count();
        if chars > max {
            return Err(self.unsupported(format!("texts of {chars} characters (at most {max})")));
        }
        Ok(dialect)
    }

    /// `base` with `segments` appended, each percent-encoded as needed.
    pub fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// A request to `url` with the auth header, a fresh `X-Request-Id` and,
    /// when the current span is traced, its W3C `traceparent`: the vendor's
    /// side of the call joins the job's trace.
    pub fn request(&self, method: Method, url: Url) -> (RequestBuilder, Uuid) {
        let request_id = Uuid::new_v4();
        let mut builder = self
            .client
            .request(method, url)
            .header("x-request-id", request_id.to_string());
        if let Some(traceparent) = ttsq_telemetry::trace_context::current_traceparent() {
            builder = builder.header("traceparent", traceparent);
        }
        if let Some((name, value)) = &self.auth {
            builder = builder.header(name.clone(), value.clone());
        }
        (builder, request_id)
    }

    /// Sends `builder` and returns its 2xx body, or the error it maps to.
    pub async fn execute(
        &self,
        builder: RequestBuilder,
        request_id: Uuid,
        expect_audio: bool,
    ) -> Result<Reply, ProviderError> {
        self.execute_into(builder, request_id, expect_audio, None)
            .await
    }

    /// As [`Upstream::execute`] for an audio answer, each chunk of a 2xx
    /// audio body handed to `sink` as it arrives (an error body or a 2xx
    /// that is not audio never reaches it).
    pub async fn execute_streaming(
        &self,
        builder: RequestBuilder,
        request_id: Uuid,
        sink: &AudioSink,
    ) -> Result<Reply, ProviderError> {
        self.execute_into(builder, request_id, true, Some(sink))
            .await
    }

    async fn execute_into(
        &self,
        builder: RequestBuilder,
        request_id: Uuid,
        expect_audio: bool,
        sink: Option<&AudioSink>,
    ) -> Result<Reply, ProviderError> {
        tracing::debug!(provider = %self.name, %request_id, "sending");
        let started = std::time::Instant::now();
        let response = builder.send().await.map_err(|e| self.transport(&e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let vendor_request_id = vendor_request_id(&headers);
        let limit = if status.is_success() {
            MAX_AUDIO_BYTES
        } else {
            MAX_ERROR_BYTES
        };
        let audio =
            status.is_success() && !(expect_audio && non_audio_content_type(&headers).is_some());
        let sink = sink.filter(|_| audio);
        let bytes = read_body(response, limit, sink)
            .await
            .map_err(|e| match e {
                BodyError::Transport(e) => self.transport(&e),
                BodyError::TooLarge => {
                    self.transient(format!("HTTP {status}: body larger than {limit} bytes"))
                }
            })?;
        let elapsed_ms = started.elapsed().as_millis() as u64;

        if status.is_success() {
            if expect_audio && let Some(kind) = non_audio_content_type(&headers) {
                let message = format!(
                    "HTTP {status} with `{kind}` instead of audio: {}",
                    self.scrub(&String::from_utf8_lossy(&bytes))
                );
                tracing::warn!(provider = %self.name, %request_id, vendor_request_id, elapsed_ms, "malformed answer");
                return Err(self.transient(message));
            }
            tracing::debug!(
                provider = %self.name,
                %request_id,
                vendor_request_id,
                status = status.as_u16(),
                bytes = bytes.len(),
                elapsed_ms,
                "answered"
            );
            return Ok(Reply { bytes, request_id });
        }

        let vendor = VendorError::parse(&bytes);
        let error = self.classify(status, &vendor, retry_after(&headers));
        tracing::warn!(
            provider = %self.name,
            %request_id,
            vendor_request_id,
            status = status.as_u16(),
            vendor_code = vendor.code.as_deref().unwrap_or(""),
            elapsed_ms,
            error = %error,
            "provider refused"
        );
        Err(error)
    }

    /// `GET` of a cheap route; any 2xx is healthy.
    pub async fn probe(&self, segments: &[&str]) -> Result<(), ProviderError> {
        let (builder, request_id) = self.request(Method::GET, self.url(segments));
        self.execute(builder, request_id, false).await.map(|_| ())
    }

    /// Turns what the vendor sent into the audio `rendering` describes,
    /// off the async runtime (encoding takes milliseconds). Bodies that are
    /// not what was asked for are [`ProviderError::Transient`]: the vendor
    /// had a bad moment. `expected_rate_hz` is the dialect's declared rate;
    /// a body at another rate is resampled (and logged).
    pub async fn finish(
        &self,
        payload: Payload,
        rendering: Rendering,
        expected_rate_hz: u32,
        request_id: Uuid,
    ) -> Result<Audio, ProviderError> {
        let format = rendering.format;
        let provider = self.name.clone();
        let audio = tokio::task::spawn_blocking(move || {
            to_audio(&provider, payload, rendering, expected_rate_hz, request_id)
        })
        .await
        .map_err(|e| ProviderError::Encode {
            format,
            message: format!("encoder task failed: {e}"),
        })??;
        tracing::debug!(
            provider = %self.name,
            %request_id,
            duration_ms = audio.duration_ms,
            bytes = audio.bytes.len(),
            "synthesized"
        );
        Ok(audio)
    }

    fn classify(
        &self,
        status: StatusCode,
        vendor: &VendorError,
        retry_after: Option<Duration>,
    ) -> ProviderError {
        let provider = self.name.clone();
        let code = vendor.code.as_deref();
        if code.is_some_and(|c| CREDIT_CODES.contains(&c)) || status == StatusCode::PAYMENT_REQUIRED
        {
            ProviderError::QuotaExhausted {
                provider,
                message: self.describe(status, vendor),
            }
        } else if status == StatusCode::UNAUTHORIZED
            || status == StatusCode::FORBIDDEN
            || code == Some("invalid_api_key")
        {
            // The vendor's message stays out: OpenAI's echoes part of the key.
            let mut message = format!("HTTP {}", status.as_u16());
            if let Some(code) = code {
                let _ = write!(message, " `{}`", self.scrub(code));
            }
            ProviderError::Auth { provider, message }
        } else if status == StatusCode::TOO_MANY_REQUESTS {
            ProviderError::RateLimited {
                provider,
                retry_after,
            }
        } else if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
            self.transient(self.describe(status, vendor))
        } else if status.is_client_error() {
            ProviderError::Rejected {
                provider,
                message: self.describe(status, vendor),
            }
        } else {
            self.transient(format!("unexpected HTTP {status}"))
        }
    }

    /// `HTTP 400 voice_not_found: A voice with …`, scrubbed and truncated.
    fn describe(&self, status: StatusCode, vendor: &VendorError) -> String {
        let mut out = format!("HTTP {}", status.as_u16());
        if let Some(code) = &vendor.code {
            let _ = write!(out, " {}", self.scrub(code));
        }
        if let Some(message) = &vendor.message {
            let _ = write!(out, ": {}", self.scrub(message));
        }
        out
    }

    /// `text` on one line, at most [`MESSAGE_CHARS`] characters, with the
    /// key replaced wherever it appears.
    fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        if let Some(secret) = &self.secret {
            let key = secret.expose_secret();
            if !key.is_empty() {
                text = text.replace(key, "[redacted]");
            }
        }
        let flat: String = text
            .trim()
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        match flat.char_indices().nth(MESSAGE_CHARS) {
            Some((end, _)) => format!("{}…", &flat[..end]),
            None => flat,
        }
    }

    fn transport(&self, error: &reqwest::Error) -> ProviderError {
        if error.is_timeout() {
            return ProviderError::Timeout {
                provider: self.name.clone(),
                seconds: self.timeout.as_secs() + u64::from(self.timeout.subsec_nanos() > 0),
            };
        }
        // reqwest's messages are terse; the cause chain says what failed.
        // The URL is dropped: a base URL may carry credentials.
        let mut message = if error.is_connect() {
            "cannot connect".to_owned()
        } else {
            "request failed".to_owned()
        };
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            let _ = write!(message, ": {cause}");
            source = cause.source();
        }
        self.transient(self.scrub(&message))
    }

    fn transient(&self, message: String) -> ProviderError {
        ProviderError::Transient {
            provider: self.name.clone(),
            message,
        }
    }

    fn unsupported(&self, what: String) -> ProviderError {
        ProviderError::Unsupported {
            provider: self.name.clone(),
            what,
        }
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("base", &self.base.as_str())
            .field("auth_header", &self.auth.as_ref().map(|(name, _)| name))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn parse_base_url(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw.trim()).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme `{}` is not http or https", url.scheme()));
    }
    if url.cannot_be_a_base() || url.host().is_none() {
        return Err("no host".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("a base URL takes no query or fragment".to_owned());
    }
    Ok(url)
}

fn auth_header(
    provider: &str,
    custom: &Option<String>,
    style: AuthStyle,
    key: &SecretString,
) -> Result<(HeaderName, HeaderValue), BuildError> {
    let (name, value) = match (custom, style) {
        (Some(name), _) => (name.as_str(), key.expose_secret().to_owned()),
        (None, AuthStyle::Header(name)) => (name, key.expose_secret().to_owned()),
        (None, AuthStyle::Bearer) => ("authorization", format!("Bearer {}", key.expose_secret())),
    };
    let name =
        HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| BuildError::AuthHeader {
            provider: provider.to_owned(),
            name: name.to_owned(),
        })?;
    let mut value = HeaderValue::from_str(&value).map_err(|_| BuildError::ApiKey {
        provider: provider.to_owned(),
    })?;
    value.set_sensitive(true);
    Ok((name, value))
}

enum BodyError {
    Transport(reqwest::Error),
    TooLarge,
}

/// The body, up to `limit` bytes; each chunk also handed to `sink` when
/// one is given (the bytes past the limit never are).
async fn read_body(
    mut response: reqwest::Response,
    limit: usize,
    sink: Option<&AudioSink>,
) -> Result<Bytes, BodyError> {
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(BodyError::TooLarge);
    }
    // Sized from the header, so a body is not copied as it grows; capped,
    // since the header is the vendor's word.
    let expected = response.content_length().unwrap_or(0);
    let mut body = BytesMut::with_capacity(
        usize::try_from(expected).map_or(0, |n| n.min(PREALLOCATED_BODY_BYTES)),
    );
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
        if let Some(sink) = sink {
            sink.send(chunk);
        }
    }
    Ok(body.freeze())
}

/// `Retry-After` in seconds (integer or decimal), or OpenAI-style
/// `retry-after-ms`; an HTTP-date is not read (no vendor here sends one).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<f64>().ok();
    let wait = value("retry-after-ms")
        .map(|ms| ms / 1000.0)
        .or_else(|| value(header::RETRY_AFTER.as_str()))?;
    (wait.is_finite() && wait >= 0.0).then(|| Duration::from_secs_f64(wait).min(MAX_RETRY_AFTER))
}

/// The vendor's own id of the request, for support tickets.
fn vendor_request_id(headers: &HeaderMap) -> Option<String> {
    ["request-id", "x-request-id"]
        .iter()
        .find_map(|name| headers.get(*name)?.to_str().ok())
        .map(|v| v.chars().take(100).collect())
}

/// The content type of a 2xx that cannot be audio (JSON, text, HTML).
fn non_audio_content_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next()?.trim().to_ascii_lowercase();
    (essence.starts_with("text/") || essence.contains("json")).then_some(essence)
}

/// A vendor error body, whatever its shape.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct VendorError {
    /// Machine-readable code (`invalid_api_key`, `quota_exceeded`, …).
    pub code: Option<String>,
    /// Human-readable message.
    pub message: Option<String>,
}

impl VendorError {
    /// Reads the known shapes; a body that is not JSON becomes the message.
    pub fn parse(bytes: &[u8]) -> Self {
        let Ok(json) = serde_json::from_slice::<Value>(bytes) else {
            let text = String::from_utf8_lossy(bytes);
            let text = text.trim();
            return Self {
                code: None,
                message: (!text.is_empty()).then(|| text.to_owned()),
            };
        };
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        match (json.get("detail"), json.get("error")) {
            // ElevenLabs: {"detail": {"status", "message"}}.
            (Some(detail @ Value::Object(_)), _) => Self {
                code: text(detail.get("status")).or_else(|| text(detail.get("code"))),
                message: text(detail.get("message")),
            },
            // FastAPI validation: {"detail": [{"type", "loc", "msg"}]}.
            (Some(Value::Array(items)), _) => {
                let first = items.first();
                let location = first
                    .and_then(|i| i.get("loc"))
                    .and_then(Value::as_array)
                    .map(|loc| {
                        loc.iter()
                            .map(|p| p.as_str().map_or_else(|| p.to_string(), str::to_owned))
                            .collect::<Vec<_>>()
                            .join(".")
                    });
                let message = text(first.and_then(|i| i.get("msg")));
                Self {
                    code: text(first.and_then(|i| i.get("type"))),
                    message: match (location, message) {
                        (Some(loc), Some(msg)) => Some(format!("{loc}: {msg}")),
                        (_, msg) => msg,
                    },
                }
            }
            (Some(Value::String(detail)), _) => Self {
                code: None,
                message: Some(detail.clone()),
            },
            // OpenAI: {"error": {"message", "type", "code"}}.
            (_, Some(error @ Value::Object(_))) => Self {
                code: text(error.get("code")).or_else(|| text(error.get("type"))),
                message: text(error.get("message")),
            },
            // Generic: {"error": "code", "message": "…"}.
            (_, Some(Value::String(code))) => Self {
                code: Some(code.clone()),
                message: text(json.get("message")),
            },
            _ => Self {
                code: text(json.get("code")),
                message: text(json.get("message")),
            },
        }
    }
}

fn to_audio(
    provider: &str,
    payload: Payload,
    rendering: Rendering,
    expected_rate_hz: u32,
    request_id: Uuid,
) -> Result<Audio, ProviderError> {
    let format = rendering.format;
    let malformed = |what: &str| ProviderError::Transient {
        provider: provider.to_owned(),
        message: format!("answered 200 with {what}"),
    };
    let unstretched = (rendering.stretch - 1.0).abs() < dsp::STRETCH_EPSILON;
    // 16-bit mono PCM, as raw bytes at a rate: answers that are already
    // such samples (raw, or a plain WAV file) are never decoded when the
    // rendering only changes their container.
    let (pcm, rate, wav) = match payload {
        Payload::Mp3(bytes) => {
            let duration_ms = probe::mp3_duration_ms(&bytes)
                .ok_or_else(|| malformed("a body that is not MP3"))?;
            if format != AudioFormat::Mp3 || !unstretched {
                // Adapters request MP3 only for MP3 output they keep as is.
                return Err(malformed("MP3 where PCM was asked for"));
            }
            return Ok(Audio {
                bytes,
                format,
                duration_ms,
                marks: Vec::new(),
            });
        }
        Payload::Pcm(bytes, rate) => {
            if bytes.is_empty() {
                return Err(malformed("an empty body"));
            }
            if !bytes.len().is_multiple_of(2) {
                return Err(malformed("an odd number of PCM bytes"));
            }
            (bytes, rate, None)
        }
        Payload::Wav(bytes) => match probe::wav_pcm(&bytes) {
            Some(layout) => {
                if layout.data.is_empty() {
                    return Err(malformed("a WAV without samples"));
                }
                (
                    bytes.slice(layout.data.clone()),
                    layout.sample_rate_hz,
                    Some((bytes, layout)),
                )
            }
            // Stereo, WAVE_FORMAT_EXTENSIBLE, a header whose fields
            // disagree: read as best we can, then encode.
            None => {
                let waveform = probe::read_wav_lenient(&bytes)
                    .ok_or_else(|| malformed("a body that is not 16-bit PCM WAV"))?;
                if waveform.samples.is_empty() {
                    return Err(malformed("a WAV without samples"));
                }
                warn_off_rate(
                    provider,
                    request_id,
                    waveform.sample_rate_hz,
                    expected_rate_hz,
                );
                let (bytes, duration_ms) = encode::render(&waveform, rendering)?;
                return Ok(Audio {
                    bytes: Bytes::from(bytes),
                    format,
                    duration_ms,
                    marks: Vec::new(),
                });
            }
        },
    };
    warn_off_rate(provider, request_id, rate, expected_rate_hz);
    let as_is = unstretched && rate == rendering.sample_rate_hz;
    let (bytes, duration_ms) = match format {
        AudioFormat::Pcm if as_is => {
            let duration_ms = encode::duration_ms(pcm.len() / 2, rate);
            (pcm, duration_ms)
        }
        AudioFormat::Wav if as_is => {
            let duration_ms = encode::duration_ms(pcm.len() / 2, rate);
            let bytes = match wav {
                Some((file, layout)) => {
                    drop(pcm);
                    rewrite_wav_header(file, &layout)?
                }
                None => Bytes::from(encode::wav_from_pcm(&pcm, rate)?),
            };
            (bytes, duration_ms)
        }
        _ => {
            let waveform = Waveform {
                samples: probe::pcm_samples(&pcm)
                    .ok_or_else(|| malformed("an odd number of PCM bytes"))?,
                sample_rate_hz: rate,
            };
            let (bytes, duration_ms) = encode::render(&waveform, rendering)?;
            (Bytes::from(bytes), duration_ms)
        }
    };
    Ok(Audio {
        bytes,
        format,
        duration_ms,
        marks: Vec::new(),
    })
}

/// Logs audio whose rate is not the dialect's declared one (it gets
/// resampled, which costs CPU and says the catalog is wrong).
fn warn_off_rate(provider: &str, request_id: Uuid, sample_rate_hz: u32, expected_rate_hz: u32) {
    if sample_rate_hz != expected_rate_hz {
        tracing::warn!(
            provider,
            %request_id,
            sample_rate_hz,
            expected_rate_hz,
            "audio rate differs from the dialect's declared rate; resampled"
        );
    }
}

/// The WAV file `layout` describes, with the header ttsq writes for its
/// samples ([`encode::wav_header`]): placeholder sizes made real, chunks
/// other than `fmt ` and `data` left out. Byte for byte what decoding the
/// samples and encoding them again gives. The header is patched in place
/// when the samples follow a 44-byte header and nothing else holds the
/// buffer; otherwise the samples are copied once behind a new header.
fn rewrite_wav_header(file: Bytes, layout: &probe::WavPcm) -> Result<Bytes, ProviderError> {
    let header = encode::wav_header(layout.sample_rate_hz, layout.data.len()).ok_or_else(|| {
        ProviderError::Encode {
            format: AudioFormat::Wav,
            message: "larger than a WAV file can be".to_owned(),
        }
    })?;
    if layout.data.start == encode::WAV_HEADER_LEN {
        let mut file = file;
        file.truncate(layout.data.end);
        match file.try_into_mut() {
            Ok(mut owned) => {
                owned[..encode::WAV_HEADER_LEN].copy_from_slice(&header);
                return Ok(owned.freeze());
            }
            Err(shared) => {
                return Ok(Bytes::from(encode::wav_from_pcm(
                    &shared[encode::WAV_HEADER_LEN..],
                    layout.sample_rate_hz,
                )?));
            }
        }
    }
    Ok(Bytes::from(encode::wav_from_pcm(
        &file[layout.data.clone()],
        layout.sample_rate_hz,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialect() -> DialectInfo {
        DialectInfo {
            id: "en-us".to_owned(),
            name: "English".to_owned(),
            voices: vec!["alloy".to_owned()],
            formats: vec![AudioFormat::Mp3, AudioFormat::Wav],
            emotions: vec!["calm".to_owned()],
            provider_chain: Vec::new(),
            model: String::new(),
            sample_rate_hz: 24_000,
            marks: Vec::new(),
            max_request_chars: 5_000,
        }
    }

    fn upstream(key: &str) -> Upstream {
        let mut config =
            HttpProviderConfig::new("vendor", "http://127.0.0.1:9/prefix/", vec![dialect()]);
        config.api_key = Some(SecretString::from(key.to_owned()));
        config.max_text_chars = Some(10);
        Upstream::new(config, AuthStyle::Bearer, "model-1", 5_000).unwrap()
    }

    fn request<'a>(
        voice: &'a str,
        format: AudioFormat,
        emotion: Option<&'a str>,
    ) -> SynthesisRequest<'a> {
        SynthesisRequest {
            text: "hello",
            dialect: "en-us",
            voice,
            speed: 1.0,
            emotion,
            format,
            marks: &[],
            instructions: None,
            sample_rate_hz: None,
        }
    }

    #[test]
    fn vendor_error_shapes_are_all_read() {
        let eleven =
            VendorError::parse(br#"{"detail":{"status":"quota_exceeded","message":"no credits"}}"#);
        let fastapi = VendorError::parse(
            br#"{"detail":[{"type":"missing","loc":["body","text"],"msg":"Field required"}]}"#,
        );
        let openai = VendorError::parse(
            br#"{"error":{"message":"slow down","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
        );
        let openai_no_code = VendorError::parse(
            br#"{"error":{"message":"m","type":"insufficient_quota","code":null}}"#,
        );
        let generic = VendorError::parse(br#"{"error":"unknown_voice","message":"who?"}"#);
        let html = VendorError::parse(b"<html>Bad Gateway</html>");
        let cut = VendorError::parse(br#"{"detail": {"sta"#);

        assert_eq!(eleven.code.as_deref(), Some("quota_exceeded"));
        assert_eq!(eleven.message.as_deref(), Some("no credits"));
        assert_eq!(fastapi.code.as_deref(), Some("missing"));
        assert_eq!(
            fastapi.message.as_deref(),
            Some("body.text: Field required")
        );
        assert_eq!(openai.code.as_deref(), Some("rate_limit_exceeded"));
        assert_eq!(openai_no_code.code.as_deref(), Some("insufficient_quota"));
        assert_eq!(generic.code.as_deref(), Some("unknown_voice"));
        assert_eq!(html.message.as_deref(), Some("<html>Bad Gateway</html>"));
        assert_eq!(cut.code, None);
    }

    #[test]
    fn statuses_and_codes_map_to_retryable_or_final_errors() {
        let up = upstream("sk-secret");
        let classify = |status: u16, body: &[u8]| {
            up.classify(
                StatusCode::from_u16(status).unwrap(),
                &VendorError::parse(body),
                Some(Duration::from_secs(2)),
            )
        };

        let cases: [(u16, &[u8], &str, bool); 10] = [
            (401, br#"{"detail":{"status":"invalid_api_key","message":"Invalid API key"}}"#, "provider_auth", false),
            (401, br#"{"detail":{"status":"quota_exceeded","message":"none left"}}"#, "provider_quota_exhausted", false),
            (429, br#"{"error":{"message":"pay","type":"insufficient_quota","code":"insufficient_quota"}}"#, "provider_quota_exhausted", false),
            (429, br#"{"detail":{"status":"too_many_concurrent_requests","message":"m"}}"#, "provider_rate_limited", true),
            (429, br#"{"detail":{"status":"system_busy","message":"m"}}"#, "provider_rate_limited", true),
            (402, br#"{"error":"quota_exhausted","message":"m"}"#, "provider_quota_exhausted", false),
            (403, b"", "provider_auth", false),
            (500, br#"{"detail":{"status":"internal","message":"m"}}"#, "provider_unavailable", true),
            (400, br#"{"detail":{"status":"voice_not_found","message":"A voice was not found."}}"#, "provider_rejected", false),
            (422, br#"{"detail":[{"type":"missing","loc":["body","text"],"msg":"Field required"}]}"#, "provider_rejected", false),
        ];
        for (status, body, code, retryable) in cases {
            let error = classify(status, body);
            assert_eq!(error.code(), code, "{status}: {error}");
            assert_eq!(error.is_retryable(), retryable, "{status}: {error}");
        }
        assert_eq!(
            classify(429, b"{}").retry_after(),
            Some(Duration::from_secs(2))
        );
        let rejected = classify(
            400,
            br#"{"detail":{"status":"voice_not_found","message":"A voice was not found."}}"#,
        );
        assert!(
            rejected.to_string().contains("A voice was not found."),
            "{rejected}"
        );
    }

    #[test]
    fn auth_errors_never_carry_the_vendors_message_and_others_are_scrubbed() {
        let up = upstream("sk-secret-123");

        let auth = up.classify(
            StatusCode::UNAUTHORIZED,
            &VendorError::parse(
                br#"{"error":{"message":"Incorrect API key provided: sk-secret-123","code":"invalid_api_key"}}"#,
            ),
            None,
        );
        let rejected = up.classify(
            StatusCode::BAD_REQUEST,
            &VendorError::parse(br#"{"error":"bad","message":"your key sk-secret-123 is odd"}"#),
            None,
        );

        for error in [auth, rejected] {
            assert!(!error.to_string().contains("sk-secret-123"), "{error}");
            assert!(!format!("{error:?}").contains("sk-secret-123"), "{error:?}");
        }
        assert!(!format!("{up:?}").contains("sk-secret-123"));
    }

    #[test]
    fn long_vendor_messages_are_truncated_to_one_line() {
        let up = upstream("k");
        let message = format!("line one\nline two {}", "x".repeat(1_000));

        let scrubbed = up.scrub(&message);

        assert!(!scrubbed.contains('\n'));
        assert_eq!(scrubbed.chars().count(), MESSAGE_CHARS + 1);
    }

    #[test]
    fn retry_after_reads_seconds_decimals_and_milliseconds() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, HeaderValue::from_static(value));
            }
            map
        };

        assert_eq!(
            retry_after(&headers(&[("retry-after", "3")])),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "0.5")])),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "9"), ("retry-after-ms", "250")])),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            retry_after(&headers(&[(
                "retry-after",
                "Wed, 21 Oct 2015 07:28:00 GMT"
            )])),
            None
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "99999999")])),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(retry_after(&headers(&[])), None);
    }

    #[test]
    fn requests_are_checked_against_the_declared_capabilities() {
        let up = upstream("k");

        assert!(
            up.check(
                &request("alloy", AudioFormat::Mp3, Some("calm")),
                Emotions::Checked
            )
            .is_ok()
        );
        for (req, emotions) in [
            (request("echo", AudioFormat::Mp3, None), Emotions::Checked),
            (request("alloy", AudioFormat::Pcm, None), Emotions::Checked),
            (
                request("alloy", AudioFormat::Mp3, Some("angry")),
                Emotions::Checked,
            ),
            (
                SynthesisRequest {
                    text: "far too long a text",
                    ..request("alloy", AudioFormat::Mp3, None)
                },
                Emotions::Checked,
            ),
            (
                SynthesisRequest {
                    dialect: "fr-fr",
                    ..request("alloy", AudioFormat::Mp3, None)
                },
                Emotions::Checked,
            ),
        ] {
            let err = up.check(&req, emotions).unwrap_err();
            assert_eq!(err.code(), "provider_unsupported", "{err}");
        }
        assert!(
            up.check(
                &request("alloy", AudioFormat::Mp3, Some("angry")),
                Emotions::Ignored
            )
            .is_ok()
        );
    }

    #[test]
    fn dialects_name_this_provider_and_fill_the_model() {
        let up = upstream("k");

        assert_eq!(up.dialects()[0].provider_chain, vec!["vendor".to_owned()]);
        assert_eq!(up.dialects()[0].model, "model-1");
    }

    #[test]
    fn urls_keep_the_base_prefix_and_encode_segments() {
        let up = upstream("k");

        assert_eq!(
            up.url(&["v1", "text-to-speech", "a/b?c"]).as_str(),
            "http://127.0.0.1:9/prefix/v1/text-to-speech/a%2Fb%3Fc"
        );
    }

    #[test]
    fn the_request_limit_is_declared_and_enforced_whether_configured_or_the_adapters() {
        let configured = upstream("k");
        let by_default = Upstream::new(
            HttpProviderConfig::new("vendor", "http://127.0.0.1:9", vec![dialect()]),
            AuthStyle::Bearer,
            "model-1",
            12,
        )
        .unwrap();
        let long = SynthesisRequest {
            text: "thirteen char",
            ..request("alloy", AudioFormat::Mp3, None)
        };

        assert_eq!(configured.dialects()[0].max_request_chars, 10);
        assert_eq!(by_default.dialects()[0].max_request_chars, 12);
        let err = by_default.check(&long, Emotions::Checked).unwrap_err();
        assert_eq!(err.code(), "provider_unsupported", "{err}");
        assert!(
            by_default
                .check(&request("alloy", AudioFormat::Mp3, None), Emotions::Checked)
                .is_ok()
        );
    }

    #[test]
    fn bad_configurations_are_refused_without_the_key() {
        let build = |url: &str, header: Option<&str>, key: &str| {
            let mut config = HttpProviderConfig::new("p", url, vec![dialect()]);
            config.auth_header = header.map(str::to_owned);
            config.api_key = Some(SecretString::from(key.to_owned()));
            Upstream::new(config, AuthStyle::Bearer, "m", 5_000).map(|_| ())
        };

        assert!(matches!(
            build("ftp://x", None, "k"),
            Err(BuildError::BaseUrl { .. })
        ));
        assert!(matches!(
            build("not a url", None, "k"),
            Err(BuildError::BaseUrl { .. })
        ));
        assert!(matches!(
            build("http://x", Some("bad header"), "k"),
            Err(BuildError::AuthHeader { .. })
        ));
        let err = build("http://x", None, "sk-line\nbreak").unwrap_err();
        assert!(matches!(err, BuildError::ApiKey { .. }));
        assert!(!err.to_string().contains("sk-line"));
        let empty = Upstream::new(
            HttpProviderConfig::new("p", "http://x", Vec::new()),
            AuthStyle::Bearer,
            "m",
            5_000,
        );
        assert!(matches!(empty, Err(BuildError::NoDialects { .. })));
    }

    #[test]
    fn payloads_become_audio_or_transient_errors() {
        let id = Uuid::nil();
        let tone: Vec<i16> = (0..2_400)
            .map(|i| ((f64::from(i) * 0.1).sin() * 5_000.0) as i16)
            .collect();
        let pcm = Bytes::from(encode::encode(&tone, 24_000, AudioFormat::Pcm).unwrap());
        let wav = Bytes::from(encode::encode(&tone, 24_000, AudioFormat::Wav).unwrap());

        let render = |format| Rendering {
            format,
            sample_rate_hz: 24_000,
            stretch: 1.0,
        };
        let as_wav = to_audio(
            "p",
            Payload::Pcm(pcm.clone(), 24_000),
            render(AudioFormat::Wav),
            24_000,
            id,
        )
        .unwrap();
        let as_pcm = to_audio(
            "p",
            Payload::Wav(wav.clone()),
            render(AudioFormat::Pcm),
            24_000,
            id,
        )
        .unwrap();
        let odd = to_audio(
            "p",
            Payload::Pcm(Bytes::from_static(&[1, 2, 3]), 24_000),
            render(AudioFormat::Pcm),
            24_000,
            id,
        );
        let not_mp3 = to_audio(
            "p",
            Payload::Mp3(Bytes::from_static(b"garbage")),
            render(AudioFormat::Mp3),
            24_000,
            id,
        );
        let slower = to_audio(
            "p",
            Payload::Wav(wav.clone()),
            Rendering {
                format: AudioFormat::Pcm,
                sample_rate_hz: 48_000,
                stretch: 0.5,
            },
            24_000,
            id,
        )
        .unwrap();
        let off_rate = to_audio(
            "p",
            Payload::Pcm(pcm.clone(), 24_000),
            render(AudioFormat::Pcm),
            22_050,
            id,
        )
        .unwrap();

        assert_eq!(as_wav.duration_ms, 100);
        assert_eq!(encode::read_wav(&as_wav.bytes).unwrap().samples, tone);
        assert_eq!(as_pcm.bytes, pcm);
        assert!(odd.unwrap_err().is_retryable());
        assert!(not_mp3.unwrap_err().is_retryable());
        assert_eq!(slower.duration_ms, 200);
        assert_eq!(slower.bytes.len(), 2 * 9_600);
        // Resampled to the rendering's rate, whatever the dialect declares.
        assert_eq!(off_rate.bytes, pcm);
    }

    /// What every WAV answer went through before ttsq learnt to keep
    /// samples as they are: read them, then write a file with hound.
    fn decoded_and_encoded_again(body: &[u8]) -> Option<Vec<u8>> {
        let waveform = probe::read_wav_lenient(body)?;
        // Rates no encoder took (hound's byte rate would overflow).
        if waveform.samples.is_empty() || !(1..=u32::MAX / 2).contains(&waveform.sample_rate_hz) {
            return None;
        }
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: waveform.sample_rate_hz,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut cursor = std::io::Cursor::new(Vec::new());
        let mut writer = hound::WavWriter::new(&mut cursor, spec).unwrap();
        for sample in waveform.samples {
            writer.write_sample(sample).unwrap();
        }
        writer.finalize().unwrap();
        Some(cursor.into_inner())
    }

    fn tone_pcm(samples: usize) -> Vec<u8> {
        (0..samples)
            .flat_map(|i| (((i as f64 * 0.07).sin() * 9_000.0) as i16).to_le_bytes())
            .collect()
    }

    /// A mono 16-bit WAV file: `fmt_len` bytes of format chunk, `before`
    /// (whole chunks) between it and `data`, whose size field says
    /// `data_size`.
    fn wav_file(pcm: &[u8], rate: u32, fmt_len: u32, before: &[u8], data_size: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&data_size.to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&fmt_len.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&rate.to_le_bytes());
        out.extend_from_slice(&(rate * 2).to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&16u16.to_le_bytes());
        out.resize(out.len() + (fmt_len as usize - 16), 0);
        out.extend_from_slice(before);
        out.extend_from_slice(b"data");
        out.extend_from_slice(&data_size.to_le_bytes());
        out.extend_from_slice(pcm);
        out
    }

    fn wav_as_asked(body: Vec<u8>) -> Result<Audio, ProviderError> {
        to_audio(
            "p",
            Payload::Wav(Bytes::from(body)),
            Rendering {
                format: AudioFormat::Wav,
                sample_rate_hz: 24_000,
                stretch: 1.0,
            },
            24_000,
            Uuid::nil(),
        )
    }

    #[test]
    fn a_wav_kept_as_wav_is_byte_for_byte_what_decoding_and_encoding_gave() {
        let pcm = tone_pcm(10_822);
        let list = b"LIST\x05\x00\x00\x00INFOx\x00";
        let exact = u32::try_from(pcm.len()).unwrap();
        let bodies = [
            ("exact sizes", wav_file(&pcm, 24_000, 16, &[], exact)),
            (
                "OpenAI placeholder",
                wav_file(&pcm, 24_000, 16, &[], u32::MAX),
            ),
            (
                "ElevenLabs placeholder",
                wav_file(&pcm, 24_000, 16, &[], 0x7fff_ffff),
            ),
            ("zero placeholder", wav_file(&pcm, 24_000, 16, &[], 0)),
            (
                "odd chunk before data",
                wav_file(&pcm, 24_000, 16, list, u32::MAX),
            ),
            ("18-byte fmt", wav_file(&pcm, 24_000, 18, &[], u32::MAX)),
            ("a stray last byte", {
                let mut body = wav_file(&pcm, 24_000, 16, &[], u32::MAX);
                body.push(0x7f);
                body
            }),
            ("a data size below what came", {
                let mut body = wav_file(&pcm, 24_000, 16, &[], exact - 100);
                body.extend_from_slice(b"trailing junk");
                body
            }),
        ];

        for (case, body) in bodies {
            let expected = decoded_and_encoded_again(&body).unwrap();

            let audio = wav_as_asked(body).unwrap();

            assert_eq!(audio.bytes, expected, "{case}");
            let samples = (expected.len() - 44) / 2;
            assert_eq!(
                audio.duration_ms,
                encode::duration_ms(samples, 24_000),
                "{case}"
            );
        }
    }

    #[test]
    fn a_plain_wav_header_is_patched_in_place() {
        let body = Bytes::from(wav_file(&tone_pcm(2_400), 24_000, 16, &[], u32::MAX));
        let at = body.as_ptr();

        let audio = to_audio(
            "p",
            Payload::Wav(body),
            Rendering {
                format: AudioFormat::Wav,
                sample_rate_hz: 24_000,
                stretch: 1.0,
            },
            24_000,
            Uuid::nil(),
        )
        .unwrap();

        assert_eq!(audio.bytes.as_ptr(), at, "the samples were copied");
        assert_eq!(&audio.bytes[4..8], &(36u32 + 4_800).to_le_bytes());
        assert_eq!(&audio.bytes[40..44], &4_800u32.to_le_bytes());
        assert_eq!(audio.duration_ms, 100);
    }

    #[test]
    fn wav_headers_that_lie_are_decoded_as_before_or_refused() {
        let pcm = tone_pcm(2_400);
        let plain = wav_file(&pcm, 24_000, 16, &[], u32::MAX);
        let with = |at: usize, value: &[u8]| {
            let mut body = plain.clone();
            body[at..at + value.len()].copy_from_slice(value);
            body
        };
        // Read by the lenient reader, then encoded: as before this change.
        let decoded = [
            ("stereo", with(22, &2u16.to_le_bytes())),
            ("byte rate off", with(28, &1u32.to_le_bytes())),
            ("block align off", with(32, &4u16.to_le_bytes())),
            ("extensible", with(20, &0xfffeu16.to_le_bytes())),
        ];
        for (case, body) in decoded {
            let expected = decoded_and_encoded_again(&body);

            let audio = wav_as_asked(body.clone());

            assert_eq!(audio.ok().map(|a| a.bytes.to_vec()), expected, "{case}");
        }
        let refused = [
            ("fmt runs past the end", with(16, &u32::MAX.to_le_bytes())),
            ("8-bit", with(34, &8u16.to_le_bytes())),
            ("float", with(20, &3u16.to_le_bytes())),
            ("no data chunk", plain[..36].to_vec()),
            ("header only", plain[..44].to_vec()),
            ("cut in the header", plain[..30].to_vec()),
            ("not RIFF", with(0, b"RIFX")),
            ("data before fmt", {
                let mut body = b"RIFF\0\0\0\0WAVEdata\x04\0\0\0\x01\x02\x03\x04".to_vec();
                body.extend_from_slice(&plain[12..36]);
                body
            }),
        ];
        for (case, body) in refused {
            let err = wav_as_asked(body).unwrap_err();

            assert!(err.is_retryable(), "{case}: {err}");
        }
    }

    #[test]
    fn no_wav_header_makes_the_reader_panic_or_disagree_with_decoding() {
        let plain = wav_file(&tone_pcm(300), 24_000, 16, b"LIST\x04\0\0\0INFO", u32::MAX);
        // A fixed xorshift, so a failure reproduces.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut body = plain.clone();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() % 60) as usize;
                body[at] = next() as u8;
            }
            if next() % 8 == 0 {
                body.truncate((next() % 700) as usize);
            }
            let expected = decoded_and_encoded_again(&body);

            let audio = to_audio(
                "p",
                Payload::Wav(Bytes::from(body.clone())),
                Rendering {
                    format: AudioFormat::Wav,
                    sample_rate_hz: probe::read_wav_lenient(&body)
                        .map_or(24_000, |w| w.sample_rate_hz),
                    stretch: 1.0,
                },
                24_000,
                Uuid::nil(),
            );

            assert_eq!(
                audio.ok().map(|a| a.bytes.to_vec()),
                expected,
                "{:02x?}",
                &body[..body.len().min(60)]
            );
        }
    }

    #[test]
    fn raw_pcm_asked_as_wav_gets_a_header_and_the_same_samples() {
        let pcm = Bytes::from(tone_pcm(2_400));
        let body = wav_file(&pcm, 24_000, 16, &[], u32::try_from(pcm.len()).unwrap());

        let audio = to_audio(
            "p",
            Payload::Pcm(pcm.clone(), 24_000),
            Rendering {
                format: AudioFormat::Wav,
                sample_rate_hz: 24_000,
                stretch: 1.0,
            },
            24_000,
            Uuid::nil(),
        )
        .unwrap();

        assert_eq!(audio.bytes, decoded_and_encoded_again(&body).unwrap());
        assert_eq!(audio.duration_ms, 100);
    }

    #[test]
    fn wav_asked_as_pcm_is_its_data_chunk() {
        let pcm = tone_pcm(2_401);
        let mut body = wav_file(&pcm, 24_000, 16, b"LIST\x04\0\0\0INFO", u32::MAX);
        body.push(1);

        let audio = to_audio(
            "p",
            Payload::Wav(Bytes::from(body)),
            Rendering {
                format: AudioFormat::Pcm,
                sample_rate_hz: 24_000,
                stretch: 1.0,
            },
            24_000,
            Uuid::nil(),
        )
        .unwrap();

        assert_eq!(audio.bytes, pcm, "the stray last byte is dropped");
        assert_eq!(audio.duration_ms, 100);
    }
}
