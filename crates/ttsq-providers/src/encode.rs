//! Mono 16-bit PCM samples to the bytes of an [`AudioFormat`], and WAV back
//! to samples. Pure and synchronous: callers on an async runtime run these in
//! `spawn_blocking`, since encoding a long text to MP3 takes milliseconds.
//!
//! Encoders: WAV (hound), MP3 (LAME), FLAC (flacenc, pure Rust), Opus
//! (libopus, in an Ogg container written here with the `ogg` crate). AAC
//! has none: the one maintained encoder, Fraunhofer's FDK AAC, comes with
//! no patent licence (Debian classes it non-free), so ttsq does not ship it.

use std::io::Cursor;

use flacenc::{component::BitRepr, error::Verify};
use mp3lame_encoder::{Bitrate, Builder, FlushGap, Mode, MonoPcm, Quality};
use ogg::{PacketWriteEndInfo, PacketWriter};
use ttsq_core::AudioFormat;

use crate::{ProviderError, dsp};

/// MP3 bitrate: ample for synthetic speech at 22.05 kHz mono, about a fifth
/// of the WAV size.
const MP3_BITRATE: Bitrate = Bitrate::Kbps64;

/// LAME's `-q 2`, the quality its documentation recommends; speech at 22 kHz
/// mono still encodes at well over 100× real time.
const MP3_QUALITY: Quality = Quality::NearBest;

/// Samples handed to LAME per call, so the length always fits its `int`
/// parameters and the output buffer stays small.
const MP3_CHUNK_SAMPLES: usize = 1152 * 64;

/// Bytes LAME may emit on the final flush, per its documentation.
const MP3_FLUSH_BYTES: usize = 7200;

/// The rate Opus encodes at; other rates are resampled to it (Opus also
/// takes 8, 12, 16 and 24 kHz, but decoders play 48 kHz whatever it was).
pub const OPUS_SAMPLE_RATE_HZ: u32 = 48_000;

/// Samples of one Opus frame at 48 kHz: 20 ms, the codec's usual choice.
const OPUS_FRAME_SAMPLES: usize = 960;

/// Opus bitrate: transparent for mono speech, a tenth of MP3's size or less.
const OPUS_BITRATE: i32 = 32_000;

/// Largest Opus packet (RFC 6716 allows 1275 bytes per frame).
const OPUS_MAX_PACKET: usize = 4_000;

/// Serial number of the one logical Ogg stream. Fixed, so the same samples
/// always encode to the same bytes (the objects are content-addressed).
const OGG_SERIAL: u32 = 0x7474_7371;

/// `vendor` of the OpusTags header.
const OPUS_VENDOR: &str = "ttsq (libopus)";

/// Mono 16-bit PCM at a known rate: what espeak-ng writes and every encoder reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Waveform {
    /// Signed 16-bit samples, one channel.
    pub samples: Vec<i16>,
    /// Samples per second.
    pub sample_rate_hz: u32,
}

impl Waveform {
    /// Playing time in milliseconds.
    pub fn duration_ms(&self) -> u32 {
        duration_ms(self.samples.len(), self.sample_rate_hz)
    }
}

/// Playing time of `sample_count` mono samples at `sample_rate_hz`, rounded to
/// the nearest millisecond; 0 for a rate of 0, saturating at `u32::MAX`.
pub fn duration_ms(sample_count: usize, sample_rate_hz: u32) -> u32 {
    if sample_rate_hz == 0 {
        return 0;
    }
    let rate = u128::from(sample_rate_hz);
    let millis = (sample_count as u128 * 1000 + rate / 2) / rate;
    u32::try_from(millis).unwrap_or(u32::MAX)
}

/// What a provider's waveform becomes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rendering {
    /// Output encoding.
    pub format: AudioFormat,
    /// Output rate; the waveform is resampled to it. Opus is encoded at 48 kHz
    /// whatever this says (its header keeps this as the input rate).
    pub sample_rate_hz: u32,
    /// Tempo factor still to apply at the same pitch: the speed asked for
    /// over the part the provider did itself (1.0: none).
    pub stretch: f64,
}

