//! The HTTP adapters against the fake provider: each round-trips audio in its
//! vendor's wire format, each vendor failure maps to the right error, and
//! each sends the `traceparent` of the span it is called in.

use std::time::Duration;

use secrecy::SecretString;
use ttsq_core::{AudioFormat, DialectInfo};
use ttsq_fake_provider::{
    ApiKeys, FakeConfig, FakeProvider, Outcome, RequestRecord, Vendor,
    config::{DEFAULT_ELEVENLABS_KEY, DEFAULT_HTTP_KEY, DEFAULT_OPENAI_KEY},
};
use ttsq_providers::{
    AudioSink, HttpProviderConfig, ProviderError, SynthesisRequest, Synthesizer,
    elevenlabs::ElevenLabs, encode, generic_http::GenericHttp, openai::OpenAi,
};

const TEXT: &str = "Hello from ttsq";

/// The fake answers 60 ms per character, rounded to 50 ms.
const TEXT_MS: u32 = 900;

const WRONG_KEY: &str = "sk-wrong-secret-value-42";

fn dialect(id: &str, voices: &[&str], sample_rate_hz: u32) -> DialectInfo {
    DialectInfo {
        id: id.to_owned(),
        name: id.to_owned(),
        voices: voices.iter().map(|v| (*v).to_owned()).collect(),
        formats: vec![AudioFormat::Mp3, AudioFormat::Wav, AudioFormat::Pcm],
        emotions: vec!["calm".to_owned()],
        provider_chain: Vec::new(),
        model: String::new(),
        sample_rate_hz,
        marks: Vec::new(),
        max_request_chars: 5_000,
    }
}

fn config(fake: &FakeProvider, name: &str, key: &str, dialect: DialectInfo) -> HttpProviderConfig {
    let mut config = HttpProviderConfig::new(name, fake.base_url(), vec![dialect]);
    config.api_key = Some(SecretString::from(key.to_owned()));
    config.timeout = Duration::from_secs(10);
    config
}

fn elevenlabs(fake: &FakeProvider, key: &str) -> ElevenLabs {
    ElevenLabs::new(config(
        fake,
        "elevenlabs",
        key,
        dialect("en-gb", &["rachel"], 22_050),
    ))
    .expect("a valid configuration")
}

fn openai(fake: &FakeProvider, key: &str) -> OpenAi {
    OpenAi::new(config(
        fake,
        "openai",
        key,
        dialect("en-us", &["alloy", "nova"], 24_000),
    ))
    .expect("a valid configuration")
}

fn generic(fake: &FakeProvider, key: &str) -> GenericHttp {
    GenericHttp::new(config(
        fake,
        "dialects",
        key,
        dialect("en-us", &["nova"], 22_050),
    ))
    .expect("a valid configuration")
}

/// The three adapters with the fake's keys (or `key` for all), and a request
/// each accepts.
fn adapters(
    fake: &FakeProvider,
    key: Option<&str>,
) -> Vec<(Box<dyn Synthesizer>, SynthesisRequest<'static>)> {
    vec![
        (
            Box::new(elevenlabs(fake, key.unwrap_or(DEFAULT_ELEVENLABS_KEY))),
            request("en-gb", "rachel", AudioFormat::Mp3),
        ),
        (
            Box::new(openai(fake, key.unwrap_or(DEFAULT_OPENAI_KEY))),
            request("en-us", "alloy", AudioFormat::Mp3),
        ),
        (
            Box::new(generic(fake, key.unwrap_or(DEFAULT_HTTP_KEY))),
            request("en-us", "nova", AudioFormat::Wav),
        ),
    ]
}

fn request(
    dialect: &'static str,
    voice: &'static str,
    format: AudioFormat,
) -> SynthesisRequest<'static> {
    SynthesisRequest {
        text: TEXT,
        dialect,
        voice,
        speed: 1.0,
        emotion: None,
        format,
        marks: &[],
        instructions: None,
        sample_rate_hz: None,
    }
}

