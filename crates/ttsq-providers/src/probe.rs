//! Reading what vendors send back, without trusting it: the playing time of
//! an MP3 stream from its frame headers, and WAV files whose size fields are
//! streaming placeholders (`0xFFFFFFFF` from OpenAI, `0x7FFFFFFF` from
//! ElevenLabs), which strict readers such as hound refuse.

use crate::encode::Waveform;

/// Kilobits per second by bitrate index, MPEG-1 Layer III.
const BITRATES_V1: [u32; 15] = [
    0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
];

/// Kilobits per second by bitrate index, MPEG-2 and 2.5 Layer III.
const BITRATES_V2: [u32; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];

/// Playing time of an MPEG Layer III stream, counted from its frame headers;
/// skips a leading ID3v2 tag, a Xing/Info/VBRI tag frame and a trailing
/// ID3v1 tag. `None` when no audio frame is found, which is how a body that
/// is not MP3 at all shows. Stops at the first byte that is not a frame
/// once at least one frame was read (a truncated tail is tolerated).
pub(crate) fn mp3_duration_ms(bytes: &[u8]) -> Option<u32> {
    let mut pos = id3v2_len(bytes);
    let mut samples = 0u64;
    let mut rate = 0u32;
    let mut frames = 0u32;
    while let Some(frame) = bytes.get(pos..).and_then(frame_header) {
        let body = &bytes[pos..(pos + frame.length).min(bytes.len())];
        let is_tag = frames == 0
            && body
                .windows(4)
                .take(64)
                .any(|w| w == b"Xing" || w == b"Info" || w == b"VBRI");
        if !is_tag {
            samples += u64::from(frame.samples);
            rate = frame.rate;
        }
        frames += 1;
        pos += frame.length;
    }
    if rate == 0 {
        return None;
    }
    Some(crate::encode::duration_ms(
        usize::try_from(samples).unwrap_or(usize::MAX),
        rate,
    ))
}

/// Length of a leading ID3v2 tag, 0 when there is none.
fn id3v2_len(bytes: &[u8]) -> usize {
    match bytes {
        [b'I', b'D', b'3', _, _, flags, size @ ..] if size.len() >= 4 => {
            let body = size[..4]
                .iter()
                .fold(0usize, |acc, &b| (acc << 7) | usize::from(b & 0x7f));
            let footer = if flags & 0x10 != 0 { 10 } else { 0 };
            10 + body + footer
        }
        _ => 0,
    }
}

/// One Layer III frame header.
struct Frame {
    length: usize,
    samples: u32,
    rate: u32,
}

fn frame_header(bytes: &[u8]) -> Option<Frame> {
    let h = bytes.get(..4)?;
    if h[0] != 0xff || h[1] & 0xe0 != 0xe0 {
        return None;
    }
    let version = (h[1] >> 3) & 3;
    if (h[1] >> 1) & 3 != 1 {
        return None; // not Layer III
    }
    let (bitrates, rates, samples) = match version {
        3 => (BITRATES_V1, [44_100, 48_000, 32_000], 1152),
        2 => (BITRATES_V2, [22_050, 24_000, 16_000], 576),
        0 => (BITRATES_V2, [11_025, 12_000, 8_000], 576),
        _ => return None,
    };
    let kbps = *bitrates.get(usize::from(h[2] >> 4))?;
    let rate = *rates.get(usize::from((h[2] >> 2) & 3))?;
    if kbps == 0 {
        return None; // free format: no length to step by
    }
    let padding = usize::from((h[2] >> 1) & 1);
    let length = (samples as usize / 8 * kbps as usize * 1000) / rate as usize + padding;
    Some(Frame {
        length,
        samples,
        rate,
    })
}

/// Where the samples of a 16-bit mono PCM WAV file are, for answers that
/// need no decoding: their bytes are already what such a file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WavPcm {
    /// Samples per second, above 0.
    pub sample_rate_hz: u32,
    /// The sample bytes within the file: an even number, read as
    /// [`read_wav_lenient`] reads them.
    pub data: std::ops::Range<usize>,
}

