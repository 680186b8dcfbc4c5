//! `[quota]`: how replicas share provider quotas.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::{Checked, Invalid, at_least_one};

/// How replicas share provider quotas.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaSharingSettings {
    /// Seconds between replica heartbeats.
    pub heartbeat_secs: u64,
    /// Share of each quota kept for high-priority jobs while an API runs;
    /// used by the static shares a replica falls back on while the quota
    /// coordinator (Postgres) is unreachable.
    pub high_priority_share: f64,
    /// Fraction of each vendor rate limit aimed for (headroom for jitter).
    pub target_utilisation: f64,
}

impl QuotaSharingSettings {
    /// Range checks serde cannot express.
    pub(crate) fn check(&self) -> Checked {
        at_least_one("quota.heartbeat_secs", self.heartbeat_secs)?;
        if !(self.target_utilisation > 0.0 && self.target_utilisation <= 1.0) {
            return Err(Invalid::new(
                "quota.target_utilisation",
                "must be above 0 and at most 1",
            ));
        }
        if !(0.0..1.0).contains(&self.high_priority_share) {
            return Err(Invalid::new(
                "quota.high_priority_share",
                "must be at least 0 and below 1",
            ));
        }
        Ok(())
    }
}
