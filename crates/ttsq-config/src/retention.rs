//! `[retention]`: how long tasks and their audio are kept.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::{Checked, at_least_one};

/// Retention: the sweeper that removes old tasks and the audio only they used.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Days a task is kept for tenants without their own `retention_days`;
    /// 0 keeps them forever.
    pub default_days: u32,
    /// Seconds between sweeps.
    pub sweep_every_secs: u64,
    /// Tasks removed per sweep transaction.
    pub batch_size: u32,
}

impl RetentionSettings {
    /// The default retention, `None` when tasks are kept forever.
    pub fn default_retention_days(&self) -> Option<u32> {
        (self.default_days > 0).then_some(self.default_days)
    }

    /// Range checks serde cannot express.
    pub(crate) fn check(&self) -> Checked {
        at_least_one("retention.sweep_every_secs", self.sweep_every_secs)?;
        at_least_one("retention.batch_size", self.batch_size.into())
    }
}
