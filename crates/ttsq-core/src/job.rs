//! A synthesis job: its raw wire form, the limits it is checked against and
//! its validated form. Validation happens once, at the edge; everything past
//! [`Job::parse`] can trust its fields.

use std::{fmt, str::FromStr};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    catalog::Catalog,
    error::ValidationErrors,
    format::AudioFormat,
    hash::{ContentHash, HashInputs, normalize_text},
    marks::MarkKind,
};

/// How a job is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Through the queue and a worker; the default.
    Normal,
    /// Synthesized inline by the API; never waits behind the queue.
    High,
}

impl Priority {
    /// The name clients send and Postgres stores.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::High => "high",
        }
    }
}

impl FromStr for Priority {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "normal" => Ok(Self::Normal),
            "high" => Ok(Self::High),
            _ => Err(()),
        }
    }
}

/// What a job is checked against and derived with; configurable per
/// deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobLimits {
    /// Most characters (Unicode scalar values, after normalisation) in
    /// `text` of a job served by one provider request: a high-priority job,
    /// and a normal job that is not a long job.
    pub max_text_chars: usize,
    /// Most characters in `text` of a normal-priority job; one longer than
    /// one provider request takes is a long job, split into chunks.
    pub max_long_text_chars: usize,
    /// Most bytes of `metadata` as compact JSON.
    pub max_metadata_bytes: usize,
    /// Key of [`Job::text_fingerprint`]; `None`: jobs get no fingerprint.
    pub audit_key: Option<AuditKey>,
}

impl Default for JobLimits {
    fn default() -> Self {
        Self {
            max_text_chars: 5_000,
            max_long_text_chars: 200_000,
            max_metadata_bytes: 4 * 1024,
            audit_key: None,
        }
    }
}

/// The deployment's key of the audit log's text fingerprints
/// (`audit.text_key`). A plain SHA-256 of a short text (a voice one-time
/// code) is reversed by hashing every guess; an HMAC under this key is not,
/// unless one holds the key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AuditKey([u8; 32]);

impl AuditKey {
    /// From the configured secret, of any length (its SHA-256 is the key).
    pub fn new(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    /// Hex HMAC-SHA256 of `text` under this key.
    pub fn fingerprint(&self, text: &str) -> String {
        // HMAC takes keys of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts any key length");
        mac.update(text.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey([REDACTED])")
    }
}

/// Formats a long job may ask for: its chunks' audio is joined into one
/// file, which these take by concatenation (Opus and FLAC streams do not).
pub const LONG_JOB_FORMATS: [AudioFormat; 3] =
    [AudioFormat::Mp3, AudioFormat::Wav, AudioFormat::Pcm];

/// Most characters of one provider request for `info`'s jobs: the smaller
/// of `limits.max_text_chars` and what the dialect's providers take. A
/// normal-priority job with a longer text is a long job.
pub fn request_chars(info: &crate::catalog::DialectInfo, limits: &JobLimits) -> usize {
    limits
        .max_text_chars
        .min(usize::try_from(info.max_request_chars).unwrap_or(usize::MAX))
        .max(1)
}

/// Slowest and fastest speaking rate factors the job API accepts.
pub const SPEED_RANGE: std::ops::RangeInclusive<f64> = 0.5..=2.0;

/// What an edge of the API allows beyond the job API's own rules. The job
/// API uses [`EdgeRules::default`]; OpenAI's speech endpoint takes a wider
/// speed range and fixes the rate of `pcm`, which has no header to say it.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeRules {
    /// Speaking rate factors accepted.
    pub speed_range: std::ops::RangeInclusive<f64>,
    /// Sample rate of `pcm` output; `None`: the dialect's.
    pub pcm_sample_rate_hz: Option<u32>,
}

impl Default for EdgeRules {
    fn default() -> Self {
        Self {
            speed_range: SPEED_RANGE,
            pcm_sample_rate_hz: None,
        }
    }
}

/// A job exactly as a client sent it. Every field is optional here so that a
/// missing field gets our own clear message rather than a parser's.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// Text to speak.
    #[schema(required = true, value_type = String, min_length = 1, example = "Hello there.")]
    pub text: Option<String>,
    /// Dialect id from the catalog.
    #[schema(required = true, value_type = String, example = "en-gb")]
    pub dialect: Option<String>,
    /// Voice id of that dialect.
    pub voice: Option<String>,
    /// Speaking rate factor.
    #[schema(minimum = 0.5, maximum = 2.0, example = 1.0)]
    pub speed: Option<f64>,
    /// Emotion, where the dialect offers any.
    pub emotion: Option<String>,
    /// Output format name.
    #[schema(value_type = Option<AudioFormat>)]
    pub format: Option<String>,
    /// `normal` or `high`.
    #[schema(value_type = Option<Priority>)]
    pub priority: Option<String>,
    /// URL told of the terminal state.
    pub callback_url: Option<String>,
    /// Client's own JSON, returned as given.
    pub metadata: Option<serde_json::Value>,
    /// Speech marks to produce: any of `word`, `sentence`, `viseme`.
    pub marks: Option<Vec<String>>,
}

