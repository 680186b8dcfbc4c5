//! The ElevenLabs REST adapter.
//!
//! `POST {base}/v1/text-to-speech/{voice_id}?output_format=…` with the
//! `xi-api-key` header and `{text, model_id, voice_settings: {speed},
//! language_code}`; the answer is the audio itself.
//!
//! Formats: `mp3` asks for `mp3_44100_128` (ElevenLabs' default, on every
//! plan) and keeps it as is, its length read from the frame headers. `pcm`
//! and `wav` ask for `pcm_{rate}` at the dialect's `sample_rate_hz` (8000,
//! 16000, 22050, 24000, 32000, 44100 or 48000; 44.1 kHz needs a Pro plan)
//! and wrap it here. ElevenLabs does offer `wav_{rate}`, but streams it with
//! `0x7FFFFFFF` placeholders in the size fields; raw PCM is exact. `opus`
//! and `flac` are encoded here from `pcm_{rate}` too.
//!
//! Voices are ElevenLabs voice ids, sent as they are. `speed` goes into
//! `voice_settings.speed` within ElevenLabs' 0.7–1.2; the rest of a speed
//! beyond it is made up here by a pitch-preserving time-stretch of
//! `pcm_{rate}` audio (MP3 then encoded here too). At 1.0 no
//! `voice_settings` is sent, so the voice's stored settings apply. Emotions
//! are ignored (ElevenLabs has no such parameter), as espeak does.
//!
//! Streaming: without marks, MP3 and PCM are asked of
//! `POST {base}/v1/text-to-speech/{voice_id}/stream` and passed on chunk by
//! chunk ([`Synthesizer::synthesize_streaming`]); WAV is wrapped from the
//! whole PCM, so it is not streamed.
//!
//! Speech marks: a request with marks goes to
//! `POST {base}/v1/text-to-speech/{voice_id}/with-timestamps` instead, which
//! answers JSON `{audio_base64, alignment: {characters,
//! character_start_times_seconds, character_end_times_seconds}}` (same price
//! per character). The character alignment is folded into word marks, and
//! sentences are timed from their words; ElevenLabs gives no phonemes, so
//! no visemes.

use async_trait::async_trait;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use ttsq_core::{AudioFormat, DialectInfo, MarkKind, marks};

use crate::{
    Audio, AudioSink, ProviderError, SynthesisRequest, Synthesizer, dsp,
    encode::Rendering,
    upstream::{AuthStyle, BuildError, Emotions, HttpProviderConfig, Payload, Upstream},
};

/// `model_id` for dialects that name none.
pub const DEFAULT_MODEL: &str = "eleven_multilingual_v2";

/// `output_format` of MP3 output.
const MP3_OUTPUT_FORMAT: &str = "mp3_44100_128";

/// Rates of the `pcm_{rate}` output formats.
const PCM_RATES_HZ: [u32; 7] = [8_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000];

/// `voice_settings.speed` range ElevenLabs accepts.
const SPEED_RANGE: (f64, f64) = (0.7, 1.2);

/// Marks the `/with-timestamps` endpoint can time.
pub const MARKS: [MarkKind; 2] = [MarkKind::Word, MarkKind::Sentence];

/// The answer of `/with-timestamps`.
#[derive(Deserialize)]
struct TimestampedAudio {
    audio_base64: String,
    alignment: Option<Alignment>,
}

/// Per-character timings of the text as sent.
#[derive(Deserialize)]
struct Alignment {
    characters: Vec<String>,
    character_start_times_seconds: Vec<f64>,
    character_end_times_seconds: Vec<f64>,
}

/// Most characters one request takes, declared unless `max_text_chars`
/// says otherwise: the smallest limit of ElevenLabs' current models (Eleven
/// v3 takes 5,000 characters; Multilingual v2 10,000; Flash and Turbo v2.5
/// 40,000), so it holds whatever model a dialect uses. Raise it in the
/// provider's config for a model that takes more: fewer, longer chunks.
pub const MAX_REQUEST_CHARS: u32 = 5_000;

/// The ElevenLabs adapter. Cheap to share: hold it in an `Arc`.
#[derive(Debug)]
pub struct ElevenLabs {
    /// Client, key, capabilities.
    upstream: Upstream,
    /// Whether `language_code` is sent.
    send_language_code: bool,
}

impl ElevenLabs {
    /// An adapter for `config`; refuses formats and rates ElevenLabs cannot
    /// produce. The key goes in `xi-api-key` unless `auth_header` says otherwise.
    pub fn new(config: HttpProviderConfig) -> Result<Self, BuildError> {
        let upstream = Upstream::new(
            config,
            AuthStyle::Header("xi-api-key"),
            DEFAULT_MODEL,
            MAX_REQUEST_CHARS,
        )?;
        upstream.require_formats(|dialect, format| match format {
            AudioFormat::Mp3 => Ok(()),
            AudioFormat::Wav | AudioFormat::Pcm | AudioFormat::Opus | AudioFormat::Flac => {
                pcm_output_format(dialect).map(|_| ())
            }
        })?;
        Ok(Self {
            upstream,
            send_language_code: false,
        })
    }

