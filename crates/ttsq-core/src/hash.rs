//! Text normalisation and the content hash.
//!
//! The hash identifies a piece of audio: two jobs with the same hash would
//! produce the same audio, so the second is served from storage and never
//! synthesized or billed again. It is SHA-256 over a canonical JSON object
//! with sorted keys, so it is stable across processes and versions.

use std::fmt;

use serde::Serialize;
use sha2::{Digest, Sha256};
use unicode_normalization::UnicodeNormalization;

use crate::format::AudioFormat;

/// Unicode NFC, trimmed, every run of whitespace collapsed to one space.
pub fn normalize_text(text: &str) -> String {
    let nfc: String = text.nfc().collect();
    nfc.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Hex SHA-256 of a job's canonical synthesis inputs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ContentHash(String);

/// The inputs that decide the audio, in the key order of the canonical JSON
/// (alphabetical, which is how serde serialises this struct's fields).
#[derive(Serialize)]
struct CanonicalInputs<'a> {
    dialect: &'a str,
    emotion: Option<&'a str>,
    format: &'a str,
    /// Absent when no marks are asked for, so such hashes are unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    marks: Option<Vec<&'static str>>,
    model: &'a str,
    provider_route: &'a str,
    /// Absent unless the output rate is not the dialect's, so such hashes
    /// are unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    sample_rate_hz: Option<u32>,
    speed: f64,
    text: &'a str,
    voice: &'a str,
}

/// The synthesis inputs a content hash is computed from. `text` must already
/// be normalised and `speed` rounded to hundredths.
#[derive(Debug, Clone, Copy)]
pub struct HashInputs<'a> {
    /// Provider chain of the dialect's route.
    pub provider_route: &'a str,
    /// Voice id.
    pub voice: &'a str,
    /// Dialect id.
    pub dialect: &'a str,
    /// Model id.
    pub model: &'a str,
    /// Speaking rate factor.
    pub speed: f64,
    /// Requested emotion, if any.
    pub emotion: Option<&'a str>,
    /// Output format.
    pub format: AudioFormat,
    /// Normalised text.
    pub text: &'a str,
    /// Speech marks asked for (sorted, deduplicated); they are stored with
    /// the audio, so a request with marks is a different object.
    pub marks: &'a [crate::MarkKind],
    /// Output sample rate when it is not the dialect's (OpenAI's 24 kHz
    /// `pcm`); `None` otherwise.
    pub sample_rate_hz: Option<u32>,
}

impl ContentHash {
    /// The hash of these inputs.
    pub fn compute(inputs: &HashInputs<'_>) -> Self {
        let canonical = CanonicalInputs {
            dialect: inputs.dialect,
            emotion: inputs.emotion,
            format: inputs.format.as_str(),
            marks: (!inputs.marks.is_empty())
                .then(|| inputs.marks.iter().map(|m| m.as_str()).collect()),
            model: inputs.model,
            provider_route: inputs.provider_route,
            sample_rate_hz: inputs.sample_rate_hz,
            speed: inputs.speed,
            text: inputs.text,
            voice: inputs.voice,
        };
        // Serialising a struct of strings, an option and a finite float cannot fail.
        let json = serde_json::to_vec(&canonical).expect("canonical inputs always serialise");
        Self(hex::encode(Sha256::digest(&json)))
    }

    /// This hash within a cache scope (`tenant:{id}` or `pool:{name}`): the
    /// hash of the scope and this hash, so equal jobs of different scopes
    /// never share audio, nor reveal to each other that it exists.
    pub fn scoped(&self, scope: &str) -> Self {
        let mut digest = Sha256::new();
        digest.update(b"ttsq-cache-scope\0");
        digest.update(scope.as_bytes());
        digest.update(b"\0");
        digest.update(self.0.as_bytes());
        Self(hex::encode(digest.finalize()))
    }

    /// This hash for audio spoken as `instructions` say (OpenAI's
    /// `instructions`): other instructions, other audio, another object.
    pub fn instructed(&self, instructions: &str) -> Self {
        let mut digest = Sha256::new();
        digest.update(b"ttsq-instructions\0");
        digest.update(instructions.as_bytes());
        digest.update(b"\0");
        digest.update(self.0.as_bytes());
        Self(hex::encode(digest.finalize()))
    }