/// A validated job, ready to be stored, hashed and synthesized.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Normalised text.
    pub text: String,
    /// Characters of the normalised text; what usage is counted in.
    pub characters: u32,
    /// Dialect id.
    pub dialect: String,
    /// Voice id (the dialect's default when none was asked for).
    pub voice: String,
    /// Speaking rate factor, rounded to hundredths.
    pub speed: f64,
    /// Emotion, if asked for.
    pub emotion: Option<String>,
    /// Output format.
    pub format: AudioFormat,
    /// Sample rate of the output when it is not the dialect's (OpenAI's
    /// `pcm` is 24 kHz whatever the voice); `None`: the dialect's. Part of
    /// the content hash only when set, so other hashes are unchanged.
    pub sample_rate_hz: Option<u32>,
    /// Sample rate of the output (of `opus` the input's, as Opus is 48 kHz
    /// inside): `sample_rate_hz`, else the dialect's. Stored with the task,
    /// so a worker renders it and a join can tell rates apart.
    pub output_rate_hz: u32,
    /// Normal (queued) or high (inline).
    pub priority: Priority,
    /// Callback URL, if any.
    pub callback_url: Option<String>,
    /// Client metadata, if any.
    pub metadata: Option<serde_json::Value>,
    /// Model id of the dialect.
    pub model: String,
    /// Provider chain of the dialect.
    pub provider_route: String,
    /// Content hash of the audio this job produces.
    pub hash: ContentHash,
    /// Speech marks asked for, sorted and deduplicated; empty for none.
    pub marks: Vec<MarkKind>,
    /// Hex HMAC-SHA256 of the normalised text under the deployment's
    /// [`AuditKey`], for the audit log; `None` without a key.
    pub text_fingerprint: Option<String>,
    /// How to speak, for a provider that takes it (OpenAI's
    /// `instructions`); part of the hash when set, and stored with the task
    /// so that a worker taking it over sends them too. Only the OpenAI
    /// speech endpoint sets it.
    pub instructions: Option<String>,
    /// The text as sent, kept only for a long job until it is split: the
    /// splitter cuts at its paragraph breaks, which normalisation collapses.
    pub source_text: Option<String>,
}

impl Job {
    /// Has the audio spoken as `instructions` say: they go to the provider
    /// and into the content hash. Call before [`Job::scope_cache`].
    pub fn instruct(&mut self, instructions: String) {
        self.hash = self.hash.instructed(&instructions);
        self.instructions = Some(instructions);
    }

    /// Puts the job's content hash in `scope` (see [`ContentHash::scoped`]);
    /// done once, at submission, with the submitting tenant's scope.
    pub fn scope_cache(&mut self, scope: &str) {
        self.hash = self.hash.scoped(scope);
    }
}

/// A chunk of a long job: an ordinary job of its own (the long job's
/// settings, the chunk's text), stored as a task hidden from the tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct JobChunk {
    /// Its job: the chunk's text, characters and content hash — the hash a
    /// short job of the same text has, so the two share audio. No callback,
    /// metadata or fingerprint: those are the long job's.
    pub job: Job,
    /// Where its text starts in the long job's normalised text, in
    /// characters: what its speech marks are shifted by in the join.
    pub offset: usize,
}

impl Job {
    /// Most characters of one chunk when this job is a long job (normal
    /// priority, a text longer than one provider request of its dialect
    /// takes, see [`request_chars`]); `None` for every other job.
    pub fn long_chunk_chars(&self, catalog: &Catalog, limits: &JobLimits) -> Option<usize> {
        if self.priority != Priority::Normal {
            return None;
        }
        let max = request_chars(catalog.get(&self.dialect)?, limits);
        (usize::try_from(self.characters).unwrap_or(usize::MAX) > max).then_some(max)
    }