    /// Also send `language_code`: the dialect id's primary subtag (`en` for
    /// `en-gb`). Only some models accept it (Turbo and Flash v2.5); others
    /// answer 400, so it is off by default.
    pub fn with_language_code(mut self, send: bool) -> Self {
        self.send_language_code = send;
        self
    }

    fn body(&self, request: &SynthesisRequest<'_>, dialect: &DialectInfo) -> Value {
        let mut body = Map::new();
        body.insert("text".to_owned(), json!(request.text));
        body.insert("model_id".to_owned(), json!(dialect.model));
        let (speed, _) = dsp::split_speed(request.speed, SPEED_RANGE);
        if (speed - 1.0).abs() > f64::EPSILON {
            body.insert("voice_settings".to_owned(), json!({ "speed": speed }));
        }
        if self.send_language_code
            && let Some(language) = dialect.id.split(['-', '_']).next()
        {
            body.insert("language_code".to_owned(), json!(language));
        }
        Value::Object(body)
    }
}

/// `pcm_{rate}` for the dialect's rate, if ElevenLabs offers it.
fn pcm_output_format(dialect: &DialectInfo) -> Result<String, String> {
    if PCM_RATES_HZ.contains(&dialect.sample_rate_hz) {
        Ok(format!("pcm_{}", dialect.sample_rate_hz))
    } else {
        Err(format!(
            "sample rate {} Hz is not offered (one of {PCM_RATES_HZ:?})",
            dialect.sample_rate_hz
        ))
    }
}

#[async_trait]
impl Synthesizer for ElevenLabs {
    fn name(&self) -> &str {
        &self.upstream.name
    }

    fn dialects(&self) -> Vec<DialectInfo> {
        self.upstream.dialects().to_vec()
    }

    #[tracing::instrument(
        name = "elevenlabs.synthesize",
        skip_all,
        fields(provider = %self.upstream.name, dialect = request.dialect, voice = request.voice, chars = request.text.chars().count())
    )]
    async fn synthesize(&self, request: &SynthesisRequest<'_>) -> Result<Audio, ProviderError> {
        self.speak(request, None).await
    }

    #[tracing::instrument(
        name = "elevenlabs.synthesize",
        skip_all,
        fields(provider = %self.upstream.name, dialect = request.dialect, voice = request.voice, chars = request.text.chars().count(), streamed)
    )]
    async fn synthesize_streaming(
        &self,
        request: &SynthesisRequest<'_>,
        sink: &AudioSink,
    ) -> Result<Audio, ProviderError> {
        // MP3 and raw PCM are kept as sent unless stretched or resampled;
        // WAV is wrapped and marks come as JSON, so those are made whole.
        let dialect_rate = self
            .upstream
            .check(request, Emotions::Ignored)?
            .sample_rate_hz;
        let (_, stretch) = dsp::split_speed(request.speed, SPEED_RANGE);
        let streamed = request.marks.is_empty()
            && (stretch - 1.0).abs() < dsp::STRETCH_EPSILON
            && match request.format {
                AudioFormat::Mp3 => true,
                AudioFormat::Pcm => request.output_rate_hz(dialect_rate) == dialect_rate,
                _ => false,
            };
        tracing::Span::current().record("streamed", streamed);
        self.speak(request, streamed.then_some(sink)).await
    }

    /// `GET {base}/v1/user`: small, and fails on a bad key.
    async fn health(&self) -> Result<(), ProviderError> {
        self.upstream.probe(&["v1", "user"]).await
    }
}

