//! The generic HTTP adapter: the contract of self-hosted and regional
//! dialect TTS services.
//!
//! `POST {base}/tts {text, dialect, voice, speed, emotion}` with
//! `Accept: audio/wav` and the configured auth header (default `X-Api-Key`,
//! the key sent as is) answers a 16-bit PCM WAV file, which is transcoded
//! here to the requested format. `GET {base}/health` is the health check and
//! `GET {base}/voices` lists `{"voices": [{"id", "dialect"}]}`.
//!
//! WAV size fields are not trusted (streaming servers write placeholders);
//! the audio runs to the end of the body.
//!
//! `speed` is sent within 0.5–2.0, the range the contract has always been
//! given; a faster or slower request (OpenAI's endpoint takes 0.25–4.0) is
//! made up here by a pitch-preserving time-stretch.

use async_trait::async_trait;
use reqwest::{Method, header};
use serde::Deserialize;
use serde_json::json;
use ttsq_core::DialectInfo;

use crate::{
    Audio, ProviderError, SynthesisRequest, Synthesizer, dsp,
    encode::Rendering,
    upstream::{AuthStyle, BuildError, Emotions, HttpProviderConfig, Payload, Upstream},
};

/// `speed` range sent to the server.
const SPEED_RANGE: (f64, f64) = (0.5, 2.0);

/// Most characters one request takes unless `max_text_chars` says
/// otherwise: the contract names no limit, and 5,000 is what the API takes
/// in one job by default.
pub const MAX_REQUEST_CHARS: u32 = 5_000;

/// The generic adapter. Cheap to share: hold it in an `Arc`.
#[derive(Debug)]
pub struct GenericHttp {
    /// Client, key, capabilities.
    upstream: Upstream,
}

/// A voice as the server lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RemoteVoice {
    /// Voice id.
    pub id: String,
    /// Dialect id it speaks.
    pub dialect: String,
}

#[derive(Deserialize)]
struct VoiceList {
    voices: Vec<RemoteVoice>,
}

impl GenericHttp {
    /// An adapter for `config`. Dialects with an empty `model` get the
    /// provider name as model, so content hashes still tell providers apart.
    pub fn new(mut config: HttpProviderConfig) -> Result<Self, BuildError> {
        let default_model = config.model.take().unwrap_or_else(|| config.name.clone());
        let upstream = Upstream::new(
            config,
            AuthStyle::Header("x-api-key"),
            &default_model,
            MAX_REQUEST_CHARS,
        )?;
        Ok(Self { upstream })
    }

    /// `GET {base}/voices`: the voices the server says it has, to compare
    /// with the configured ones.
    pub async fn voices(&self) -> Result<Vec<RemoteVoice>, ProviderError> {
        let (builder, request_id) = self
            .upstream
            .request(Method::GET, self.upstream.url(&["voices"]));
        let reply = self.upstream.execute(builder, request_id, false).await?;
        serde_json::from_slice::<VoiceList>(&reply.bytes)
            .map(|list| list.voices)
            .map_err(|e| ProviderError::Transient {
                provider: self.upstream.name.clone(),
                message: format!("unreadable voice list: {e}"),
            })
    }
}

#[async_trait]
impl Synthesizer for GenericHttp {
    fn name(&self) -> &str {
        &self.upstream.name
    }

    fn dialects(&self) -> Vec<DialectInfo> {
        self.upstream.dialects().to_vec()
    }

    #[tracing::instrument(
        name = "http.synthesize",
        skip_all,
        fields(provider = %self.upstream.name, dialect = request.dialect, voice = request.voice, chars = request.text.chars().count())
    )]
    async fn synthesize(&self, request: &SynthesisRequest<'_>) -> Result<Audio, ProviderError> {
        let dialect = self.upstream.check(request, Emotions::Checked)?;
        let (speed, stretch) = dsp::split_speed(request.speed, SPEED_RANGE);
        let (builder, request_id) = self
            .upstream
            .request(Method::POST, self.upstream.url(&["tts"]));
        let builder = builder.header(header::ACCEPT, "audio/wav").json(&json!({
            "text": request.text,
            "dialect": request.dialect,
            "voice": request.voice,
            "speed": speed,
            "emotion": request.emotion,
        }));
        let reply = self.upstream.execute(builder, request_id, true).await?;
        let rendering = Rendering {
            format: request.format,
            sample_rate_hz: request.output_rate_hz(dialect.sample_rate_hz),
            stretch,
        };
        self.upstream
            .finish(
                Payload::Wav(reply.bytes),
                rendering,
                dialect.sample_rate_hz,
                reply.request_id,
            )
            .await
    }

    /// `GET {base}/health`.
    async fn health(&self) -> Result<(), ProviderError> {
        self.upstream.probe(&["health"]).await
    }
}