    /// Makes this job the long job of `pieces` (each chunk's normalised text
    /// and its offset in this job's text, as the splitter cuts them, in
    /// order): the chunks' jobs, each hashed as a short job of its text with
    /// this job's settings, instructions and cache `scope`, and this job's
    /// hash the hash of theirs in order ([`ContentHash::of_chunks`]).
    /// Replaces the hash whether or not [`Job::scope_cache`] was called.
    ///
    /// A piece over `max_chars` characters (a text with no place to split
    /// it) or no piece at all is refused on `text`, and the job is left as
    /// it was.
    pub fn chunks(
        &mut self,
        pieces: impl IntoIterator<Item = (String, usize)>,
        max_chars: usize,
        scope: &str,
    ) -> Result<Vec<JobChunk>, ValidationErrors> {
        let mut chunks = Vec::new();
        for (text, offset) in pieces {
            let characters = text.chars().count();
            if characters > max_chars || characters == 0 {
                let mut errors = ValidationErrors::default();
                errors.push(
                    "text",
                    format!(
                        "has a run of more than {max_chars} characters with no space or \
                         punctuation to split it at; one provider request takes no more"
                    ),
                );
                return Err(errors);
            }
            let mut hash = ContentHash::compute(&HashInputs {
                provider_route: &self.provider_route,
                voice: &self.voice,
                dialect: &self.dialect,
                model: &self.model,
                speed: self.speed,
                emotion: self.emotion.as_deref(),
                format: self.format,
                text: &text,
                marks: &self.marks,
                sample_rate_hz: self.sample_rate_hz,
            });
            if let Some(instructions) = &self.instructions {
                hash = hash.instructed(instructions);
            }
            let job = Job {
                text,
                characters: u32::try_from(characters).unwrap_or(u32::MAX),
                dialect: self.dialect.clone(),
                voice: self.voice.clone(),
                speed: self.speed,
                emotion: self.emotion.clone(),
                format: self.format,
                sample_rate_hz: self.sample_rate_hz,
                output_rate_hz: self.output_rate_hz,
                priority: self.priority,
                callback_url: None,
                metadata: None,
                model: self.model.clone(),
                provider_route: self.provider_route.clone(),
                hash: hash.scoped(scope),
                marks: self.marks.clone(),
                text_fingerprint: None,
                instructions: self.instructions.clone(),
                source_text: None,
            };
            chunks.push(JobChunk { job, offset });
        }
        if chunks.is_empty() {
            let mut errors = ValidationErrors::default();
            errors.push("text", "has nothing to split into chunks");
            return Err(errors);
        }
        self.hash = ContentHash::of_chunks(chunks.iter().map(|c| &c.job.hash));
        Ok(chunks)
    }
}

impl Job {
    /// Decodes and validates a JSON request body in one step, reporting every
    /// problem with the field it concerns.
    pub fn parse(
        body: &[u8],
        catalog: &Catalog,
        limits: &JobLimits,
    ) -> Result<Self, ValidationErrors> {
        let request = decode_request(body)?;
        Self::validate(request, catalog, limits)
    }

    /// Validates a decoded request against the catalog and limits.
    pub fn validate(
        request: JobRequest,
        catalog: &Catalog,
        limits: &JobLimits,
    ) -> Result<Self, ValidationErrors> {
        Self::validate_at(request, catalog, limits, &EdgeRules::default())
    }

    /// Validates a decoded request under an edge's own `rules`.
    pub fn validate_at(
        request: JobRequest,
        catalog: &Catalog,
        limits: &JobLimits,
        rules: &EdgeRules,
    ) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        // What the text's limit depends on, looked at before their own
        // checks (which report their errors in field order, below).
        let asked_priority = request
            .priority
            .as_deref()
            .and_then(|name| name.parse().ok())
            .unwrap_or(Priority::Normal);
        let one_request = request
            .dialect
            .as_deref()
            .and_then(|id| catalog.get(id))
            .map_or(limits.max_text_chars, |info| request_chars(info, limits));
        let mut is_long = false;

        let text = match request.text.as_deref() {
            None => {
                errors.push("text", "is required");
                String::new()
            }
            Some(raw) => {
                let text = normalize_text(raw);
                let chars = text.chars().count();
                if text.is_empty() {
                    errors.push("text", "must contain at least one non-whitespace character");
                } else if asked_priority == Priority::High && chars > one_request {
                    errors.push(
                        "text",
                        format!(
                            "is {chars} characters long; high priority is one provider request \
                             of at most {one_request} characters: send a longer text at \
                             priority normal, as a long job"
                        ),
                    );
                } else if chars > limits.max_long_text_chars {
                    errors.push(
                        "text",
                        format!(
                            "is {chars} characters long; the limit is {}",
                            limits.max_long_text_chars
                        ),
                    );
                } else if text.chars().any(|c| c.is_control()) {
                    errors.push("text", "must not contain control characters");
                } else {
                    is_long = chars > one_request;
                }
                text
            }
        };

        let dialect = match request.dialect.as_deref() {
            None => {
                errors.push("dialect", "is required");
                None
            }
            Some(id) => {
                let found = catalog.get(id);
                if found.is_none() {
                    errors.push(
                        "dialect",
                        format!("unknown dialect `{}`; see GET /v1/dialects", truncate(id)),
                    );
                }
                found
            }
        };