async fn fake(config: FakeConfig) -> FakeProvider {
    FakeProvider::start(config).await.expect("the fake starts")
}

fn last(fake: &FakeProvider) -> RequestRecord {
    fake.stats()
        .last()
        .cloned()
        .expect("the fake saw a request")
}

fn assert_near(actual: u32, expected: u32, slack: u32) {
    assert!(
        actual.abs_diff(expected) <= slack,
        "{actual} ms, expected {expected} ± {slack}"
    );
}

#[tokio::test]
async fn elevenlabs_round_trips_mp3_and_the_fake_saw_path_key_and_body() {
    let fake = fake(FakeConfig::default()).await;
    let eleven = elevenlabs(&fake, DEFAULT_ELEVENLABS_KEY);

    let audio = eleven
        .synthesize(&request("en-gb", "rachel", AudioFormat::Mp3))
        .await
        .unwrap();

    assert_eq!(audio.format, AudioFormat::Mp3);
    assert_eq!(audio.bytes[0], 0xff);
    // MP3 frames pad the end by up to one frame plus LAME's delay.
    assert_near(audio.duration_ms, TEXT_MS, 80);
    let seen = last(&fake);
    assert_eq!(seen.vendor, Vendor::ElevenLabs);
    assert_eq!(seen.path, "/v1/text-to-speech/rachel");
    assert_eq!(seen.query.as_deref(), Some("output_format=mp3_44100_128"));
    assert_eq!(seen.auth_header.as_deref(), Some("xi-api-key"));
    assert!(seen.auth_matched);
    assert!(seen.request_id.as_deref().is_some_and(|id| id.len() == 36));
    assert_eq!(
        seen.body,
        Some(serde_json::json!({"text": TEXT, "model_id": "eleven_multilingual_v2"}))
    );
    assert_eq!(fake.stats().by_voice["rachel"], 1);
    assert_eq!(seen.outcome, Outcome::Audio);
}

#[tokio::test]
async fn elevenlabs_wav_and_pcm_are_made_from_pcm_at_the_dialect_rate() {
    let fake = fake(FakeConfig::default()).await;
    let eleven = elevenlabs(&fake, DEFAULT_ELEVENLABS_KEY);

    let wav = eleven
        .synthesize(&SynthesisRequest {
            speed: 2.0,
            ..request("en-gb", "rachel", AudioFormat::Wav)
        })
        .await
        .unwrap();
    let wav_seen = last(&fake);
    let pcm = eleven
        .synthesize(&request("en-gb", "rachel", AudioFormat::Pcm))
        .await
        .unwrap();

    let decoded = encode::read_wav(&wav.bytes).unwrap();
    assert_eq!(decoded.sample_rate_hz, 22_050);
    // ElevenLabs goes to 1.2 (900 ms / 1.2 = 750 ms); a time-stretch does
    // the rest of 2.0: 900 ms / 2 = 450 ms.
    assert_eq!(wav.duration_ms, 450);
    assert_eq!(decoded.duration_ms(), 450);
    assert_eq!(wav_seen.query.as_deref(), Some("output_format=pcm_22050"));
    assert_eq!(
        wav_seen.body.unwrap()["voice_settings"]["speed"],
        serde_json::json!(1.2)
    );
    assert_eq!(pcm.format, AudioFormat::Pcm);
    assert_eq!(pcm.bytes.len(), 22_050 * 900 / 1000 * 2);
    assert_eq!(pcm.duration_ms, TEXT_MS);
}

