#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`Store`]: the pool and migrations; [`error`]: [`StoreError`].
//! - [`grants`]: what the service role may do (the owner role migrates).
//! - [`finance`]: the read-only finance role, and checking a reader's access.
//! - [`keys`]: tenants, their limits and API keys.
//! - [`limit_usage`]: which limit, how much is in use, a refusal past one.
//! - [`limits`]: admitting submissions within a tenant's limits.
//! - [`audit`]: the append-only audit log of submissions and admin actions.
//! - [`usage`]: the finance views, read per tenant and period.
//! - [`task_events`]: waking long-polls on LISTEN/NOTIFY when tasks finish.
//! - [`new_task`]: a task to create and its expected cost.
//! - [`tasks`]: task rows, claiming and finishing batches, the ledger.
//! - [`submissions`]: single submissions written many to a transaction
//!   (group commit).
//! - [`audio`]: the audio object index.
//! - [`leases`]: fleet-wide single flight per content hash, and the commit
//!   that indexes audio with the task that pays for it.
//! - [`retention`]: removing expired tasks and the audio only they used.
//! - [`replicas`]: replica heartbeats for quota sharing.
//! - [`quota`]: provider quotas shared by all replicas (the quota coordinator).
//! - [`dispatch`]: publishing queued tasks a window at a time, in the plan's order.
//! - [`outbox`]: recovering tasks of replicas that died.
//! - [`usage_today`]: today's fleet-wide usage, for metrics.
//! - [`batches`]: batches of tasks, their items, cancelling, joined audio.
//! - [`long_joins`]: joining a long job's chunks, under a lease.
//! - [`webhooks`]: webhook events, their delivery log, tenants' webhook settings.

pub mod audio;
pub mod audit;
pub mod batches;
pub mod dispatch;
pub mod error;
pub mod finance;
pub mod grants;
pub mod keys;
pub mod leases;
pub mod limit_usage;
pub mod limits;
pub mod listing;
pub mod long_joins;
pub mod new_task;
pub mod outbox;
pub mod quota;
pub mod replicas;
pub mod retention;
pub mod submissions;
pub mod task_events;
pub mod tasks;
pub mod usage;
pub mod usage_today;
pub mod webhooks;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use secrecy::ExposeSecret;
use sqlx::{PgPool, postgres::PgPoolOptions};
use ttsq_config::DatabaseSettings;

pub use audio::AudioObject;
pub use batches::{
    BatchAudio, BatchItemRow, BatchRow, Concatenated, JoinLease, NewBatch, NewBatchItem,
};
pub use dispatch::{DispatchQueue, Dispatchable, LaneKey, Round};
pub use error::StoreError;
pub use finance::{FINANCE_RELATIONS, Regrant};
pub use keys::{KeyInfo, NewApiKey, Principal, Tenant, TenantInfo, TenantLimits, TenantUpdate};
pub use leases::{ClaimCommit, ClaimCommitted, MadeAudio};
pub use limit_usage::{LimitExceeded, LimitKind, LimitUsage};
pub use listing::{Cancellation, TaskCursor, TaskPage};
pub use long_joins::{ChunkAudio, JOIN_FAILED, LongJoinJob, LongJoinLease};
pub use new_task::{CostEstimate, NewTask};
pub use quota::PgQuotaCoordinator;
pub use replicas::LiveReplicas;
pub use retention::{SweepLease, SweptBatch};
pub use sqlx;
pub use submissions::{InlineClaim, NewChunk, Submission, Submitted};
pub use task_events::{TaskWaiters, Waiter};
pub use tasks::{ClaimedTask, FinishedTask, Reschedule, TaskOutcome, TaskRow};
pub use usage::{UsageCursor, UsageFilter, UsagePage, UsagePeriod, UsageRow};
pub use usage_today::UsageToday;
pub use webhooks::{AttemptOutcome, TenantWebhook, WebhookDelivery};

/// The migrations of this build, embedded.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// SQLSTATE of a relation that does not exist.
const UNDEFINED_TABLE: &str = "42P01";

/// Handle to the ttsq database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    /// Latest usage fraction per tenant and limit seen by this process.
    fractions: Arc<Mutex<HashMap<(uuid::Uuid, LimitKind), f64>>>,
}

impl Store {
    /// Opens a pool; fails fast when Postgres is unreachable.
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect(settings.url.expose_secret())
            .await?;
        Ok(Self::from_pool(pool))
    }

    /// Wraps an existing pool (tests build their own).
    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            pool,
            fractions: Arc::default(),
        }
    }

    /// The underlying pool, for queries this crate does not offer (tests, tools).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations; safe to run concurrently from several
    /// replicas (sqlx takes an advisory lock). When every migration of this
    /// build is applied already, as it is, it only reads sqlx's record of
    /// them, so a service role that may not create tables can call it too
    /// ([`grants`]); with migrations pending, only the owner can, and then
    /// grants the finance roles again ([`finance`]), since a migration that
    /// replaces a view drops its grants.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        if self.migrations_applied().await? {
            return Ok(());
        }
        MIGRATOR.run(&self.pool).await?;
        self.regrant_finance_roles_after_migrating().await
    }

    /// Whether sqlx's record holds exactly this build's migrations, each
    /// applied successfully with the same checksum; anything else (none
    /// recorded yet, one missing, dirty, changed or unknown) is left to the
    /// migrator, which applies or reports it.
    async fn migrations_applied(&self) -> Result<bool, StoreError> {
        let applied = self.applied_migrations().await?;
        Ok(applied.len() == ours().count() && pending(&applied).is_empty())
    }

    /// This build's migrations that the database has not applied (with the
    /// same checksum), by version: empty when the schema is current, also
    /// when a later build migrated it further. Reads only sqlx's record, so
    /// the service role can ask; the replicas' init containers wait on it
    /// for the migration Job (`ttsq migrate --wait`).
    pub async fn pending_migrations(&self) -> Result<Vec<i64>, StoreError> {
        Ok(pending(&self.applied_migrations().await?))
    }

    /// `(version, checksum)` of every migration sqlx recorded as applied;
    /// none before the first migration created its table.
    async fn applied_migrations(&self) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        match sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations WHERE success")
            .fetch_all(&self.pool)
            .await
        {
            Ok(applied) => Ok(applied),
            Err(err)
                if err
                    .as_database_error()
                    .and_then(|e| e.code())
                    .is_some_and(|code| code == UNDEFINED_TABLE) =>
            {
                Ok(Vec::new())
            }
            Err(err) => Err(err.into()),
        }
    }

    /// One round trip, for readiness probes.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// This build's up migrations.
fn ours() -> impl Iterator<Item = &'static sqlx::migrate::Migration> {
    MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
}

/// Versions of this build's migrations missing from `applied`.
fn pending(applied: &[(i64, Vec<u8>)]) -> Vec<i64> {
    ours()
        .filter(|m| {
            !applied
                .iter()
                .any(|(version, checksum)| *version == m.version && *checksum == *m.checksum)
        })
        .map(|m| m.version)
        .collect()
}