        let speed = request.speed.unwrap_or(1.0);
        if !rules.speed_range.contains(&speed) {
            errors.push(
                "speed",
                format!(
                    "must be between {} and {}",
                    rules.speed_range.start(),
                    rules.speed_range.end()
                ),
            );
        }
        let speed = (speed * 100.0).round() / 100.0;

        let format = match request.format.as_deref() {
            None => Some(AudioFormat::Mp3),
            Some(name) => match name.parse::<AudioFormat>() {
                Ok(format) => Some(format),
                Err(()) => {
                    errors.push(
                        "format",
                        format!(
                            "unknown format `{}`; use mp3, wav, pcm, opus or flac",
                            truncate(name)
                        ),
                    );
                    None
                }
            },
        };

        let priority = match request.priority.as_deref() {
            None => Priority::Normal,
            Some(name) => name.parse().unwrap_or_else(|()| {
                errors.push(
                    "priority",
                    format!("unknown priority `{}`; use normal or high", truncate(name)),
                );
                Priority::Normal
            }),
        };

        if let Some(url) = request.callback_url.as_deref() {
            let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
            if !scheme_ok
                || url.len() > 2048
                || url.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                errors.push(
                    "callback_url",
                    "must be an http(s) URL of at most 2048 characters",
                );
            }
        }

        if let Some(metadata) = &request.metadata
            && let Err(reason) = check_metadata(metadata, limits.max_metadata_bytes)
        {
            errors.push("metadata", reason);
        }

        let mut marks = Vec::new();
        for name in request.marks.iter().flatten() {
            match name.parse::<MarkKind>() {
                Ok(kind) => marks.push(kind),
                Err(()) => errors.push(
                    "marks",
                    format!(
                        "unknown mark type `{}`; use word, sentence or viseme",
                        truncate(name)
                    ),
                ),
            }
        }
        marks.sort();
        marks.dedup();

        let mut voice = String::new();
        let mut emotion = None;
        if let Some(info) = dialect {
            voice = request
                .voice
                .clone()
                .unwrap_or_else(|| info.default_voice().to_owned());
            if !info.voices.contains(&voice) {
                errors.push(
                    "voice",
                    format!(
                        "unknown voice `{}` for dialect `{}`; available: {}",
                        truncate(&voice),
                        info.id,
                        info.voices.join(", ")
                    ),
                );
            }
            if let Some(format) = format
                && info.formats.contains(&format)
                && is_long
                && priority == Priority::Normal
                && !LONG_JOB_FORMATS.contains(&format)
            {
                errors.push(
                    "format",
                    format!(
                        "a text of more than {} characters is a long job, whose chunks are \
                         joined into one file: use mp3, wav or pcm, not `{format}`",
                        one_request
                    ),
                );
            }
            if let Some(format) = format
                && !info.formats.contains(&format)
            {
                let offered: Vec<_> = info.formats.iter().map(|f| f.as_str()).collect();
                errors.push(
                    "format",
                    format!(
                        "format `{format}` is not supported for dialect `{}`; available: {}",
                        info.id,
                        offered.join(", ")
                    ),
                );
            }
            if let Some(wanted) = request.emotion.as_deref() {
                if info.emotions.iter().any(|e| e == wanted) {
                    emotion = Some(wanted.to_owned());
                } else if info.emotions.is_empty() {
                    errors.push(
                        "emotion",
                        format!("dialect `{}` does not support emotions", info.id),
                    );
                } else {
                    errors.push(
                        "emotion",
                        format!(
                            "unknown emotion `{}`; available: {}",
                            truncate(wanted),
                            info.emotions.join(", ")
                        ),
                    );
                }
            }
        }

        if let Some(info) = dialect
            && let Some(missing) = marks.iter().find(|m| !info.marks.contains(m))
        {
            let provider = info.provider_chain.first().map_or("", String::as_str);
            errors.push(
                "marks",
                if info.marks.is_empty() {
                    format!(
                        "dialect `{}` is served by `{provider}`, which reports no timings; speech marks are unavailable",
                        info.id
                    )
                } else {
                    let offered: Vec<_> = info.marks.iter().map(|m| m.as_str()).collect();
                    format!(
                        "`{missing}` marks are unavailable for dialect `{}`; available: {}",
                        info.id,
                        offered.join(", ")
                    )
                },
            );
        }

        let (Some(info), Some(format)) = (dialect, format) else {
            return Err(errors);
        };
        let provider_route = info.provider_route();
        let sample_rate_hz = rules
            .pcm_sample_rate_hz
            .filter(|&rate| format == AudioFormat::Pcm && rate != info.sample_rate_hz);
        let hash = ContentHash::compute(&HashInputs {
            provider_route: &provider_route,
            voice: &voice,
            dialect: &info.id,
            model: &info.model,
            speed,
            emotion: emotion.as_deref(),
            format,
            text: &text,
            marks: &marks,
            sample_rate_hz,
        });
        let characters = u32::try_from(text.chars().count()).unwrap_or(u32::MAX);
        let text_fingerprint = limits.audit_key.map(|key| key.fingerprint(&text));
        errors.into_result(Job {
            text_fingerprint,
            text,
            characters,
            dialect: info.id.clone(),
            voice,
            speed,
            emotion,
            format,
            sample_rate_hz,
            output_rate_hz: sample_rate_hz.unwrap_or(info.sample_rate_hz),
            priority,
            callback_url: request.callback_url,
            metadata: request.metadata,
            model: info.model.clone(),
            provider_route,
            hash,
            marks,
            instructions: None,
            source_text: is_long.then(|| request.text.unwrap_or_default()),
        })
    }
}

