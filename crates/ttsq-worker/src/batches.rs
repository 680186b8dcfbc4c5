//! Joined audio of a batch (`concatenate: true`) and the batch's JSON view.
//!
//! When the last item of such a batch reaches a terminal state, the trigger
//! on `tasks` leaves the batch `concatenating`. A sweeper in every worker
//! ([`Joiner::sweep`], run by the webhook service every half second) joins
//! the succeeded items' audio in batch order (streamed, see [`crate::join`]),
//! stores it under `batches/{id}/joined.{ext}` and completes the batch,
//! which also queues its `batch.completed` webhook. Audio that cannot be
//! joined completes the batch with `concatenate_error` instead.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use ttsq_audio::AudioStore;
use ttsq_config::BatchSettings;
use ttsq_core::AudioFormat;
use ttsq_store::{BatchRow, Concatenated, Store, StoreError};
use uuid::Uuid;

pub use crate::join::{JoinError, JoinLimits, Joined};

/// Joins the audio of batches waiting for it; every worker runs one.
#[derive(Clone)]
pub struct Joiner {
    /// Postgres: the batches and their items.
    store: Store,
    /// S3: the items' audio and the joined files.
    audio: AudioStore,
    /// What bounds a join.
    limits: JoinLimits,
}

impl std::fmt::Debug for Joiner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Joiner")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// What one [`Joiner::sweep`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    /// Joined files it stored.
    pub joined: usize,
    /// Batches it completed, with joined audio or a `concatenate_error`.
    pub completed: usize,
}

impl Joiner {
    /// A joiner within `settings`, for the replica `holder`.
    pub fn new(store: Store, audio: AudioStore, settings: &BatchSettings, _holder: Uuid) -> Self {
        Self {
            store,
            audio,
            limits: JoinLimits {
                part_bytes: usize::try_from(settings.join_part_bytes).unwrap_or(usize::MAX),
                max_bytes: settings.max_joined_bytes,
            },
        }
    }

    /// Joins the audio of up to `limit` batches waiting for it.
    pub async fn sweep(&self, limit: i64) -> Result<Sweep, StoreError> {
        let mut sweep = Sweep::default();
        for id in self.store.batches_to_concatenate(limit).await? {
            let result = match self.join(id).await {
                Ok(stored) => {
                    sweep.joined += 1;
                    stored
                }
                Err(JoinError::Unjoinable(reason)) => Concatenated::Failed(reason),
                Err(err) => {
                    tracing::warn!(batch_id = %id, error = %err, "joining a batch's audio failed; retrying later");
                    continue;
                }
            };
            if self.store.finish_concatenation(id, &result).await? {
                tracing::info!(batch_id = %id, "batch audio joined");
                sweep.completed += 1;
            }
        }
        Ok(sweep)
    }

    /// Joins a batch's succeeded items into its joined file.
    async fn join(&self, id: Uuid) -> Result<Concatenated, JoinError> {
        let items = self.store.batch_audio(id).await?;
        let Some(first) = items.first() else {
            return Err(JoinError::Unjoinable(
                "no item succeeded; there is no audio to join".into(),
            ));
        };
        let format: AudioFormat = first
            .format
            .parse()
            .map_err(|()| JoinError::Unjoinable(format!("unknown format `{}`", first.format)))?;
        if items.iter().any(|i| i.format != first.format) {
            return Err(JoinError::Unjoinable(
                "the items have different formats".into(),
            ));
        }
        let key = format!("batches/{id}/joined.{}", format.extension());
        let joined =
            crate::join::join_items(&self.audio, &key, format, &items, self.limits).await?;
        Ok(Concatenated::Stored {
            key,
            bytes: i64::try_from(joined.bytes).unwrap_or(i64::MAX),
            duration_ms: joined.duration_ms,
        })
    }
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