impl ElevenLabs {
    /// One call: to `/stream`, its chunks handed to `sink`, when one is given.
    async fn speak(
        &self,
        request: &SynthesisRequest<'_>,
        sink: Option<&AudioSink>,
    ) -> Result<Audio, ProviderError> {
        let dialect = self.upstream.check(request, Emotions::Ignored)?;
        let (_, stretch) = dsp::split_speed(request.speed, SPEED_RANGE);
        let keep_mp3 =
            request.format == AudioFormat::Mp3 && (stretch - 1.0).abs() < dsp::STRETCH_EPSILON;
        let output_format = if keep_mp3 {
            MP3_OUTPUT_FORMAT.to_owned()
        } else {
            pcm_output_format(dialect).map_err(|what| ProviderError::Unsupported {
                provider: self.upstream.name.clone(),
                what,
            })?
        };
        let timed = !request.marks.is_empty();
        let mut segments = vec!["v1", "text-to-speech", request.voice];
        if timed {
            segments.push("with-timestamps");
        } else if sink.is_some() {
            segments.push("stream");
        }
        let mut url = self.upstream.url(&segments);
        url.query_pairs_mut()
            .append_pair("output_format", &output_format);
        let (builder, request_id) = self.upstream.request(Method::POST, url);
        let builder = builder.json(&self.body(request, dialect));
        let reply = match sink {
            Some(sink) if !timed => {
                self.upstream
                    .execute_streaming(builder, request_id, sink)
                    .await?
            }
            _ => self.upstream.execute(builder, request_id, !timed).await?,
        };
        let (bytes, alignment) = if timed {
            let answer: TimestampedAudio =
                serde_json::from_slice(&reply.bytes).map_err(|e| ProviderError::Transient {
                    provider: self.upstream.name.clone(),
                    message: format!("malformed /with-timestamps answer: {e}"),
                })?;
            let audio = base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                answer.audio_base64.as_bytes(),
            )
            .map_err(|e| ProviderError::Transient {
                provider: self.upstream.name.clone(),
                message: format!("malformed audio_base64: {e}"),
            })?;
            (bytes::Bytes::from(audio), answer.alignment)
        } else {
            (reply.bytes, None)
        };
        let payload = if keep_mp3 {
            Payload::Mp3(bytes)
        } else {
            Payload::Pcm(bytes, dialect.sample_rate_hz)
        };
        let rendering = Rendering {
            format: request.format,
            sample_rate_hz: request.output_rate_hz(dialect.sample_rate_hz),
            stretch,
        };
        let mut audio = self
            .upstream
            .finish(payload, rendering, dialect.sample_rate_hz, reply.request_id)
            .await?;
        if timed {
            let words = alignment.map_or_else(Vec::new, |a| {
                marks::words_from_characters(
                    &a.characters,
                    &a.character_start_times_seconds,
                    &a.character_end_times_seconds,
                )
            });
            let spoken_ms = (f64::from(audio.duration_ms) * stretch).round() as u32;
            audio.marks = marks::build(request.marks, request.text, &words, &[], spoken_ms);
            crate::retime_marks(&mut audio.marks, stretch, audio.duration_ms);
        }
        Ok(audio)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialect(rate: u32, formats: Vec<AudioFormat>) -> DialectInfo {
        DialectInfo {
            id: "en-gb".to_owned(),
            name: "English".to_owned(),
            voices: vec!["JBFqnCBsd6RMkjVDRZzb".to_owned()],
            formats,
            emotions: Vec::new(),
            provider_chain: Vec::new(),
            model: String::new(),
            sample_rate_hz: rate,
            marks: Vec::new(),
            max_request_chars: 5_000,
        }
    }

    fn adapter(rate: u32, formats: Vec<AudioFormat>) -> Result<ElevenLabs, BuildError> {
        ElevenLabs::new(HttpProviderConfig::new(
            "elevenlabs",
            "https://api.elevenlabs.io",
            vec![dialect(rate, formats)],
        ))
    }

    fn request(speed: f64) -> SynthesisRequest<'static> {
        SynthesisRequest {
            text: "Hello",
            dialect: "en-gb",
            voice: "JBFqnCBsd6RMkjVDRZzb",
            speed,
            emotion: Some("happy"),
            format: AudioFormat::Mp3,
            marks: &[],
            instructions: None,
            sample_rate_hz: None,
        }
    }

    #[test]
    fn only_offered_rates_and_formats_are_accepted() {
        assert!(adapter(22_050, vec![AudioFormat::Pcm, AudioFormat::Wav]).is_ok());
        assert!(adapter(11_025, vec![AudioFormat::Mp3]).is_ok());
        assert!(matches!(
            adapter(11_025, vec![AudioFormat::Wav]),
            Err(BuildError::Capability { .. })
        ));
        assert!(adapter(24_000, vec![AudioFormat::Opus, AudioFormat::Flac]).is_ok());
        assert!(matches!(
            adapter(11_025, vec![AudioFormat::Opus]),
            Err(BuildError::Capability { .. })
        ));
    }

    #[test]
    fn the_body_sends_speed_only_when_it_differs_clamped_to_elevenlabs_range() {
        let eleven = adapter(22_050, vec![AudioFormat::Mp3]).unwrap();
        let dialect = eleven.upstream.dialects()[0].clone();

        let plain = eleven.body(&request(1.0), &dialect);
        let fast = eleven.body(&request(2.0), &dialect);
        let with_language = eleven
            .with_language_code(true)
            .body(&request(0.5), &dialect);

        assert_eq!(plain, json!({"text": "Hello", "model_id": DEFAULT_MODEL}));
        assert_eq!(fast["voice_settings"]["speed"], 1.2);
        assert_eq!(with_language["voice_settings"]["speed"], 0.7);
        assert_eq!(with_language["language_code"], "en");
    }
}