/// Checks client metadata (a job's or a batch's): at most `max_bytes` as
/// compact JSON, and no U+0000 in any string or key, which Postgres cannot
/// store in `jsonb`. The error is the reason, for the field `metadata`.
pub fn check_metadata(metadata: &serde_json::Value, max_bytes: usize) -> Result<(), String> {
    let size = metadata.to_string().len();
    if contains_nul(metadata) {
        Err("must not contain the character U+0000".to_owned())
    } else if size > max_bytes {
        Err(format!("is {size} bytes as JSON; the limit is {max_bytes}"))
    } else {
        Ok(())
    }
}

/// Whether any string or key of `value` holds U+0000.
fn contains_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

/// Parses a JSON body into a [`JobRequest`], naming the field a type error is in.
pub fn decode_request(body: &[u8]) -> Result<JobRequest, ValidationErrors> {
    decode_json(body)
}

/// Parses any JSON request body, reporting the path of a mistyped field, or
/// the line and column of a syntax error.
pub fn decode_json<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, ValidationErrors> {
    let mut errors = ValidationErrors::default();
    let deserializer = &mut serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize(deserializer) {
        Ok(value) => Ok(value),
        Err(err) => {
            let path = err.path().to_string();
            let inner = err.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                errors.push("", format!("malformed JSON: {inner}"));
            } else if path == "." {
                errors.push("", format!("invalid request body: {inner}"));
            } else {
                errors.push(path, inner.to_string());
            }
            Err(errors)
        }
    }
}

