//! `[providers.NAME]`: the upstream providers, their quotas and dialects.

use std::{collections::BTreeMap, path::PathBuf};

use schemars::JsonSchema;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::validation::{Checked, Invalid, is_http_url};

/// Provider settings that have no default and may be set from the
/// environment alone, chiefly secrets: `PROVIDERS_ELEVEN_API_KEY`.
pub(crate) const OPTIONAL_PROVIDER_KEYS: &[&str] = &["api_key", "base_url", "model", "auth_header"];

/// Which adapter a provider uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Local espeak-ng.
    Espeak,
    /// The ElevenLabs REST API.
    Elevenlabs,
    /// Any OpenAI-compatible `/v1/audio/speech` server.
    Openai,
    /// The generic `POST /tts` contract of self-hosted and regional servers.
    Http,
}

/// Limits the vendor account imposes; shared by every replica.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderQuota {
    /// Requests per second, if limited.
    pub requests_per_second: Option<f64>,
    /// Characters per minute, if limited.
    pub characters_per_minute: Option<u32>,
    /// Requests in flight at once, if limited.
    pub max_concurrent: Option<u32>,
}

/// One dialect a provider serves, as configured.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ProviderDialect {
    /// Just the id; capabilities come from the adapter.
    Id(String),
    /// Id with the voices (vendor voice ids) and options it offers.
    Detailed(DialectSettings),
}

/// A dialect with explicit capabilities.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DialectSettings {
    /// Dialect id clients send.
    pub id: String,
    /// Human-readable name.
    #[serde(default)]
    pub name: Option<String>,
    /// Voices, first is the default.
    pub voices: Vec<String>,
    /// Vendor language code, where the vendor wants one.
    #[serde(default)]
    pub language_code: Option<String>,
    /// Emotions offered.
    #[serde(default)]
    pub emotions: Vec<String>,
}

impl ProviderDialect {
    /// The dialect id.
    pub fn id(&self) -> &str {
        match self {
            Self::Id(id) => id,
            Self::Detailed(d) => &d.id,
        }
    }
}

fn default_connect_timeout() -> u64 {
    5
}

fn default_timeout() -> u64 {
    30
}

fn default_currency() -> String {
    "USD".to_owned()
}

/// Whether `code` looks like an ISO 4217 currency code (`USD`, `EUR`).
pub fn is_currency_code(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
}

/// One upstream provider.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    /// Adapter.
    pub kind: ProviderKind,
    /// Base URL of an HTTP provider.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Credential sent to an HTTP provider.
    #[serde(default, serialize_with = "crate::secret::redacted_option")]
    #[schemars(with = "Option<String>", extend("writeOnly" = true))]
    pub api_key: Option<SecretString>,
    /// Header carrying the credential (generic `http` kind only).
    #[serde(default)]
    pub auth_header: Option<String>,
    /// Vendor model id.
    #[serde(default)]
    pub model: Option<String>,
    /// The espeak-ng executable (espeak kind).
    #[serde(default)]
    pub binary: Option<PathBuf>,
    /// Connect timeout, in seconds.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Total timeout of one request, in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Price per 1,000 billable characters, in [`Self::currency`].
    #[serde(default)]
    pub price_per_1k_chars: f64,
    /// ISO 4217 code of the price's currency, recorded on each ledger row.
    #[serde(default = "default_currency")]
    pub currency: String,
    /// The vendor account's limits.
    #[serde(default)]
    pub quota: ProviderQuota,
    /// Most characters one request may carry. The provider declares it to
    /// the catalog (`max_request_chars` of its dialects: a route takes its
    /// chain's smallest, and longer texts are long jobs, split into chunks
    /// that fit) and refuses longer texts, so the router falls back. Unset:
    /// the adapter's own limit (OpenAI 4,096; ElevenLabs, `http` and espeak
    /// 5,000).
    #[serde(default)]
    pub max_text_chars: Option<u32>,
    /// Dialects served.
    pub dialects: Vec<ProviderDialect>,
}

impl ProviderSettings {
    /// The espeak adapter's settings, for an `espeak` provider.
    pub fn espeak(&self) -> EspeakSettings {
        EspeakSettings {
            binary: self
                .binary
                .clone()
                .unwrap_or_else(|| PathBuf::from("espeak-ng")),
            max_concurrent: self.quota.max_concurrent.map_or(2, |n| n as usize),
            timeout_secs: self.timeout_secs,
            dialects: self.dialects.iter().map(|d| d.id().to_owned()).collect(),
            max_text_chars: self.max_text_chars,
        }
    }

