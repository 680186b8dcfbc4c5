//! Synthetic but valid audio, as long as the text asks: a quiet 440 Hz tone
//! in WAV and PCM, silence in MP3.
//!
//! Cheap by construction: per sample rate, one tone of the longest allowed
//! length is computed once; PCM answers are zero-copy slices of it, WAV
//! answers a 44-byte header in front of a slice. MP3 answers are written by
//! hand, not encoded: the fake exists to test the adapters and their
//! encoder, so it shares no code with them. A Layer III frame whose side
//! information is all zeros carries no spectral data and decodes to
//! silence, so repeating one gives a stream that every decoder plays and
//! whose frame headers state its length.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

use bytes::{BufMut, Bytes, BytesMut};
use ttsq_core::AudioFormat;

use crate::config::MAX_AUDIO_MS_LIMIT;

/// Answers are rounded to this many milliseconds.
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

/// Generated tones, shared by every request.
#[derive(Default)]
pub(crate) struct AudioCache {
    /// One full-length tone per sample rate, as 16-bit little-endian PCM.
    tones: Mutex<HashMap<u32, Bytes>>,
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
    /// `duration_ms` of tone (of silence in MP3) in `encoding`.
    pub async fn render(&self, duration_ms: u32, encoding: Encoding) -> Result<Bytes, String> {
        let rate = encoding.sample_rate_hz;
        if rate == 0 {
            return Err("sample rate must be above 0 Hz".to_owned());
        }
        let duration_ms = duration_ms.min(MAX_AUDIO_MS_LIMIT);
        let pcm = |tone: Bytes| {
            let count = (u64::from(rate) * u64::from(duration_ms) / 1000) as usize;
            tone.slice(..(count * 2).min(tone.len()))
        };
        match encoding.format {
            AudioFormat::Pcm => Ok(pcm(self.tone(rate).await?)),
            AudioFormat::Wav => Ok(wav(&pcm(self.tone(rate).await?), rate, encoding.wav_size)),
            AudioFormat::Mp3 => Ok(silent_mp3(duration_ms, rate)),
            AudioFormat::Opus | AudioFormat::Flac => {
                Err(format!("the fake does not encode {}", encoding.format))
            }
        }
    }

    async fn tone(&self, rate: u32) -> Result<Bytes, String> {
        if let Some(tone) = lock(&self.tones).get(&rate) {
            return Ok(tone.clone());
        }
        let tone = tokio::task::spawn_blocking(move || make_tone(rate))
            .await
            .map_err(|e| format!("tone task failed: {e}"))?;
        lock(&self.tones).insert(rate, tone.clone());
        Ok(tone)
    }
}

/// A poisoned cache is still a valid cache: every insert is a whole value.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn make_tone(rate: u32) -> Bytes {
    let count = (u64::from(rate) * u64::from(MAX_AUDIO_MS_LIMIT) / 1000) as usize;
    let step = 2.0 * std::f64::consts::PI * TONE_HZ / f64::from(rate);
    let amplitude = f64::from(i16::MAX) * TONE_LEVEL;
    Bytes::from(
        (0..count)
            .flat_map(|i| ((amplitude * (step * i as f64).sin()) as i16).to_le_bytes())
            .collect::<Vec<u8>>(),
    )
}

/// One MPEG Layer III sample rate: its header fields and frame size.
#[derive(Debug, Clone, Copy)]
struct Mp3Rate {
    /// Samples per second.
    hz: u32,
    /// The header's version bits: 3 MPEG-1, 2 MPEG-2, 0 MPEG-2.5.
    version: u8,
    /// The header's sample rate index within that version.
    index: u8,
}

/// Every Layer III sample rate. A rate asked for that is none of these is
/// answered at the nearest, as an encoder resamples.
const MP3_RATES: [Mp3Rate; 9] = [
    Mp3Rate::new(44_100, 3, 0),
    Mp3Rate::new(48_000, 3, 1),
    Mp3Rate::new(32_000, 3, 2),
    Mp3Rate::new(22_050, 2, 0),
    Mp3Rate::new(24_000, 2, 1),
    Mp3Rate::new(16_000, 2, 2),
    Mp3Rate::new(11_025, 0, 0),
    Mp3Rate::new(12_000, 0, 1),
    Mp3Rate::new(8_000, 0, 2),
];

/// Bitrate of the MP3 answers, a size typical of speech.
const MP3_KBPS: u32 = 64;

impl Mp3Rate {
    const fn new(hz: u32, version: u8, index: u8) -> Self {
        Self { hz, version, index }
    }

