//! The OpenAI-compatible speech adapter: OpenAI itself, or any server that
//! speaks its `/v1/audio/speech` (Kokoro-FastAPI, speaches, LocalAI, …).
//!
//! `POST {base}/v1/audio/speech` with `Authorization: Bearer <key>` and
//! `{model, input, voice, response_format, speed}`; the answer is the audio.
//!
//! Formats: `mp3` asks for `mp3` and keeps it as is, its length read from
//! the frame headers. `wav` and `pcm` ask for `wav` and rewrite it: OpenAI
//! streams WAV with `0xFFFFFFFF` in both size fields, which strict readers
//! refuse, and asking for WAV rather than `pcm` makes the server state its
//! rate (OpenAI's is 24 kHz) instead of us assuming it. `opus` and `flac`
//! ask for `wav` too and are encoded here, so every format is offered.
//!
//! The request's `instructions` are sent as they are; otherwise an emotion,
//! when the dialect lists it, is sent as `instructions` ("Speak in a calm
//! tone."), which `gpt-4o-mini-tts` follows; list emotions only for
//! dialects on such a model (`tts-1` does not take instructions).
//!
//! Streaming: MP3 is passed on chunk by chunk as the server sends it
//! ([`Synthesizer::synthesize_streaming`]); WAV and PCM are rewritten from
//! the whole body, so they are not streamed.

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{Map, Value, json};
use ttsq_core::{AudioFormat, DialectInfo};

use crate::{
    Audio, AudioSink, ProviderError, SynthesisRequest, Synthesizer, dsp,
    encode::Rendering,
    upstream::{AuthStyle, BuildError, Emotions, HttpProviderConfig, Payload, Upstream},
};

/// `model` for dialects that name none.
pub const DEFAULT_MODEL: &str = "tts-1";

/// `speed` range OpenAI accepts.
const SPEED_RANGE: (f64, f64) = (0.25, 4.0);

/// Most characters of `input` OpenAI's `/v1/audio/speech` takes: the
/// request limit declared unless `max_text_chars` says otherwise.
pub const MAX_REQUEST_CHARS: u32 = 4_096;

/// The OpenAI-compatible adapter. Cheap to share: hold it in an `Arc`.
#[derive(Debug)]
pub struct OpenAi {
    /// Client, key, capabilities.
    upstream: Upstream,
}

impl OpenAi {
    /// An adapter for `config`. The key goes in `Authorization: Bearer`
    /// unless `auth_header` names another header (Azure's `api-key`, say),
    /// which then carries the key as is.
    pub fn new(config: HttpProviderConfig) -> Result<Self, BuildError> {
        let upstream = Upstream::new(config, AuthStyle::Bearer, DEFAULT_MODEL, MAX_REQUEST_CHARS)?;
        Ok(Self { upstream })
    }

    /// Whether the vendor's MP3 is kept as it is: MP3 asked for, at a speed
    /// the vendor reaches itself.
    fn keeps_mp3(request: &SynthesisRequest<'_>) -> bool {
        let (_, stretch) = dsp::split_speed(request.speed, SPEED_RANGE);
        request.format == AudioFormat::Mp3 && (stretch - 1.0).abs() < dsp::STRETCH_EPSILON
    }

    fn body(request: &SynthesisRequest<'_>, dialect: &DialectInfo) -> Value {
        let mut body = Map::new();
        body.insert("model".to_owned(), json!(dialect.model));
        body.insert("input".to_owned(), json!(request.text));
        body.insert("voice".to_owned(), json!(request.voice));
        let response_format = if Self::keeps_mp3(request) {
            "mp3"
        } else {
            "wav"
        };
        body.insert("response_format".to_owned(), json!(response_format));
        let (speed, _) = dsp::split_speed(request.speed, SPEED_RANGE);
        body.insert("speed".to_owned(), json!(speed));
        if let Some(instructions) = request.instructions {
            body.insert("instructions".to_owned(), json!(instructions));
        } else if let Some(emotion) = request.emotion {
            body.insert(
                "instructions".to_owned(),
                json!(format!("Speak in a {emotion} tone.")),
            );
        }
        Value::Object(body)
    }
}

#[async_trait]
impl Synthesizer for OpenAi {
    fn name(&self) -> &str {
        &self.upstream.name
    }

    fn takes_instructions(&self) -> bool {
        true
    }

    fn dialects(&self) -> Vec<DialectInfo> {
        self.upstream.dialects().to_vec()
    }