    /// What the adapter needs and serde cannot express, for the provider
    /// configured as `providers.{name}`.
    pub(crate) fn check(&self, name: &str) -> Checked {
        let key = |field: &str| format!("providers.{name}.{field}");
        if self.dialects.is_empty() {
            return Err(Invalid::new(
                key("dialects"),
                "must list at least one dialect",
            ));
        }
        if self.kind != ProviderKind::Espeak {
            match self.base_url.as_deref() {
                Some(u) if is_http_url(u) => {}
                _ => return Err(Invalid::new(key("base_url"), "must be an http(s) URL")),
            }
        }
        if self.timeout_secs == 0 || self.connect_timeout_secs == 0 {
            return Err(Invalid::new(
                key("timeout_secs"),
                "timeouts must be at least 1 second",
            ));
        }
        let q = &self.quota;
        if q.requests_per_second
            .is_some_and(|r| !(r > 0.0 && r.is_finite()))
            || q.characters_per_minute == Some(0)
            || q.max_concurrent == Some(0)
        {
            return Err(Invalid::new(
                key("quota"),
                "limits must be positive when set",
            ));
        }
        if self.max_text_chars == Some(0) {
            return Err(Invalid::new(key("max_text_chars"), "must be at least 1"));
        }
        if !is_currency_code(&self.currency) {
            return Err(Invalid::new(
                key("currency"),
                "must be a three-letter ISO 4217 code such as USD",
            ));
        }
        if !(self.price_per_1k_chars >= 0.0 && self.price_per_1k_chars.is_finite()) {
            return Err(Invalid::new(
                key("price_per_1k_chars"),
                "must be a non-negative number",
            ));
        }
        Ok(())
    }
}

/// Checks every configured provider, in name order.
pub(crate) fn check_all(providers: &BTreeMap<String, ProviderSettings>) -> Checked {
    providers
        .iter()
        .try_for_each(|(name, provider)| provider.check(name))
}

/// The embedded espeak-ng provider.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EspeakSettings {
    /// Executable name or path.
    pub binary: PathBuf,
    /// Syntheses at once per process.
    pub max_concurrent: usize,
    /// Longest one synthesis may take, in seconds.
    pub timeout_secs: u64,
    /// Dialects offered, as espeak-ng voice names.
    pub dialects: Vec<String>,
    /// Most characters one synthesis may carry (declared to the catalog;
    /// longer texts are refused). Unset: 5,000.
    #[serde(default)]
    pub max_text_chars: Option<u32>,
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use secrecy::ExposeSecret;

    use super::ProviderKind;
    use crate::{Settings, tests::env};

    #[test]
    fn providers_and_routes_load_with_secrets_from_the_environment() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            r#"
[providers.eleven]
kind = "elevenlabs"
base_url = "https://api.example.test"
price_per_1k_chars = 0.3
quota = {{ requests_per_second = 10, max_concurrent = 4 }}
dialects = [{{ id = "en-gb", voices = ["v1", "v2"], language_code = "en" }}]

[[routes]]
dialects = ["en-*"]
chain = ["eleven", "espeak"]
"#
        )
        .unwrap();
        let mut key_file = tempfile::NamedTempFile::new().unwrap();
        writeln!(key_file, "sk-secret").unwrap();
        let key_path = key_file.path().to_str().unwrap();
        let s = Settings::load(
            Some(file.path()),
            env(&[("TTSQ_PROVIDERS_ELEVEN_API_KEY_FILE", key_path)]),
        )
        .unwrap();
        let plain = Settings::load(
            Some(file.path()),
            env(&[("TTSQ_PROVIDERS_ELEVEN_API_KEY", "sk-plain")]),
        )
        .unwrap();
        assert_eq!(
            plain.providers["eleven"]
                .api_key
                .as_ref()
                .unwrap()
                .expose_secret(),
            "sk-plain"
        );
        let eleven = &s.providers["eleven"];
        assert_eq!(eleven.kind, ProviderKind::Elevenlabs);
        assert_eq!(
            eleven.api_key.as_ref().unwrap().expose_secret(),
            "sk-secret"
        );
        assert_eq!(eleven.quota.max_concurrent, Some(4));
        assert_eq!(eleven.dialects[0].id(), "en-gb");
        assert!(!format!("{s:?}").contains("sk-secret"));
        // A file's array replaces the default one.
        assert_eq!(s.routes.len(), 1);
        assert!(s.routes[0].matches("en-gb") && !s.routes[0].matches("fr-fr"));
    }

    #[test]
    fn request_limits_are_read_and_a_zero_one_is_refused_by_name() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            r#"
[providers.regional]
kind = "http"
base_url = "https://tts.example.test"
max_text_chars = 1200
dialects = ["yue"]
"#
        )
        .unwrap();

        let s = Settings::load(Some(file.path()), env(&[])).unwrap();
        let espeak = Settings::load(
            None,
            env(&[("TTSQ_PROVIDERS_ESPEAK_MAX_TEXT_CHARS", "3000")]),
        )
        .unwrap();
        let zero = Settings::load(
            Some(file.path()),
            env(&[("TTSQ_PROVIDERS_REGIONAL_MAX_TEXT_CHARS", "0")]),
        )
        .unwrap_err();

        assert_eq!(s.providers["regional"].max_text_chars, Some(1200));
        assert_eq!(s.providers["espeak"].espeak().max_text_chars, Some(5000));
        assert_eq!(
            espeak.providers["espeak"].espeak().max_text_chars,
            Some(3000)
        );
        assert!(
            zero.to_string()
                .contains("TTSQ_PROVIDERS_REGIONAL_MAX_TEXT_CHARS"),
            "{zero}"
        );
    }

    #[test]
    fn bad_currencies_are_refused_by_name() {
        let err =
            Settings::load(None, env(&[("TTSQ_PROVIDERS_ESPEAK_CURRENCY", "usd")])).unwrap_err();
        assert!(
            err.to_string().contains("TTSQ_PROVIDERS_ESPEAK_CURRENCY"),
            "{err}"
        );
        let s = Settings::load(None, env(&[])).unwrap();
        assert_eq!(s.providers["espeak"].currency, "USD");
    }
}