    /// The hash of a long job's audio: its chunks' hashes, in order. The
    /// chunk hashes carry every input (scope, voice, format, …), so equal
    /// chunk lists are equal audio and an edited chunk is another object.
    pub fn of_chunks<'a>(chunks: impl IntoIterator<Item = &'a ContentHash>) -> Self {
        let mut digest = Sha256::new();
        digest.update(b"ttsq-long-job\0");
        for chunk in chunks {
            digest.update(chunk.0.as_bytes());
            digest.update(b"\0");
        }
        Self(hex::encode(digest.finalize()))
    }

    /// Wraps a hash read back from storage; `None` unless 64 lowercase hex digits.
    pub fn parse(hex_digest: &str) -> Option<Self> {
        let valid = hex_digest.len() == 64
            && hex_digest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        valid.then(|| Self(hex_digest.to_owned()))
    }

    /// The hex digest.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Object key of the speech marks stored beside the audio:
    /// `audio/{hash[0..2]}/{hash}.marks.json`.
    pub fn marks_key(&self) -> String {
        format!("audio/{}/{}.marks.json", &self.0[..2], self.0)
    }

    /// Object key of the audio in the bucket: `audio/{hash[0..2]}/{hash}.{ext}`.
    pub fn object_key(&self, format: AudioFormat) -> String {
        format!("audio/{}/{}.{}", &self.0[..2], self.0, format.extension())
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(text: &str) -> HashInputs<'_> {
        HashInputs {
            provider_route: "espeak",
            voice: "default",
            dialect: "en-gb",
            model: "espeak-ng",
            speed: 1.0,
            emotion: None,
            format: AudioFormat::Wav,
            text,
            marks: &[],
            sample_rate_hz: None,
        }
    }

    #[test]
    fn normalisation_trims_collapses_whitespace_and_composes() {
        assert_eq!(normalize_text("  hello \t\n  world  "), "hello world");
        // "e" + combining acute accent composes to a single "é".
        assert_eq!(normalize_text("caf\u{0065}\u{0301}"), "caf\u{00e9}");
        assert_eq!(normalize_text(" \n\t "), "");
    }

    #[test]
    fn hash_is_stable_and_sensitive_to_every_input() {
        let base = ContentHash::compute(&inputs("hello world"));
        assert_eq!(base, ContentHash::compute(&inputs("hello world")));
        assert_eq!(base.as_str().len(), 64);

        let variants = [
            HashInputs {
                text: "hello world!",
                ..inputs("")
            },
            HashInputs {
                voice: "f1",
                ..inputs("hello world")
            },
            HashInputs {
                dialect: "en-us",
                ..inputs("hello world")
            },
            HashInputs {
                model: "other",
                ..inputs("hello world")
            },
            HashInputs {
                speed: 1.25,
                ..inputs("hello world")
            },
            HashInputs {
                emotion: Some("calm"),
                ..inputs("hello world")
            },
            HashInputs {
                format: AudioFormat::Mp3,
                ..inputs("hello world")
            },
            HashInputs {
                provider_route: "openai",
                ..inputs("hello world")
            },
            HashInputs {
                sample_rate_hz: Some(24_000),
                ..inputs("hello world")
            },
        ];
        for v in variants {
            assert_ne!(ContentHash::compute(&v), base, "{v:?} must change the hash");
        }
    }

    #[test]
    fn hashes_without_an_output_rate_are_those_of_before_it_existed() {
        // SHA-256 of the canonical JSON as it was written before
        // `sample_rate_hz` was added: stored audio keeps its hash.
        let before = r#"{"dialect":"en-gb","emotion":null,"format":"wav","model":"espeak-ng","provider_route":"espeak","speed":1.0,"text":"hello world","voice":"default"}"#;

        let hash = ContentHash::compute(&inputs("hello world"));

        assert_eq!(
            hash.as_str(),
            hex::encode(Sha256::digest(before.as_bytes()))
        );
    }

    #[test]
    fn object_key_is_sharded_by_the_first_two_hex_digits() {
        let hash = ContentHash::compute(&inputs("x"));
        let key = hash.object_key(AudioFormat::Mp3);
        assert_eq!(key, format!("audio/{}/{}.mp3", &hash.as_str()[..2], hash));
    }

    #[test]
    fn parse_accepts_only_lowercase_sha256_hex() {
        let hash = ContentHash::compute(&inputs("x"));
        assert_eq!(ContentHash::parse(hash.as_str()), Some(hash.clone()));
        assert_eq!(ContentHash::parse(&hash.as_str().to_uppercase()), None);
        assert_eq!(ContentHash::parse("abc"), None);
    }
}
