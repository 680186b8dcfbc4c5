//! Webhook targets at submission: whether webhooks are on, the SSRF guard a
//! `callback_url` must pass, and what signs and rotates tenants' secrets.

use std::time::Duration;

use secrecy::SecretString;
use ttsq_config::Settings;
use ttsq_webhooks::TargetGuard;

use crate::error::ApiError;

/// What the API needs to accept webhook targets.
#[derive(Debug, Clone)]
pub struct WebhookApi {
    /// Signing key; `None` disables webhooks.
    pub(crate) signing_key: Option<SecretString>,
    /// The SSRF guard.
    guard: TargetGuard,
    /// How long a rotated-out secret keeps signing.
    pub(crate) grace: Duration,
}

impl WebhookApi {
    /// From validated settings.
    pub fn new(settings: &Settings) -> Self {
        Self {
            signing_key: settings.webhooks.enabled_key().cloned(),
            // Settings::load validated the networks.
            guard: TargetGuard::new(settings.webhooks.allowed_networks().unwrap_or_default()),
            grace: Duration::from_secs(settings.webhooks.secret_grace_secs),
        }
    }

    /// Checks a `callback_url` (or webhook URL) named `field`: webhooks on,
    /// an http(s) URL resolving only to allowed addresses.
    pub async fn check_target(&self, field: &str, url: &str) -> Result<(), ApiError> {
        if self.signing_key.is_none() {
            return Err(ApiError::field(
                field,
                "webhooks are not enabled on this server (webhooks.signing_key is unset)",
            ));
        }
        if url.len() > 2048 {
            return Err(ApiError::field(field, "must be at most 2048 characters"));
        }
        // The URL parser would percent-encode these, but the URL is stored
        // as given (and Postgres refuses U+0000 in text).
        if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ApiError::field(
                field,
                "must not contain whitespace or control characters",
            ));
        }
        self.guard
            .check(url)
            .await
            .map(|_| ())
            .map_err(|refused| ApiError::field(field, refused.to_string()))
    }
}
