#![doc = include_str!("../README.md")]

use std::time::Duration;

use async_trait::async_trait;
use ttsq_config::ProviderQuota;

/// The limits of one provider as the coordinator enforces them: the
/// account's quota, with rates scaled to the target utilisation.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedLimits {
    /// Requests per second for all replicas together, if limited.
    pub requests_per_second: Option<f64>,
    /// Characters per second for all replicas together, if limited.
    pub characters_per_second: Option<f64>,
    /// Characters that may go at once beyond the steady rate; a request
    /// longer than this passes only once the character bucket is full.
    pub character_burst: f64,
    /// Requests in flight at once, if limited.
    pub max_concurrent: Option<u32>,
    /// How long a concurrency slot stays taken if its holder never releases
    /// it (a killed replica): the request timeout plus a margin.
    pub lease_ttl: Duration,
}

impl SharedLimits {
    /// The coordinated form of `quota`. Rates are aimed at `utilisation` of
    /// the vendor's limits, and the character burst is the rest of a minute's
    /// characters, so no sliding minute ever sees more than the quota.
    /// Concurrency is taken whole: slots are exact across replicas and a
    /// slot is released only after the vendor has answered.
    pub fn new(quota: &ProviderQuota, utilisation: f64, lease_ttl: Duration) -> Self {
        let utilisation = utilisation.clamp(0.01, 1.0);
        Self {
            requests_per_second: quota
                .requests_per_second
                .filter(|r| *r > 0.0)
                .map(|r| r * utilisation),
            characters_per_second: quota
                .characters_per_minute
                .filter(|c| *c > 0)
                .map(|c| f64::from(c) * utilisation / 60.0),
            character_burst: quota
                .characters_per_minute
                .map_or(0.0, |c| (f64::from(c) * (1.0 - utilisation)).floor()),
            max_concurrent: quota.max_concurrent.map(|m| m.max(1)),
            lease_ttl,
        }
    }

    /// Whether any limit is set, i.e. whether coordinating is worth a round trip.
    pub fn is_limited(&self) -> bool {
        self.requests_per_second.is_some()
            || self.characters_per_second.is_some()
            || self.max_concurrent.is_some()
    }
}

/// A request's claim on a provider's quota, held while the request is in
/// flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The concurrency slot taken, when the provider limits concurrency.
    pub slot: Option<u32>,
    /// Identifies this claim, so a late release never frees a slot that
    /// expired and was taken by someone else.
    pub token: uuid::Uuid,
}

/// Why a request has to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    /// A `429` paused the provider for every replica.
    Paused,
    /// The request rate.
    Requests,
    /// The character rate.
    Characters,
    /// Every concurrency slot is taken; the wait is only a hint, since a
    /// slot comes back whenever its holder releases it.
    Concurrency,
}

/// The answer to one try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// The request may go now.
    Granted(Lease),
    /// Not yet: try again after `wait`.
    Wait {
        /// How long until the limit allows it.
        wait: Duration,
        /// Which limit.
        reason: WaitReason,
    },
}

/// The coordinator could not answer (its database is unreachable); the
/// router falls back to this replica's static share.
#[derive(Debug, thiserror::Error)]
#[error("quota coordinator unavailable: {0}")]
pub struct CoordinatorError(pub String);

/// A limiter shared by all replicas of the deployment.
#[async_trait]
pub trait QuotaCoordinator: Send + Sync + 'static {
    /// Checks `provider`'s limits for one request of `characters` and, when
    /// they allow it, takes its share of them at once (advancing the rates,
    /// taking a concurrency slot).
    async fn try_acquire(
        &self,
        provider: &str,
        characters: u32,
        limits: &SharedLimits,
    ) -> Result<Acquired, CoordinatorError>;

    /// Gives back a lease's concurrency slot.
    async fn release(&self, provider: &str, lease: &Lease) -> Result<(), CoordinatorError>;

    /// Holds every replica's requests to `provider` for `for_how_long` (a
    /// `429`'s Retry-After); a shorter pause never shortens a longer one.
    async fn pause(&self, provider: &str, for_how_long: Duration) -> Result<(), CoordinatorError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_aim_below_the_quota_and_concurrency_is_whole() {
        let limits = SharedLimits::new(
            &ProviderQuota {
                requests_per_second: Some(20.0),
                characters_per_minute: Some(60_000),
                max_concurrent: Some(4),
            },
            0.95,
            Duration::from_secs(60),
        );
        assert!((limits.requests_per_second.unwrap_or_default() - 19.0).abs() < 1e-9);
        assert!((limits.characters_per_second.unwrap_or_default() - 950.0).abs() < 1e-9);
        // Burst plus a minute at the steady rate is exactly the quota.
        assert!((limits.character_burst - 3_000.0).abs() < 1e-9);
        assert_eq!(limits.max_concurrent, Some(4));
        assert!(limits.is_limited());
        let none = SharedLimits::new(&ProviderQuota::default(), 0.95, Duration::from_secs(1));
        assert!(!none.is_limited());
    }
}
