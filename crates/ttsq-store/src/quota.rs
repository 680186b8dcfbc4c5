//! Provider quotas shared by every replica, kept in Postgres: the
//! [`QuotaCoordinator`] of `ttsq-quota` on the tables and the
//! `provider_quota_acquire` function of the migrations.
//!
//! One try is one round trip: the function locks the provider's row, checks
//! the pause, the request and character rates (GCRA) and the concurrency
//! slots, and takes them when all allow. The state is soft, so it is written
//! on a small pool of its own whose sessions commit without waiting for the
//! WAL flush (`synchronous_commit = off`): a crash loses at most the last
//! few milliseconds of pacing, never data anyone reads back.

use std::time::Duration;

use async_trait::async_trait;
use secrecy::ExposeSecret;
use sqlx::{Executor, PgPool, postgres::PgPoolOptions};
use ttsq_config::DatabaseSettings;
use ttsq_quota::{Acquired, CoordinatorError, Lease, QuotaCoordinator, SharedLimits, WaitReason};
use uuid::Uuid;

use crate::StoreError;

/// Connections of the coordinator's pool: one poller per provider per
/// replica, plus releases and pauses.
const POOL_SIZE: u32 = 3;
/// How long a try waits for a pooled connection before the coordinator
/// counts as unreachable (the router then uses its local share).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

/// The fleet-wide provider quota limiter on Postgres; cheap to clone.
#[derive(Clone, Debug)]
pub struct PgQuotaCoordinator {
    pool: PgPool,
    /// The replica whose leases these are (its heartbeat id).
    holder: Uuid,
}

impl PgQuotaCoordinator {
    /// A coordinator for replica `holder`, on its own small pool to the
    /// database of `settings`. Connects lazily: an unreachable Postgres
    /// shows as failed tries (and the local fallback), not as an error here.
    pub fn connect_lazy(settings: &DatabaseSettings, holder: Uuid) -> Result<Self, StoreError> {
        Self::connect_lazy_url(settings.url.expose_secret(), holder)
    }

    /// [`Self::connect_lazy`] from a bare URL (tests, tools).
    pub fn connect_lazy_url(url: &str, holder: Uuid) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // Soft state: no WAL flush per try. A statement that
                    // waits on a lock longer than this is better retried.
                    conn.execute("SET synchronous_commit = off; SET statement_timeout = '5s'")
                        .await?;
                    Ok(())
                })
            })
            .connect_lazy(url)?;
        Ok(Self { pool, holder })
    }

    /// The replica id its leases are held under.
    pub fn holder(&self) -> Uuid {
        self.holder
    }

    /// The coordinator's own pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The concurrency leases of `provider` that have not expired, as
    /// (slot, holder): for tests and operators.
    pub async fn live_leases(&self, provider: &str) -> Result<Vec<(i32, Uuid)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT slot, holder FROM provider_quota_leases
              WHERE provider = $1 AND expires_at > clock_timestamp() ORDER BY slot",
        )
        .bind(provider)
        .fetch_all(&self.pool)
        .await?)
    }
}

fn unavailable(err: impl std::fmt::Display) -> CoordinatorError {
    CoordinatorError(err.to_string())
}

/// Milliseconds as Postgres `integer`, saturating.
fn millis(duration: Duration) -> i32 {
    i32::try_from(duration.as_millis()).unwrap_or(i32::MAX)
}

#[async_trait]
impl QuotaCoordinator for PgQuotaCoordinator {
    async fn try_acquire(
        &self,
        provider: &str,
        characters: u32,
        limits: &SharedLimits,
    ) -> Result<Acquired, CoordinatorError> {
        let token = Uuid::now_v7();
        let (granted, slot, wait_ms, reason): (bool, Option<i32>, f64, Option<String>) =
            sqlx::query_as(
                "SELECT granted, slot, wait_ms, reason
                   FROM provider_quota_acquire($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(provider)
            .bind(self.holder)
            .bind(token)
            .bind(i32::try_from(characters).unwrap_or(i32::MAX))
            .bind(limits.requests_per_second)
            .bind(limits.characters_per_second)
            .bind(limits.character_burst)
            .bind(
                limits
                    .max_concurrent
                    .map(|m| i32::try_from(m).unwrap_or(i32::MAX)),
            )
            .bind(millis(limits.lease_ttl))
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        if granted {
            return Ok(Acquired::Granted(Lease {
                slot: slot.and_then(|s| u32::try_from(s).ok()),
                token,
            }));
        }
        let reason = match reason.as_deref() {
            Some("paused") => WaitReason::Paused,
            Some("requests") => WaitReason::Requests,
            Some("characters") => WaitReason::Characters,
            _ => WaitReason::Concurrency,
        };
        Ok(Acquired::Wait {
            wait: Duration::from_secs_f64(wait_ms.max(0.0) / 1000.0),
            reason,
        })
    }

    async fn release(&self, provider: &str, lease: &Lease) -> Result<(), CoordinatorError> {
        let Some(slot) = lease.slot else {
            return Ok(());
        };
        sqlx::query(
            "DELETE FROM provider_quota_leases
              WHERE provider = $1 AND slot = $2 AND holder = $3 AND lease = $4",
        )
        .bind(provider)
        .bind(i32::try_from(slot).unwrap_or(i32::MAX))
        .bind(self.holder)
        .bind(lease.token)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn pause(&self, provider: &str, for_how_long: Duration) -> Result<(), CoordinatorError> {
        sqlx::query(
            "INSERT INTO provider_quota_state AS s (provider, paused_until)
             VALUES ($1, clock_timestamp() + make_interval(secs => $2))
             ON CONFLICT (provider) DO UPDATE
                SET paused_until = greatest(s.paused_until, EXCLUDED.paused_until)",
        )
        .bind(provider)
        .bind(for_how_long.as_secs_f64())
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }
}
