//! What the fake saw: counters, the peak concurrency and the last requests.
//! Never holds a credential: only whether the expected auth header was
//! present and whether its value matched.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The wire format a route speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Vendor {
    /// ElevenLabs REST: `/v1/text-to-speech/{voice_id}`, `/v1/voices`, `/v1/user`.
    #[serde(rename = "elevenlabs")]
    ElevenLabs,
    /// OpenAI-compatible: `/v1/audio/speech`, `/v1/models`.
    #[serde(rename = "openai")]
    OpenAi,
    /// The generic contract: `/tts`, `/voices`, `/health`.
    Http,
}

/// How the fake answered one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// 200 with audio.
    Audio,
    /// 200 from a listing or health route.
    Listing,
    /// 401: missing or wrong key.
    Unauthorized,
    /// 429 from the fake's quota.
    RateLimited,
    /// The vendor's "credits exhausted" error.
    CreditsExhausted,
    /// Another 4xx: bad body, unknown voice or format.
    Rejected,
    /// An injected 500 or 503.
    ServerError,
    /// 503 because the fake is set down.
    Unavailable,
    /// Held until the client gave up (or `timeout_hold_ms` passed).
    Timeout,
    /// Garbage audio or a truncated error body.
    Malformed,
}

/// One request as the fake saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Position since the last reset, from 1.
    pub seq: u64,
    /// Milliseconds since the fake started.
    pub elapsed_ms: u64,
    /// Wire format of the route.
    pub vendor: Vendor,
    /// HTTP method.
    pub method: String,
    /// Path as sent, without the query.
    pub path: String,
    /// Query string, if any.
    pub query: Option<String>,
    /// Names (lower case) of every header sent; never their values.
    pub header_names: Vec<String>,
    /// Name of the route's auth header when the request carried it.
    pub auth_header: Option<String>,
    /// Whether the auth value matched the configured key (true when no key
    /// is configured).
    pub auth_matched: bool,
    /// The `X-Request-Id` header.
    pub request_id: Option<String>,
    /// The W3C `traceparent` header.
    #[serde(default)]
    pub traceparent: Option<String>,
    /// The `Accept` header.
    pub accept: Option<String>,
    /// The JSON body, when it parsed.
    pub body: Option<serde_json::Value>,
    /// Voice named by the request.
    pub voice: Option<String>,
    /// Characters of text in the request.
    pub characters: u64,
    /// Status answered; `None` for a request held as a timeout.
    pub status: Option<u16>,
    /// How the fake answered.
    pub outcome: Outcome,
}

/// Counters since the start or the last reset. Synthesis requests are the
/// vendor speech routes; listings and health checks count only in
/// `total_requests`, `by_vendor` and `by_route`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FakeStats {
    /// Requests to vendor routes (control routes under `/_fake` excluded).
    pub total_requests: u64,
    /// Requests per wire format.
    pub by_vendor: BTreeMap<Vendor, u64>,
    /// Requests per route, as `METHOD /template` (e.g. `POST /v1/text-to-speech/{voice_id}`).
    pub by_route: BTreeMap<String, u64>,
    /// Synthesis requests per voice named, whatever the answer.
    pub by_voice: BTreeMap<String, u64>,
    /// Synthesis requests received.
    pub synthesis_requests: u64,
    /// Characters of text in every synthesis request received.
    pub characters_received: u64,
    /// Synthesis requests answered with audio.
    pub audio_responses: u64,
    /// Characters of text answered with audio.
    pub characters_synthesized: u64,
    /// Synthesis requests being handled now.
    pub in_flight: u64,
    /// Most synthesis requests ever handled at once (whatever their answer):
    /// what the clients sent concurrently.
    pub peak_concurrency: u64,
    /// 429s sent by the fake's quota, all causes.
    pub rate_limited: u64,
    /// 429s because of `max_concurrent`.
    pub rate_limited_concurrency: u64,
    /// 429s because of `requests_per_second`.
    pub rate_limited_requests: u64,
    /// 429s because of `characters_per_minute`.
    pub rate_limited_characters: u64,
    /// Injected 500/503 answers.
    pub server_errors: u64,
    /// 503s because the fake was down.
    pub unavailable: u64,
    /// 401s for a missing or wrong key.
    pub unauthorized: u64,
    /// "Credits exhausted" answers.
    pub credits_exhausted: u64,
    /// Other 4xx answers (bad body, voice, format).
    pub rejected: u64,
    /// Requests held as timeouts.
    pub timeouts: u64,
    /// Malformed answers.
    pub malformed: u64,
    /// The most recent requests, oldest first, at most `log_capacity`.
    pub recent: Vec<RequestRecord>,
}

impl FakeStats {
    /// Requests of the recent log that went to `path` (exact, without query).
    pub fn requests_to<'a>(&'a self, path: &'a str) -> impl Iterator<Item = &'a RequestRecord> {
        self.recent.iter().filter(move |r| r.path == path)
    }

    /// The most recent request, if any.
    pub fn last(&self) -> Option<&RequestRecord> {
        self.recent.last()
    }
}
