//! The knobs: what the fake accepts, how slow and how faulty it is, and the
//! quota it enforces. Set at start, changed at runtime through
//! [`FakeProvider::update`](crate::FakeProvider::update) or `POST /_fake/config`.

use serde::{Deserialize, Serialize};

/// Key the ElevenLabs routes expect in `xi-api-key` by default.
pub const DEFAULT_ELEVENLABS_KEY: &str = "fake-elevenlabs-key";
/// Key the OpenAI routes expect after `Authorization: Bearer` by default.
pub const DEFAULT_OPENAI_KEY: &str = "fake-openai-key";
/// Value the generic routes expect in their auth header by default.
pub const DEFAULT_HTTP_KEY: &str = "fake-http-key";
/// Auth header the generic routes read by default.
pub const DEFAULT_HTTP_AUTH_HEADER: &str = "X-Api-Key";

/// Longest audio the fake ever answers, whatever `max_audio_ms` says: keeps
/// the per-rate tone buffer it slices from small.
pub const MAX_AUDIO_MS_LIMIT: u32 = 30_000;

/// Everything the fake can be told. Every field has a default, so a JSON
/// object naming only some fields is a complete configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FakeConfig {
    /// The credential each wire format expects.
    pub keys: ApiKeys,
    /// Header the generic `POST /tts` route reads its key from.
    pub http_auth_header: String,
    /// Delay added before each synthesis answer.
    pub latency: Latency,
    /// Injected failures, as fractions of synthesis requests.
    pub faults: Faults,
    /// Answer every vendor request with a 503, health checks included.
    pub down: bool,
    /// The account's credits are gone: synthesis answers the vendor's
    /// "quota exceeded" error (ElevenLabs 401 `quota_exceeded`, OpenAI 429
    /// `insufficient_quota`, generic 402 `quota_exhausted`).
    pub credits_exhausted: bool,
    /// The rate and concurrency limits the fake enforces with 429s.
    pub quota: Quota,
    /// Voices the fake knows; an unknown voice gets the vendor's 4xx. Empty
    /// accepts every voice.
    pub voices: Vec<FakeVoice>,
    /// How many recent requests [`FakeStats::recent`](crate::FakeStats::recent) keeps.
    pub log_capacity: usize,
    /// Audio length per character of text, in milliseconds, at speed 1.0.
    pub ms_per_char: u32,
    /// Longest audio answered, in milliseconds; at most [`MAX_AUDIO_MS_LIMIT`].
    pub max_audio_ms: u32,
    /// How audio answers are sent: whole (the default), or cut into pieces
    /// spread over time as vendors stream them.
    pub streaming: Streaming,
    /// Requests whose body contains one of these strings are refused with
    /// a 400 (`text_refused`), as a vendor refuses content it will not
    /// speak: a failure a test can aim at one text.
    pub refuse_texts_containing: Vec<String>,
    /// Requests whose body contains one of these strings wait
    /// `slow_texts_latency_ms` instead of [`Latency`]: a delay a test can
    /// aim at some texts while every other call stays fast.
    pub slow_texts_containing: Vec<String>,
    /// The delay of a request matching `slow_texts_containing`, in
    /// milliseconds.
    pub slow_texts_latency_ms: u64,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            keys: ApiKeys::default(),
            http_auth_header: DEFAULT_HTTP_AUTH_HEADER.to_owned(),
            latency: Latency::default(),
            faults: Faults::default(),
            down: false,
            credits_exhausted: false,
            quota: Quota::default(),
            voices: [
                ("alloy", "en-us"),
                ("nova", "en-us"),
                ("rachel", "en-gb"),
                ("default", "en-us"),
            ]
            .into_iter()
            .map(|(id, dialect)| FakeVoice::new(id, dialect))
            .collect(),
            log_capacity: 1_000,
            ms_per_char: 60,
            max_audio_ms: 10_000,
            streaming: Streaming::default(),
            refuse_texts_containing: Vec::new(),
            slow_texts_containing: Vec::new(),
            slow_texts_latency_ms: 0,
        }
    }
}

impl FakeConfig {
    /// A configuration that accepts any key and any voice, with no latency,
    /// faults or quota: the fastest fake, for benchmarks.
    pub fn permissive() -> Self {
        Self {
            keys: ApiKeys {
                elevenlabs: None,
                openai: None,
                http: None,
            },
            voices: Vec::new(),
            ..Self::default()
        }
    }

    /// Whether the fake knows `voice` (every voice when the list is empty).
    pub(crate) fn knows_voice(&self, voice: &str) -> bool {
        self.voices.is_empty() || self.voices.iter().any(|v| v.id == voice)
    }

    /// Whether some known voice speaks `dialect` (every dialect when the list is empty).
    pub(crate) fn knows_dialect(&self, dialect: &str) -> bool {
        self.voices.is_empty() || self.voices.iter().any(|v| v.dialect == dialect)
    }
}

