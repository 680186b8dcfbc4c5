//! Audio files joined into one, streamed: a batch's items
//! ([`crate::batches`]) or a long job's chunks ([`crate::long_jobs`]), each
//! an [`AudioPart`]. Each part's object is read as it arrives and written
//! through a multipart upload that holds one part, so a join's memory does
//! not grow with the number or size of the files; the joined file's SHA-256
//! is computed on the way.
//!
//! - PCM: the items' bytes, one after the other; their tasks' sample rates
//!   must agree (a raw stream cannot say where its rate changes).
//! - MP3: each file's frames without its leading ID3v2 tag and Info/Xing
//!   frame, which would tell players the length of the first file only.
//!   Sample rates must agree (a rate change mid-stream is refused rather
//!   than decoded and resampled).
//! - WAV: one header whose data length is the sum of the items' data
//!   chunks, learnt first from each item's header (a ranged GET of its
//!   first KiBs), then each item's data chunk. Sample rates and layouts
//!   must agree.
//!
//! Every byte written counts against the joined file's cap; a join that
//! would pass it stops, and its upload is aborted.

use std::fmt;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use ttsq_audio::{AudioStore, AudioStoreError, MultipartWriter, ObjectReader};
use ttsq_core::AudioFormat;
use ttsq_store::{BatchAudio, ChunkAudio, StoreError};

/// Bytes of a WAV header as the join writes it (RIFF, `fmt `, `data`).
const WAV_HEADER_BYTES: u64 = 44;

/// How much of an item's start is read to find its WAV header: the first
/// range fits the usual 44-byte header with room for metadata chunks, the
/// second a header with large ones.
const WAV_HEADER_READS: [u64; 2] = [4 * 1024, 64 * 1024];

/// Why audio could not be joined.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The parts' audio cannot be joined (formats, layouts, a missing
    /// object, the size cap): a batch completes with this as its
    /// `concatenate_error`, a long job fails with it.
    #[error("{0}")]
    Unjoinable(String),
    /// Storage failed; the join is tried again, a bounded number of times.
    #[error(transparent)]
    Storage(#[from] AudioStoreError),
    /// Postgres failed; the join is tried again, a bounded number of times.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another replica took the join over (this one's lease expired).
    #[error("the lease on the join was lost to another replica")]
    LeaseLost,
}

impl JoinError {
    /// What the tenant is told (`concatenate_error`, a long job's error
    /// message): the reason when the audio cannot be joined, else what
    /// failed, without internal detail.
    pub fn public_reason(&self) -> String {
        match self {
            Self::Unjoinable(reason) => reason.clone(),
            Self::Storage(_) => "the audio storage was unavailable".into(),
            Self::Store(_) => "the database was unavailable".into(),
            Self::LeaseLost => "another replica took the join over".into(),
        }
    }
}

/// What bounds one join.
#[derive(Debug, Clone, Copy)]
pub struct JoinLimits {
    /// Length of the upload's parts: about what a join holds in memory.
    pub part_bytes: usize,
    /// Largest joined file.
    pub max_bytes: u64,
}

impl JoinLimits {
    /// The limits of `settings` (`join_part_bytes`, `max_joined_bytes`),
    /// which bound batch and long-job joins alike.
    pub fn from_settings(settings: &ttsq_config::BatchSettings) -> Self {
        Self {
            part_bytes: usize::try_from(settings.join_part_bytes).unwrap_or(usize::MAX),
            max_bytes: settings.max_joined_bytes,
        }
    }
}

/// What the parts of a join are, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartKind {
    /// A batch's item, named by its 0-based `batch_index` (as the batch's
    /// item listing shows it).
    Item,
    /// A long job's chunk, named from 1 (`chunk 2 of 5`, as a failed
    /// chunk's message names it).
    Chunk,
}

impl PartKind {
    fn plural(self) -> &'static str {
        match self {
            Self::Item => "items",
            Self::Chunk => "chunks",
        }
    }
}

/// One file to join: a batch item's or a long job's chunk's audio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioPart {
    /// A batch item or a chunk.
    pub kind: PartKind,
    /// Its place among the parts, from 0.
    pub index: i32,
    /// Bucket key of its audio.
    pub s3_key: String,
    /// Format name.
    pub format: String,
    /// Playing time, as indexed.
    pub duration_ms: i32,
    /// Output sample rate of its task; `None` for tasks stored before it
    /// was recorded.
    pub sample_rate_hz: Option<i32>,
}