    #[tracing::instrument(
        name = "openai.synthesize",
        skip_all,
        fields(provider = %self.upstream.name, dialect = request.dialect, voice = request.voice, chars = request.text.chars().count())
    )]
    async fn synthesize(&self, request: &SynthesisRequest<'_>) -> Result<Audio, ProviderError> {
        self.speak(request, None).await
    }

    #[tracing::instrument(
        name = "openai.synthesize",
        skip_all,
        fields(provider = %self.upstream.name, dialect = request.dialect, voice = request.voice, chars = request.text.chars().count(), streamed)
    )]
    async fn synthesize_streaming(
        &self,
        request: &SynthesisRequest<'_>,
        sink: &AudioSink,
    ) -> Result<Audio, ProviderError> {
        let streamed = Self::keeps_mp3(request);
        tracing::Span::current().record("streamed", streamed);
        self.speak(request, streamed.then_some(sink)).await
    }

    /// `GET {base}/v1/models`: small, and fails on a bad key.
    async fn health(&self) -> Result<(), ProviderError> {
        self.upstream.probe(&["v1", "models"]).await
    }
}

impl OpenAi {
    /// One call; the body's chunks handed to `sink` when one is given.
    async fn speak(
        &self,
        request: &SynthesisRequest<'_>,
        sink: Option<&AudioSink>,
    ) -> Result<Audio, ProviderError> {
        let dialect = self.upstream.check(request, Emotions::Checked)?;
        let url = self.upstream.url(&["v1", "audio", "speech"]);
        let (builder, request_id) = self.upstream.request(Method::POST, url);
        let builder = builder.json(&Self::body(request, dialect));
        let reply = match sink {
            Some(sink) => {
                self.upstream
                    .execute_streaming(builder, request_id, sink)
                    .await?
            }
            None => self.upstream.execute(builder, request_id, true).await?,
        };
        let payload = if Self::keeps_mp3(request) {
            Payload::Mp3(reply.bytes)
        } else {
            Payload::Wav(reply.bytes)
        };
        let rendering = Rendering {
            format: request.format,
            sample_rate_hz: request.output_rate_hz(dialect.sample_rate_hz),
            stretch: dsp::split_speed(request.speed, SPEED_RANGE).1,
        };
        self.upstream
            .finish(payload, rendering, dialect.sample_rate_hz, reply.request_id)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_asks_for_wav_unless_mp3_and_carries_the_emotion_as_instructions() {
        let dialect = DialectInfo {
            id: "en-us".to_owned(),
            name: "English".to_owned(),
            voices: vec!["alloy".to_owned()],
            formats: vec![AudioFormat::Mp3, AudioFormat::Pcm],
            emotions: vec!["calm".to_owned()],
            provider_chain: Vec::new(),
            model: "gpt-4o-mini-tts".to_owned(),
            sample_rate_hz: 24_000,
            marks: Vec::new(),
            max_request_chars: 5_000,
        };
        let request = SynthesisRequest {
            text: "Hi",
            dialect: "en-us",
            voice: "alloy",
            speed: 1.5,
            emotion: Some("calm"),
            format: AudioFormat::Pcm,
            marks: &[],
            instructions: None,
            sample_rate_hz: None,
        };

        let body = OpenAi::body(&request, &dialect);
        let fast_mp3 = SynthesisRequest {
            speed: 3.5,
            format: AudioFormat::Mp3,
            ..request
        };
        let too_fast_mp3 = SynthesisRequest {
            speed: 8.0,
            ..fast_mp3
        };

        // OpenAI takes 0.25–4.0 itself: its MP3 is kept; beyond, WAV is
        // asked for and the rest stretched here.
        assert_eq!(OpenAi::body(&fast_mp3, &dialect)["speed"], 3.5);
        assert!(OpenAi::keeps_mp3(&fast_mp3));
        assert_eq!(OpenAi::body(&too_fast_mp3, &dialect)["speed"], 4.0);
        assert_eq!(
            OpenAi::body(&too_fast_mp3, &dialect)["response_format"],
            "wav"
        );
        assert!(!OpenAi::keeps_mp3(&too_fast_mp3));
        assert_eq!(
            body,
            json!({
                "model": "gpt-4o-mini-tts",
                "input": "Hi",
                "voice": "alloy",
                "response_format": "wav",
                "speed": 1.5,
                "instructions": "Speak in a calm tone.",
            })
        );
    }
}