#[tokio::test]
async fn openai_round_trips_mp3_and_rewrites_its_streamed_wav() {
    let fake = fake(FakeConfig::default()).await;
    let openai = openai(&fake, DEFAULT_OPENAI_KEY);

    let mp3 = openai
        .synthesize(&request("en-us", "alloy", AudioFormat::Mp3))
        .await
        .unwrap();
    let mp3_seen = last(&fake);
    let wav = openai
        .synthesize(&SynthesisRequest {
            emotion: Some("calm"),
            speed: 1.5,
            ..request("en-us", "nova", AudioFormat::Wav)
        })
        .await
        .unwrap();
    let wav_seen = last(&fake);
    let pcm = openai
        .synthesize(&request("en-us", "alloy", AudioFormat::Pcm))
        .await
        .unwrap();

    assert_near(mp3.duration_ms, TEXT_MS, 80);
    assert_eq!(mp3_seen.path, "/v1/audio/speech");
    assert_eq!(mp3_seen.auth_header.as_deref(), Some("authorization"));
    assert!(mp3_seen.auth_matched);
    assert_eq!(
        mp3_seen.body,
        Some(serde_json::json!({
            "model": "tts-1",
            "input": TEXT,
            "voice": "alloy",
            "response_format": "mp3",
            "speed": 1.0,
        }))
    );
    // The fake, like OpenAI, sent 0xFFFFFFFF sizes; ours are exact.
    let decoded = encode::read_wav(&wav.bytes).unwrap();
    assert_eq!(decoded.sample_rate_hz, 24_000);
    assert_eq!(wav.duration_ms, 600);
    let body = wav_seen.body.unwrap();
    assert_eq!(body["response_format"], "wav");
    assert_eq!(body["voice"], "nova");
    assert_eq!(body["instructions"], "Speak in a calm tone.");
    assert_eq!(pcm.bytes.len(), 24_000 * 900 / 1000 * 2);
    assert_eq!(fake.stats().by_voice["alloy"], 2);
}

#[tokio::test]
async fn generic_http_transcodes_its_wav_and_sends_the_configured_header() {
    let fake = fake(FakeConfig {
        http_auth_header: "X-Dialect-Key".to_owned(),
        keys: ApiKeys {
            http: Some("dialect-key-1".to_owned()),
            ..ApiKeys::default()
        },
        ..FakeConfig::default()
    })
    .await;
    let mut config = config(
        &fake,
        "dialects",
        "dialect-key-1",
        dialect("en-us", &["nova"], 22_050),
    );
    config.auth_header = Some("X-Dialect-Key".to_owned());
    let generic = GenericHttp::new(config).unwrap();

    let mp3 = generic
        .synthesize(&SynthesisRequest {
            emotion: Some("calm"),
            ..request("en-us", "nova", AudioFormat::Mp3)
        })
        .await
        .unwrap();
    let seen = last(&fake);
    let wav = generic
        .synthesize(&request("en-us", "nova", AudioFormat::Wav))
        .await
        .unwrap();
    let pcm = generic
        .synthesize(&request("en-us", "nova", AudioFormat::Pcm))
        .await
        .unwrap();

    assert_eq!(mp3.format, AudioFormat::Mp3);
    assert_eq!(mp3.bytes[0], 0xff);
    assert_eq!(mp3.duration_ms, TEXT_MS);
    assert_eq!(seen.path, "/tts");
    assert_eq!(seen.accept.as_deref(), Some("audio/wav"));
    assert_eq!(seen.auth_header.as_deref(), Some("x-dialect-key"));
    assert!(seen.auth_matched);
    assert_eq!(
        seen.body,
        Some(serde_json::json!({
            "text": TEXT,
            "dialect": "en-us",
            "voice": "nova",
            "speed": 1.0,
            "emotion": "calm",
        }))
    );
    assert_eq!(encode::read_wav(&wav.bytes).unwrap().duration_ms(), TEXT_MS);
    assert_eq!(pcm.bytes.len(), 22_050 * 900 / 1000 * 2);
    assert_eq!(generic.dialects()[0].model, "dialects");
    let voices = generic.voices().await.unwrap();
    assert!(
        voices
            .iter()
            .any(|v| v.id == "nova" && v.dialect == "en-us")
    );
}

