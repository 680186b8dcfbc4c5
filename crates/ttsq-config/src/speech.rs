//! `[speech]`: the OpenAI-compatible `POST /v1/audio/speech` endpoint.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How `POST /v1/audio/speech` maps OpenAI voice names onto dialects.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpeechSettings {
    /// Dialect for a `voice` that is neither in `voices` nor a dialect id.
    pub default_dialect: String,
    /// OpenAI voice name → `dialect` or `dialect/voice`.
    pub voices: BTreeMap<String, String>,
}
