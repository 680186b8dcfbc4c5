//! The espeak adapter against the real espeak-ng, and against small fake
//! binaries for the failures the real one does not produce on demand.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use ttsq_config::EspeakSettings;
use ttsq_core::AudioFormat;
use ttsq_providers::{Audio, ProviderError, SynthesisRequest, Synthesizer, encode, espeak::Espeak};

const HELLO: &str = "Hello world, this is a test.";

/// Below this RMS a clip is silence; espeak speech is in the thousands.
const SILENCE_RMS: f64 = 100.0;

fn settings(
    binary: impl Into<PathBuf>,
    max_concurrent: usize,
    timeout_secs: u64,
) -> EspeakSettings {
    EspeakSettings {
        binary: binary.into(),
        max_concurrent,
        timeout_secs,
        dialects: [
            "en-us",
            "en-gb",
            "en-gb-scotland",
            "en-029",
            "cmn",
            "yue",
            "es",
            "es-419",
            "fr-fr",
            "pt-br",
            "de",
            "hi",
        ]
        .map(String::from)
        .to_vec(),
        max_text_chars: None,
    }
}

fn espeak() -> Espeak {
    Espeak::new(&settings("espeak-ng", 4, 30))
}

fn request<'a>(text: &'a str, dialect: &'a str, format: AudioFormat) -> SynthesisRequest<'a> {
    SynthesisRequest {
        text,
        dialect,
        voice: "default",
        speed: 1.0,
        emotion: None,
        format,
        marks: &[],
        instructions: None,
        sample_rate_hz: None,
    }
}

fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|&s| f64::from(s).powi(2)).sum();
    (sum / samples.len() as f64).sqrt()
}

fn wav_samples(audio: &Audio) -> Vec<i16> {
    assert_eq!(audio.format, AudioFormat::Wav);
    let waveform = encode::read_wav(&audio.bytes).expect("espeak output is a valid WAV");
    assert_eq!(waveform.sample_rate_hz, 22_050);
    waveform.samples
}