#[tokio::test]
async fn a_wrong_key_is_provider_auth_and_the_key_is_in_no_error_text() {
    let fake = fake(FakeConfig::default()).await;

    for (adapter, request) in adapters(&fake, Some(WRONG_KEY)) {
        let synth = adapter.synthesize(&request).await.unwrap_err();
        let health = adapter.health().await;

        assert_eq!(synth.code(), "provider_auth", "{}: {synth}", adapter.name());
        assert!(!synth.is_retryable());
        let health = match adapter.name() {
            // The generic health route is public: it says nothing of the key.
            "dialects" => {
                assert!(health.is_ok(), "{health:?}");
                continue;
            }
            _ => health.unwrap_err(),
        };
        assert_eq!(health.code(), "provider_auth", "{health}");
        for error in [&synth, &health] {
            assert!(!error.to_string().contains(WRONG_KEY), "{error}");
            assert!(!format!("{error:?}").contains(WRONG_KEY), "{error:?}");
        }
    }
    assert_eq!(fake.stats().unauthorized, 5);
}

#[tokio::test]
async fn a_429_is_rate_limited_with_the_retry_after() {
    let mut config = FakeConfig::default();
    config.quota.requests_per_second = Some(1);
    let fake = fake(config).await;
    let adapters = adapters(&fake, None);
    adapters[0].0.synthesize(&adapters[0].1).await.unwrap();

    for (adapter, request) in &adapters {
        // Fills the one-second window again should a slow machine have let
        // it expire since the last request (answered or refused).
        let _ = adapter.synthesize(request).await;
        let err = adapter.synthesize(request).await.unwrap_err();

        assert!(
            matches!(err, ProviderError::RateLimited { .. }),
            "{}: {err:?}",
            adapter.name()
        );
        assert_eq!(err.code(), "provider_rate_limited");
        assert!(err.is_retryable());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
    }
    let refused = fake.stats().rate_limited;
    assert!((3..=6).contains(&refused), "{refused} requests refused");
}

#[tokio::test]
async fn server_errors_are_retryable() {
    let mut config = FakeConfig::default();
    config.faults.server_error_rate = 1.0;
    let fake = fake(config).await;

    for (adapter, request) in adapters(&fake, None) {
        let err = adapter.synthesize(&request).await.unwrap_err();

        assert_eq!(err.code(), "provider_unavailable", "{err}");
        assert!(err.is_retryable());
        assert!(err.to_string().contains("HTTP 50"), "{err}");
    }
}

#[tokio::test]
async fn malformed_answers_are_retryable_never_audio() {
    let mut config = FakeConfig::default();
    config.faults.malformed_rate = 1.0;
    let fake = fake(config).await;

    for (adapter, request) in adapters(&fake, None) {
        for format in [AudioFormat::Mp3, AudioFormat::Pcm] {
            let err = adapter
                .synthesize(&SynthesisRequest { format, ..request })
                .await
                .unwrap_err();

            assert!(err.is_retryable(), "{}: {err}", adapter.name());
        }
    }
    assert_eq!(fake.stats().malformed, 6);
}