    /// The rate answered when `hz` is asked.
    fn nearest(hz: u32) -> Self {
        MP3_RATES
            .into_iter()
            .min_by_key(|rate| rate.hz.abs_diff(hz))
            .unwrap_or(MP3_RATES[0])
    }

    fn is_mpeg1(self) -> bool {
        self.version == 3
    }

    /// Samples one frame plays.
    fn samples_per_frame(self) -> u32 {
        if self.is_mpeg1() { 1152 } else { 576 }
    }

    /// Bytes of one frame at [`MP3_KBPS`], without padding.
    fn frame_len(self) -> usize {
        (self.samples_per_frame() / 8 * MP3_KBPS * 1000 / self.hz) as usize
    }

    /// One frame of silence: the four header bytes, then zeros. Zero side
    /// information (17 bytes in MPEG-1 mono, 9 otherwise) says: no main data
    /// before this frame, no bits of scale factors or Huffman codes in any
    /// granule, hence every spectral line zero. The rest of the frame is
    /// ancillary data, which decoders skip.
    fn silent_frame(self) -> Vec<u8> {
        // 64 kbps is index 5 of MPEG-1's Layer III bitrates, 8 of MPEG-2's.
        let bitrate_index: u8 = if self.is_mpeg1() { 5 } else { 8 };
        let mut frame = vec![0u8; self.frame_len()];
        frame[0] = 0xff;
        // Frame sync, the version, Layer III (01), no CRC (1).
        frame[1] = 0xe0 | (self.version << 3) | 0b011;
        // The bitrate and rate indexes, no padding, no private bit.
        frame[2] = (bitrate_index << 4) | (self.index << 2);
        // Mono (11), no mode extension, copyright, original or emphasis.
        frame[3] = 0xc0;
        frame
    }
}

/// `duration_ms` of silence as an MP3 stream at the Layer III rate nearest
/// `rate`: whole frames, so up to one frame (26 ms at 22.05 kHz and above)
/// longer than asked.
fn silent_mp3(duration_ms: u32, rate: u32) -> Bytes {
    let rate = Mp3Rate::nearest(rate);
    let samples = u64::from(rate.hz) * u64::from(duration_ms) / 1000;
    let frames = samples.div_ceil(u64::from(rate.samples_per_frame())).max(1);
    Bytes::from(rate.silent_frame().repeat(frames as usize))
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

    /// A WAV file read back by an independent reader.
    struct Decoded {
        samples: Vec<i16>,
        sample_rate_hz: u32,
    }

    impl Decoded {
        fn duration_ms(&self) -> u64 {
            let rate = u64::from(self.sample_rate_hz);
            (self.samples.len() as u64 * 1000 + rate / 2) / rate
        }
    }

    fn read_wav(bytes: &[u8]) -> Decoded {
        let reader = hound::WavReader::new(std::io::Cursor::new(bytes)).unwrap();
        let sample_rate_hz = reader.spec().sample_rate;
        let samples = reader.into_samples().collect::<Result<_, _>>().unwrap();
        Decoded {
            samples,
            sample_rate_hz,
        }
    }

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
        let decoded = read_wav(&wav);
        assert_eq!(decoded.sample_rate_hz, 22_050);
        assert_eq!(decoded.duration_ms(), 500);
        assert!(decoded.samples.iter().any(|s| s.unsigned_abs() > 1_000));
        assert_eq!(mp3[0], 0xff);
        assert_eq!(mp3, mp3_again);
    }

    #[test]
    fn mp3_is_whole_frames_at_the_nearest_layer_iii_rate() {
        let cd = silent_mp3(500, 44_100);
        let speech = silent_mp3(500, 24_000);
        let odd = silent_mp3(500, 44_000);

        // MPEG-1, 64 kbps, 44.1 kHz, mono; 20 frames of 1,152 samples: 522 ms.
        assert_eq!(&cd[..4], &[0xff, 0xfb, 0x50, 0xc0]);
        assert_eq!(cd.len(), 20 * 208);
        // MPEG-2, 64 kbps, 24 kHz, mono; 21 frames of 576 samples: 504 ms.
        assert_eq!(&speech[..4], &[0xff, 0xf3, 0x84, 0xc0]);
        assert_eq!(speech.len(), 21 * 192);
        assert!(speech.chunks(192).all(|f| f[4..13] == [0; 9]));
        assert_eq!(odd, cd);
    }

    #[test]
    fn placeholder_sizes_are_written_as_given() {
        let bytes = wav(&[0, 0, 1, 0], 24_000, WavSize::Placeholder(u32::MAX));

        assert_eq!(&bytes[4..8], &[0xff; 4]);
        assert_eq!(&bytes[40..44], &[0xff; 4]);
        assert_eq!(bytes.len(), 48);
    }
}