/// The expected credential per wire format; `None` accepts any value, and
/// no value at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiKeys {
    /// ElevenLabs `xi-api-key`.
    pub elevenlabs: Option<String>,
    /// OpenAI `Authorization: Bearer` token.
    pub openai: Option<String>,
    /// Generic `http` value of [`FakeConfig::http_auth_header`].
    pub http: Option<String>,
}

impl Default for ApiKeys {
    fn default() -> Self {
        Self {
            elevenlabs: Some(DEFAULT_ELEVENLABS_KEY.to_owned()),
            openai: Some(DEFAULT_OPENAI_KEY.to_owned()),
            http: Some(DEFAULT_HTTP_KEY.to_owned()),
        }
    }
}

/// Delay of each synthesis answer: `fixed_ms` plus a uniform draw from
/// `0..=jitter_ms`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Latency {
    /// Always added, in milliseconds.
    pub fixed_ms: u64,
    /// Upper bound of the uniform extra, in milliseconds.
    pub jitter_ms: u64,
}

/// Injected failures. Each rate is the fraction (0.0–1.0, clamped) of
/// synthesis requests that get it; one draw decides, in the order timeout,
/// server error, malformed body.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Answer a vendor-shaped 500 or 503.
    pub server_error_rate: f64,
    /// Hold the request for `timeout_hold_ms` (or until the fake shuts down)
    /// and then answer 504, so the client's timeout fires first.
    pub timeout_rate: f64,
    /// How long a "timeout" request is held, in milliseconds.
    pub timeout_hold_ms: u64,
    /// Answer 200 with garbage instead of audio, or a 500 whose JSON error
    /// body is cut off.
    pub malformed_rate: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            server_error_rate: 0.0,
            timeout_rate: 0.0,
            timeout_hold_ms: 30_000,
            malformed_rate: 0.0,
        }
    }
}

/// Audio answers sent as a chunked stream: the first piece at once, the
/// others evenly over `spread_ms`, as ElevenLabs' `/stream` and OpenAI's
/// chunked speech answers arrive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Streaming {
    /// Pieces an audio answer is cut into; 0 or 1 sends it whole.
    pub chunks: u32,
    /// Time from the first piece to the last, in milliseconds.
    pub spread_ms: u64,
    /// Break the connection after this many pieces, the rest unsent (a
    /// vendor failing mid-stream); `None` sends them all.
    pub fail_after_chunks: Option<u32>,
}

/// The fake's own quota, enforced on synthesis requests only (listings and
/// health checks are free). Exceeding any limit answers 429 with
/// `Retry-After` (whole seconds, at least 1) and the vendor's error body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quota {
    /// Admitted synthesis requests in any sliding one-second window.
    pub requests_per_second: Option<u32>,
    /// Characters of admitted requests in any sliding sixty-second window.
    pub characters_per_minute: Option<u64>,
    /// Synthesis requests being handled at once, this one included.
    pub max_concurrent: Option<u32>,
}

/// A voice the fake knows, and the dialect it speaks (used by the generic
/// `POST /tts` and `GET /voices`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeVoice {
    /// Voice id as clients send it.
    pub id: String,
    /// Dialect id it speaks.
    pub dialect: String,
}

impl FakeVoice {
    /// A voice `id` speaking `dialect`.
    pub fn new(id: impl Into<String>, dialect: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            dialect: dialect.into(),
        }
    }
}

/// Applies a partial JSON configuration on top of `base`: objects merge
/// field by field, anything else (`null` included, which clears an optional
/// field) replaces.
pub(crate) fn merge(base: &FakeConfig, patch: serde_json::Value) -> Result<FakeConfig, String> {
    let mut value = serde_json::to_value(base).map_err(|e| e.to_string())?;
    merge_value(&mut value, patch);
    serde_json::from_value(value).map_err(|e| e.to_string())
}

fn merge_value(target: &mut serde_json::Value, patch: serde_json::Value) {
    match (target, patch) {
        (serde_json::Value::Object(target), serde_json::Value::Object(patch)) => {
            for (key, value) in patch {
                match target.get_mut(&key) {
                    Some(existing) => merge_value(existing, value),
                    None => {
                        target.insert(key, value);
                    }
                }
            }
        }
        (target, patch) => *target = patch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_patch_keeps_every_other_field() {
        let base = FakeConfig::default();

        let merged = merge(
            &base,
            serde_json::json!({"quota": {"max_concurrent": 4}, "down": true}),
        )
        .unwrap();

        assert_eq!(merged.quota.max_concurrent, Some(4));
        assert!(merged.down);
        assert_eq!(merged.keys, base.keys);
        assert_eq!(merged.faults, base.faults);
    }

    #[test]
    fn null_clears_an_optional_field_and_unknown_fields_are_refused() {
        let merged = merge(
            &FakeConfig::default(),
            serde_json::json!({"keys": {"openai": null}}),
        )
        .unwrap();
        assert_eq!(merged.keys.openai, None);
        assert!(merged.keys.elevenlabs.is_some());

        let err = merge(&FakeConfig::default(), serde_json::json!({"latncy": 1})).unwrap_err();
        assert!(err.contains("latncy"), "{err}");
    }
}
