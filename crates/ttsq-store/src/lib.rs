#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`Store`]: the pool and migrations.
//! - [`keys`]: tenants and API keys.
//! - [`tasks`]: task rows, claiming and finishing batches, the ledger.
//! - [`audio`]: the audio object index.
//! - [`replicas`]: replica heartbeats for quota sharing.
//! - [`outbox`]: relaying unpublished tasks and recovering orphaned ones.

pub mod audio;
pub mod keys;
pub mod listing;
pub mod outbox;
pub mod replicas;
pub mod tasks;

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::{PgPool, postgres::PgPoolOptions};
use ttsq_config::DatabaseSettings;

pub use audio::AudioObject;
pub use keys::{NewApiKey, Principal, Tenant};
pub use listing::{Cancellation, TaskCursor, TaskPage};
pub use outbox::Unpublished;
pub use replicas::LiveReplicas;
pub use sqlx;
pub use tasks::{ClaimedTask, FinishedTask, NewTask, TaskOutcome, TaskRow};

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
}

/// Handle to the ttsq database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Opens a pool; fails fast when Postgres is unreachable.
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect(settings.url.expose_secret())
            .await?;
        Ok(Self { pool })
    }

    /// Wraps an existing pool (tests build their own).
    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The underlying pool, for queries this crate does not offer (tests, tools).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations; safe to run concurrently from several
    /// replicas (sqlx takes an advisory lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("../../migrations").run(&self.pool).await?;
        Ok(())
    }

    /// One round trip, for readiness probes.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// Whether `err` is a unique-constraint violation.
fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(|e| e.kind() == sqlx::error::ErrorKind::UniqueViolation)
}
