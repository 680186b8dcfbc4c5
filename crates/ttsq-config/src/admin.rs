//! `[admin]`: the admin API.

use schemars::JsonSchema;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// The admin API (`/v1/admin/...`): tenants and keys over HTTP.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Bearer token the admin API demands (a secret); empty disables the
    /// admin API, whose routes then answer 404.
    #[serde(serialize_with = "crate::secret::redacted")]
    #[schemars(with = "String", extend("writeOnly" = true))]
    pub token: SecretString,
}

impl AdminSettings {
    /// The token, when the admin API is enabled.
    pub fn enabled_token(&self) -> Option<&SecretString> {
        (!self.token.expose_secret().is_empty()).then_some(&self.token)
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use crate::{Settings, tests::env};

    #[test]
    fn the_admin_api_is_off_until_a_token_is_set() {
        let off = Settings::load(None, env(&[])).unwrap();
        assert!(off.admin.enabled_token().is_none());
        let on = Settings::load(None, env(&[("TTSQ_ADMIN_TOKEN", "t0ken-value")])).unwrap();
        assert_eq!(
            on.admin
                .enabled_token()
                .map(|t| t.expose_secret().to_owned()),
            Some("t0ken-value".to_owned())
        );
        assert!(!format!("{on:?}").contains("t0ken-value"));
    }
}