/// The layout of a RIFF WAVE file that is plainly 16-bit mono PCM: one
/// `fmt ` chunk of 16 bytes (or 18 with no extension) whose fields agree
/// with each other, then (other chunks such as `LIST` skipped) the `data`
/// chunk. Its size may be a streaming placeholder ([`data_len`]); a last odd
/// byte is dropped, as [`read_wav_lenient`] does. `None` for anything else
/// (stereo, other sample formats, `WAVE_FORMAT_EXTENSIBLE`, fields that
/// disagree, chunks that run past the end): such files go through
/// [`read_wav_lenient`], so a `Some` here always holds the very samples
/// that reader returns.
pub(crate) fn wav_pcm(bytes: &[u8]) -> Option<WavPcm> {
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return None;
    }
    let mut pos = 12;
    let mut rate = None;
    while let Some(header) = bytes.get(pos..pos + 8) {
        let size = u32::from_le_bytes(header[4..8].try_into().ok()?) as usize;
        let body_start = pos + 8;
        match &header[..4] {
            b"fmt " if rate.is_none() => {
                let fmt = bytes.get(body_start..body_start.checked_add(size)?)?;
                let field16 = |at: usize| u16::from_le_bytes([fmt[at], fmt[at + 1]]);
                let field32 = |at: usize| {
                    u32::from_le_bytes([fmt[at], fmt[at + 1], fmt[at + 2], fmt[at + 3]])
                };
                // PCMWAVEFORMAT, or WAVEFORMATEX with no extra bytes.
                if !(size == 16 || (size == 18 && field16(16) == 0)) {
                    return None;
                }
                let (tag, channels, hz, byte_rate) =
                    (field16(0), field16(2), field32(4), field32(8));
                let (block_align, bits) = (field16(12), field16(14));
                if tag != 1
                    || channels != 1
                    || bits != 16
                    || block_align != 2
                    || hz == 0
                    || u64::from(byte_rate) != 2 * u64::from(hz)
                {
                    return None;
                }
                rate = Some(hz);
            }
            b"fmt " => return None,
            b"data" => {
                let sample_rate_hz = rate?;
                let len = data_len(size, bytes.len() - body_start) & !1;
                return Some(WavPcm {
                    sample_rate_hz,
                    data: body_start..body_start + len,
                });
            }
            _ => {}
        }
        // Chunks are padded to an even length.
        pos = body_start.checked_add(size)?.checked_add(size & 1)?;
        if pos > bytes.len() {
            return None;
        }
    }
    None
}

/// Bytes of a `data` chunk that declares `declared` with `available` bytes
/// after its header. Streaming writers cannot know the length when they
/// write the header, so they put a placeholder there: `0xFFFFFFFF`
/// (OpenAI), `0x7FFFFFFF` (ElevenLabs) or 0. A size larger than what
/// arrived, or 0 with bytes following, therefore means "to the end".
fn data_len(declared: usize, available: usize) -> usize {
    if declared == 0 {
        available
    } else {
        declared.min(available)
    }
}

/// Reads a 16-bit integer PCM RIFF WAVE file, trusting the bytes over the
/// header: a data size larger than what arrived, or 0 (streaming
/// placeholders, see [`data_len`]), means "to the end". Stereo is mixed down
/// to mono. `None` when the bytes are not such a file.
pub(crate) fn read_wav_lenient(bytes: &[u8]) -> Option<Waveform> {
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return None;
    }
    let mut pos = 12;
    let mut format: Option<(u16, u16, u32, u16)> = None;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let size = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().ok()?) as usize;
        let body_start = pos + 8;
        let available = bytes.len() - body_start;
        if id == b"fmt " {
            let fmt = bytes.get(body_start..body_start + 16)?;
            let tag = u16::from_le_bytes([fmt[0], fmt[1]]);
            let channels = u16::from_le_bytes([fmt[2], fmt[3]]);
            let rate = u32::from_le_bytes([fmt[4], fmt[5], fmt[6], fmt[7]]);
            let bits = u16::from_le_bytes([fmt[14], fmt[15]]);
            format = Some((tag, channels, rate, bits));
        } else if id == b"data" {
            let (tag, channels, rate, bits) = format?;
            // 1 is PCM; 0xFFFE is WAVE_FORMAT_EXTENSIBLE, PCM for 16-bit mono/stereo.
            if !(tag == 1 || tag == 0xfffe) || bits != 16 || !(1..=2).contains(&channels) {
                return None;
            }
            let data = &bytes[body_start..body_start + data_len(size, available)];
            let frame = 2 * usize::from(channels);
            let samples = data
                .chunks_exact(frame)
                .map(|f| {
                    let left = i16::from_le_bytes([f[0], f[1]]);
                    if channels == 2 {
                        let right = i16::from_le_bytes([f[2], f[3]]);
                        ((i32::from(left) + i32::from(right)) / 2) as i16
                    } else {
                        left
                    }
                })
                .collect();
            return Some(Waveform {
                samples,
                sample_rate_hz: rate,
            });
        }
        // Chunks are padded to an even length.
        pos = body_start.checked_add(size)?.checked_add(size & 1)?;
    }
    None
}

