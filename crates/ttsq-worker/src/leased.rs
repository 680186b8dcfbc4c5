//! What the joins of batches ([`crate::batches`]) and of long jobs
//! ([`crate::long_jobs`]) share around their leases: the sweep every worker
//! runs, renewing a lease while the join runs, and the wait before a failed
//! join is tried again.

use std::{future::Future, time::Duration};

use ttsq_store::StoreError;

use crate::join::JoinError;

/// Wait before a join that failed in a way that may pass (S3, Postgres) is
/// tried again; doubled at each attempt, up to [`MAX_JOIN_RETRY_DELAY`].
const JOIN_RETRY_DELAY: Duration = Duration::from_secs(30);

/// Longest wait between two attempts at a join.
const MAX_JOIN_RETRY_DELAY: Duration = Duration::from_secs(600);

/// How often a worker looks for joins waiting.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// Most joins one sweep makes; the rest wait for the next sweep.
pub(crate) const JOINS_PER_SWEEP: usize = 16;

/// Runs `sweep` every [`SWEEP_EVERY`] until `shutdown`, logging its
/// failures as failures to sweep `what`. A join cut short by shutdown
/// aborts its upload; its lease expires and another replica takes it over
/// (the cut take counts as an attempt).
pub(crate) async fn sweep_until<T, F>(
    shutdown: impl Future<Output = ()>,
    what: &str,
    mut sweep: impl FnMut() -> F,
) where
    F: Future<Output = Result<T, StoreError>>,
{
    tokio::pin!(shutdown);
    let mut ticks = tokio::time::interval(SWEEP_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = ticks.tick() => {}
        }
        tokio::select! {
            () = &mut shutdown => return,
            swept = sweep() => {
                if let Err(err) = swept {
                    tracing::warn!(error = %err, "sweeping {what} to join failed");
                }
            }
        }
    }
}

/// Runs `join` while renewing its lease every third of `ttl` with `renew`
/// (true while the lease holds); stops with [`JoinError::LeaseLost`] when
/// it no longer does. Dropping the join aborts its upload.
pub(crate) async fn while_renewing<T, R>(
    join: impl Future<Output = Result<T, JoinError>>,
    ttl: Duration,
    mut renew: impl FnMut() -> R,
) -> Result<T, JoinError>
where
    R: Future<Output = Result<bool, StoreError>>,
{
    tokio::pin!(join);
    let every = ttl / 3;
    let mut renewals = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            result = &mut join => return result,
            _ = renewals.tick() => {
                if !renew().await? {
                    return Err(JoinError::LeaseLost);
                }
            }
        }
    }
}

/// Wait before the attempt after `attempt` (from 1) at a join.
pub(crate) fn retry_delay(attempt: i32) -> Duration {
    let doublings = u32::try_from(attempt.saturating_sub(1))
        .unwrap_or(0)
        .min(16);
    JOIN_RETRY_DELAY
        .saturating_mul(1 << doublings)
        .min(MAX_JOIN_RETRY_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_delay_doubles_up_to_its_cap() {
        assert_eq!(retry_delay(1), Duration::from_secs(30));
        assert_eq!(retry_delay(2), Duration::from_secs(60));
        assert_eq!(retry_delay(9), Duration::from_secs(600));
        assert_eq!(retry_delay(i32::MAX), Duration::from_secs(600));
    }
}
