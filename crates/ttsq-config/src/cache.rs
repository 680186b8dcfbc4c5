//! `[cache]`: what the audio cache serves.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What the audio cache serves.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// Serve audio a fallback provider made to later requests for the same
    /// text. Off (the default), such audio answers only the tasks it was
    /// made for, and the dialect's first provider synthesizes the text again
    /// once it is back.
    pub serve_fallback_audio: bool,
}
