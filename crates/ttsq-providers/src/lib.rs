#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`Synthesizer`], [`SynthesisRequest`], [`Audio`], [`ProviderError`]: the contract.
//! - [`espeak`]: the embedded espeak-ng adapter.
//! - [`encode`]: PCM samples to WAV, raw PCM, MP3, FLAC or Ogg Opus bytes.
//! - [`dsp`]: resampling and pitch-preserving time-stretch.
//! - [`router`]: dialect → provider chain with fallback, and per-provider call counts.
//! - [`coordinator`]: taking from provider quotas shared by all replicas
//!   (the contract is `ttsq-quota`'s, re-exported there; `ttsq-store`
//!   implements it on Postgres).
//! - [`quota`]: this replica's share of a provider's rate and concurrency
//!   limits, the fallback while the coordinator is unreachable.
//! - [`breaker`]: per-provider circuit breaker.
//! - [`elevenlabs`], [`openai`], [`generic_http`]: HTTP adapters for the
//!   ElevenLabs REST API, OpenAI-compatible speech servers and the generic
//!   `POST /tts` contract, configured by [`HttpProviderConfig`].
//! - `upstream`: what the HTTP adapters share: client, auth, request ids,
//!   capability checks and the mapping of vendor errors to [`ProviderError`].
//! - `probe`: reading what vendors send back (MP3 length, lenient WAV).

pub mod breaker;
pub mod coordinator;
pub mod dsp;
pub mod elevenlabs;
pub mod encode;
pub mod espeak;
pub mod generic_http;
pub mod openai;
pub mod quota;
pub mod router;

mod probe;
mod upstream;

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use ttsq_core::{AudioFormat, DialectInfo, Mark, MarkKind};

pub use router::Router;
pub use upstream::{BuildError, HttpProviderConfig};

/// What to synthesize; borrowed from a validated job.
#[derive(Debug, Clone, Copy)]
pub struct SynthesisRequest<'a> {
    /// Normalised text.
    pub text: &'a str,
    /// Dialect id.
    pub dialect: &'a str,
    /// Voice id, valid for the dialect.
    pub voice: &'a str,
    /// Speaking rate factor: 0.5–2.0 from the job API, 0.25–4.0 from the
    /// OpenAI endpoint. What a provider cannot reach itself is made up by a
    /// pitch-preserving time-stretch ([`dsp::time_stretch`]).
    pub speed: f64,
    /// Emotion, when the dialect offers it.
    pub emotion: Option<&'a str>,
    /// Output format, one the dialect offers.
    pub format: AudioFormat,
    /// Speech marks to time; empty for none. Only providers whose dialect
    /// lists them in `DialectInfo::marks` are asked.
    pub marks: &'a [MarkKind],
    /// How to speak (OpenAI's `instructions`), for providers that take it;
    /// others ignore it.
    pub instructions: Option<&'a str>,
    /// Sample rate of the output when it is not the dialect's (OpenAI's
    /// 24 kHz `pcm`); `None`: the dialect's `sample_rate_hz`.
    pub sample_rate_hz: Option<u32>,
}

impl SynthesisRequest<'_> {
    /// The rate the output is rendered at, for a dialect of `dialect_rate_hz`.
    pub fn output_rate_hz(&self, dialect_rate_hz: u32) -> u32 {
        self.sample_rate_hz.unwrap_or(dialect_rate_hz)
    }
}

/// Where a streaming synthesis hands the audio bytes as the vendor sends
/// them, so a caller can pass them on before the synthesis ends. The
/// receiver may go away (a client that hung up): the synthesis goes on,
/// since the vendor bills it anyway. Every chunk is also kept by the
/// adapter, within its body limit, so the channel holds at most one copy of
/// bounded audio.
#[derive(Debug)]
pub struct AudioSink {
    /// The caller's end.
    chunks: tokio::sync::mpsc::UnboundedSender<Bytes>,
    /// Whether any byte was handed over: from then on neither a retry nor
    /// another provider may stand in, as the caller has sent bytes on.
    started: AtomicBool,
}

impl AudioSink {
    /// A sink and the receiver of its chunks.
    pub fn new() -> (Self, tokio::sync::mpsc::UnboundedReceiver<Bytes>) {
        let (chunks, receiver) = tokio::sync::mpsc::unbounded_channel();
        let sink = Self {
            chunks,
            started: AtomicBool::new(false),
        };
        (sink, receiver)
    }

    /// Hands `chunk` on; a receiver that is gone is no error.
    pub fn send(&self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        self.started.store(true, Ordering::Release);
        let _ = self.chunks.send(chunk);
    }

    /// Whether any byte was handed on.
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }
}

/// Synthesized audio.
#[derive(Debug, Clone)]
pub struct Audio {
    /// Encoded bytes in `format`.
    pub bytes: Bytes,
    /// The encoding of `bytes`.
    pub format: AudioFormat,
    /// Playing time in milliseconds.
    pub duration_ms: u32,
    /// The speech marks asked for, timed against this audio; empty when
    /// none were asked for.
    pub marks: Vec<Mark>,
}

