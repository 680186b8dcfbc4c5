//! What the joins of batches ([`crate::batches`]) and of long jobs
//! ([`crate::long_jobs`]) share around their leases: renewing one while
//! the join runs, and the wait before a failed join is tried again.

use std::{future::Future, time::Duration};

use ttsq_store::StoreError;

use crate::join::JoinError;

/// Wait before a join that failed in a way that may pass (S3, Postgres) is
/// tried again; doubled at each attempt, up to [`MAX_JOIN_RETRY_DELAY`].
const JOIN_RETRY_DELAY: Duration = Duration::from_secs(30);

/// Longest wait between two attempts at a join.
const MAX_JOIN_RETRY_DELAY: Duration = Duration::from_secs(600);

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
