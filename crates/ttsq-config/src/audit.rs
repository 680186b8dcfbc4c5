//! `[audit]`: the audit log.

use schemars::JsonSchema;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// The audit log.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// Key of the text fingerprints (a secret): a submission's audit row
    /// holds the HMAC-SHA256 of its text under it, which a plain hash of a
    /// guessed short text cannot match. Empty: no fingerprint, the length only.
    #[serde(serialize_with = "crate::secret::redacted")]
    #[schemars(with = "String", extend("writeOnly" = true))]
    pub text_key: SecretString,
}

impl AuditSettings {
    /// The fingerprint key, when one is set.
    pub fn enabled_text_key(&self) -> Option<&SecretString> {
        (!self.text_key.expose_secret().is_empty()).then_some(&self.text_key)
    }
}
