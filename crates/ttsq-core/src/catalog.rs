//! The dialect catalog: which dialects this deployment serves and what each
//! accepts. Built once at start from configuration and provider capabilities,
//! then shared read-only by validation, the API's `/v1/dialects` and routing.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::format::AudioFormat;

/// What one dialect offers and which providers serve it, in fallback order.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DialectInfo {
    /// Stable id clients send as `dialect` (`en-gb`, `yue`, …).
    pub id: String,
    /// Human-readable name for listings.
    pub name: String,
    /// Voices a client may name; the first is the default.
    pub voices: Vec<String>,
    /// Output formats every provider of the chain can produce.
    pub formats: Vec<AudioFormat>,
    /// Emotions a client may ask for; empty when the voices have none.
    pub emotions: Vec<String>,
    /// Provider names in fallback order; the first is tried first.
    pub provider_chain: Vec<String>,
    /// Model identifier; part of the content hash so a model change re-synthesizes.
    pub model: String,
    /// Sample rate in Hz of `wav` and `pcm` output.
    pub sample_rate_hz: u32,
    /// Speech marks the dialect's first provider can time; empty when it
    /// reports no timings (a job asking for marks is then refused).
    pub marks: Vec<crate::MarkKind>,
    /// Most characters one provider request of this dialect takes: the
    /// smallest limit its chain's providers declare. Longer texts are long
    /// jobs, split into chunks of at most this many characters.
    pub max_request_chars: u32,
}

impl DialectInfo {
    /// The voice used when a job names none.
    pub fn default_voice(&self) -> &str {
        self.voices.first().map(String::as_str).unwrap_or("default")
    }

    /// The route part of the content hash: the provider chain, joined.
    pub fn provider_route(&self) -> String {
        self.provider_chain.join(">")
    }
}

/// Every dialect of a deployment, keyed by id.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    dialects: BTreeMap<String, DialectInfo>,
}

impl Catalog {
    /// A catalog of the given dialects; a later duplicate id replaces an earlier one.
    pub fn new(dialects: impl IntoIterator<Item = DialectInfo>) -> Self {
        Self {
            dialects: dialects.into_iter().map(|d| (d.id.clone(), d)).collect(),
        }
    }

    /// The dialect with this id, if served.
    pub fn get(&self, id: &str) -> Option<&DialectInfo> {
        self.dialects.get(id)
    }

    /// All dialects, ordered by id.
    pub fn iter(&self) -> impl Iterator<Item = &DialectInfo> {
        self.dialects.values()
    }

    /// Number of dialects served.
    pub fn len(&self) -> usize {
        self.dialects.len()
    }

    /// Whether no dialect is served (a misconfiguration the binary refuses).
    pub fn is_empty(&self) -> bool {
        self.dialects.is_empty()
    }
}
