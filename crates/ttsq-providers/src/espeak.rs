//! The embedded provider: one local `espeak-ng` process per request, its WAV
//! encoded in-process. Needs no key and no network, so a fresh machine
//! synthesizes real speech out of the box.

use std::{io, path::PathBuf, process::Stdio, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::{io::AsyncWriteExt, process::Command, sync::Semaphore};
use ttsq_config::EspeakSettings;
use ttsq_core::{
    AudioFormat, DialectInfo, MarkKind,
    marks::{TimedPhoneme, TimedWord},
};

use crate::{
    Audio, ProviderError, SynthesisRequest, Synthesizer,
    encode::{self, Waveform},
};

/// Provider name in routes, the ledger and metrics.
const NAME: &str = "espeak";

/// Model id; part of the content hash.
const MODEL: &str = "espeak-ng";

/// The rate espeak-ng writes for all its own voices (MBROLA voices differ).
const SAMPLE_RATE_HZ: u32 = 22_050;

/// Voices of every dialect: espeak's default, then the `+f1`… variants.
const VOICES: [&str; 7] = ["default", "f1", "f2", "f3", "m1", "m2", "m3"];

/// Formats made from espeak's WAV.
const FORMATS: [AudioFormat; 5] = AudioFormat::ALL;

/// espeak-ng's default rate, which speed 1.0 maps to.
const BASE_WORDS_PER_MINUTE: f64 = 175.0;

/// The rates espeak-ng accepts for `-s`.
const WORDS_PER_MINUTE_RANGE: (f64, f64) = (80.0, 450.0);

/// Longest stderr excerpt kept in an error message.
const STDERR_EXCERPT_CHARS: usize = 200;

/// Display names of well-known espeak voices; other ids are shown as they are.
const DIALECT_NAMES: &[(&str, &str)] = &[
    ("cmn", "Chinese (Mandarin)"),
    ("de", "German"),
    ("en-029", "English (Caribbean)"),
    ("en-gb", "English (Great Britain)"),
    ("en-gb-scotland", "English (Scotland)"),
    ("en-gb-x-rp", "English (Received Pronunciation)"),
    ("en-us", "English (America)"),
    ("es", "Spanish (Spain)"),
    ("es-419", "Spanish (Latin America)"),
    ("fr-be", "French (Belgium)"),
    ("fr-fr", "French (France)"),
    ("hi", "Hindi"),
    ("it", "Italian"),
    ("ja", "Japanese"),
    ("pt", "Portuguese (Portugal)"),
    ("pt-br", "Portuguese (Brazil)"),
    ("ru", "Russian"),
    ("yue", "Chinese (Cantonese)"),
];

/// Most characters one synthesis takes unless the provider's
/// `max_text_chars` says otherwise: espeak-ng itself has no limit, but one
/// call holds a process and a permit for its whole text, and 5,000 is what
/// the API takes in one job by default.
pub const MAX_REQUEST_CHARS: u32 = 5_000;

/// The espeak-ng adapter. Cheap to share: hold it in an `Arc`.
#[derive(Debug)]
pub struct Espeak {
    /// Executable name (looked up in `PATH`) or path.
    binary: PathBuf,
    /// Bounds each call, including the wait for a permit.
    timeout: Duration,
    /// One permit per espeak-ng process this adapter may run at once.
    permits: Semaphore,
    /// espeak-ng voice names offered as dialects.
    dialects: Vec<String>,
    /// Longest text synthesized in one call, in characters (at least 1).
    max_text_chars: u32,
}

impl Espeak {
    /// An adapter running `settings.binary`; at least one process at a time.
    pub fn new(settings: &EspeakSettings) -> Self {
        Self {
            binary: settings.binary.clone(),
            timeout: Duration::from_secs(settings.timeout_secs),
            permits: Semaphore::new(settings.max_concurrent.clamp(1, Semaphore::MAX_PERMITS)),
            dialects: settings.dialects.clone(),
            max_text_chars: settings.max_text_chars.unwrap_or(MAX_REQUEST_CHARS).max(1),
        }
    }

    /// The `-v` argument for a request: `dialect` or `dialect+variant`.
    fn voice_argument(&self, request: &SynthesisRequest<'_>) -> Result<String, ProviderError> {
        if !self.dialects.iter().any(|d| d == request.dialect) {
            return Err(unsupported(format!("dialect `{}`", request.dialect)));
        }
        match request.voice {
            "default" => Ok(request.dialect.to_owned()),
            voice if VOICES.contains(&voice) => Ok(format!("{}+{voice}", request.dialect)),
            voice => Err(unsupported(format!("voice `{voice}`"))),
        }
    }

    /// Runs espeak-ng once, bounded by the semaphore, and encodes its WAV.
    async fn run(
        &self,
        voice: &str,
        words_per_minute: u32,
        request: &SynthesisRequest<'_>,
    ) -> Result<Audio, ProviderError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| transient("concurrency limiter closed"))?;
        let waveform = if request.text.trim().is_empty() {
            None
        } else {
            Some(self.speak(voice, words_per_minute, request.text).await?)
        };
        let format = request.format;
        let rendering = rendering(request, words_per_minute);
        tokio::task::spawn_blocking(move || {
            let waveform = match waveform {
                Some(wav) => encode::read_wav(&wav)?,
                None => Waveform {
                    samples: Vec::new(),
                    sample_rate_hz: SAMPLE_RATE_HZ,
                },
            };
            if waveform.sample_rate_hz != SAMPLE_RATE_HZ {
                tracing::warn!(
                    sample_rate_hz = waveform.sample_rate_hz,
                    "espeak-ng wrote an unexpected sample rate"
                );
            }
            let (bytes, duration_ms) = encode::render(&waveform, rendering)?;
            Ok(Audio {
                bytes: Bytes::from(bytes),
                format,
                duration_ms,
                marks: Vec::new(),
            })
        })
        .await
        .map_err(|e| ProviderError::Encode {
            format,
            message: format!("encoder task failed: {e}"),
        })?
    }

    /// Synthesizes through libespeak-ng's C API instead of the command line,
    /// the only way to get espeak's timed word and phoneme events (the CLI
    /// prints no timings); the speech is the same engine's. The library is
    /// one global instance, so these calls run one at a time.
    async fn run_with_marks(
        &self,
        voice: &str,
        words_per_minute: u32,
        request: &SynthesisRequest<'_>,
    ) -> Result<Audio, ProviderError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| transient("concurrency limiter closed"))?;
        let (voice, text, format) = (voice.to_owned(), request.text.to_owned(), request.format);
        let wanted = request.marks.to_vec();
        let rendering = rendering(request, words_per_minute);
        tokio::task::spawn_blocking(move || {
            let engine = ttsq_espeak_events::Engine::open()
                .map_err(|e| unsupported(format!("speech marks ({e})")))?;
            let synthesis =
                engine
                    .synthesize(&voice, words_per_minute, &text)
                    .map_err(|e| match e {
                        ttsq_espeak_events::EngineError::UnknownVoice(v) => {
                            unsupported(format!("voice `{v}`"))
                        }
                        other => transient(other.to_string()),
                    })?;
            let spoken_ms = encode::duration_ms(synthesis.samples.len(), synthesis.sample_rate_hz);
            let mut marks = marks_from_events(&wanted, &text, &synthesis.events, spoken_ms);
            let waveform = Waveform {
                samples: synthesis.samples,
                sample_rate_hz: synthesis.sample_rate_hz,
            };
            let (bytes, duration_ms) = encode::render(&waveform, rendering)?;
            crate::retime_marks(&mut marks, rendering.stretch, duration_ms);
            Ok(Audio {
                bytes: Bytes::from(bytes),
                format,
                duration_ms,
                marks,
            })
        })
        .await
        .map_err(|e| ProviderError::Encode {
            format,
            message: format!("synthesis task failed: {e}"),
        })?
    }

    /// Speaks `text` (fed on stdin, so it is never parsed as options) into a
    /// temporary WAV file and returns the file's bytes.
    async fn speak(
        &self,
        voice: &str,
        words_per_minute: u32,
        text: &str,
    ) -> Result<Vec<u8>, ProviderError> {
        // `--stdout` writes a WAV header without lengths; a file gets them.
        let wav_path = tempfile::Builder::new()
            .prefix("ttsq-espeak-")
            .suffix(".wav")
            .tempfile()
            .map_err(|e| transient(format!("cannot create a temporary file: {e}")))?
            .into_temp_path();
        let mut child = Command::new(&self.binary)
            .args([
                "-v",
                voice,
                "-s",
                &words_per_minute.to_string(),
                "-b",
                "1",
                "-w",
            ])
            .arg(&*wav_path)
            .arg("--stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| self.spawn_error(&e))?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| transient("espeak-ng has no stdin"))?;
        let feed = async move {
            stdin.write_all(text.as_bytes()).await?;
            stdin.shutdown().await
        };
        let (fed, output) = tokio::join!(feed, child.wait_with_output());
        let output = output.map_err(|e| transient(format!("waiting for espeak-ng failed: {e}")))?;
        let stderr = excerpt(&String::from_utf8_lossy(&output.stderr));
        if !output.status.success() {
            return Err(transient(if stderr.is_empty() {
                format!("espeak-ng ended with {}", output.status)
            } else {
                format!("espeak-ng ended with {}: {stderr}", output.status)
            }));
        }
        fed.map_err(|e| transient(format!("writing text to espeak-ng failed: {e}")))?;
        let wav = tokio::fs::read(&wav_path)
            .await
            .map_err(|e| transient(format!("cannot read espeak-ng's output: {e}")))?;
        if wav.is_empty() {
            // espeak-ng exits 0 even when it cannot write its file.
            return Err(transient(format!("espeak-ng wrote no audio: {stderr}")));
        }
        Ok(wav)
    }

    fn spawn_error(&self, error: &io::Error) -> ProviderError {
        let binary = self.binary.display();
        match error.kind() {
            io::ErrorKind::NotFound => transient(format!("espeak-ng binary `{binary}` not found")),
            _ => transient(format!("cannot start `{binary}`: {error}")),
        }
    }
}

