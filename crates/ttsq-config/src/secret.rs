//! How secrets serialize: never their value, only whether one is set, so
//! `ttsq config show` can say a key is configured without printing it.

use secrecy::{ExposeSecret, SecretString};
use serde::Serializer;

/// What a set secret serializes as.
pub const REDACTED: &str = "[redacted]";

/// [`REDACTED`] for a set secret, an empty string for an empty one (the
/// feature it enables is off).
pub(crate) fn redacted<S: Serializer>(
    secret: &SecretString,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    if secret.expose_secret().is_empty() {
        serializer.serialize_str("")
    } else {
        serializer.serialize_str(REDACTED)
    }
}

/// [`redacted`] for a secret that may be absent.
pub(crate) fn redacted_option<S: Serializer>(
    secret: &Option<SecretString>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match secret {
        Some(secret) => redacted(secret, serializer),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use crate::{Settings, tests::env};

    #[test]
    fn serialized_settings_hold_no_secret() {
        let s = Settings::load(
            None,
            env(&[
                ("TTSQ_ADMIN_TOKEN", "t0ken-value"),
                ("TTSQ_PROVIDERS_ESPEAK_API_KEY", "sk-value"),
                ("TTSQ_S3_ENDPOINT", "https://s3.example.com"),
                ("TTSQ_S3_SECRET_ACCESS_KEY", "s3-value"),
            ]),
        )
        .unwrap();
        let json = serde_json::to_value(&s).unwrap();
        let text = json.to_string();
        for secret in [
            "t0ken-value",
            "sk-value",
            "s3-value",
            "guest:guest",
            "postgres@",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(json["admin"]["token"], super::REDACTED);
        assert_eq!(json["providers"]["espeak"]["api_key"], super::REDACTED);
        assert_eq!(json["webhooks"]["signing_key"], "", "unset shows as empty");
        assert_eq!(json["s3"]["endpoint"], "https://s3.example.com");
    }
}
