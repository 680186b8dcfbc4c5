//! Joined audio of a batch (`concatenate: true`) and the batch's JSON view.
//!
//! When the last item of such a batch reaches a terminal state, the trigger
//! on `tasks` leaves the batch `concatenating`. A sweeper in every worker
//! ([`concatenate_pending`], run by the webhook service every half second)
//! joins the succeeded items' audio in batch order, stores it under
//! `batches/{id}/joined.{ext}` and completes the batch, which also queues its
//! `batch.completed` webhook. Two replicas may join the same batch at once:
//! both write the same bytes and only one completes it.
//!
//! Items of one batch share a format. WAV is decoded and its samples joined
//! (one header, rates must agree); PCM is joined as is; MP3 frames are
//! joined after dropping each file's leading Info/Xing frame, which would
//! otherwise tell players the length of the first file only.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{Value, json};
use ttsq_audio::AudioStore;
use ttsq_core::AudioFormat;
use ttsq_providers::encode::{encode, read_wav};
use ttsq_store::{BatchAudio, BatchRow, Concatenated, Store, StoreError};
use uuid::Uuid;

/// Why a batch's audio could not be joined.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The items' audio cannot be joined (format, rates).
    #[error("{0}")]
    Incompatible(String),
    /// Storage failed; tried again on the next sweep.
    #[error(transparent)]
    Storage(#[from] ttsq_audio::AudioStoreError),
    /// Postgres failed; tried again on the next sweep.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Joins the audio of batches waiting for it (up to `limit`); returns how
/// many this call completed.
pub async fn concatenate_pending(
    store: &Store,
    audio: &AudioStore,
    limit: i64,
) -> Result<usize, StoreError> {
    let mut done = 0;
    for id in store.batches_to_concatenate(limit).await? {
        let result = match join_batch(store, audio, id).await {
            Ok(stored) => stored,
            Err(JoinError::Incompatible(reason)) => Concatenated::Failed(reason),
            Err(err) => {
                tracing::warn!(batch_id = %id, error = %err, "joining a batch's audio failed; retrying later");
                continue;
            }
        };
        if store.finish_concatenation(id, &result).await? {
            tracing::info!(batch_id = %id, "batch audio joined");
            done += 1;
        }
    }
    Ok(done)
}

async fn join_batch(
    store: &Store,
    audio: &AudioStore,
    id: Uuid,
) -> Result<Concatenated, JoinError> {
    let items = store.batch_audio(id).await?;
    let Some(first) = items.first() else {
        return Ok(Concatenated::Failed(
            "no item succeeded; there is no audio to join".into(),
        ));
    };
    let format: AudioFormat = first
        .format
        .parse()
        .map_err(|()| JoinError::Incompatible(format!("unknown format `{}`", first.format)))?;
    if items.iter().any(|i| i.format != first.format) {
        return Err(JoinError::Incompatible(
            "the items have different formats".into(),
        ));
    }
    let mut parts = Vec::with_capacity(items.len());
    for item in &items {
        parts.push(audio.get(&item.s3_key).await?);
    }
    let (bytes, duration_ms) = join(format, &items, &parts)?;
    let key = format!("batches/{id}/joined.{}", format.extension());
    let size = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
    audio
        .put(&key, Bytes::from(bytes), format.content_type())
        .await?;
    Ok(Concatenated::Stored {
        key,
        bytes: size,
        duration_ms,
    })
}

/// Joins the audio files `parts` (of `items`, in order) of one `format`.
pub fn join(
    format: AudioFormat,
    items: &[BatchAudio],
    parts: &[Bytes],
) -> Result<(Vec<u8>, i32), JoinError> {
    let listed_ms: i32 = items.iter().map(|i| i.duration_ms).sum();
    match format {
        AudioFormat::Wav => {
            let mut samples = Vec::new();
            let mut rate = None;
            for part in parts {
                let wave = read_wav(part).map_err(|e| JoinError::Incompatible(e.to_string()))?;
                if *rate.get_or_insert(wave.sample_rate_hz) != wave.sample_rate_hz {
                    return Err(JoinError::Incompatible(
                        "the items have different sample rates".into(),
                    ));
                }
                samples.extend_from_slice(&wave.samples);
            }
            let rate = rate.unwrap_or(22_050);
            let bytes = encode(&samples, rate, AudioFormat::Wav)
                .map_err(|e| JoinError::Incompatible(e.to_string()))?;
            let ms = ttsq_providers::encode::duration_ms(samples.len(), rate);
            Ok((bytes, i32::try_from(ms).unwrap_or(i32::MAX)))
        }
        AudioFormat::Pcm => Ok((parts.concat(), listed_ms)),
        AudioFormat::Mp3 => {
            let mut out = Vec::new();
            for part in parts {
                out.extend_from_slice(without_info_frame(part));
            }
            Ok((out, listed_ms))
        }
        AudioFormat::OggOpus => Err(JoinError::Incompatible(
            "ogg_opus audio cannot be joined".into(),
        )),
    }
}

/// The MP3 stream after an ID3v2 tag and a leading Info/Xing frame, when
/// present; the whole input otherwise.
fn without_info_frame(bytes: &[u8]) -> &[u8] {
    let mut start = 0;
    if bytes.len() >= 10 && &bytes[..3] == b"ID3" {
        let size = bytes[6..10]
            .iter()
            .fold(0usize, |acc, b| (acc << 7) | usize::from(b & 0x7f));
        start = (10 + size).min(bytes.len());
    }
    let rest = &bytes[start..];
    let Some(length) = frame_length(rest) else {
        return rest;
    };
    let frame = &rest[..length.min(rest.len())];
    let tagged = frame.windows(4).any(|w| w == b"Xing" || w == b"Info");
    if tagged {
        &rest[length.min(rest.len())..]
    } else {
        rest
    }
}

/// Length of the MPEG audio Layer III frame at the start of `bytes`.
fn frame_length(bytes: &[u8]) -> Option<usize> {
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
    Some(per_frame * kbps * 1000 / rate + padding)
}

/// The JSON view of a batch, without its items: what `GET
/// /v1/tts/batches/{id}` opens with and what a `batch.completed` webhook
/// carries.
pub async fn batch_summary(
    store: &Store,
    audio: &AudioStore,
    public_url: &str,
    batch: &BatchRow,
) -> Result<Value, JoinError> {
    let mut counts: BTreeMap<&str, i64> =
        ["queued", "processing", "succeeded", "failed", "cancelled"]
            .into_iter()
            .map(|s| (s, 0))
            .collect();
    let stored = store.batch_counts(batch.id).await?;
    for (status, n) in &stored {
        if let Some(slot) = counts.get_mut(status.as_str()) {
            *slot = *n;
        }
    }
    let concatenated_audio_url = match &batch.concatenated_key {
        Some(key) => Some(audio.presign_get(key).await?),
        None => None,
    };
    Ok(json!({
        "batch_id": batch.id,
        "status": batch.status,
        "items": batch.items,
        "counts": counts,
        "concatenate": batch.concatenate,
        "concatenated_audio_url": concatenated_audio_url,
        "concatenated_audio_bytes": batch.concatenated_bytes,
        "concatenated_duration_ms": batch.concatenated_duration_ms,
        "concatenate_error": batch.concatenate_error,
        "metadata": batch.metadata,
        "status_url": format!("{public_url}/v1/tts/batches/{}", batch.id),
        "created_at": batch.created_at,
        "cancelled_at": batch.cancelled_at,
        "completed_at": batch.completed_at,
    }))
}
