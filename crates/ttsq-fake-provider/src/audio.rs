//! Synthetic but valid audio: a quiet 440 Hz tone, as long as the text asks.
//!
//! Cheap by construction: per sample rate, one tone of the longest allowed
//! length is computed once; PCM answers are zero-copy slices of it, WAV
//! answers a 44-byte header in front of a slice, and MP3 answers are encoded
//! once per (length bucket, rate) and cached.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use bytes::{BufMut, Bytes, BytesMut};
use ttsq_core::AudioFormat;
use ttsq_providers::encode;

use crate::config::MAX_AUDIO_MS_LIMIT;

/// Answers are rounded to this many milliseconds, so the MP3 cache stays small.
const BUCKET_MS: u32 = 50;

/// Tone frequency.
const TONE_HZ: f64 = 440.0;

/// Tone amplitude as a fraction of full scale: audible, never clipping.
const TONE_LEVEL: f64 = 0.1;

/// How the WAV header states its lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum WavSize {
    /// The real RIFF and data sizes.
    Exact,
    /// This placeholder in both size fields, as streaming servers write
    /// (OpenAI `0xFFFFFFFF`, ElevenLabs `0x7FFFFFFF`).
    Placeholder(u32),
}

/// What to answer: a format at a rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Encoding {
    /// Container or raw.
    pub format: AudioFormat,
    /// Samples per second.
    pub sample_rate_hz: u32,
    /// Header style of WAV answers.
    pub wav_size: WavSize,
}

impl Encoding {
    /// `format` at `sample_rate_hz` with exact WAV sizes.
    pub fn new(format: AudioFormat, sample_rate_hz: u32) -> Self {
        Self {
            format,
            sample_rate_hz,
            wav_size: WavSize::Exact,
        }
    }
}

/// One full-length tone at one rate.
struct Tone {
    samples: Arc<[i16]>,
    pcm: Bytes,
}

/// Generated tones and encoded MP3s, shared by every request.
#[derive(Default)]
pub(crate) struct AudioCache {
    tones: Mutex<HashMap<u32, Arc<Tone>>>,
    mp3: Mutex<HashMap<(u32, u32), Bytes>>,
}

/// The answer length for `characters` of text: `ms_per_char` each, divided
/// by the speed, within one bucket and `max_audio_ms`, rounded to a bucket.
pub(crate) fn duration_ms(characters: u64, ms_per_char: u32, speed: f64, max_audio_ms: u32) -> u32 {
    let speed = if speed.is_finite() && speed > 0.0 {
        speed
    } else {
        1.0
    };
    let raw = characters as f64 * f64::from(ms_per_char) / speed;
    let max = max_audio_ms.clamp(BUCKET_MS, MAX_AUDIO_MS_LIMIT);
    let bucketed = (raw / f64::from(BUCKET_MS)).round() * f64::from(BUCKET_MS);
    bucketed.clamp(f64::from(BUCKET_MS), f64::from(max)) as u32
}

impl AudioCache {
    /// `duration_ms` of tone in `encoding`.
    pub async fn render(&self, duration_ms: u32, encoding: Encoding) -> Result<Bytes, String> {
        let rate = encoding.sample_rate_hz;
        if rate == 0 {
            return Err("sample rate must be above 0 Hz".to_owned());
        }
        let tone = self.tone(rate).await?;
        let count =
            (u64::from(rate) * u64::from(duration_ms.min(MAX_AUDIO_MS_LIMIT)) / 1000) as usize;
        let count = count.min(tone.samples.len());
        match encoding.format {
            AudioFormat::Pcm => Ok(tone.pcm.slice(..count * 2)),
            AudioFormat::Wav => Ok(wav(&tone.pcm[..count * 2], rate, encoding.wav_size)),
            AudioFormat::Mp3 => {
                let key = (duration_ms, rate);
                if let Some(hit) = lock(&self.mp3).get(&key) {
                    return Ok(hit.clone());
                }
                let samples = Arc::clone(&tone.samples);
                let mp3 = tokio::task::spawn_blocking(move || {
                    encode::encode(&samples[..count], rate, AudioFormat::Mp3)
                })
                .await
                .map_err(|e| format!("encoder task failed: {e}"))?
                .map_err(|e| e.to_string())?;
                let mp3 = Bytes::from(mp3);
                lock(&self.mp3).insert(key, mp3.clone());
                Ok(mp3)
            }
            AudioFormat::OggOpus => Err("the fake cannot encode Ogg Opus".to_owned()),
        }
    }

