//! The retention sweeper: every `retention.sweep_every_secs` it removes
//! finished tasks older than their tenant's retention, in batches, and
//! deletes from S3 the audio (and speech marks) no remaining task uses.
//!
//! Postgres goes first: the index row of an object is deleted in the same
//! transaction as its last task, which also takes the hash's synthesis
//! lease; only after the commit is the object deleted from S3, and then the
//! lease released. No replica synthesizes the hash in between, so none
//! indexes an object that is about to be deleted. Should the delete fail,
//! the object stays behind unindexed, which is harmless: the next synthesis
//! of the hash finds it and indexes it from the facts it carries.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use ttsq_core::ContentHash;

use crate::Services;

/// What one full sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Task rows deleted.
    pub tasks: u64,
    /// Audio objects deleted (index row and S3 object).
    pub audio_objects: u64,
}

impl Services {
    /// Runs the sweeper until `shutdown`: one sweep per
    /// `retention.sweep_every_secs`. Every replica runs one; `SKIP LOCKED`
    /// keeps them from doubling up.
    pub fn start_retention_sweeper(&self, shutdown: CancellationToken) -> JoinHandle<()> {
        let services = self.clone();
        tokio::spawn(async move {
            let every = Duration::from_secs(services.settings.retention.sweep_every_secs);
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = ticks.tick() => {}
                }
                match services.sweep_retention().await {
                    Ok(report) if report == SweepReport::default() => {}
                    Ok(report) => tracing::info!(
                        tasks = report.tasks,
                        audio_objects = report.audio_objects,
                        "retention sweep removed expired tasks"
                    ),
                    Err(err) => tracing::warn!(error = %err, "retention sweep failed"),
                }
            }
        })
    }

    /// One sweep: batches of `retention.batch_size` until nothing is left to
    /// remove.
    pub async fn sweep_retention(&self) -> Result<SweepReport, ttsq_store::StoreError> {
        let settings = &self.settings.retention;
        let mut report = SweepReport::default();
        loop {
            let lease = ttsq_store::SweepLease {
                holder: self.replica_id,
                token: uuid::Uuid::now_v7(),
                ttl: self.settings.worker.claim_timeout(),
            };
            let batch = self
                .store
                .sweep_expired_tasks(
                    settings.default_retention_days(),
                    settings.batch_size,
                    lease,
                )
                .await?;
            report.tasks += batch.tasks;
            for (hash, key) in &batch.audio {
                let marks_key = ContentHash::parse(hash).map(|h| h.marks_key());
                let deleted = match self.audio.delete(key).await {
                    Ok(()) => match &marks_key {
                        Some(marks) => self.audio.delete(marks).await,
                        None => Ok(()),
                    },
                    Err(err) => Err(err),
                };
                match deleted {
                    Ok(()) => report.audio_objects += 1,
                    Err(err) => tracing::warn!(
                        error = %err,
                        key,
                        "could not delete an expired audio object; it stays as unreferenced garbage"
                    ),
                }
            }
            if let Err(err) = self.store.release_leases(lease.token).await {
                tracing::warn!(error = %err, "releasing the swept hashes' leases failed; they expire");
            }
            if batch.tasks < u64::from(settings.batch_size) {
                return Ok(report);
            }
        }
    }
}