/// Writes an executable shell script standing in for espeak-ng. It answers
/// `--version` at once and runs `body` otherwise.
async fn fake_espeak(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("fake-espeak-ng");
    std::fs::write(
        &path,
        format!("#!/bin/sh\nif [ \"$1\" = \"--version\" ]; then exit 0; fi\n{body}\n"),
    )
    .expect("the test's temporary directory is writable");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .expect("the test owns the script it just wrote");
    // A process forked by another test while the script was open for writing
    // holds that descriptor until it execs, and meanwhile running the script
    // fails with ETXTBSY. Once one run succeeds, no writer is left.
    let probe = Espeak::new(&settings(&path, 1, 5));
    for _ in 0..100 {
        if probe.health().await.is_ok() {
            return path;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("fake espeak-ng never became runnable");
}

#[tokio::test]
async fn english_text_becomes_plausible_speech_as_wav() {
    let audio = espeak()
        .synthesize(&request(HELLO, "en-gb", AudioFormat::Wav))
        .await
        .unwrap();

    let samples = wav_samples(&audio);
    assert!(
        (800..=5000).contains(&audio.duration_ms),
        "{} ms",
        audio.duration_ms
    );
    assert_eq!(
        audio.duration_ms,
        encode::duration_ms(samples.len(), 22_050)
    );
    assert!(rms(&samples) > SILENCE_RMS, "rms {}", rms(&samples));
}

#[tokio::test]
async fn pcm_holds_the_same_samples_without_a_header() {
    let espeak = espeak();

    let wav = espeak
        .synthesize(&request(HELLO, "en-gb", AudioFormat::Wav))
        .await
        .unwrap();
    let pcm = espeak
        .synthesize(&request(HELLO, "en-gb", AudioFormat::Pcm))
        .await
        .unwrap();

    let samples: Vec<i16> = pcm
        .bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    assert_eq!(pcm.format, AudioFormat::Pcm);
    assert_eq!(pcm.bytes.len(), 2 * samples.len());
    assert_eq!(samples, wav_samples(&wav), "espeak-ng is deterministic");
    assert_eq!(pcm.duration_ms, wav.duration_ms);
    assert!(rms(&samples) > SILENCE_RMS);
}

#[tokio::test]
async fn mp3_is_a_compact_mpeg_stream_of_the_same_length() {
    let espeak = espeak();

    let wav = espeak
        .synthesize(&request(HELLO, "en-gb", AudioFormat::Wav))
        .await
        .unwrap();
    let mp3 = espeak
        .synthesize(&request(HELLO, "en-gb", AudioFormat::Mp3))
        .await
        .unwrap();

    let frame_sync = mp3.bytes[0] == 0xff && mp3.bytes[1] & 0xe0 == 0xe0;
    assert!(frame_sync || mp3.bytes.starts_with(b"ID3"));
    assert_eq!(mp3.format, AudioFormat::Mp3);
    assert_eq!(mp3.duration_ms, wav.duration_ms);
    assert!(
        mp3.bytes.len() * 4 < wav.bytes.len(),
        "{} vs {} bytes",
        mp3.bytes.len(),
        wav.bytes.len()
    );
}

#[tokio::test]
async fn every_tested_dialect_speaks() {
    let espeak = espeak();
    let cases = [
        ("en-us", HELLO),
        ("en-gb", HELLO),
        ("en-gb-scotland", HELLO),
        ("en-029", HELLO),
        ("cmn", "你好世界"),
        ("yue", "你好世界"),
        ("es-419", "Hola mundo, esto es una prueba."),
        ("fr-fr", "Bonjour le monde, ceci est un essai."),
    ];

    for (dialect, text) in cases {
        let audio = espeak
            .synthesize(&request(text, dialect, AudioFormat::Wav))
            .await
            .unwrap_or_else(|e| panic!("{dialect}: {e}"));

        let samples = wav_samples(&audio);
        assert!(
            audio.duration_ms > 300,
            "{dialect}: {} ms",
            audio.duration_ms
        );
        assert!(
            rms(&samples) > SILENCE_RMS,
            "{dialect}: rms {}",
            rms(&samples)
        );
    }
}

#[tokio::test]
async fn every_voice_variant_speaks() {
    let espeak = espeak();
    let dialect = espeak
        .dialects()
        .into_iter()
        .find(|d| d.id == "en-us")
        .unwrap();

    for voice in &dialect.voices {
        let audio = espeak
            .synthesize(&SynthesisRequest {
                voice,
                ..request(HELLO, "en-us", AudioFormat::Wav)
            })
            .await
            .unwrap_or_else(|e| panic!("{voice}: {e}"));

        assert!(rms(&wav_samples(&audio)) > SILENCE_RMS, "{voice}");
    }
}

#[tokio::test]
async fn double_speed_is_much_shorter_than_half_speed() {
    let espeak = espeak();
    let at = |speed| SynthesisRequest {
        speed,
        ..request(HELLO, "en-us", AudioFormat::Pcm)
    };

    let fast = espeak.synthesize(&at(2.0)).await.unwrap();
    let slow = espeak.synthesize(&at(0.5)).await.unwrap();

    assert!(
        fast.duration_ms * 2 < slow.duration_ms,
        "fast {} ms, slow {} ms",
        fast.duration_ms,
        slow.duration_ms
    );
}

#[tokio::test]
async fn text_that_looks_like_options_is_spoken() {
    let audio = espeak()
        .synthesize(&request("-v xx --help", "en-gb", AudioFormat::Wav))
        .await
        .unwrap();

    assert!(audio.duration_ms > 500, "{} ms", audio.duration_ms);
    assert!(rms(&wav_samples(&audio)) > SILENCE_RMS);
}

#[tokio::test]
async fn blank_text_is_empty_audio() {
    let audio = espeak()
        .synthesize(&request("  ", "en-gb", AudioFormat::Wav))
        .await
        .unwrap();

    assert_eq!(audio.duration_ms, 0);
    assert!(wav_samples(&audio).is_empty());
}

#[tokio::test]
async fn unknown_voice_dialect_or_format_is_unsupported() {
    let espeak = espeak();
    let unknown_voice = SynthesisRequest {
        voice: "robot",
        ..request(HELLO, "en-gb", AudioFormat::Wav)
    };
    let unknown_dialect = request(HELLO, "tlh", AudioFormat::Wav);

    for req in [unknown_voice, unknown_dialect] {
        let err = espeak.synthesize(&req).await.unwrap_err();

        assert!(matches!(err, ProviderError::Unsupported { .. }), "{err:?}");
        assert!(!err.is_retryable());
    }
}

#[tokio::test]
async fn the_request_limit_is_declared_and_a_longer_text_is_refused_before_espeak_runs() {
    let default = espeak();
    let limited = Espeak::new(&EspeakSettings {
        max_text_chars: Some(10),
        // Never run: the limit is checked first.
        ..settings("/nonexistent/espeak-ng", 1, 5)
    });

    let err = limited
        .synthesize(&request(HELLO, "en-gb", AudioFormat::Wav))
        .await
        .unwrap_err();

    assert!(
        default
            .dialects()
            .iter()
            .all(|d| d.max_request_chars == 5_000)
    );
    assert!(limited.dialects().iter().all(|d| d.max_request_chars == 10));
    assert!(matches!(err, ProviderError::Unsupported { .. }), "{err:?}");
    assert!(err.to_string().contains("at most 10"), "{err}");
}

#[tokio::test]
async fn opus_and_flac_are_encoded_from_espeaks_speech() {
    let espeak = espeak();

    let opus = espeak
        .synthesize(&request(HELLO, "en-gb", AudioFormat::Opus))
        .await
        .unwrap();
    let flac = espeak
        .synthesize(&request(HELLO, "en-gb", AudioFormat::Flac))
        .await
        .unwrap();

    assert_eq!(&opus.bytes[..4], b"OggS");
    assert_eq!(&opus.bytes[28..36], b"OpusHead");
    assert_eq!(&flac.bytes[..4], b"fLaC");
    assert!(opus.duration_ms > 300, "{} ms", opus.duration_ms);
    assert_eq!(opus.duration_ms, flac.duration_ms);
}

#[tokio::test]
async fn speeds_beyond_espeaks_rates_are_stretched_and_pcm_can_be_24_khz() {
    let espeak = espeak();
    let at = |speed| SynthesisRequest {
        speed,
        sample_rate_hz: Some(24_000),
        ..request(HELLO, "en-gb", AudioFormat::Pcm)
    };

    let fastest_native = espeak.synthesize(&at(2.5)).await.unwrap();
    let faster = espeak.synthesize(&at(4.0)).await.unwrap();
    let slowest_native = espeak.synthesize(&at(0.46)).await.unwrap();
    let slower = espeak.synthesize(&at(0.25)).await.unwrap();

    // 24 kHz, 16-bit: 48 bytes a millisecond.
    let samples = faster.bytes.len() as f64 / 2.0;
    assert!((samples - f64::from(faster.duration_ms) * 24.0).abs() <= 24.0);
    let ratio = |a: &ttsq_providers::Audio, b: &ttsq_providers::Audio| {
        f64::from(a.duration_ms) / f64::from(b.duration_ms)
    };
    // espeak-ng tops out at 450 words a minute (2.57×) and bottoms at 80
    // (0.46×); the stretch takes 4.0 a further 1.56× and 0.25 a 1.83×.
    let fast = ratio(&faster, &fastest_native);
    let slow = ratio(&slower, &slowest_native);
    assert!((0.5..0.75).contains(&fast), "4.0 vs 2.5: {fast}");
    assert!((1.5..2.2).contains(&slow), "0.25 vs 0.46: {slow}");
}

#[tokio::test]
async fn missing_binary_is_a_retryable_error() {
    let espeak = Espeak::new(&settings("/nonexistent/espeak-ng", 1, 5));

    let err = espeak
        .synthesize(&request(HELLO, "en-gb", AudioFormat::Wav))
        .await
        .unwrap_err();

    assert!(matches!(err, ProviderError::Transient { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("not found"), "{err}");
    assert!(espeak.health().await.is_err());
}

#[tokio::test]
async fn health_passes_with_the_real_binary() {
    espeak().health().await.unwrap();
}

#[tokio::test]
async fn a_failing_binary_is_transient_and_reports_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let binary = fake_espeak(dir.path(), "echo 'voice data missing' >&2\nexit 3").await;

    let err = Espeak::new(&settings(binary, 1, 5))
        .synthesize(&request(HELLO, "en-gb", AudioFormat::Wav))
        .await
        .unwrap_err();

    assert!(matches!(err, ProviderError::Transient { .. }), "{err:?}");
    assert!(err.to_string().contains("voice data missing"), "{err}");
}

#[tokio::test]
async fn a_binary_that_exits_cleanly_without_audio_is_transient() {
    let dir = tempfile::tempdir().unwrap();
    let binary = fake_espeak(dir.path(), "exit 0").await;

    let err = Espeak::new(&settings(binary, 1, 5))
        .synthesize(&request(HELLO, "en-gb", AudioFormat::Wav))
        .await
        .unwrap_err();

    assert!(matches!(err, ProviderError::Transient { .. }), "{err:?}");
}

#[tokio::test]
async fn a_hung_binary_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let binary = fake_espeak(dir.path(), "exec sleep 5").await;
    let espeak = Espeak::new(&settings(binary, 1, 1));
    let started = Instant::now();

    let err = espeak
        .synthesize(&request(HELLO, "en-gb", AudioFormat::Wav))
        .await
        .unwrap_err();

    assert!(
        matches!(err, ProviderError::Timeout { seconds: 1, .. }),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn max_concurrent_bounds_the_processes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let binary = fake_espeak(dir.path(), "sleep 1\nexit 3").await;
    let one_at_a_time = Espeak::new(&settings(&binary, 1, 10));
    let two_at_a_time = Espeak::new(&settings(&binary, 2, 10));
    let req = request(HELLO, "en-gb", AudioFormat::Wav);

    let started = Instant::now();
    let _ = tokio::join!(
        one_at_a_time.synthesize(&req),
        one_at_a_time.synthesize(&req)
    );
    let serial = started.elapsed();
    let started = Instant::now();
    let _ = tokio::join!(
        two_at_a_time.synthesize(&req),
        two_at_a_time.synthesize(&req)
    );
    let parallel = started.elapsed();

    assert!(serial >= Duration::from_secs(2), "serial took {serial:?}");
    assert!(
        parallel < Duration::from_millis(1800),
        "parallel took {parallel:?}"
    );
}

#[test]
fn dialects_list_the_configured_voices_with_their_capabilities() {
    let dialects = espeak().dialects();

    assert_eq!(dialects.len(), 12);
    let scots = dialects.iter().find(|d| d.id == "en-gb-scotland").unwrap();
    assert_eq!(scots.name, "English (Scotland)");
    assert_eq!(scots.default_voice(), "default");
    assert_eq!(
        scots.voices,
        ["default", "f1", "f2", "f3", "m1", "m2", "m3"]
    );
    assert_eq!(
        scots.formats,
        [
            AudioFormat::Mp3,
            AudioFormat::Wav,
            AudioFormat::Pcm,
            AudioFormat::Opus,
            AudioFormat::Flac
        ]
    );
    assert!(scots.emotions.is_empty());
    assert_eq!(scots.provider_chain, ["espeak"]);
    assert_eq!(scots.model, "espeak-ng");
    assert_eq!(scots.sample_rate_hz, 22_050);
}