/// Why a provider produced no audio.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The request asks for something this provider does not offer.
    #[error("{provider} does not support {what}")]
    Unsupported {
        /// Provider name.
        provider: String,
        /// What was asked for.
        what: String,
    },
    /// A failure that may pass: a crashed process, a 5xx, a reset connection.
    #[error("{provider} failed: {message}")]
    Transient {
        /// Provider name.
        provider: String,
        /// What went wrong, free of secrets.
        message: String,
    },
    /// Every provider of the chain has its circuit open: nothing was sent.
    /// Retryable once a breaker lets a trial through; no attempt was made,
    /// so it does not count against the job.
    #[error("every provider of `{chain}` is unavailable (circuit open)")]
    CircuitOpen {
        /// The chain, as `a>b`.
        chain: String,
    },
    /// The provider took longer than its timeout.
    #[error("{provider} timed out after {seconds}s")]
    Timeout {
        /// Provider name.
        provider: String,
        /// The timeout that expired.
        seconds: u64,
    },
    /// Encoding the provider's output failed.
    #[error("encoding {format} failed: {message}")]
    Encode {
        /// Target format.
        format: AudioFormat,
        /// Encoder message.
        message: String,
    },
    /// No provider is configured for the dialect.
    #[error("no provider serves dialect `{0}`")]
    NoRoute(String),
    /// The provider refused the credentials (missing, wrong or revoked key).
    /// Final: retrying with the same key cannot help.
    #[error("{provider} refused the credentials: {message}")]
    Auth {
        /// Provider name.
        provider: String,
        /// The vendor's error code and status; never the key, nor the
        /// vendor's message (some echo part of the key).
        message: String,
    },
    /// The provider is throttling: a 429 for concurrency, rate or load.
    /// Retryable after `retry_after`; never a reason to fail a job.
    #[error("{provider} is rate limiting requests{}", retry_hint(*.retry_after))]
    RateLimited {
        /// Provider name.
        provider: String,
        /// The vendor's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// The provider refused this request (bad voice, bad body, refused
    /// content). Final: the same request fails the same way.
    #[error("{provider} rejected the request: {message}")]
    Rejected {
        /// Provider name.
        provider: String,
        /// The vendor's status, code and message, truncated.
        message: String,
    },
    /// The account's credits or quota are used up. Final until someone pays
    /// or the period rolls over.
    #[error("{provider} quota exhausted: {message}")]
    QuotaExhausted {
        /// Provider name.
        provider: String,
        /// The vendor's status, code and message, truncated.
        message: String,
    },
}

/// Marks timed against audio that a stretch by `stretch` then sped up (or
/// slowed down), moved to the stretched audio of `duration_ms`.
pub(crate) fn retime_marks(marks: &mut [Mark], stretch: f64, duration_ms: u32) {
    if (stretch - 1.0).abs() < dsp::STRETCH_EPSILON || !stretch.is_finite() || stretch <= 0.0 {
        return;
    }
    let scale = |ms: u32| ((f64::from(ms) / stretch).round() as u32).min(duration_ms);
    for mark in marks {
        mark.start_ms = scale(mark.start_ms);
        mark.end_ms = scale(mark.end_ms);
    }
}

/// `, retry after N s` when the vendor said when.
fn retry_hint(retry_after: Option<Duration>) -> String {
    retry_after.map_or_else(String::new, |d| {
        format!(", retry after {:.3}s", d.as_secs_f64())
    })
}

impl ProviderError {
    /// Stable code stored as the task's `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unsupported { .. } => "provider_unsupported",
            Self::Transient { .. } | Self::CircuitOpen { .. } => "provider_unavailable",
            Self::Timeout { .. } => "provider_timeout",
            Self::Encode { .. } => "encode_failed",
            Self::NoRoute(_) => "no_route",
            Self::Auth { .. } => "provider_auth",
            Self::RateLimited { .. } => "provider_rate_limited",
            Self::Rejected { .. } => "provider_rejected",
            Self::QuotaExhausted { .. } => "provider_quota_exhausted",
        }
    }

    /// Whether the same request might succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Transient { .. }
                | Self::CircuitOpen { .. }
                | Self::Timeout { .. }
                | Self::RateLimited { .. }
        )
    }

    /// How long the provider asked callers to wait before retrying, when it
    /// said so (a 429's `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// An upstream that turns text into speech.
#[async_trait]
pub trait Synthesizer: Send + Sync + 'static {
    /// Name used in configuration, routes, the ledger and metrics.
    fn name(&self) -> &str;

    /// The dialects this provider serves, with their capabilities.
    fn dialects(&self) -> Vec<DialectInfo>;

    /// Whether [`SynthesisRequest::instructions`] reach the vendor (and so
    /// change the audio).
    fn takes_instructions(&self) -> bool {
        false
    }

    /// Synthesizes one request.
    async fn synthesize(&self, request: &SynthesisRequest<'_>) -> Result<Audio, ProviderError>;

    /// Synthesizes one request, handing its bytes to `sink` as the vendor
    /// sends them when this provider streams `request`'s format as it is
    /// (no transcoding): `sink` then gets exactly the returned audio's bytes,
    /// in order. Otherwise (the default) nothing reaches `sink`.
    async fn synthesize_streaming(
        &self,
        request: &SynthesisRequest<'_>,
        sink: &AudioSink,
    ) -> Result<Audio, ProviderError> {
        let _ = sink;
        self.synthesize(request).await
    }

    /// Cheap check that the provider can serve requests now.
    async fn health(&self) -> Result<(), ProviderError>;
}