#[async_trait]
impl Synthesizer for Espeak {
    fn name(&self) -> &str {
        NAME
    }

    fn dialects(&self) -> Vec<DialectInfo> {
        self.dialects
            .iter()
            .map(|id| DialectInfo {
                id: id.clone(),
                name: DIALECT_NAMES
                    .iter()
                    .find(|(known, _)| known == id)
                    .map_or_else(|| id.clone(), |(_, name)| (*name).to_owned()),
                voices: VOICES.iter().map(|v| (*v).to_owned()).collect(),
                formats: FORMATS.to_vec(),
                emotions: Vec::new(),
                provider_chain: vec![NAME.to_owned()],
                model: MODEL.to_owned(),
                sample_rate_hz: SAMPLE_RATE_HZ,
                marks: MarkKind::ALL.to_vec(),
                max_request_chars: self.max_text_chars,
            })
            .collect()
    }

    /// Emotion is ignored rather than refused: espeak has none, and as a
    /// fallback plain speech beats a failed job.
    #[tracing::instrument(
        name = "espeak.synthesize",
        skip_all,
        fields(dialect = request.dialect, voice = request.voice, chars = request.text.chars().count())
    )]
    async fn synthesize(&self, request: &SynthesisRequest<'_>) -> Result<Audio, ProviderError> {
        let voice = self.voice_argument(request)?;
        if !FORMATS.contains(&request.format) {
            return Err(unsupported(format!("format `{}`", request.format)));
        }
        let chars = request.text.chars().count();
        if chars > self.max_text_chars as usize {
            return Err(unsupported(format!(
                "texts of {chars} characters (at most {})",
                self.max_text_chars
            )));
        }
        let wpm = words_per_minute(request.speed);
        let work = async {
            if request.marks.is_empty() {
                self.run(&voice, wpm, request).await
            } else {
                self.run_with_marks(&voice, wpm, request).await
            }
        };
        let audio = tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| ProviderError::Timeout {
                provider: NAME.to_owned(),
                seconds: self.timeout.as_secs(),
            })??;
        tracing::debug!(
            duration_ms = audio.duration_ms,
            bytes = audio.bytes.len(),
            "synthesized"
        );
        Ok(audio)
    }

    async fn health(&self) -> Result<(), ProviderError> {
        let output = Command::new(&self.binary)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(self.timeout, output)
            .await
            .map_err(|_| ProviderError::Timeout {
                provider: NAME.to_owned(),
                seconds: self.timeout.as_secs(),
            })?
            .map_err(|e| self.spawn_error(&e))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(transient(format!(
                "`{} --version` ended with {}: {}",
                self.binary.display(),
                output.status,
                excerpt(&String::from_utf8_lossy(&output.stderr))
            )))
        }
    }
}

