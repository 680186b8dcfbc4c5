//! `[worker]`: the queue consumers.

use std::{net::SocketAddr, time::Duration};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::{Checked, at_least_one};

/// Worker settings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Most jobs in one batch.
    pub batch_size: usize,
    /// Longest a batch waits to fill, in milliseconds.
    pub batch_window_ms: u64,
    /// Batches processed at once.
    pub concurrent_batches: usize,
    /// Provider calls one batch makes at once; with `concurrent_batches` it
    /// bounds how much audio a worker holds.
    pub syntheses_per_batch: usize,
    /// Drain deadline on shutdown, in seconds.
    pub shutdown_grace_secs: u64,
    /// How long a batch keeps retrying Postgres and S3 through an outage
    /// (holding its deliveries and synthesized audio) before giving up, in seconds.
    pub storage_retry_secs: u64,
    /// A task `processing` for longer than this is presumed abandoned and
    /// queued again, even if its replica still heartbeats, in seconds.
    pub claim_timeout_secs: u64,
    /// Where a `ttsq worker` serves `/metrics`, `/health` and `/ready`
    /// (port 0 picks a free one); `ttsq all` serves them on
    /// `server.ops_listen` instead.
    pub metrics_listen: SocketAddr,
}

impl WorkerSettings {
    /// [`Self::batch_window_ms`] as a duration.
    pub fn batch_window(&self) -> Duration {
        Duration::from_millis(self.batch_window_ms)
    }

    /// [`Self::shutdown_grace_secs`] as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// [`Self::storage_retry_secs`] as a duration.
    pub fn storage_retry(&self) -> Duration {
        Duration::from_secs(self.storage_retry_secs)
    }

    /// [`Self::claim_timeout_secs`] as a duration.
    pub fn claim_timeout(&self) -> Duration {
        Duration::from_secs(self.claim_timeout_secs)
    }

    /// Range checks serde cannot express.
    pub(crate) fn check(&self) -> Checked {
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        at_least_one("worker.batch_size", count(self.batch_size))?;
        at_least_one("worker.concurrent_batches", count(self.concurrent_batches))?;
        at_least_one(
            "worker.syntheses_per_batch",
            count(self.syntheses_per_batch),
        )?;
        at_least_one("worker.claim_timeout_secs", self.claim_timeout_secs)
    }
}
