//! `[dispatch]`: fair dispatch of queued tasks between tenants.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::{Checked, at_least_one};

/// How queued tasks are dispatched to the workers: a provider's window of
/// published, unfinished tasks is kept just deep enough to keep the workers
/// (or the provider's quota) busy, and its free slots go to the tenants in
/// weighted fair order; the rest waits in Postgres.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DispatchSettings {
    /// Window of a provider without a request rate quota, per live worker
    /// replica: a couple of full batches (`worker.batch_size`), enough to
    /// keep a worker busy while the next tasks are published.
    pub window_per_worker: u32,
    /// A provider with a requests-per-second quota gets a window of this
    /// many milliseconds of its rate: enough to keep the quota busy, short
    /// enough that a newcomer's job waits about this long at most.
    pub quota_horizon_ms: u64,
    /// The smallest window, whatever the quota.
    pub min_window: u32,
    /// How often a replica dispatches without being woken (a back-off that
    /// ended, a replica that died), in milliseconds.
    pub poll_ms: u64,
}

impl DispatchSettings {
    /// [`Self::quota_horizon_ms`] as a duration.
    pub fn quota_horizon(&self) -> Duration {
        Duration::from_millis(self.quota_horizon_ms)
    }

    /// [`Self::poll_ms`] as a duration.
    pub fn poll(&self) -> Duration {
        Duration::from_millis(self.poll_ms)
    }

    /// Range checks serde cannot express.
    pub(crate) fn check(&self) -> Checked {
        at_least_one("dispatch.window_per_worker", self.window_per_worker.into())?;
        at_least_one("dispatch.min_window", self.min_window.into())?;
        at_least_one("dispatch.quota_horizon_ms", self.quota_horizon_ms)?;
        at_least_one("dispatch.poll_ms", self.poll_ms)
    }
}
