#![doc = include_str!("../README.md")]

// Layout: one module per section of the file (`[server]` is `server.rs`),
// each with its struct, its accessors and its `check`, the rules serde cannot
// express, beside the fields they are about. `layers` builds the TOML table
// from the defaults, the file and the environment; this file deserializes it
// and runs every section's check; `schema` describes every key from the
// structs' derived JSON Schema. Everything public is re-exported here.

mod admin;
mod api;
mod audit;
mod batches;
mod breaker;
mod cache;
mod database;
mod dispatch;
mod error;
mod layers;
mod limits;
mod log;
mod metrics;
mod providers;
mod queue;
mod quota;
mod retention;
mod routes;
mod s3;
mod schema;
mod secret;
mod server;
mod service_links;
mod speech;
mod validation;
mod webhooks;
mod worker;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use toml::{Table, Value};

pub use crate::{
    admin::AdminSettings,
    api::ApiSettings,
    audit::AuditSettings,
    batches::{BatchSettings, MIN_JOIN_PART_BYTES},
    breaker::BreakerSettings,
    cache::CacheSettings,
    database::DatabaseSettings,
    dispatch::DispatchSettings,
    error::{ConfigError, Origin},
    layers::{ENV_PREFIX, env_var_for},
    limits::LimitSettings,
    log::{LogFormat, LogSettings},
    metrics::MetricsSettings,
    providers::{
        DialectSettings, EspeakSettings, ProviderDialect, ProviderKind, ProviderQuota,
        ProviderSettings, is_currency_code,
    },
    queue::QueueSettings,
    quota::QuotaSharingSettings,
    retention::RetentionSettings,
    routes::{RouteSettings, glob_match},
    s3::{LOCAL_S3_SECRET, S3Settings, is_loopback_url},
    schema::{SettingSchema, SettingsSchema},
    secret::REDACTED,
    server::ServerSettings,
    speech::SpeechSettings,
    webhooks::{WebhookSettings, canonical_network, parse_cidr},
    worker::WorkerSettings,
};
use crate::{
    layers::{apply_env, collect_scalars, merge},
    validation::Invalid,
};

/// The embedded defaults; also the reference for every key.
pub const DEFAULTS_TOML: &str = include_str!("defaults.toml");

/// Everything a ttsq process can be configured with. It serializes (for
/// `ttsq config show`) with every secret redacted.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// HTTP API.
    pub server: ServerSettings,
    /// What an API process keeps in memory (the hot cache).
    pub api: ApiSettings,
    /// Postgres.
    pub database: DatabaseSettings,
    /// RabbitMQ.
    pub queue: QueueSettings,
    /// S3-compatible audio storage.
    pub s3: S3Settings,
    /// Queue consumers.
    pub worker: WorkerSettings,
    /// Limits on submitted jobs.
    pub limits: LimitSettings,
    /// Batches whose audio is joined (`concatenate: true`).
    pub batches: BatchSettings,
    /// Log output.
    pub log: LogSettings,
    /// Prometheus metrics.
    pub metrics: MetricsSettings,
    /// How replicas share provider quotas.
    pub quota: QuotaSharingSettings,
    /// Per-provider circuit breakers.
    pub breaker: BreakerSettings,
    /// The OpenAI-compatible `POST /v1/audio/speech` endpoint.
    pub speech: SpeechSettings,
    /// Upstream providers by name.
    pub providers: BTreeMap<String, ProviderSettings>,
    /// Dialect patterns to provider chains, first match wins.
    pub routes: Vec<RouteSettings>,
    /// The admin API.
    pub admin: AdminSettings,
    /// The audit log.
    pub audit: AuditSettings,
    /// Webhook delivery.
    pub webhooks: WebhookSettings,
    /// How long tasks and their audio are kept.
    pub retention: RetentionSettings,
    /// What the audio cache serves.
    pub cache: CacheSettings,
    /// Fair dispatch of queued tasks between tenants.
    pub dispatch: DispatchSettings,
}

