//! Why a store operation failed, and how callers tell a passing failure
//! from a refusal.

use crate::limit_usage::LimitExceeded;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Postgres refused or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The row to create already exists.
    #[error("{0} already exists")]
    Conflict(String),
    /// The row named does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A value given is out of range; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// The schema is not what this build reads, or the connected role may
    /// not read it: not migrated, or a role without the grants it needs.
    /// The message says which and what to run.
    #[error("{0}")]
    Schema(String),
    /// The submission would go over one of the tenant's limits.
    #[error(transparent)]
    LimitExceeded(#[from] LimitExceeded),
}

impl StoreError {
    /// Whether retrying later may succeed: Postgres unreachable, restarting
    /// or out of connections, as opposed to a query it refused.
    pub fn is_transient(&self) -> bool {
        let Self::Database(err) = self else {
            return false;
        };
        match err {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_)
            | sqlx::Error::Tls(_) => true,
            // SQLSTATE classes 08 (connection exception), 53 (insufficient
            // resources), 57 (operator intervention: shutdown, restart) and
            // 40 (serialization failure, deadlock) clear up by themselves.
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                ["08", "53", "57", "40"]
                    .iter()
                    .any(|class| code.starts_with(class))
            }),
            _ => false,
        }
    }
}

/// Whether `err` is a unique-constraint violation.
pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(|e| e.kind() == sqlx::error::ErrorKind::UniqueViolation)
}