impl fmt::Display for AudioPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PartKind::Item => write!(f, "item {}", self.index),
            PartKind::Chunk => write!(f, "chunk {}", i64::from(self.index) + 1),
        }
    }
}

impl From<BatchAudio> for AudioPart {
    fn from(item: BatchAudio) -> Self {
        Self {
            kind: PartKind::Item,
            index: item.batch_index,
            s3_key: item.s3_key,
            format: item.format,
            duration_ms: item.duration_ms,
            sample_rate_hz: item.sample_rate_hz,
        }
    }
}

impl From<&ChunkAudio> for AudioPart {
    fn from(chunk: &ChunkAudio) -> Self {
        Self {
            kind: PartKind::Chunk,
            index: chunk.chunk_index,
            s3_key: chunk.s3_key.clone(),
            format: chunk.format.clone(),
            duration_ms: chunk.duration_ms,
            sample_rate_hz: chunk.sample_rate_hz,
        }
    }
}

/// A joined file, stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// Its size.
    pub bytes: u64,
    /// Its playing time.
    pub duration_ms: i32,
    /// Hex SHA-256 of its bytes.
    pub sha256: String,
    /// When each part starts in it, in ms, in order: the first at 0. Speech
    /// marks of a part are shifted by its start.
    pub starts_ms: Vec<i64>,
}

/// Joins the audio of `parts` (in order, all of `format`) into the object
/// `key`.
pub async fn join_parts(
    audio: &AudioStore,
    key: &str,
    format: AudioFormat,
    parts: &[AudioPart],
    limits: JoinLimits,
) -> Result<Joined, JoinError> {
    let kind = parts.first().map_or(PartKind::Item, |p| p.kind);
    match format {
        AudioFormat::Wav => join_wav(audio, key, parts, limits).await,
        AudioFormat::Pcm | AudioFormat::Mp3 => {
            if format == AudioFormat::Pcm {
                check_pcm_rates(parts)?;
            }
            let mut out = Output::start(audio, key, format, limits, kind).await?;
            let written = async {
                let mut first_rate: Option<(&AudioPart, u32)> = None;
                for part in parts {
                    let mut stream = ItemStream::open(audio, part).await?;
                    if format == AudioFormat::Mp3
                        && let Some(rate) = drop_mp3_preamble(&mut stream).await?
                    {
                        match first_rate {
                            None => first_rate = Some((part, rate)),
                            Some((first_part, first)) if first != rate => {
                                return Err(mixed_rates("MP3", part, rate, first_part, first));
                            }
                            Some(_) => {}
                        }
                    }
                    stream.copy_to(&mut out, None).await?;
                }
                Ok(())
            }
            .await;
            let (bytes, sha256) = out.finish(written).await?;
            let mut starts_ms = Vec::with_capacity(parts.len());
            let mut listed: i64 = 0;
            for part in parts {
                starts_ms.push(listed);
                listed += i64::from(part.duration_ms);
            }
            Ok(Joined {
                bytes,
                duration_ms: i32::try_from(listed).unwrap_or(i32::MAX),
                sha256,
                starts_ms,
            })
        }
        AudioFormat::Opus | AudioFormat::Flac => Err(JoinError::Unjoinable(format!(
            "{format} audio cannot be joined; ask for mp3, wav or pcm"
        ))),
    }
}