impl Settings {
    /// Loads the defaults, then `file` if given, then `env` (the variables of
    /// the process, as name/value pairs; only `TTSQ_` ones are looked at).
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        // The embedded defaults are checked by a unit test, so parsing cannot fail.
        let mut table: Table =
            toml::from_str(DEFAULTS_TOML).expect("embedded defaults are valid TOML");
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
                path: path.to_owned(),
                source,
            })?;
            let overlay: Table = toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
            merge(&mut table, overlay);
        }
        let from_env = apply_env(&mut table, env)?;
        let settings: Settings =
            serde_path_to_error::deserialize(Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                ConfigError::Invalid {
                    var: env_var_for(&key),
                    origin: if from_env.contains_key(&key) {
                        Origin::Env
                    } else {
                        Origin::File
                    },
                    key,
                    reason: e.into_inner().to_string(),
                }
            })?;
        settings.check(&from_env)?;
        Ok(settings)
    }

    /// Every section's checks of what serde cannot express, turned into
    /// an error naming the variable and where the value came from.
    fn check(&self, from_env: &BTreeMap<String, ()>) -> Result<(), ConfigError> {
        let sections = [
            self.database.check(),
            self.queue.check(),
            self.server.check(),
            self.api.check(),
            self.s3.check(),
            self.webhooks.check(),
            self.worker.check(),
            self.retention.check(),
            self.limits.check(),
            self.quota.check(),
            self.dispatch.check(),
            self.breaker.check(),
            self.batches.check(),
            providers::check_all(&self.providers),
            routes::check_all(&self.routes, &self.providers),
        ];
        match sections.into_iter().find_map(Result::err) {
            None => Ok(()),
            Some(Invalid { key, reason }) => Err(ConfigError::Invalid {
                var: env_var_for(&key),
                origin: if from_env.contains_key(&key) {
                    Origin::Env
                } else {
                    Origin::File
                },
                key,
                reason,
            }),
        }
    }

    /// Every settable variable with its default, for `.env.example` and `--help`.
    pub fn env_reference() -> Vec<(String, String)> {
        // Same embedded defaults as in `load`, checked by a unit test.
        let table: Table = toml::from_str(DEFAULTS_TOML).expect("embedded defaults are valid TOML");
        let mut out = Vec::new();
        collect_scalars(&table, "", &mut out);
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use secrecy::ExposeSecret;

    use super::*;

    /// `pairs` as the environment [`Settings::load`] takes.
    pub(crate) fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_load_and_point_at_local_services() {
        let s = Settings::load(None, env(&[])).unwrap();
        assert_eq!(s.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.s3.endpoint, "http://127.0.0.1:8014");
        assert!(
            s.providers["espeak"]
                .espeak()
                .dialects
                .contains(&"en-gb".to_owned())
        );
        assert!(s.routes[0].matches("en-gb"));
    }

    #[test]
    fn environment_overrides_file_which_overrides_defaults() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "[worker]\nbatch_size = 8\nbatch_window_ms = 5").unwrap();
        let s = Settings::load(
            Some(file.path()),
            env(&[
                ("TTSQ_WORKER_BATCH_SIZE", "16"),
                ("TTSQ_S3_CREATE_BUCKET", "false"),
            ]),
        )
        .unwrap();
        assert_eq!(s.worker.batch_size, 16);
        assert_eq!(s.worker.batch_window_ms, 5);
        assert!(!s.s3.create_bucket);
    }

    #[test]
    fn secrets_come_from_files_and_never_print() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "s3cr3t-value").unwrap();
        let path = file.path().to_str().unwrap();
        let s = Settings::load(None, env(&[("TTSQ_S3_SECRET_ACCESS_KEY_FILE", path)])).unwrap();
        assert_eq!(s.s3.secret_access_key.expose_secret(), "s3cr3t-value");
        assert!(!format!("{s:?}").contains("s3cr3t-value"));
        assert!(!format!("{s:?}").contains("guest:guest"));
    }

    #[test]
    fn errors_name_the_variable() {
        let err = Settings::load(None, env(&[("TTSQ_WORKER_BATCH_SIZE", "many")])).unwrap_err();
        assert!(
            err.to_string().starts_with("TTSQ_WORKER_BATCH_SIZE:"),
            "{err}"
        );

        let err = Settings::load(None, env(&[("TTSQ_WORKER_BATCH_SIZE", "0")])).unwrap_err();
        assert!(err.to_string().contains("TTSQ_WORKER_BATCH_SIZE"), "{err}");

        let err = Settings::load(None, env(&[("TTSQ_DATABASE_URL", "invalid://")])).unwrap_err();
        assert!(err.to_string().contains("TTSQ_DATABASE_URL"), "{err}");
        assert!(
            !err.to_string().contains("invalid://"),
            "a URL may hold a password: {err}"
        );

        let err = Settings::load(None, env(&[("TTSQ_SERVER_LISTEN", "nowhere")])).unwrap_err();
        assert!(err.to_string().contains("TTSQ_SERVER_LISTEN"), "{err}");

        let err = Settings::load(None, env(&[("TTSQ_WROKER_BATCH_SIZE", "1")])).unwrap_err();
        assert!(err.to_string().contains("TTSQ_WROKER_BATCH_SIZE"), "{err}");

        let err = Settings::load(
            None,
            env(&[("TTSQ_S3_SECRET_ACCESS_KEY_FILE", "/nonexistent")]),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("TTSQ_S3_SECRET_ACCESS_KEY_FILE"),
            "{err}"
        );
    }

    #[test]
    fn kubernetes_service_links_are_not_settings() {
        // What a pod gets for the Services `ttsq-api` and `ttsq-worker-metrics`.
        let s = Settings::load(
            None,
            env(&[
                ("TTSQ_API_SERVICE_HOST", "10.96.0.12"),
                ("TTSQ_API_SERVICE_PORT", "8080"),
                ("TTSQ_API_SERVICE_PORT_HTTP", "8080"),
                ("TTSQ_API_PORT", "tcp://10.96.0.12:8080"),
                ("TTSQ_API_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
                ("TTSQ_API_PORT_8080_TCP_PROTO", "tcp"),
                ("TTSQ_API_PORT_8080_TCP_PORT", "8080"),
                ("TTSQ_API_PORT_8080_TCP_ADDR", "10.96.0.12"),
                ("TTSQ_WORKER_METRICS_SERVICE_HOST", "10.96.0.13"),
                ("TTSQ_WORKER_METRICS_PORT_9464_TCP_ADDR", "10.96.0.13"),
                ("TTSQ_WORKER_BATCH_SIZE", "8"),
            ]),
        )
        .unwrap();
        assert_eq!(s.worker.batch_size, 8, "settings beside them still apply");

        // A setting's name with a link's shape is still a setting: its
        // value must fit, and a link-like name with another value is a typo.
        let err =
            Settings::load(None, env(&[("TTSQ_API_SERVICE_HOST", "api.internal")])).unwrap_err();
        assert!(err.to_string().contains("TTSQ_API_SERVICE_HOST"), "{err}");
    }

    #[test]
    fn file_errors_name_the_key() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "[worker]\nbatch_sise = 8").unwrap();
        let err = Settings::load(Some(file.path()), env(&[])).unwrap_err();
        assert!(err.to_string().contains("batch_sise"), "{err}");
    }

    #[test]
    fn env_example_lists_every_variable() {
        let example = include_str!("../../../.env.example");
        for (var, _) in Settings::env_reference() {
            assert!(
                example
                    .lines()
                    .any(|l| l.trim_start_matches("# ").starts_with(&format!("{var}="))),
                ".env.example lacks {var}"
            );
        }
    }

    #[test]
    fn env_reference_lists_every_scalar_setting() {
        let vars: Vec<_> = Settings::env_reference()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert!(vars.contains(&"TTSQ_DATABASE_URL".to_owned()));
        assert!(vars.contains(&"TTSQ_S3_SECRET_ACCESS_KEY".to_owned()));
        assert!(vars.contains(&"TTSQ_WORKER_BATCH_WINDOW_MS".to_owned()));
        for var in &vars {
            let (_, default) = Settings::env_reference()
                .into_iter()
                .find(|(k, _)| k == var)
                .unwrap();
            Settings::load(None, env(&[(var, &default)])).unwrap_or_else(|e| panic!("{var}: {e}"));
        }
    }
}
