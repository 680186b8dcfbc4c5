//! Joined audio of a batch (`concatenate: true`).
//!
//! When the last item of such a batch reaches a terminal state, the trigger
//! on `tasks` leaves the batch `concatenating`. A sweeper in every worker
//! ([`Joiner::run`]: [`Joiner::sweep`] every 250 ms) takes the
//! batch under a lease, so one replica at a time joins it, joins the
//! succeeded items' audio in batch order (streamed, see [`crate::join`]),
//! stores it under `batches/{id}/joined.{ext}` and completes the batch,
//! which also queues its `batch.completed` webhook.
//!
//! Audio that cannot be joined completes the batch with `concatenate_error`
//! at once. Other failures (S3, Postgres) release the lease to be tried
//! again later; every take counts as an attempt, a replica killed mid-join
//! included, and once `batches.join_attempts` are used up the batch
//! completes with `concatenate_error` too.

use std::time::Duration;

use ttsq_audio::AudioStore;
use ttsq_config::BatchSettings;
use ttsq_core::AudioFormat;
use ttsq_store::{Concatenated, JoinLease, Store, StoreError};
use uuid::Uuid;

pub use crate::join::{JoinError, JoinLimits, Joined};
use crate::{
    join::AudioPart,
    leased::{JOINS_PER_SWEEP, retry_delay, sweep_until, while_renewing},
};

/// Joins the audio of batches waiting for it; every worker runs one, and
/// one replica at a time joins a batch, under its lease.
#[derive(Clone)]
pub struct Joiner {
    /// Postgres: the batches, their items and leases.
    store: Store,
    /// S3: the items' audio and the joined files.
    audio: AudioStore,
    /// What bounds a join.
    limits: JoinLimits,
    /// Takes of a batch before it completes with `concatenate_error`.
    attempts: u32,
    /// How long a lease lasts unrenewed.
    lease_ttl: Duration,
    /// This replica (its heartbeat id), named on the leases it takes.
    holder: Uuid,
}

impl std::fmt::Debug for Joiner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Joiner")
            .field("limits", &self.limits)
            .field("attempts", &self.attempts)
            .field("lease_ttl", &self.lease_ttl)
            .field("holder", &self.holder)
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
    pub fn new(store: Store, audio: AudioStore, settings: &BatchSettings, holder: Uuid) -> Self {
        Self {
            store,
            audio,
            limits: JoinLimits::from_settings(settings),
            attempts: settings.join_attempts,
            lease_ttl: settings.join_lease(),
            holder,
        }
    }

    /// Sweeps until `shutdown`, every worker alike ([`sweep_until`]).
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        sweep_until(shutdown, "batches", || self.sweep(JOINS_PER_SWEEP)).await;
    }

    /// Joins the audio of up to `limit` batches waiting for it, one at a
    /// time, each under its lease; first completes those whose attempts are
    /// used up, with `concatenate_error`.
    pub async fn sweep(&self, limit: usize) -> Result<Sweep, StoreError> {
        let mut sweep = Sweep::default();
        let exhausted = self.store.fail_exhausted_joins(self.attempts).await?;
        if exhausted > 0 {
            tracing::warn!(
                batches = exhausted,
                "batches whose joins were interrupted on every attempt completed without joined audio"
            );
            sweep.completed += usize::try_from(exhausted).unwrap_or(usize::MAX);
        }
        for _ in 0..limit {
            let token = Uuid::now_v7();
            let Some(lease) = self
                .store
                .take_join_lease(self.holder, token, self.lease_ttl, self.attempts)
                .await?
            else {
                break;
            };
            let id = lease.batch_id;
            let result = match self.join_holding(&lease).await {
                Ok(stored) => {
                    sweep.joined += 1;
                    stored
                }
                Err(JoinError::Unjoinable(reason)) => Concatenated::Failed(reason),
                Err(JoinError::LeaseLost) => {
                    tracing::warn!(batch_id = %id, "another replica took over a batch this one was joining");
                    continue;
                }
                Err(err) if lease.attempt >= i32::try_from(self.attempts).unwrap_or(i32::MAX) => {
                    tracing::warn!(
                        batch_id = %id, attempt = lease.attempt, error = %err,
                        "joining a batch's audio failed on its last attempt"
                    );
                    Concatenated::Failed(format!(
                        "the joined audio could not be made in {} attempts: {}",
                        lease.attempt,
                        err.public_reason()
                    ))
                }
                Err(err) => {
                    let retry_in = retry_delay(lease.attempt);
                    tracing::warn!(
                        batch_id = %id, attempt = lease.attempt, error = %err, ?retry_in,
                        "joining a batch's audio failed; retrying later"
                    );
                    self.store
                        .release_join_lease(&lease, &err.public_reason(), retry_in)
                        .await?;
                    continue;
                }
            };
            if self.store.finish_concatenation(&lease, &result).await? {
                match &result {
                    Concatenated::Stored { bytes, .. } => {
                        tracing::info!(batch_id = %id, bytes, "batch audio joined");
                    }
                    Concatenated::Failed(reason) => {
                        tracing::info!(batch_id = %id, %reason, "batch audio cannot be joined");
                    }
                }
                sweep.completed += 1;
            }
        }
        Ok(sweep)
    }

    /// Joins a batch while renewing its lease; stops when the lease is lost.
    async fn join_holding(&self, lease: &JoinLease) -> Result<Concatenated, JoinError> {
        while_renewing(self.join(lease.batch_id), self.lease_ttl, || {
            self.store.renew_join_lease(lease, self.lease_ttl)
        })
        .await
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
        let parts: Vec<AudioPart> = items.into_iter().map(AudioPart::from).collect();
        let joined =
            crate::join::join_parts(&self.audio, &key, format, &parts, self.limits).await?;
        Ok(Concatenated::Stored {
            key,
            bytes: i64::try_from(joined.bytes).unwrap_or(i64::MAX),
            duration_ms: joined.duration_ms,
        })
    }
}