/// Turns espeak's events into marks: a word runs from its event to the
/// next word's, or to the first pause after it, whichever comes first (the
/// last word ends at the last pause or the end of the audio).
fn marks_from_events(
    wanted: &[MarkKind],
    text: &str,
    events: &[ttsq_espeak_events::Event],
    duration_ms: u32,
) -> Vec<ttsq_core::Mark> {
    use ttsq_espeak_events::EventKind;
    let phonemes: Vec<TimedPhoneme> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Phoneme(name) => Some(TimedPhoneme {
                name: name.clone(),
                start_ms: e.audio_ms,
            }),
            _ => None,
        })
        .collect();
    let word_events: Vec<&ttsq_espeak_events::Event> = events
        .iter()
        .filter(|e| e.kind == EventKind::Word)
        .collect();
    let words: Vec<TimedWord> = word_events
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let next = word_events.get(i + 1).map_or(duration_ms, |n| n.audio_ms);
            // The first pause after the word's first sound ends it early.
            let end_ms = phonemes
                .iter()
                .filter(|p| p.name.starts_with('_') && p.start_ms > w.audio_ms && p.start_ms < next)
                .map(|p| p.start_ms)
                .next()
                .unwrap_or(next);
            TimedWord {
                start: w.text_position,
                end: w.text_position + w.length,
                start_ms: w.audio_ms,
                end_ms,
            }
        })
        .collect();
    ttsq_core::marks::build(wanted, text, &words, &phonemes, duration_ms)
}