    async fn tone(&self, rate: u32) -> Result<Arc<Tone>, String> {
        if let Some(tone) = lock(&self.tones).get(&rate) {
            return Ok(Arc::clone(tone));
        }
        let tone = tokio::task::spawn_blocking(move || Arc::new(make_tone(rate)))
            .await
            .map_err(|e| format!("tone task failed: {e}"))?;
        lock(&self.tones).insert(rate, Arc::clone(&tone));
        Ok(tone)
    }
}

/// A poisoned cache is still a valid cache: every insert is a whole value.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn make_tone(rate: u32) -> Tone {
    let count = (u64::from(rate) * u64::from(MAX_AUDIO_MS_LIMIT) / 1000) as usize;
    let step = 2.0 * std::f64::consts::PI * TONE_HZ / f64::from(rate);
    let amplitude = f64::from(i16::MAX) * TONE_LEVEL;
    let samples: Arc<[i16]> = (0..count)
        .map(|i| (amplitude * (step * i as f64).sin()) as i16)
        .collect();
    let pcm = Bytes::from(
        samples
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect::<Vec<u8>>(),
    );
    Tone { samples, pcm }
}

/// A 16-bit mono RIFF WAVE file around `pcm`.
pub(crate) fn wav(pcm: &[u8], rate: u32, size: WavSize) -> Bytes {
    let data_len = u32::try_from(pcm.len()).unwrap_or(u32::MAX);
    let (riff_size, data_size) = match size {
        WavSize::Exact => (data_len.saturating_add(36), data_len),
        WavSize::Placeholder(value) => (value, value),
    };
    let mut out = BytesMut::with_capacity(44 + pcm.len());
    out.put_slice(b"RIFF");
    out.put_u32_le(riff_size);
    out.put_slice(b"WAVEfmt ");
    out.put_u32_le(16);
    out.put_u16_le(1); // PCM
    out.put_u16_le(1); // mono
    out.put_u32_le(rate);
    out.put_u32_le(rate * 2); // bytes per second
    out.put_u16_le(2); // block align
    out.put_u16_le(16); // bits per sample
    out.put_slice(b"data");
    out.put_u32_le(data_size);
    out.put_slice(pcm);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_follows_text_length_and_speed_within_bounds() {
        assert_eq!(duration_ms(10, 60, 1.0, 10_000), 600);
        assert_eq!(duration_ms(10, 60, 2.0, 10_000), 300);
        assert_eq!(duration_ms(0, 60, 1.0, 10_000), BUCKET_MS);
        assert_eq!(duration_ms(1_000, 60, 1.0, 10_000), 10_000);
        assert_eq!(
            duration_ms(1_000, 60, f64::NAN, 99_000_000),
            MAX_AUDIO_MS_LIMIT
        );
    }

    #[tokio::test]
    async fn every_encoding_is_valid_and_as_long_as_asked() {
        let cache = AudioCache::default();

        let pcm = cache
            .render(500, Encoding::new(AudioFormat::Pcm, 24_000))
            .await
            .unwrap();
        let wav = cache
            .render(500, Encoding::new(AudioFormat::Wav, 22_050))
            .await
            .unwrap();
        let mp3 = cache
            .render(500, Encoding::new(AudioFormat::Mp3, 44_100))
            .await
            .unwrap();
        let mp3_again = cache
            .render(500, Encoding::new(AudioFormat::Mp3, 44_100))
            .await
            .unwrap();

        assert_eq!(pcm.len(), 24_000);
        let decoded = encode::read_wav(&wav).unwrap();
        assert_eq!(decoded.sample_rate_hz, 22_050);
        assert_eq!(decoded.duration_ms(), 500);
        assert!(decoded.samples.iter().any(|s| s.unsigned_abs() > 1_000));
        assert_eq!(mp3[0], 0xff);
        assert_eq!(mp3, mp3_again);
    }

    #[test]
    fn placeholder_sizes_are_written_as_given() {
        let bytes = wav(&[0, 0, 1, 0], 24_000, WavSize::Placeholder(u32::MAX));

        assert_eq!(&bytes[4..8], &[0xff; 4]);
        assert_eq!(&bytes[40..44], &[0xff; 4]);
        assert_eq!(bytes.len(), 48);
    }
}