/// Refuses PCM parts whose tasks were rendered at different rates (parts
/// of tasks stored before rates were recorded are not compared).
fn check_pcm_rates(parts: &[AudioPart]) -> Result<(), JoinError> {
    let mut first: Option<(&AudioPart, u32)> = None;
    for part in parts {
        let Some(rate) = part.sample_rate_hz.and_then(|r| u32::try_from(r).ok()) else {
            continue;
        };
        match first {
            None => first = Some((part, rate)),
            Some((first_part, first_rate)) if first_rate != rate => {
                return Err(mixed_rates("PCM", part, rate, first_part, first_rate));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn mixed_rates(
    format: &str,
    part: &AudioPart,
    rate: u32,
    first: &AudioPart,
    first_rate: u32,
) -> JoinError {
    let plural = part.kind.plural();
    JoinError::Unjoinable(format!(
        "{part} is {rate} Hz but {first} is {first_rate} Hz: \
         {format} {plural} must share a sample rate to be joined (use dialects of one rate)"
    ))
}

/// Joins WAV parts: their headers first (the joined header needs the total
/// data length), then their data chunks.
async fn join_wav(
    audio: &AudioStore,
    key: &str,
    parts: &[AudioPart],
    limits: JoinLimits,
) -> Result<Joined, JoinError> {
    let kind = parts.first().map_or(PartKind::Item, |p| p.kind);
    let mut sections = Vec::with_capacity(parts.len());
    let mut data_bytes: u64 = 0;
    let mut starts_ms = Vec::with_capacity(parts.len());
    for part in parts {
        let section = wav_section(audio, part).await?;
        if let Some(first) = sections.first().map(|s: &WavSection| s.layout)
            && first != section.layout
        {
            return Err(JoinError::Unjoinable(format!(
                "{part} is {} but {} is {first}: WAV {} must share a sample rate and layout",
                section.layout,
                parts[0],
                kind.plural()
            )));
        }
        starts_ms.push(i64::from(section.layout.duration_ms(data_bytes)));
        data_bytes += section.len;
        if WAV_HEADER_BYTES + data_bytes > limits.max_bytes {
            return Err(too_large(limits.max_bytes, kind));
        }
        sections.push(section);
    }
    let Some(layout) = sections.first().map(|s| s.layout) else {
        return Err(JoinError::Unjoinable("there is no audio to join".into()));
    };
    let data_len = u32::try_from(data_bytes + WAV_HEADER_BYTES - 8)
        .map(|_| data_bytes as u32)
        .map_err(|_| {
            JoinError::Unjoinable("the joined WAV would pass 4 GiB, the format's limit".into())
        })?;
    let mut out = Output::start(audio, key, AudioFormat::Wav, limits, kind).await?;
    let written = async {
        out.write(&wav_header(layout, data_len)).await?;
        for (part, section) in parts.iter().zip(&sections) {
            let mut stream = ItemStream::open(audio, part).await?;
            let skipped = stream.skip(section.offset).await?;
            let copied = stream.copy_to(&mut out, Some(section.len)).await?;
            if skipped < section.offset || copied < section.len {
                return Err(JoinError::Unjoinable(format!(
                    "{part}'s audio is shorter than its WAV header says"
                )));
            }
        }
        Ok(())
    }
    .await;
    let (bytes, sha256) = out.finish(written).await?;
    Ok(Joined {
        bytes,
        duration_ms: layout.duration_ms(data_bytes),
        sha256,
        starts_ms,
    })
}

/// Finds a part's WAV data chunk from the first KiBs of its object.
async fn wav_section(audio: &AudioStore, item: &AudioPart) -> Result<WavSection, JoinError> {
    for read in WAV_HEADER_READS {
        let reader = audio
            .open_range(&item.s3_key, 0, Some(read - 1))
            .await
            .map_err(|err| missing_or(err, item))?;
        let object_bytes = reader.object_bytes();
        let mut stream = ItemStream::new(reader);
        let head = stream
            .read_up_to(usize::try_from(read).unwrap_or(usize::MAX))
            .await?;
        match parse_wav_header(&head, object_bytes) {
            Ok(Some(section)) => return Ok(section),
            Ok(None) if (head.len() as u64) < object_bytes => continue,
            Ok(None) => {
                return Err(JoinError::Unjoinable(format!(
                    "{item}'s WAV file has no data chunk"
                )));
            }
            Err(reason) => {
                return Err(JoinError::Unjoinable(format!("{item}: {reason}")));
            }
        }
    }
    Err(JoinError::Unjoinable(format!(
        "{item}'s WAV data chunk does not start in its first {} KiB",
        WAV_HEADER_READS[WAV_HEADER_READS.len() - 1] / 1024
    )))
}

/// Drops an MP3 file's leading ID3v2 tag and Info/Xing frame, when present,
/// from the front of `stream`; the sample rate of its first frame, if it
/// starts with one.
async fn drop_mp3_preamble(stream: &mut ItemStream) -> Result<Option<u32>, JoinError> {
    let head = stream.read_up_to(10).await?;
    if head.len() == 10 && &head[..3] == b"ID3" {
        let size = head[6..10]
            .iter()
            .fold(0u64, |acc, b| (acc << 7) | u64::from(b & 0x7f));
        let footer = if head[5] & 0x10 != 0 { 10 } else { 0 };
        stream.skip(size + footer).await?;
    } else {
        stream.put_back(head);
    }
    let header = stream.read_up_to(4).await?;
    let Some((length, rate)) = frame_header(&header) else {
        stream.put_back(header);
        return Ok(None);
    };
    let mut frame = header;
    let rest = stream.read_up_to(length.saturating_sub(4)).await?;
    frame.extend_from_slice(&rest);
    if !frame.windows(4).any(|w| w == b"Xing" || w == b"Info") {
        stream.put_back(frame);
    }
    Ok(Some(rate))
}

/// Length and sample rate of the MPEG audio Layer III frame at the start
/// of `bytes`.
fn frame_header(bytes: &[u8]) -> Option<(usize, u32)> {
    if bytes.len() < 4 || bytes[0] != 0xff || bytes[1] & 0xe0 != 0xe0 {
        return None;
    }
    let version = (bytes[1] >> 3) & 0x3; // 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5
    let bitrate_index = usize::from(bytes[2] >> 4);
    let rate_index = usize::from((bytes[2] >> 2) & 0x3);
    let padding = usize::from((bytes[2] >> 1) & 0x1);
    const MPEG1: [usize; 15] = [
        0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
    ];
    const MPEG2: [usize; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
    let (kbps, rates, per_frame) = match version {
        3 => (MPEG1.get(bitrate_index)?, [44_100, 48_000, 32_000], 144),
        2 => (MPEG2.get(bitrate_index)?, [22_050, 24_000, 16_000], 72),
        0 => (MPEG2.get(bitrate_index)?, [11_025, 12_000, 8_000], 72),
        _ => return None,
    };
    let rate: usize = *rates.get(rate_index)?;
    if *kbps == 0 {
        return None;
    }
    Some((
        per_frame * kbps * 1000 / rate + padding,
        u32::try_from(rate).ok()?,
    ))
}

/// How a WAV file's samples are laid out; joined files must agree on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WavLayout {
    /// 1: integer PCM, 3: IEEE float.
    encoding: u16,
    channels: u16,
    sample_rate: u32,
    bits_per_sample: u16,
    /// Bytes per frame (one sample of every channel).
    block_align: u16,
}

impl WavLayout {
    /// Playing time of `data_bytes` of samples, rounded to the millisecond.
    fn duration_ms(&self, data_bytes: u64) -> i32 {
        let frames = u128::from(data_bytes / u64::from(self.block_align.max(1)));
        let rate = u128::from(self.sample_rate.max(1));
        i32::try_from((frames * 1000 + rate / 2) / rate).unwrap_or(i32::MAX)
    }
}

impl std::fmt::Display for WavLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.encoding == 3 { "float" } else { "PCM" };
        write!(
            f,
            "{} Hz, {} channel(s) of {}-bit {kind}",
            self.sample_rate, self.channels, self.bits_per_sample
        )
    }
}

/// Where a WAV file's samples are: its data chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WavSection {
    layout: WavLayout,
    /// Offset of the first sample byte in the file.
    offset: u64,
    /// Bytes of whole frames in the chunk.
    len: u64,
}

/// Reads the WAV header at the start of a file of `object_bytes` bytes
/// whose first bytes are `head`: `Ok(None)` when `head` ends before the data
/// chunk starts. A data chunk whose size says more than the file holds (or
/// 0, as streaming writers leave it) runs to the end of the file.
fn parse_wav_header(head: &[u8], object_bytes: u64) -> Result<Option<WavSection>, String> {
    let u16_at = |at: usize| u16::from_le_bytes([head[at], head[at + 1]]);
    let u32_at =
        |at: usize| u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    if head.len() < 12 {
        return if (head.len() as u64) < object_bytes {
            Ok(None)
        } else {
            Err("not a WAV file".into())
        };
    }
    if &head[..4] != b"RIFF" || &head[8..12] != b"WAVE" {
        return Err("not a WAV file".into());
    }
    let mut layout = None;
    let mut at = 12usize;
    loop {
        if at + 8 > head.len() {
            return Ok(None);
        }
        let id = &head[at..at + 4];
        let size = u32_at(at + 4);
        let body = at + 8;
        if id == b"fmt " {
            let needed = if size >= 26 { 26 } else { 16 };
            if body + needed > head.len() {
                return Ok(None);
            }
            let mut encoding = u16_at(body);
            if encoding == 0xfffe && size >= 26 {
                // WAVE_FORMAT_EXTENSIBLE: the encoding opens the sub-format GUID.
                encoding = u16_at(body + 24);
            }
            let found = WavLayout {
                encoding,
                channels: u16_at(body + 2),
                sample_rate: u32_at(body + 4),
                block_align: u16_at(body + 12),
                bits_per_sample: u16_at(body + 14),
            };
            if !matches!(found.encoding, 1 | 3) {
                return Err(format!(
                    "WAV encoding {:#06x} is not PCM; only PCM and float WAV files are joined",
                    found.encoding
                ));
            }
            let frame = u32::from(found.channels) * u32::from(found.bits_per_sample).div_ceil(8);
            if found.channels == 0
                || found.sample_rate == 0
                || found.bits_per_sample == 0
                || u32::from(found.block_align) != frame
            {
                return Err(format!("WAV format chunk is inconsistent ({found})"));
            }
            layout = Some(found);
        } else if id == b"data" {
            let Some(layout) = layout else {
                return Err("WAV data chunk comes before its format chunk".into());
            };
            let offset = body as u64;
            let available = object_bytes.saturating_sub(offset);
            let declared = u64::from(size);
            let len = if declared == 0 || declared > available {
                available
            } else {
                declared
            };
            let len = len - len % u64::from(layout.block_align);
            return Ok(Some(WavSection {
                layout,
                offset,
                len,
            }));
        }
        // Chunks are padded to an even length.
        let next = body as u64 + u64::from(size) + u64::from(size & 1);
        if next >= object_bytes {
            return Err("WAV file has no data chunk".into());
        }
        match usize::try_from(next) {
            Ok(next) => at = next,
            Err(_) => return Ok(None),
        }
    }
}

/// The 44-byte header of a WAV file of `data_len` bytes of `layout` samples.
fn wav_header(layout: WavLayout, data_len: u32) -> [u8; 44] {
    let mut header = [0u8; 44];
    let byte_rate = layout.sample_rate * u32::from(layout.block_align);
    header[..4].copy_from_slice(b"RIFF");
    header[4..8].copy_from_slice(&(data_len + 36).to_le_bytes());
    header[8..12].copy_from_slice(b"WAVE");
    header[12..16].copy_from_slice(b"fmt ");
    header[16..20].copy_from_slice(&16u32.to_le_bytes());
    header[20..22].copy_from_slice(&layout.encoding.to_le_bytes());
    header[22..24].copy_from_slice(&layout.channels.to_le_bytes());
    header[24..28].copy_from_slice(&layout.sample_rate.to_le_bytes());
    header[28..32].copy_from_slice(&byte_rate.to_le_bytes());
    header[32..34].copy_from_slice(&layout.block_align.to_le_bytes());
    header[34..36].copy_from_slice(&layout.bits_per_sample.to_le_bytes());
    header[36..40].copy_from_slice(b"data");
    header[40..44].copy_from_slice(&data_len.to_le_bytes());
    header
}

fn too_large(max_bytes: u64, kind: PartKind) -> JoinError {
    let rest = match kind {
        PartKind::Item => "; its items' audio is available one by one",
        PartKind::Chunk => "",
    };
    JoinError::Unjoinable(format!(
        "the joined audio would be larger than {max_bytes} bytes \
         (batches.max_joined_bytes){rest}"
    ))
}

/// A missing object is the part's audio gone for good; anything else may pass.
fn missing_or(err: AudioStoreError, item: &AudioPart) -> JoinError {
    if err.is_not_found() {
        JoinError::Unjoinable(format!("{item}'s audio is missing from storage"))
    } else {
        JoinError::Storage(err)
    }
}

/// The joined file being uploaded, within its byte cap, hashed as written.
struct Output {
    upload: MultipartWriter,
    max_bytes: u64,
    kind: PartKind,
    sha256: Sha256,
}

impl Output {
    async fn start(
        audio: &AudioStore,
        key: &str,
        format: AudioFormat,
        limits: JoinLimits,
        kind: PartKind,
    ) -> Result<Self, JoinError> {
        let upload = audio
            .create_multipart(key, format.content_type(), limits.part_bytes)
            .await?;
        Ok(Self {
            upload,
            max_bytes: limits.max_bytes,
            kind,
            sha256: Sha256::new(),
        })
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), JoinError> {
        if self.upload.bytes_written() + data.len() as u64 > self.max_bytes {
            return Err(too_large(self.max_bytes, self.kind));
        }
        self.sha256.update(data);
        Ok(self.upload.write(data).await?)
    }

    /// Completes the upload after `written` went well, else aborts it;
    /// the size and hex SHA-256 of what was stored.
    async fn finish(self, written: Result<(), JoinError>) -> Result<(u64, String), JoinError> {
        match written {
            Ok(()) => {
                let bytes = self.upload.complete().await?;
                Ok((bytes, hex::encode(self.sha256.finalize())))
            }
            Err(err) => {
                if let Err(abort) = self.upload.abort().await {
                    tracing::warn!(error = %abort, "aborting a failed join's upload failed");
                }
                Err(err)
            }
        }
    }
}

/// An item's object read as a stream, with a look-ahead that can be put back.
struct ItemStream {
    reader: ObjectReader,
    /// Bytes read from `reader` (or put back) and not yet consumed.
    pending: Bytes,
}

impl ItemStream {
    fn new(reader: ObjectReader) -> Self {
        Self {
            reader,
            pending: Bytes::new(),
        }
    }

    async fn open(audio: &AudioStore, item: &AudioPart) -> Result<Self, JoinError> {
        let reader = audio
            .open(&item.s3_key)
            .await
            .map_err(|err| missing_or(err, item))?;
        Ok(Self::new(reader))
    }

    /// The next bytes, `None` at the end.
    async fn next(&mut self) -> Result<Option<Bytes>, JoinError> {
        if !self.pending.is_empty() {
            return Ok(Some(std::mem::take(&mut self.pending)));
        }
        loop {
            match self.reader.next_chunk().await? {
                Some(chunk) if chunk.is_empty() => continue,
                other => return Ok(other),
            }
        }
    }

    /// Up to `n` bytes; fewer only at the end.
    async fn read_up_to(&mut self, n: usize) -> Result<Vec<u8>, JoinError> {
        let mut out = Vec::with_capacity(n.min(64 * 1024));
        while out.len() < n {
            let Some(mut chunk) = self.next().await? else {
                break;
            };
            let take = (n - out.len()).min(chunk.len());
            out.extend_from_slice(&chunk.split_to(take));
            self.pending = chunk;
        }
        Ok(out)
    }

    /// Puts `bytes` back in front of what is still to read.
    fn put_back(&mut self, bytes: Vec<u8>) {
        if self.pending.is_empty() {
            self.pending = Bytes::from(bytes);
        } else {
            let mut joined = bytes;
            joined.extend_from_slice(&self.pending);
            self.pending = Bytes::from(joined);
        }
    }

    /// Skips `n` bytes; returns how many there were.
    async fn skip(&mut self, n: u64) -> Result<u64, JoinError> {
        let mut skipped = 0;
        while skipped < n {
            let Some(mut chunk) = self.next().await? else {
                break;
            };
            let take = usize::try_from(n - skipped)
                .unwrap_or(usize::MAX)
                .min(chunk.len());
            let _ = chunk.split_to(take);
            skipped += take as u64;
            self.pending = chunk;
        }
        Ok(skipped)
    }

    /// Copies the rest (at most `limit` bytes) to `out`; returns how many.
    async fn copy_to(&mut self, out: &mut Output, limit: Option<u64>) -> Result<u64, JoinError> {
        let mut copied = 0;
        while limit.is_none_or(|l| copied < l) {
            let Some(mut chunk) = self.next().await? else {
                break;
            };
            if let Some(limit) = limit {
                let take = usize::try_from(limit - copied)
                    .unwrap_or(usize::MAX)
                    .min(chunk.len());
                self.pending = chunk.split_off(take);
            }
            out.write(&chunk).await?;
            copied += chunk.len() as u64;
        }
        Ok(copied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(rate: u32) -> WavLayout {
        WavLayout {
            encoding: 1,
            channels: 1,
            sample_rate: rate,
            bits_per_sample: 16,
            block_align: 2,
        }
    }

    /// A WAV file: the join's own header, optionally a LIST chunk before
    /// the data, and `samples` bytes of data.
    fn wav(rate: u32, samples: usize, list: bool) -> Vec<u8> {
        let header = wav_header(layout(rate), samples as u32);
        let mut file = header[..36].to_vec();
        if list {
            file.extend_from_slice(b"LIST");
            file.extend_from_slice(&5u32.to_le_bytes());
            file.extend_from_slice(b"INFOx\0");
        }
        file.extend_from_slice(&header[36..]);
        file.extend(std::iter::repeat_n(7u8, samples));
        file
    }

    #[test]
    fn the_data_chunk_is_found_after_other_chunks() {
        let file = wav(22_050, 1000, true);
        let section = parse_wav_header(&file[..100], file.len() as u64)
            .expect("a WAV file")
            .expect("a whole header");
        assert_eq!(section.layout, layout(22_050));
        assert_eq!(section.offset, 44 + 14);
        assert_eq!(section.len, 1000);
    }

    #[test]
    fn a_header_cut_short_asks_for_more_and_a_stranger_is_refused() {
        let file = wav(16_000, 10, false);
        assert_eq!(parse_wav_header(&file[..30], file.len() as u64), Ok(None));
        assert!(parse_wav_header(b"ID3\x04\0\0\0\0\0\0\0\0", 100).is_err());
        assert!(parse_wav_header(b"", 0).is_err());
    }

    #[test]
    fn a_data_size_past_the_file_or_unset_runs_to_its_end_in_whole_frames() {
        let mut file = wav(8_000, 101, false);
        file[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        let section = parse_wav_header(&file, file.len() as u64)
            .expect("WAV")
            .expect("header");
        assert_eq!(section.len, 100);
        file[40..44].copy_from_slice(&0u32.to_le_bytes());
        let section = parse_wav_header(&file, file.len() as u64)
            .expect("WAV")
            .expect("header");
        assert_eq!(section.len, 100);
    }

    #[test]
    fn the_joined_header_reads_back_with_its_length_and_duration() {
        let header = wav_header(layout(22_050), 44_100);
        let section = parse_wav_header(&header, 44 + 44_100)
            .expect("WAV")
            .expect("header");
        assert_eq!(section.len, 44_100);
        assert_eq!(section.layout.duration_ms(section.len), 1000);
        let reader = hound::WavReader::new(std::io::Cursor::new(
            [header.to_vec(), vec![0; 44_100]].concat(),
        ))
        .expect("hound reads it");
        assert_eq!(reader.duration(), 22_050);
    }

    fn item(index: i32, rate: Option<i32>) -> AudioPart {
        AudioPart {
            kind: PartKind::Item,
            index,
            s3_key: format!("audio/{index}.pcm"),
            format: "pcm".to_owned(),
            duration_ms: 100,
            sample_rate_hz: rate,
        }
    }

    #[test]
    fn pcm_items_of_different_rates_are_refused_and_unknown_rates_pass() {
        let mixed = [item(0, Some(22_050)), item(1, None), item(2, Some(24_000))];
        let same = [item(0, Some(22_050)), item(1, None), item(2, Some(22_050))];

        let err = check_pcm_rates(&mixed).unwrap_err();

        assert!(
            err.public_reason()
                .contains("item 2 is 24000 Hz but item 0 is 22050 Hz"),
            "{err}"
        );
        assert!(check_pcm_rates(&same).is_ok());
    }

    #[test]
    fn mp3_frame_lengths_follow_bitrate_and_rate() {
        // MPEG-2 Layer III, 64 kbps, 22.05 kHz, no padding: 72 × 64000 / 22050.
        assert_eq!(frame_header(&[0xff, 0xf3, 0x80, 0xc4]), Some((208, 22_050)));
        assert_eq!(frame_header(b"ID3\x04"), None);
    }
}