/// Raw 16-bit little-endian mono PCM as samples; `None` for an odd length,
/// which cannot be such PCM.
pub(crate) fn pcm_samples(bytes: &[u8]) -> Option<Vec<i16>> {
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use ttsq_core::AudioFormat;

    use super::*;
    use crate::encode::encode;

    fn tone(rate: u32, millis: u32) -> Vec<i16> {
        (0..rate * millis / 1000)
            .map(|i| ((f64::from(i) * 0.05).sin() * 8_000.0) as i16)
            .collect()
    }

    #[test]
    fn mp3_duration_is_read_from_the_frames() {
        for rate in [22_050, 24_000, 44_100] {
            let mp3 = encode(&tone(rate, 2_000), rate, AudioFormat::Mp3).unwrap();

            let ms = mp3_duration_ms(&mp3).unwrap();

            assert!((1_950..=2_150).contains(&ms), "{rate} Hz: {ms} ms");
        }
    }

    #[test]
    fn an_id3_tag_is_skipped_and_garbage_is_not_mp3() {
        let mp3 = encode(&tone(22_050, 500), 22_050, AudioFormat::Mp3).unwrap();
        let mut tagged = b"ID3\x04\x00\x00\x00\x00\x00\x05hello".to_vec();
        tagged.extend_from_slice(&mp3);

        assert_eq!(mp3_duration_ms(&tagged), mp3_duration_ms(&mp3));
        assert_eq!(mp3_duration_ms(b"{\"detail\": \"nope\"}"), None);
        assert_eq!(mp3_duration_ms(&[]), None);
    }

    #[test]
    fn placeholder_wav_sizes_mean_to_the_end() {
        let samples = tone(24_000, 250);
        let mut wav = encode(&samples, 24_000, AudioFormat::Wav).unwrap();
        wav[4..8].copy_from_slice(&[0xff; 4]);
        wav[40..44].copy_from_slice(&[0xff; 4]);

        let read = read_wav_lenient(&wav).unwrap();

        assert_eq!(read.sample_rate_hz, 24_000);
        assert_eq!(read.samples, samples);
        assert!(crate::encode::read_wav(&wav).is_err(), "hound is strict");
    }

    #[test]
    fn a_plain_wav_layout_is_found_behind_other_chunks() {
        let samples = tone(24_000, 100);
        let wav = encode(&samples, 24_000, AudioFormat::Wav).unwrap();
        let mut listed = wav[..36].to_vec();
        listed.extend_from_slice(b"LIST\x03\0\0\0abc\0");
        listed.extend_from_slice(&wav[36..]);

        let plain = wav_pcm(&wav).unwrap();
        let behind = wav_pcm(&listed).unwrap();

        assert_eq!(plain.sample_rate_hz, 24_000);
        assert_eq!(plain.data, 44..wav.len());
        assert_eq!(behind.data, 56..listed.len());
        assert_eq!(&listed[behind.data], &wav[44..]);
    }

    #[test]
    fn a_zero_data_size_means_to_the_end_and_an_odd_tail_is_dropped() {
        let samples = tone(8_000, 10);
        let mut wav = encode(&samples, 8_000, AudioFormat::Wav).unwrap();
        wav[40..44].copy_from_slice(&[0; 4]);
        wav.push(9);

        assert_eq!(wav_pcm(&wav).unwrap().data, 44..wav.len() - 1);
        assert_eq!(read_wav_lenient(&wav).unwrap().samples, samples);
    }

    #[test]
    fn only_plain_16_bit_mono_pcm_has_a_layout() {
        let wav = encode(&tone(8_000, 10), 8_000, AudioFormat::Wav).unwrap();
        let with = |at: usize, value: &[u8]| {
            let mut body = wav.clone();
            body[at..at + value.len()].copy_from_slice(value);
            body
        };

        assert!(wav_pcm(&with(22, &[2, 0])).is_none(), "stereo");
        assert!(wav_pcm(&with(20, &[0xfe, 0xff])).is_none(), "extensible");
        assert!(wav_pcm(&with(28, &[0; 4])).is_none(), "byte rate");
        assert!(wav_pcm(&with(24, &[0; 4])).is_none(), "rate 0");
        assert!(wav_pcm(&with(16, &[20, 0, 0, 0])).is_none(), "fmt size");
        assert!(wav_pcm(&with(36, b"junk")).is_none(), "no data chunk");
        assert!(wav_pcm(&wav[..40]).is_none(), "cut");
        assert!(wav_pcm(b"RIFF\0\0\0\0WAVE").is_none());
    }

    #[test]
    fn stereo_is_mixed_down_and_non_wav_is_refused() {
        let mut wav = encode(&[100, 300], 8_000, AudioFormat::Wav).unwrap();
        wav[22] = 2; // channels
        let read = read_wav_lenient(&wav).unwrap();
        assert_eq!(read.samples, vec![200]);

        assert!(read_wav_lenient(b"RIFF").is_none());
        assert!(read_wav_lenient(b"not a wav file at all").is_none());
    }

    #[test]
    fn pcm_must_have_whole_samples() {
        assert_eq!(pcm_samples(&[1, 0, 0xff, 0xff]), Some(vec![1, -1]));
        assert_eq!(pcm_samples(&[1, 0, 2]), None);
    }
}