#[tokio::test]
async fn a_held_request_times_out() {
    let mut config = FakeConfig::default();
    config.faults.timeout_rate = 1.0;
    let fake = fake(config).await;
    let mut slow = config_for_timeout(&fake);
    slow.timeout = Duration::from_millis(300);
    let openai = OpenAi::new(slow).unwrap();

    let started = std::time::Instant::now();
    let err = openai
        .synthesize(&request("en-us", "alloy", AudioFormat::Mp3))
        .await
        .unwrap_err();

    assert!(
        matches!(err, ProviderError::Timeout { seconds: 1, .. }),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(fake.stats().timeouts, 1);
}

fn config_for_timeout(fake: &FakeProvider) -> HttpProviderConfig {
    config(
        fake,
        "openai",
        DEFAULT_OPENAI_KEY,
        dialect("en-us", &["alloy"], 24_000),
    )
}

#[tokio::test]
async fn unsupported_requests_are_refused_before_anything_is_sent() {
    let fake = fake(FakeConfig::default()).await;

    for (adapter, request) in adapters(&fake, None) {
        let emotion_checked = adapter.name() != "elevenlabs";
        let mut refused = vec![
            SynthesisRequest {
                voice: "nobody",
                ..request
            },
            SynthesisRequest {
                dialect: "xx",
                ..request
            },
            SynthesisRequest {
                format: AudioFormat::Flac,
                ..request
            },
        ];
        if emotion_checked {
            refused.push(SynthesisRequest {
                emotion: Some("furious"),
                ..request
            });
        }
        for bad in refused {
            let err = adapter.synthesize(&bad).await.unwrap_err();

            assert!(
                matches!(err, ProviderError::Unsupported { .. }),
                "{}: {err:?}",
                adapter.name()
            );
        }
    }
    assert_eq!(fake.stats().total_requests, 0);
}

#[tokio::test]
async fn a_voice_the_vendor_does_not_know_is_rejected_with_its_message() {
    let fake = fake(FakeConfig::default()).await;
    let eleven = ElevenLabs::new(config(
        &fake,
        "elevenlabs",
        DEFAULT_ELEVENLABS_KEY,
        dialect("en-gb", &["ghost"], 22_050),
    ))
    .unwrap();

    let err = eleven
        .synthesize(&request("en-gb", "ghost", AudioFormat::Mp3))
        .await
        .unwrap_err();

    assert!(matches!(err, ProviderError::Rejected { .. }), "{err:?}");
    assert_eq!(err.code(), "provider_rejected");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("voice_not_found"), "{err}");
    assert!(err.to_string().contains("was not found"), "{err}");
}

#[tokio::test]
async fn exhausted_credits_are_final_whatever_status_the_vendor_uses() {
    let fake = fake(FakeConfig {
        credits_exhausted: true,
        ..FakeConfig::default()
    })
    .await;

    for (adapter, request) in adapters(&fake, None) {
        let err = adapter.synthesize(&request).await.unwrap_err();

        assert!(
            matches!(err, ProviderError::QuotaExhausted { .. }),
            "{}: {err:?}",
            adapter.name()
        );
        assert_eq!(err.code(), "provider_quota_exhausted");
        assert!(!err.is_retryable());
    }
}

#[tokio::test]
async fn health_follows_the_vendor_being_up_down_or_gone() {
    let fake = fake(FakeConfig::default()).await;
    let adapters = adapters(&fake, None);

    for (adapter, _) in &adapters {
        adapter.health().await.unwrap();
    }
    let routes = fake.stats().by_route;
    assert_eq!(routes["GET /v1/user"], 1);
    assert_eq!(routes["GET /v1/models"], 1);
    assert_eq!(routes["GET /health"], 1);

    fake.update(|c| c.down = true);
    for (adapter, request) in &adapters {
        let health = adapter.health().await.unwrap_err();
        let synth = adapter.synthesize(request).await.unwrap_err();
        assert_eq!(health.code(), "provider_unavailable", "{health}");
        assert!(synth.is_retryable(), "{synth}");
    }

    fake.shutdown().await;
    for (adapter, request) in &adapters {
        let err = adapter.synthesize(request).await.unwrap_err();
        assert_eq!(err.code(), "provider_unavailable", "{err}");
        assert!(err.to_string().contains("cannot connect"), "{err}");
    }
}

