//! `[metrics]`: Prometheus metrics.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Prometheus metrics settings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Billable characters per UTC day the fleet should stay under (a
    /// vendor plan's allowance), exported as `tts_daily_usage_limit` for the
    /// "daily usage near limit" alert; 0 exports no limit.
    pub daily_character_limit: u64,
}