/// espeak-ng's `-s` for a speed factor: 175 wpm × speed, within 80..=450.
/// How espeak's waveform becomes the request's audio: the speed espeak's
/// rate limits leave (below 0.46 or above 2.57) is made up by a stretch.
fn rendering(request: &SynthesisRequest<'_>, words_per_minute: u32) -> encode::Rendering {
    let (min, max) = WORDS_PER_MINUTE_RANGE;
    let wanted = BASE_WORDS_PER_MINUTE * request.speed;
    // Within espeak's range its own rate is exact (to a word per minute):
    // no stretch for rounding.
    let stretch =
        if request.speed.is_finite() && request.speed > 0.0 && !(min..=max).contains(&wanted) {
            request.speed / (f64::from(words_per_minute) / BASE_WORDS_PER_MINUTE)
        } else {
            1.0
        };
    encode::Rendering {
        format: request.format,
        sample_rate_hz: request.output_rate_hz(SAMPLE_RATE_HZ),
        stretch,
    }
}

fn words_per_minute(speed: f64) -> u32 {
    let (min, max) = WORDS_PER_MINUTE_RANGE;
    if speed.is_finite() {
        (BASE_WORDS_PER_MINUTE * speed).round().clamp(min, max) as u32
    } else {
        BASE_WORDS_PER_MINUTE as u32
    }
}

/// The trimmed start of a process's stderr, short enough for an error message.
fn excerpt(stderr: &str) -> String {
    let trimmed = stderr.trim();
    match trimmed.char_indices().nth(STDERR_EXCERPT_CHARS) {
        Some((end, _)) => format!("{}…", &trimmed[..end]),
        None => trimmed.to_owned(),
    }
}

fn unsupported(what: String) -> ProviderError {
    ProviderError::Unsupported {
        provider: NAME.to_owned(),
        what,
    }
}

fn transient(message: impl Into<String>) -> ProviderError {
    ProviderError::Transient {
        provider: NAME.to_owned(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speed_beyond_espeaks_rates_is_left_to_a_stretch() {
        let request = |speed| SynthesisRequest {
            text: "hi",
            dialect: "en-gb",
            voice: "default",
            speed,
            emotion: None,
            format: AudioFormat::Pcm,
            marks: &[],
            instructions: None,
            sample_rate_hz: Some(24_000),
        };
        let stretch = |speed| rendering(&request(speed), words_per_minute(speed)).stretch;

        assert_eq!(stretch(1.0), 1.0);
        assert_eq!(stretch(0.5), 1.0);
        assert_eq!(stretch(2.0), 1.0);
        assert!((stretch(4.0) - 4.0 * 175.0 / 450.0).abs() < 1e-9);
        assert!((stretch(0.25) - 0.25 * 175.0 / 80.0).abs() < 1e-9);
        assert_eq!(rendering(&request(1.0), 175).sample_rate_hz, 24_000);
    }

    #[test]
    fn speed_maps_to_espeak_words_per_minute_within_its_range() {
        assert_eq!(words_per_minute(1.0), 175);
        assert_eq!(words_per_minute(0.5), 88);
        assert_eq!(words_per_minute(2.0), 350);
        assert_eq!(words_per_minute(0.1), 80);
        assert_eq!(words_per_minute(9.0), 450);
        assert_eq!(words_per_minute(f64::NAN), 175);
    }

    #[test]
    fn excerpt_trims_and_shortens_on_a_char_boundary() {
        assert_eq!(excerpt("  failed\n"), "failed");
        let long = "é".repeat(STDERR_EXCERPT_CHARS + 10);
        assert_eq!(excerpt(&long).chars().count(), STDERR_EXCERPT_CHARS + 1);
    }
}
