//! `[database]`: Postgres.

use schemars::JsonSchema;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::validation::{Checked, Invalid, at_least_one};

/// Postgres settings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Connection URL; secret because it may carry a password.
    #[serde(serialize_with = "crate::secret::redacted")]
    #[schemars(with = "String", extend("writeOnly" = true))]
    pub url: SecretString,
    /// Pool size per process.
    pub max_connections: u32,
    /// Transactions an API process runs at once to write single submissions,
    /// each holding one pooled connection; every submission that arrives
    /// meanwhile joins the next group (group commit).
    pub submit_committers: u32,
    /// Apply pending migrations at start.
    pub run_migrations: bool,
}

impl DatabaseSettings {
    /// Range checks serde cannot express. The URL is never quoted back: it
    /// may hold a password.
    pub(crate) fn check(&self) -> Checked {
        let url = self.url.expose_secret();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(Invalid::new(
                "database.url",
                "must be a postgres:// or postgresql:// URL",
            ));
        }
        at_least_one("database.max_connections", self.max_connections.into())?;
        at_least_one("database.submit_committers", self.submit_committers.into())
    }
}