/// Echoes client input in error messages without letting a huge value
/// blow up the response.
fn truncate(value: &str) -> String {
    const MAX: usize = 64;
    if value.chars().count() <= MAX {
        value.to_owned()
    } else {
        let mut short: String = value.chars().take(MAX).collect();
        short.push('…');
        short
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::catalog::DialectInfo;

    fn catalog() -> Catalog {
        Catalog::new([DialectInfo {
            id: "en-gb".into(),
            name: "English (UK)".into(),
            voices: vec!["default".into(), "f1".into()],
            formats: vec![AudioFormat::Mp3, AudioFormat::Wav, AudioFormat::Pcm],
            emotions: vec![],
            provider_chain: vec!["espeak".into()],
            model: "espeak-ng".into(),
            sample_rate_hz: 22_050,
            marks: Vec::new(),
            max_request_chars: 5_000,
        }])
    }

    /// The hash of `{"text": "Hello world", "dialect": "en-gb"}`: SHA-256 of
    /// its canonical inputs, computed apart from this crate.
    const PINNED_HELLO_WORLD: &str =
        "759b28e23bb863b991a8148e6283d3cdec95fe05483754d03a93221e08fe7bbd";

    fn parse(body: serde_json::Value) -> Result<Job, ValidationErrors> {
        Job::parse(
            body.to_string().as_bytes(),
            &catalog(),
            &JobLimits::default(),
        )
    }

    #[test]
    fn the_text_fingerprint_is_keyed_and_absent_without_a_key() {
        let body = json!({"text": "Your code is  4 8 2", "dialect": "en-gb"}).to_string();
        let keyed = |secret: &str| {
            let limits = JobLimits {
                audit_key: Some(AuditKey::new(secret)),
                ..JobLimits::default()
            };
            Job::parse(body.as_bytes(), &catalog(), &limits)
                .unwrap()
                .text_fingerprint
                .unwrap()
        };
        let one = keyed("key one");
        assert_eq!(one.len(), 64);
        assert_eq!(one, keyed("key one"));
        assert_ne!(one, keyed("key two"));
        // Not the plain hash a guess would be checked against.
        assert_ne!(
            one,
            hex::encode(Sha256::digest("Your code is 4 8 2".as_bytes()))
        );
        assert_eq!(
            one,
            AuditKey::new("key one").fingerprint("Your code is 4 8 2")
        );
        assert_eq!(
            parse(json!({"text": "hi", "dialect": "en-gb"}))
                .unwrap()
                .text_fingerprint,
            None
        );
        assert!(!format!("{:?}", AuditKey::new("key one")).contains("key one"));
    }

    #[test]
    fn a_minimal_job_gets_defaults() {
        let job = parse(json!({"text": "  Hello   world ", "dialect": "en-gb"})).unwrap();
        assert_eq!(job.text, "Hello world");
        assert_eq!(job.characters, 11);
        assert_eq!(job.voice, "default");
        assert_eq!(job.format, AudioFormat::Mp3);
        assert_eq!(job.priority, Priority::Normal);
        assert_eq!(job.speed, 1.0);
        assert_eq!(job.provider_route, "espeak");
    }

    #[test]
    fn equal_jobs_after_normalisation_share_a_hash() {
        let a = parse(json!({"text": "Hello world", "dialect": "en-gb"})).unwrap();
        let b =
            parse(json!({"text": " Hello \n world", "dialect": "en-gb", "format": "mp3"})).unwrap();
        assert_eq!(a.hash, b.hash);
        let c = parse(json!({"text": "Hello world", "dialect": "en-gb", "voice": "f1"})).unwrap();
        assert_ne!(a.hash, c.hash);
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (json!({"dialect": "en-gb"}), "text"),
            (json!({"text": "   ", "dialect": "en-gb"}), "text"),
            (
                json!({"text": "x".repeat(200_001), "dialect": "en-gb"}),
                "text",
            ),
            (json!({"text": "hi"}), "dialect"),
            (json!({"text": "hi", "dialect": "xx-yy"}), "dialect"),
            (
                json!({"text": "hi", "dialect": "en-gb", "voice": "nobody"}),
                "voice",
            ),
            (
                json!({"text": "hi", "dialect": "en-gb", "speed": 2.5}),
                "speed",
            ),
            (
                json!({"text": "hi", "dialect": "en-gb", "speed": 0.49}),
                "speed",
            ),
            (
                json!({"text": "hi", "dialect": "en-gb", "format": "aac"}),
                "format",
            ),
            (
                json!({"text": "hi", "dialect": "en-gb", "format": "ogg_opus"}),
                "format",
            ),
            (
                json!({"text": "hi", "dialect": "en-gb", "priority": "urgent"}),
                "priority",
            ),
            (
                json!({"text": "hi", "dialect": "en-gb", "emotion": "happy"}),
                "emotion",
            ),
            (
                json!({"text": "hi", "dialect": "en-gb", "callback_url": "ftp://x"}),
                "callback_url",
            ),
            (
                json!({"text": "hi", "dialect": "en-gb", "metadata": {"k": "v".repeat(5000)}}),
                "metadata",
            ),
            (
                json!({"text": "hi", "dialect": "en-gb", "metadata": {"a\0": [1, "\0"]}}),
                "metadata",
            ),
            (
                json!({"text": "hi", "dialect": "en-gb", "callback_url": "https://x/\0"}),
                "callback_url",
            ),
            (json!({"text": 42, "dialect": "en-gb"}), "text"),
            (
                json!({"text": "hi", "dialect": "en-gb", "speed": "fast"}),
                "speed",
            ),
            (
                json!({"text": "hi", "dialect": "en-gb", "colour": "red"}),
                "colour",
            ),
        ];
        for (body, field) in cases {
            let errors = parse(body.clone()).expect_err(&body.to_string());
            assert_eq!(errors.fields(), [field], "{body}");
        }
    }

    #[test]
    fn an_edge_may_widen_the_speed_range_and_fix_the_pcm_rate_which_the_hash_tells_apart() {
        let openai = EdgeRules {
            speed_range: 0.25..=4.0,
            pcm_sample_rate_hz: Some(24_000),
        };
        let request = |speed: f64, format: &str| JobRequest {
            text: Some("Hello".to_owned()),
            dialect: Some("en-gb".to_owned()),
            speed: Some(speed),
            format: Some(format.to_owned()),
            ..JobRequest::default()
        };
        let limits = JobLimits::default();

        let fast = Job::validate_at(request(3.5, "pcm"), &catalog(), &limits, &openai).unwrap();
        let too_fast = Job::validate_at(request(4.5, "pcm"), &catalog(), &limits, &openai);
        let job_api = Job::validate(request(3.5, "pcm"), &catalog(), &limits);
        let pcm_24k = Job::validate_at(request(1.0, "pcm"), &catalog(), &limits, &openai).unwrap();
        let pcm = Job::validate(request(1.0, "pcm"), &catalog(), &limits).unwrap();
        let mp3_openai =
            Job::validate_at(request(1.0, "mp3"), &catalog(), &limits, &openai).unwrap();
        let mp3 = Job::validate(request(1.0, "mp3"), &catalog(), &limits).unwrap();

        assert_eq!(fast.speed, 3.5);
        assert_eq!(too_fast.unwrap_err().fields(), ["speed"]);
        assert_eq!(job_api.unwrap_err().fields(), ["speed"]);
        assert_eq!(pcm_24k.sample_rate_hz, Some(24_000));
        assert_eq!(pcm_24k.output_rate_hz, 24_000);
        assert_eq!(pcm.sample_rate_hz, None);
        assert_eq!(pcm.output_rate_hz, 22_050);
        assert_ne!(pcm_24k.hash, pcm.hash);
        assert_eq!(mp3_openai.sample_rate_hz, None);
        assert_eq!(mp3_openai.hash, mp3.hash);
    }

    #[test]
    fn several_problems_are_reported_together() {
        let errors = parse(json!({"text": "", "dialect": "en-gb", "speed": 9, "format": "flac"}))
            .unwrap_err();
        assert_eq!(errors.fields(), ["text", "speed", "format"]);
    }

    #[test]
    fn malformed_json_is_a_body_error_with_its_position() {
        let errors = Job::parse(b"{\"text\": ", &catalog(), &JobLimits::default()).unwrap_err();
        assert_eq!(errors.fields(), [""]);
        assert!(errors.0[0].reason.starts_with("malformed JSON"), "{errors}");
    }

    /// A catalog whose one dialect takes requests of at most 100
    /// characters, in every format.
    fn small_requests() -> Catalog {
        let mut info = catalog().get("en-gb").unwrap().clone();
        info.max_request_chars = 100;
        info.formats = AudioFormat::ALL.to_vec();
        Catalog::new([info])
    }

    fn sentences(count: usize) -> String {
        (0..count)
            .map(|i| format!("Sentence number {i} is here."))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn a_normal_job_may_be_long_and_is_refused_only_past_the_long_limit() {
        let limits = JobLimits {
            max_long_text_chars: 10_000,
            ..JobLimits::default()
        };
        let body = |text: &str| json!({"text": text, "dialect": "en-gb"}).to_string();

        let long = Job::parse(body(&"word ".repeat(1_999)).as_bytes(), &catalog(), &limits);
        let too_long = Job::parse(body(&"word ".repeat(2_001)).as_bytes(), &catalog(), &limits);
        let short = parse(json!({"text": "Hello world", "dialect": "en-gb"})).unwrap();

        let long = long.unwrap();
        assert_eq!(long.characters, 9_994);
        assert_eq!(long.long_chunk_chars(&catalog(), &limits), Some(5_000));
        assert_eq!(short.long_chunk_chars(&catalog(), &limits), None);
        let errors = too_long.unwrap_err();
        assert_eq!(errors.fields(), ["text"]);
        assert!(
            errors.0[0].reason.contains("the limit is 10000"),
            "{errors}"
        );
    }

    #[test]
    fn high_priority_is_one_request_of_the_dialects_limit() {
        let body = |chars: usize, priority: &str| {
            json!({"text": "x".repeat(chars), "dialect": "en-gb", "priority": priority}).to_string()
        };
        let limits = JobLimits::default();

        let fits = Job::parse(body(100, "high").as_bytes(), &small_requests(), &limits).unwrap();
        let over = Job::parse(body(101, "high").as_bytes(), &small_requests(), &limits);
        let over_max_text = Job::parse(body(5_001, "high").as_bytes(), &catalog(), &limits);
        let normal = Job::parse(body(101, "normal").as_bytes(), &small_requests(), &limits);

        assert_eq!(fits.long_chunk_chars(&small_requests(), &limits), None);
        let errors = over.unwrap_err();
        assert_eq!(errors.fields(), ["text"]);
        assert!(
            errors.0[0].reason.contains("at most 100 characters")
                && errors.0[0].reason.contains("priority normal"),
            "{errors}"
        );
        let errors = over_max_text.unwrap_err();
        assert!(
            errors.0[0].reason.contains("at most 5000 characters"),
            "{errors}"
        );
        let normal = normal.unwrap();
        assert_eq!(
            normal.long_chunk_chars(&small_requests(), &limits),
            Some(100)
        );
    }

    #[test]
    fn a_long_job_is_joined_so_it_takes_mp3_wav_or_pcm_only() {
        let body = |text: &str, format: &str| {
            json!({"text": text, "dialect": "en-gb", "format": format}).to_string()
        };
        let limits = JobLimits::default();
        let long = sentences(10);
        let parse = |text: &str, format: &str| {
            Job::parse(body(text, format).as_bytes(), &small_requests(), &limits)
        };

        for format in ["opus", "flac"] {
            let errors = parse(&long, format).unwrap_err();
            assert_eq!(errors.fields(), ["format"], "{format}");
            assert!(errors.0[0].reason.contains("mp3, wav or pcm"), "{errors}");
            assert!(parse("Short.", format).is_ok(), "{format}");
        }
        for format in ["mp3", "wav", "pcm"] {
            assert!(parse(&long, format).is_ok(), "{format}");
        }
    }

    #[test]
    fn chunks_are_hashed_as_short_jobs_of_their_text_in_the_same_scope() {
        let limits = JobLimits::default();
        let body = |text: &str| {
            json!({"text": text, "dialect": "en-gb", "format": "wav", "voice": "f1", "speed": 1.25})
                .to_string()
        };
        let text = sentences(6);
        let mut long = Job::parse(body(&text).as_bytes(), &small_requests(), &limits).unwrap();
        let unchunked = long.hash.clone();
        long.scope_cache("tenant:a");
        let cut = 3 * "Sentence number 0 is here. ".len();
        let pieces = vec![
            (long.text[..cut - 1].to_owned(), 0),
            (long.text[cut..].to_owned(), cut),
        ];

        let chunks = long.chunks(pieces, 100, "tenant:a").unwrap();

        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[1].offset, cut);
        for chunk in &chunks {
            let mut short =
                Job::parse(body(&chunk.job.text).as_bytes(), &small_requests(), &limits).unwrap();
            assert_eq!(chunk.job.characters, short.characters);
            short.scope_cache("tenant:a");
            assert_eq!(
                chunk.job.hash, short.hash,
                "a short job shares the chunk's audio"
            );
            short.scope_cache("tenant:b");
            assert_ne!(chunk.job.hash, short.hash);
            assert_eq!(chunk.job.voice, "f1");
            assert_eq!(chunk.job.speed, 1.25);
            assert_eq!(chunk.job.format, AudioFormat::Wav);
            assert_eq!(chunk.job.metadata, None);
        }
        assert_eq!(
            long.hash,
            ContentHash::of_chunks(chunks.iter().map(|c| &c.job.hash))
        );
        assert_ne!(long.hash, unchunked);
    }

    #[test]
    fn an_edited_chunk_changes_only_its_own_hash_and_the_long_jobs() {
        let limits = JobLimits::default();
        let job = |text: &str| {
            let body = json!({"text": text, "dialect": "en-gb"}).to_string();
            Job::parse(body.as_bytes(), &small_requests(), &limits).unwrap()
        };
        let cut = |text: &str| -> Vec<(String, usize)> {
            let (a, b) = text.split_at(text.find(". ").unwrap() + 1);
            vec![
                (a.to_owned(), 0),
                (b.trim_start().to_owned(), a.chars().count() + 1),
            ]
        };
        let mut first = job("One sentence here. And a second one.");
        let mut edited = job("One sentence here. And a second, edited one.");

        let a = first.chunks(cut(&first.text.clone()), 100, "s").unwrap();
        let b = edited.chunks(cut(&edited.text.clone()), 100, "s").unwrap();

        assert_eq!(a[0].job.hash, b[0].job.hash);
        assert_ne!(a[1].job.hash, b[1].job.hash);
        assert_ne!(first.hash, edited.hash);
    }

    #[test]
    fn a_piece_over_the_request_limit_is_refused_and_the_job_left_as_it_was() {
        let limits = JobLimits::default();
        let body = json!({"text": "x".repeat(150), "dialect": "en-gb"}).to_string();
        let mut long = Job::parse(body.as_bytes(), &small_requests(), &limits).unwrap();
        let before = long.clone();

        let over = long.chunks([(long.text.clone(), 0)], 100, "s");
        let none = long.chunks(Vec::new(), 100, "s");

        assert_eq!(over.unwrap_err().fields(), ["text"]);
        assert_eq!(none.unwrap_err().fields(), ["text"]);
        assert_eq!(long, before);
    }

    #[test]
    fn short_jobs_keep_their_hashes() {
        // Pinned before long jobs existed: a short job's hash must not move.
        let job = parse(json!({"text": "Hello world", "dialect": "en-gb"})).unwrap();
        assert_eq!(job.hash.as_str(), PINNED_HELLO_WORLD);
    }

    #[test]
    fn long_unknown_values_are_truncated_in_messages() {
        let errors = parse(json!({"text": "hi", "dialect": "d".repeat(10_000)})).unwrap_err();
        assert!(errors.0[0].reason.len() < 200);
    }
}
