//! `[breaker]`: per-provider circuit breakers.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::{Checked, at_least_one};

/// When a provider's circuit breaker opens and for how long.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerSettings {
    /// Consecutive failures that open it.
    pub failure_threshold: u32,
    /// Seconds it stays open before one trial request.
    pub cooldown_secs: u64,
}

impl BreakerSettings {
    /// Range checks serde cannot express.
    pub(crate) fn check(&self) -> Checked {
        at_least_one("breaker.failure_threshold", self.failure_threshold.into())
    }
}