/// `waveform` stretched, resampled and encoded as `rendering` says; the
/// bytes and their playing time in milliseconds.
pub fn render(waveform: &Waveform, rendering: Rendering) -> Result<(Vec<u8>, u32), ProviderError> {
    let stretched;
    let mut samples = waveform.samples.as_slice();
    if (rendering.stretch - 1.0).abs() >= dsp::STRETCH_EPSILON {
        stretched = dsp::time_stretch(samples, waveform.sample_rate_hz, rendering.stretch);
        samples = &stretched;
    }
    let resampled;
    if rendering.sample_rate_hz != waveform.sample_rate_hz && waveform.sample_rate_hz != 0 {
        resampled = dsp::resample(samples, waveform.sample_rate_hz, rendering.sample_rate_hz);
        samples = &resampled;
    }
    let bytes = encode(samples, rendering.sample_rate_hz, rendering.format)?;
    Ok((bytes, duration_ms(samples.len(), rendering.sample_rate_hz)))
}

/// Encodes mono samples as `format`.
///
/// `Wav` is RIFF WAVE 16-bit mono, `Pcm` raw signed 16-bit little-endian,
/// `Mp3` constant 64 kbps mono, `Flac` 16-bit mono at the samples' rate,
/// `Opus` 32 kbps mono at 48 kHz in Ogg (RFC 7845).
pub fn encode(
    samples: &[i16],
    sample_rate_hz: u32,
    format: AudioFormat,
) -> Result<Vec<u8>, ProviderError> {
    if sample_rate_hz == 0 {
        return Err(encode_error(format, "sample rate must be above 0 Hz"));
    }
    match format {
        AudioFormat::Wav => encode_wav(samples, sample_rate_hz),
        AudioFormat::Pcm => Ok(encode_pcm(samples)),
        AudioFormat::Mp3 => encode_mp3(samples, sample_rate_hz),
        AudioFormat::Flac => encode_flac(samples, sample_rate_hz),
        AudioFormat::Opus => encode_opus(samples, sample_rate_hz),
    }
}

/// Reads a 16-bit mono RIFF WAVE file, such as `espeak-ng -w` writes.
pub fn read_wav(bytes: &[u8]) -> Result<Waveform, ProviderError> {
    let reader = hound::WavReader::new(Cursor::new(bytes)).map_err(|e| wav_error(&e))?;
    let spec = reader.spec();
    if spec.channels != 1
        || spec.bits_per_sample != 16
        || spec.sample_format != hound::SampleFormat::Int
    {
        return Err(encode_error(
            AudioFormat::Wav,
            format!(
                "expected 16-bit integer mono, got {} channel(s) of {}-bit {:?}",
                spec.channels, spec.bits_per_sample, spec.sample_format
            ),
        ));
    }
    let samples = reader
        .into_samples::<i16>()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| wav_error(&e))?;
    Ok(Waveform {
        samples,
        sample_rate_hz: spec.sample_rate,
    })
}

/// Bytes of the header [`wav_header`] writes.
pub const WAV_HEADER_LEN: usize = 44;

/// The header of a RIFF WAVE file of `data_len` bytes of 16-bit mono PCM at
/// `sample_rate_hz`: `RIFF`, a 16-byte `fmt ` chunk, the `data` chunk's
/// header; byte for byte what hound writes, so audio stored before and
/// after ttsq stopped going through hound is the same. `None` when the file
/// would exceed RIFF's 4 GiB.
pub fn wav_header(sample_rate_hz: u32, data_len: usize) -> Option<[u8; WAV_HEADER_LEN]> {
    let data_len = u32::try_from(data_len).ok()?;
    let riff_len = data_len.checked_add(WAV_HEADER_LEN as u32 - 8)?;
    let byte_rate = sample_rate_hz.checked_mul(2)?;
    let mut header = [0u8; WAV_HEADER_LEN];
    header[0..4].copy_from_slice(b"RIFF");
    header[4..8].copy_from_slice(&riff_len.to_le_bytes());
    header[8..16].copy_from_slice(b"WAVEfmt ");
    header[16..20].copy_from_slice(&16u32.to_le_bytes());
    header[20..22].copy_from_slice(&1u16.to_le_bytes()); // PCM
    header[22..24].copy_from_slice(&1u16.to_le_bytes()); // mono
    header[24..28].copy_from_slice(&sample_rate_hz.to_le_bytes());
    header[28..32].copy_from_slice(&byte_rate.to_le_bytes());
    header[32..34].copy_from_slice(&2u16.to_le_bytes()); // block align
    header[34..36].copy_from_slice(&16u16.to_le_bytes()); // bits per sample
    header[36..40].copy_from_slice(b"data");
    header[40..44].copy_from_slice(&data_len.to_le_bytes());
    Some(header)
}