#[tokio::test]
async fn every_adapter_sends_the_traceparent_of_the_trace_it_is_called_in() {
    use opentelemetry::trace::TracerProvider as _;
    use tracing::Instrument as _;
    use tracing_subscriber::prelude::*;

    const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
    const CALLER_SPAN: &str = "b7ad6b7169203331";
    // The tracer `ttsq_telemetry::init` installs when nothing is exported.
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let _subscriber = tracing::subscriber::set_default(
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test"))),
    );
    let fake = fake(FakeConfig::default()).await;
    for (adapter, request) in adapters(&fake, None) {
        let span = tracing::info_span!("provider.call");
        ttsq_telemetry::trace_context::adopt(
            &span,
            Some(&format!("00-{TRACE_ID}-{CALLER_SPAN}-01")),
        );
        adapter
            .synthesize(&request)
            .instrument(span)
            .await
            .expect("audio");
        let traceparent = last(&fake).traceparent.expect("a traceparent sent");
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        assert_eq!(parts[1], TRACE_ID, "{traceparent}");
        assert_ne!(parts[2], CALLER_SPAN, "the call's own span: {traceparent}");
        assert_eq!(parts[3], "01", "the caller's sampling decision is kept");

        // Called outside any trace, the adapter's own span starts one.
        adapter.synthesize(&request).await.expect("audio");
        let fresh = last(&fake).traceparent.expect("a traceparent sent");
        assert!(!fresh.contains(TRACE_ID), "{fresh}");
    }
}

/// Every chunk a sink received, in order.
fn drain(chunks: &mut tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>) -> Vec<u8> {
    let mut all = Vec::new();
    while let Ok(chunk) = chunks.try_recv() {
        all.extend_from_slice(&chunk);
    }
    all
}

fn streaming_fake() -> FakeConfig {
    FakeConfig {
        streaming: ttsq_fake_provider::Streaming {
            chunks: 5,
            spread_ms: 100,
            fail_after_chunks: None,
        },
        ..FakeConfig::default()
    }
}

#[tokio::test]
async fn elevenlabs_streams_mp3_and_pcm_from_its_stream_route_but_not_wav() {
    let fake = fake(streaming_fake()).await;
    let eleven = elevenlabs(&fake, DEFAULT_ELEVENLABS_KEY);

    for format in [AudioFormat::Mp3, AudioFormat::Pcm] {
        let (sink, mut chunks) = AudioSink::new();
        let audio = eleven
            .synthesize_streaming(&request("en-gb", "rachel", format), &sink)
            .await
            .expect("audio");
        assert!(sink.started());
        assert_eq!(drain(&mut chunks), audio.bytes.to_vec(), "{format}");
        assert_eq!(last(&fake).path, "/v1/text-to-speech/rachel/stream");
    }
    let (sink, mut chunks) = AudioSink::new();
    let wav = eleven
        .synthesize_streaming(&request("en-gb", "rachel", AudioFormat::Wav), &sink)
        .await
        .expect("audio");
    assert!(!sink.started() && drain(&mut chunks).is_empty());
    assert!(wav.bytes.starts_with(b"RIFF"));
    assert_eq!(last(&fake).path, "/v1/text-to-speech/rachel");
}

#[tokio::test]
async fn openai_streams_mp3_and_sends_the_instructions() {
    let fake = fake(streaming_fake()).await;
    let openai = openai(&fake, DEFAULT_OPENAI_KEY);
    let (sink, mut chunks) = AudioSink::new();
    let request = SynthesisRequest {
        instructions: Some("Whisper."),
        ..request("en-us", "alloy", AudioFormat::Mp3)
    };

    let audio = openai
        .synthesize_streaming(&request, &sink)
        .await
        .expect("audio");

    assert_eq!(drain(&mut chunks), audio.bytes.to_vec());
    assert_eq!(
        last(&fake).body.expect("a JSON body")["instructions"],
        "Whisper."
    );
}

#[tokio::test]
async fn a_stream_broken_midway_is_an_error_after_some_bytes() {
    let mut config = streaming_fake();
    config.streaming.fail_after_chunks = Some(2);
    let fake = fake(config).await;
    let openai = openai(&fake, DEFAULT_OPENAI_KEY);
    let (sink, mut chunks) = AudioSink::new();

    let result = openai
        .synthesize_streaming(&request("en-us", "alloy", AudioFormat::Mp3), &sink)
        .await;

    assert!(
        matches!(result, Err(ProviderError::Transient { .. })),
        "{result:?}"
    );
    assert!(sink.started() && !drain(&mut chunks).is_empty());
}