/// A WAV file of `pcm`, 16-bit little-endian mono samples at
/// `sample_rate_hz` (an even number of bytes): [`wav_header`], then `pcm`.
pub fn wav_from_pcm(pcm: &[u8], sample_rate_hz: u32) -> Result<Vec<u8>, ProviderError> {
    let header = wav_header(sample_rate_hz, pcm.len())
        .ok_or_else(|| encode_error(AudioFormat::Wav, "larger than a WAV file can be"))?;
    let mut out = Vec::with_capacity(WAV_HEADER_LEN + pcm.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(pcm);
    Ok(out)
}

fn encode_wav(samples: &[i16], sample_rate_hz: u32) -> Result<Vec<u8>, ProviderError> {
    let header = wav_header(sample_rate_hz, samples.len().saturating_mul(2))
        .ok_or_else(|| encode_error(AudioFormat::Wav, "larger than a WAV file can be"))?;
    let mut out = Vec::with_capacity(WAV_HEADER_LEN + samples.len() * 2);
    out.extend_from_slice(&header);
    out.extend(samples.iter().flat_map(|s| s.to_le_bytes()));
    Ok(out)
}

fn encode_pcm(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

fn encode_mp3(samples: &[i16], sample_rate_hz: u32) -> Result<Vec<u8>, ProviderError> {
    let lame = |step: &str, e: &dyn std::fmt::Display| {
        encode_error(AudioFormat::Mp3, format!("{step}: {e}"))
    };
    let mut builder = Builder::new()
        .ok_or_else(|| encode_error(AudioFormat::Mp3, "LAME could not allocate an encoder"))?;
    builder
        .set_num_channels(1)
        .map_err(|e| lame("channels", &e))?;
    builder
        .set_sample_rate(sample_rate_hz)
        .map_err(|e| lame("sample rate", &e))?;
    builder.set_mode(Mode::Mono).map_err(|e| lame("mode", &e))?;
    builder
        .set_brate(MP3_BITRATE)
        .map_err(|e| lame("bitrate", &e))?;
    builder
        .set_quality(MP3_QUALITY)
        .map_err(|e| lame("quality", &e))?;
    let mut encoder = builder.build().map_err(|e| lame("init", &e))?;

    let mut out = Vec::with_capacity(mp3lame_encoder::max_required_buffer_size(samples.len() / 8));
    for chunk in samples.chunks(MP3_CHUNK_SAMPLES) {
        out.reserve(mp3lame_encoder::max_required_buffer_size(chunk.len()));
        encoder
            .encode_to_vec(MonoPcm(chunk), &mut out)
            .map_err(|e| lame("encode", &e))?;
    }
    // `FlushGap` is LAME's plain `lame_encode_flush`: it pads the last frame
    // so the tail is kept, and ends the stream (no gapless continuation).
    out.reserve(MP3_FLUSH_BYTES);
    encoder
        .flush_to_vec::<FlushGap>(&mut out)
        .map_err(|e| lame("flush", &e))?;
    write_info_tag(&encoder, &mut out);
    Ok(out)
}

fn encode_flac(samples: &[i16], sample_rate_hz: u32) -> Result<Vec<u8>, ProviderError> {
    let flac = |e: &dyn std::fmt::Display| encode_error(AudioFormat::Flac, e.to_string());
    let config = flacenc::config::Encoder::default()
        .into_verified()
        .map_err(|(_, e)| flac(&e))?;
    let wide: Vec<i32> = samples.iter().map(|&s| i32::from(s)).collect();
    let rate = usize::try_from(sample_rate_hz).map_err(|e| flac(&e))?;
    let source = flacenc::source::MemSource::from_samples(&wide, 1, 16, rate);
    let stream = flacenc::encode_with_fixed_block_size(&config, source, config.block_size)
        .map_err(|e| flac(&e))?;
    let mut sink = flacenc::bitsink::ByteSink::new();
    stream.write(&mut sink).map_err(|e| flac(&e))?;
    Ok(sink.into_inner())
}

/// Opus packets of 20 ms in one Ogg logical stream: an `OpusHead` page, an
/// `OpusTags` page, then the audio. The encoder's lookahead is the header's
/// pre-skip, and the last page's granule position ends the stream at the
/// input's last sample, so players trim both the start and the padding.
fn encode_opus(samples: &[i16], sample_rate_hz: u32) -> Result<Vec<u8>, ProviderError> {
    let opus = |step: &str, e: &dyn std::fmt::Display| {
        encode_error(AudioFormat::Opus, format!("{step}: {e}"))
    };
    let pcm = dsp::resample(samples, sample_rate_hz, OPUS_SAMPLE_RATE_HZ);
    let mut encoder = opus::Encoder::new(
        OPUS_SAMPLE_RATE_HZ,
        opus::Channels::Mono,
        opus::Application::Audio,
    )
    .map_err(|e| opus("init", &e))?;
    encoder
        .set_bitrate(opus::Bitrate::Bits(OPUS_BITRATE))
        .map_err(|e| opus("bitrate", &e))?;
    let lookahead = encoder.get_lookahead().map_err(|e| opus("lookahead", &e))?;
    let pre_skip = u16::try_from(lookahead).map_err(|e| opus("lookahead", &e))?;
    let end_granule = u64::from(pre_skip) + pcm.len() as u64;
    // Enough frames that the last input sample leaves the encoder's delay.
    let frames = (pcm.len() + usize::from(pre_skip))
        .div_ceil(OPUS_FRAME_SAMPLES)
        .max(1);

    let mut writer = PacketWriter::new(Vec::new());
    let ogg = |e: std::io::Error| opus("ogg", &e);
    writer
        .write_packet(
            opus_head(pre_skip, sample_rate_hz),
            OGG_SERIAL,
            PacketWriteEndInfo::EndPage,
            0,
        )
        .map_err(ogg)?;
    writer
        .write_packet(opus_tags(), OGG_SERIAL, PacketWriteEndInfo::EndPage, 0)
        .map_err(ogg)?;
    let mut frame = [0i16; OPUS_FRAME_SAMPLES];
    let mut packet = vec![0u8; OPUS_MAX_PACKET];
    for index in 0..frames {
        let start = (index * OPUS_FRAME_SAMPLES).min(pcm.len());
        let end = (start + OPUS_FRAME_SAMPLES).min(pcm.len());
        frame.fill(0);
        frame[..end - start].copy_from_slice(&pcm[start..end]);
        let len = encoder
            .encode(&frame, &mut packet)
            .map_err(|e| opus("encode", &e))?;
        let granule = (((index + 1) * OPUS_FRAME_SAMPLES) as u64).min(end_granule);
        let end_info = if index + 1 == frames {
            PacketWriteEndInfo::EndStream
        } else {
            PacketWriteEndInfo::NormalPacket
        };
        writer
            .write_packet(packet[..len].to_vec(), OGG_SERIAL, end_info, granule)
            .map_err(ogg)?;
    }
    Ok(writer.into_inner())
}

/// The identification header (RFC 7845 §5.1): mono, channel mapping 0.
fn opus_head(pre_skip: u16, input_rate_hz: u32) -> Vec<u8> {
    let mut head = Vec::with_capacity(19);
    head.extend_from_slice(b"OpusHead");
    head.push(1); // version
    head.push(1); // channels
    head.extend_from_slice(&pre_skip.to_le_bytes());
    head.extend_from_slice(&input_rate_hz.to_le_bytes());
    head.extend_from_slice(&0i16.to_le_bytes()); // output gain
    head.push(0); // mapping family: mono/stereo, no table
    head
}

/// The comment header (RFC 7845 §5.2): the vendor, no comments.
fn opus_tags() -> Vec<u8> {
    let mut tags = Vec::with_capacity(16 + OPUS_VENDOR.len());
    tags.extend_from_slice(b"OpusTags");
    tags.extend_from_slice(&(OPUS_VENDOR.len() as u32).to_le_bytes());
    tags.extend_from_slice(OPUS_VENDOR.as_bytes());
    tags.extend_from_slice(&0u32.to_le_bytes());
    tags
}

/// LAME starts the stream with a placeholder frame (a header, then zeros) for its
/// Xing/Info tag and leaves filling it to the caller. Written, it gives
/// players the frame count and the encoder delay and padding, so they play
/// exactly the input's length; left as zeros, it is one unparseable frame.
fn write_info_tag(encoder: &mp3lame_encoder::Encoder, out: &mut [u8]) {
    let mut tag = Vec::with_capacity(encoder.lame_tag_size());
    if encoder.lame_tag_encode_to_vec(&mut tag).is_some() && tag.len() <= out.len() {
        out[..tag.len()].copy_from_slice(&tag);
    }
}

fn encode_error(format: AudioFormat, message: impl Into<String>) -> ProviderError {
    ProviderError::Encode {
        format,
        message: message.into(),
    }
}

fn wav_error(error: &hound::Error) -> ProviderError {
    encode_error(AudioFormat::Wav, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 22_050;

    /// One second of a 440 Hz tone at half scale.
    fn tone(sample_count: usize) -> Vec<i16> {
        (0..sample_count)
            .map(|i| {
                let t = i as f64 / f64::from(RATE);
                (f64::from(i16::MAX) * 0.5 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
            })
            .collect()
    }

    /// Playing time of an MPEG audio stream, from its frame headers; skips an
    /// ID3v2 tag and a Xing/Info tag frame.
    fn mp3_duration_ms(bytes: &[u8]) -> f64 {
        const BITRATES_V1: [u32; 15] = [
            0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
        ];
        const BITRATES_V2: [u32; 15] =
            [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
        let mut pos = 0;
        if bytes.starts_with(b"ID3") {
            let size = bytes[6..10]
                .iter()
                .fold(0usize, |acc, &b| (acc << 7) | usize::from(b & 0x7f));
            pos = 10 + size;
        }
        let mut samples = 0u64;
        let mut rate = 0u32;
        let mut first = true;
        while pos + 4 <= bytes.len() {
            let h = &bytes[pos..pos + 4];
            assert!(
                h[0] == 0xff && h[1] & 0xe0 == 0xe0,
                "lost frame sync at byte {pos}"
            );
            let version = (h[1] >> 3) & 3;
            assert_eq!((h[1] >> 1) & 3, 1, "not layer III");
            let (bitrates, rates, samples_per_frame) = match version {
                3 => (BITRATES_V1, [44_100, 48_000, 32_000], 1152),
                2 => (BITRATES_V2, [22_050, 24_000, 16_000], 576),
                0 => (BITRATES_V2, [11_025, 12_000, 8_000], 576),
                _ => panic!("reserved MPEG version"),
            };
            let kbps = bitrates[usize::from(h[2] >> 4)];
            rate = rates[usize::from((h[2] >> 2) & 3)];
            let padding = usize::from((h[2] >> 1) & 1);
            let length = (samples_per_frame / 8 * kbps as usize * 1000) / rate as usize + padding;
            let frame = &bytes[pos..(pos + length).min(bytes.len())];
            let is_tag = first
                && frame
                    .windows(4)
                    .take(48)
                    .any(|w| w == b"Xing" || w == b"Info");
            if !is_tag {
                samples += samples_per_frame as u64;
            }
            first = false;
            pos += length;
        }
        samples as f64 * 1000.0 / f64::from(rate)
    }

    #[test]
    fn wav_round_trips_through_hound() {
        let samples = tone(RATE as usize);

        let bytes = encode(&samples, RATE, AudioFormat::Wav).unwrap();
        let decoded = read_wav(&bytes).unwrap();

        assert_eq!(&bytes[..4], b"RIFF");
        assert_eq!(decoded.sample_rate_hz, RATE);
        assert_eq!(decoded.samples, samples);
        assert_eq!(decoded.duration_ms(), 1000);
    }

    #[test]
    fn wav_is_byte_for_byte_what_hound_writes() {
        for (rate, length) in [(RATE, 0), (8_000, 1), (24_000, 2_401), (48_000, 96_000)] {
            let samples = tone(length);
            let spec = hound::WavSpec {
                channels: 1,
                sample_rate: rate,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            let mut cursor = Cursor::new(Vec::new());
            let mut writer = hound::WavWriter::new(&mut cursor, spec).unwrap();
            for &sample in &samples {
                writer.write_sample(sample).unwrap();
            }
            writer.finalize().unwrap();

            let ours = encode(&samples, rate, AudioFormat::Wav).unwrap();

            assert_eq!(ours, cursor.into_inner(), "{length} samples at {rate} Hz");
        }
    }

    #[test]
    fn a_wav_header_refuses_what_riff_cannot_state() {
        assert!(wav_header(RATE, 1 << 32).is_none());
        assert!(wav_header(RATE, u32::MAX as usize).is_none());
        assert!(wav_header(u32::MAX, 2).is_none());
        assert!(wav_header(RATE, u32::MAX as usize - 36).is_some());
    }

    #[test]
    fn pcm_is_two_little_endian_bytes_per_sample() {
        let samples = [1i16, -2, i16::MAX];

        let bytes = encode(&samples, RATE, AudioFormat::Pcm).unwrap();

        assert_eq!(bytes.len(), 2 * samples.len());
        assert_eq!(bytes, [1, 0, 0xfe, 0xff, 0xff, 0x7f]);
    }

    #[test]
    fn mp3_starts_with_a_frame_and_lasts_as_long_as_the_input() {
        let samples = tone(RATE as usize);

        let bytes = encode(&samples, RATE, AudioFormat::Mp3).unwrap();

        let starts_with_frame = bytes[0] == 0xff && bytes[1] & 0xe0 == 0xe0;
        assert!(
            starts_with_frame || bytes.starts_with(b"ID3"),
            "starts with {:02x?}",
            &bytes[..4]
        );
        let duration = mp3_duration_ms(&bytes);
        assert!(
            (850.0..=1150.0).contains(&duration),
            "estimated {duration} ms"
        );
        assert!(
            bytes[..64].windows(4).any(|w| w == b"Info"),
            "no Info tag in the first frame"
        );
    }

    #[test]
    fn empty_input_encodes_in_every_supported_format() {
        assert_eq!(
            read_wav(&encode(&[], RATE, AudioFormat::Wav).unwrap())
                .unwrap()
                .samples,
            Vec::<i16>::new()
        );
        assert!(encode(&[], RATE, AudioFormat::Pcm).unwrap().is_empty());
        assert!(mp3_duration_ms(&encode(&[], RATE, AudioFormat::Mp3).unwrap()) < 100.0);
        assert_eq!(&encode(&[], RATE, AudioFormat::Flac).unwrap()[..4], b"fLaC");
    }

    #[test]
    fn flac_decodes_back_to_the_same_samples() {
        let samples = tone(RATE as usize);

        let bytes = encode(&samples, RATE, AudioFormat::Flac).unwrap();

        assert_eq!(&bytes[..4], b"fLaC");
        let mut reader = claxon::FlacReader::new(Cursor::new(&bytes)).unwrap();
        assert_eq!(reader.streaminfo().sample_rate, RATE);
        assert_eq!(reader.streaminfo().channels, 1);
        assert_eq!(reader.streaminfo().bits_per_sample, 16);
        let decoded: Vec<i16> = reader
            .samples()
            .map(|s| i16::try_from(s.unwrap()).unwrap())
            .collect();
        assert_eq!(decoded, samples);
        assert!(bytes.len() < samples.len() * 2, "no smaller than raw PCM");
    }

    /// The packets of an Ogg stream with the granule position of the page
    /// each ended on, and whether it was the last page.
    fn ogg_packets(bytes: &[u8]) -> Vec<(Vec<u8>, u64, bool)> {
        let mut reader = ogg::PacketReader::new(Cursor::new(bytes));
        let mut packets = Vec::new();
        while let Some(packet) = reader.read_packet().unwrap() {
            assert_eq!(packet.stream_serial(), OGG_SERIAL);
            packets.push((
                packet.data.clone(),
                packet.absgp_page(),
                packet.last_in_stream(),
            ));
        }
        packets
    }

    #[test]
    fn opus_is_an_ogg_stream_with_rfc_7845_headers_and_exact_granules() {
        let samples = tone(RATE as usize);

        let bytes = encode(&samples, RATE, AudioFormat::Opus).unwrap();

        assert_eq!(&bytes[..4], b"OggS");
        let packets = ogg_packets(&bytes);
        let head = &packets[0].0;
        assert_eq!(&head[..8], b"OpusHead");
        assert_eq!(head[8], 1, "version");
        assert_eq!(head[9], 1, "channels");
        let pre_skip = u16::from_le_bytes([head[10], head[11]]);
        assert!(pre_skip > 0 && pre_skip < 1000, "pre-skip {pre_skip}");
        assert_eq!(u32::from_le_bytes(head[12..16].try_into().unwrap()), RATE);
        assert_eq!(packets[0].1, 0);
        assert_eq!(&packets[1].0[..8], b"OpusTags");
        let audio = &packets[2..];
        // 20 ms packets covering the input at 48 kHz plus the pre-skip.
        let at_48k = u64::from(OPUS_SAMPLE_RATE_HZ);
        let length_48k = (samples.len() as u64 * at_48k).div_ceil(u64::from(RATE));
        assert_eq!(
            audio.len() as u64,
            (length_48k + u64::from(pre_skip)).div_ceil(OPUS_FRAME_SAMPLES as u64)
        );
        let (_, last_granule, last) = audio.last().unwrap();
        assert!(*last, "the stream is ended");
        assert_eq!(*last_granule, u64::from(pre_skip) + length_48k);
        let granules: Vec<u64> = audio.iter().map(|p| p.1).collect();
        assert!(granules.windows(2).all(|w| w[0] <= w[1]));

        let mut decoder = opus::Decoder::new(OPUS_SAMPLE_RATE_HZ, opus::Channels::Mono).unwrap();
        let mut decoded = Vec::new();
        let mut buf = [0i16; 5760];
        for (packet, _, _) in audio {
            let n = decoder.decode(packet, &mut buf, false).unwrap();
            decoded.extend_from_slice(&buf[..n]);
        }
        let decoded = &decoded[usize::from(pre_skip)..][..length_48k as usize];
        let rms = |s: &[i16]| {
            (s.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / s.len() as f64).sqrt()
        };
        let (a, b) = (rms(&samples), rms(decoded));
        assert!((a - b).abs() / a < 0.1, "input rms {a}, decoded rms {b}");
    }

    #[test]
    fn opus_of_nothing_is_still_a_complete_stream() {
        let packets = ogg_packets(&encode(&[], RATE, AudioFormat::Opus).unwrap());

        assert_eq!(packets.len(), 3);
        assert!(packets[2].2);
    }

    #[test]
    fn rendering_stretches_resamples_and_reports_the_playing_time() {
        let waveform = Waveform {
            samples: tone(RATE as usize),
            sample_rate_hz: RATE,
        };

        let (bytes, duration) = render(
            &waveform,
            Rendering {
                format: AudioFormat::Pcm,
                sample_rate_hz: 24_000,
                stretch: 2.0,
            },
        )
        .unwrap();

        assert_eq!(duration, 500);
        assert_eq!(bytes.len(), 2 * 12_000);
    }

    #[test]
    fn a_zero_sample_rate_is_an_encode_error_not_a_panic() {
        for format in AudioFormat::ALL {
            let err = encode(&tone(100), 0, format).unwrap_err();

            assert_eq!(err.code(), "encode_failed", "{format}: {err:?}");
        }
    }

    #[test]
    fn garbage_and_non_mono_wav_are_rejected() {
        assert!(matches!(
            read_wav(b"not a wav"),
            Err(ProviderError::Encode { .. })
        ));
        assert!(matches!(read_wav(&[]), Err(ProviderError::Encode { .. })));
        let stereo = hound::WavSpec {
            channels: 2,
            sample_rate: RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut cursor = Cursor::new(Vec::new());
        let mut writer = hound::WavWriter::new(&mut cursor, stereo).unwrap();
        writer.write_sample(0i16).unwrap();
        writer.write_sample(0i16).unwrap();
        writer.finalize().unwrap();

        let err = read_wav(cursor.get_ref()).unwrap_err();

        assert!(err.to_string().contains("mono"), "{err}");
    }

    #[test]
    fn truncated_wav_is_an_error() {
        let bytes = encode(&tone(1000), RATE, AudioFormat::Wav).unwrap();

        assert!(read_wav(&bytes[..bytes.len() - 501]).is_err());
    }

    #[test]
    fn duration_rounds_to_the_nearest_millisecond() {
        assert_eq!(duration_ms(22_050, 22_050), 1000);
        assert_eq!(duration_ms(11, 22_050), 0);
        assert_eq!(duration_ms(12, 22_050), 1);
        assert_eq!(duration_ms(500, 0), 0);
        assert_eq!(duration_ms(usize::MAX, 1), u32::MAX);
    }
}
