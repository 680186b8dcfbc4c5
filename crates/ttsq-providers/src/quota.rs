//! A provider's quota as this replica's share of it: requests per second and
//! characters per minute (governor, GCRA) and requests in flight (a
//! semaphore), plus a pause a `429` imposes.
//!
//! The vendor's quota belongs to the account, so every replica holds only a
//! share of it, set by [`Quota::set_share`] as replicas come and go. Rates are
//! scaled by the share and bursts are kept small, so the sum over replicas
//! stays under the vendor's limit in every window, not just on average.
//!
//! Vendor quotas normally go through the fleet-wide limiter of
//! [`crate::coordinator`] instead; this local share is what a replica falls
//! back on while that limiter is unreachable, and what local engines
//! (espeak) always use.

use std::{
    num::NonZeroU32,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use governor::{DefaultDirectRateLimiter, Quota as Gcra, RateLimiter};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use ttsq_config::ProviderQuota;

/// Limiters for the current share.
struct Shared {
    share: f64,
    requests: Option<Arc<DefaultDirectRateLimiter>>,
    characters: Option<(Arc<DefaultDirectRateLimiter>, u32)>,
    in_flight: Option<Arc<Semaphore>>,
}

/// One provider's quota, as this replica may use it.
pub struct Quota {
    limits: ProviderQuota,
    shared: RwLock<Shared>,
    paused_until: Mutex<Option<Instant>>,
}

/// Held while a request is in flight; releases its concurrency slot on drop.
pub struct QuotaPermit {
    _in_flight: Option<OwnedSemaphorePermit>,
}

fn limiter(per_second: f64, burst: u32) -> Option<Arc<DefaultDirectRateLimiter>> {
    let period = Duration::from_secs_f64(1.0 / per_second.max(1e-6));
    let burst = NonZeroU32::new(burst.max(1))?;
    Gcra::with_period(period).map(|q| Arc::new(RateLimiter::direct(q.allow_burst(burst))))
}

impl Quota {
    /// A quota with the whole of `limits` (share 1) until told otherwise.
    pub fn new(limits: ProviderQuota) -> Self {
        let quota = Self {
            shared: RwLock::new(Shared {
                share: 0.0,
                requests: None,
                characters: None,
                in_flight: None,
            }),
            limits,
            paused_until: Mutex::new(None),
        };
        quota.set_share(1.0);
        quota
    }

    /// The share of the account's quota this replica uses now.
    pub fn share(&self) -> f64 {
        self.shared.read().map_or(1.0, |s| s.share)
    }

    /// Rescales to `share` of the account's limits (0 < share ≤ 1). A no-op
    /// when the share is unchanged, so limiter state survives heartbeats.
    pub fn set_share(&self, share: f64) {
        let share = share.clamp(0.001, 1.0);
        let Ok(mut shared) = self.shared.write() else {
            return;
        };
        if (shared.share - share).abs() < 1e-9 {
            return;
        }
        shared.share = share;
        // One request of burst: replicas' requests interleave instead of
        // arriving together at the start of a window.
        shared.requests = self
            .limits
            .requests_per_second
            .and_then(|rps| limiter(rps * share, 1));
        shared.characters = self.limits.characters_per_minute.and_then(|cpm| {
            let per_minute = (f64::from(cpm) * share).max(1.0);
            // Burst of a tenth of a minute's share: long texts pass in one
            // step, and no replica can spend its whole minute at once.
            let burst = (per_minute / 10.0).ceil() as u32;
            limiter(per_minute / 60.0, burst).map(|l| (l, burst.max(1)))
        });
        shared.in_flight = self.limits.max_concurrent.map(|max| {
            let permits = ((f64::from(max) * share).floor() as usize).max(1);
            Arc::new(Semaphore::new(permits))
        });
    }

    /// Stops sending until `for_how_long` has passed (a `429`'s Retry-After).
    pub fn pause(&self, for_how_long: Duration) {
        if let Ok(mut until) = self.paused_until.lock() {
            let candidate = Instant::now() + for_how_long;
            if until.is_none_or(|u| u < candidate) {
                *until = Some(candidate);
            }
        }
    }

    /// The account's limits this quota was built from.
    pub fn limits(&self) -> &ProviderQuota {
        &self.limits
    }

    /// Returns once no pause set by [`Quota::pause`] is in force.
    pub async fn wait_out_pause(&self) {
        loop {
            let until = self.paused_until.lock().ok().and_then(|u| *u);
            match until {
                Some(at) if at > Instant::now() => tokio::time::sleep_until(at).await,
                _ => break,
            }
        }
    }

    /// Waits until a request of `characters` may be sent, then holds a
    /// concurrency slot until the permit is dropped.
    pub async fn acquire(&self, characters: u32) -> QuotaPermit {
        self.wait_out_pause().await;
        let (requests, chars, in_flight) = match self.shared.read() {
            Ok(s) => (
                s.requests.clone(),
                s.characters.clone(),
                s.in_flight.clone(),
            ),
            Err(_) => (None, None, None),
        };
        if let Some((limiter, burst)) = chars {
            let mut left = characters;
            while left > 0 {
                let step = left.min(burst);
                if let Some(n) = NonZeroU32::new(step) {
                    // `step` never exceeds the burst, so capacity always suffices.
                    let _ = limiter.until_n_ready(n).await;
                }
                left -= step;
            }
        }
        if let Some(limiter) = requests {
            limiter.until_ready().await;
        }
        let permit = match in_flight {
            Some(semaphore) => semaphore.acquire_owned().await.ok(),
            None => None,
        };
        QuotaPermit { _in_flight: permit }
    }
}

/// What a replica does, for its share of the quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaRole {
    /// Serves the API (high priority is synthesized here).
    Api,
    /// Consumes the queue.
    Worker,
    /// Both, in one process.
    All,
}

impl ReplicaRole {
    /// The name stored with the heartbeat.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Worker => "worker",
            Self::All => "all",
        }
    }
}

/// This replica's share of every provider quota, given the live replicas
/// (itself included). While both kinds run, API replicas split
/// `high_priority_share` and workers split the rest; when only one kind
/// runs, it splits the whole.
pub fn replica_share(role: ReplicaRole, apis: u32, workers: u32, high_priority_share: f64) -> f64 {
    let api_part = if workers == 0 {
        1.0
    } else if apis == 0 {
        0.0
    } else {
        high_priority_share
    };
    let per_api = api_part / f64::from(apis.max(1));
    let per_worker = (1.0 - api_part) / f64::from(workers.max(1));
    let share = match role {
        ReplicaRole::Api => per_api,
        ReplicaRole::Worker => per_worker,
        ReplicaRole::All => per_api + per_worker,
    };
    share.clamp(0.001, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(rps: Option<f64>, cpm: Option<u32>, conc: Option<u32>) -> Quota {
        Quota::new(ProviderQuota {
            requests_per_second: rps,
            characters_per_minute: cpm,
            max_concurrent: conc,
        })
    }

    // governor keeps its own clock, so these run in real (short) time.
    #[tokio::test]
    async fn requests_are_spaced_to_the_rate_of_the_share() {
        let q = quota(Some(20.0), None, None);
        q.set_share(0.5);
        let start = Instant::now();
        for _ in 0..11 {
            drop(q.acquire(1).await);
        }
        // 10/s: the first is free, 10 more take a second.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(950), "{elapsed:?}");
        assert!(elapsed <= Duration::from_millis(1_500), "{elapsed:?}");
    }

    #[tokio::test]
    async fn characters_are_metered_per_minute_even_beyond_the_burst() {
        let q = quota(None, Some(12_000), None);
        let start = Instant::now();
        // 12,000/min = 200/s with a burst of 1,200: 1,600 characters take two seconds.
        drop(q.acquire(1_200).await);
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "the burst is free"
        );
        drop(q.acquire(400).await);
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(1_950), "{elapsed:?}");
        assert!(elapsed <= Duration::from_millis(2_600), "{elapsed:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_waiters_share_one_rate() {
        let q = Arc::new(quota(Some(20.0), None, Some(4)));
        q.set_share(0.45);
        let start = Instant::now();
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let q = Arc::clone(&q);
                tokio::spawn(async move {
                    let _permit = q.acquire(30).await;
                    start.elapsed()
                })
            })
            .collect();
        let mut last = Duration::ZERO;
        for waiter in waiters {
            last = last.max(waiter.await.unwrap());
        }
        // 9/s: eight requests need seven intervals of 111 ms.
        assert!(last >= Duration::from_millis(760), "{last:?}");
    }

    #[tokio::test]
    async fn concurrency_is_capped_by_the_share_and_at_least_one() {
        let q = quota(None, None, Some(4));
        q.set_share(0.5);
        let a = q.acquire(1).await;
        let _b = q.acquire(1).await;
        let third = tokio::time::timeout(Duration::from_millis(50), q.acquire(1)).await;
        assert!(third.is_err(), "a third request waits");
        drop(a);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), q.acquire(1))
                .await
                .is_ok()
        );
        q.set_share(0.01);
        let _only = q.acquire(1).await;
    }

    #[test]
    fn shares_of_all_live_replicas_add_up_to_the_whole_quota() {
        use ReplicaRole::{All, Api, Worker};
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        // Two workers and one API, 10 % kept for high priority.
        assert!(close(replica_share(Worker, 1, 2, 0.1), 0.45));
        assert!(close(replica_share(Api, 1, 2, 0.1), 0.1));
        // A lone worker or a lone API takes everything.
        assert!(close(replica_share(Worker, 0, 1, 0.1), 1.0));
        assert!(close(replica_share(Api, 1, 0, 0.1), 1.0));
        // One `all` process is both.
        assert!(close(replica_share(All, 1, 1, 0.1), 1.0));
        // Two `all` processes split it.
        assert!(close(replica_share(All, 2, 2, 0.1), 0.5));
        for (apis, workers) in [(1, 3), (2, 5), (3, 1)] {
            let total = f64::from(apis) * replica_share(Api, apis, workers, 0.2)
                + f64::from(workers) * replica_share(Worker, apis, workers, 0.2);
            assert!(close(total, 1.0), "{apis} apis, {workers} workers: {total}");
        }
    }

    #[tokio::test]
    async fn a_pause_holds_every_request_until_it_ends() {
        let q = quota(None, None, None);
        q.pause(Duration::from_millis(300));
        q.pause(Duration::from_millis(100));
        let start = Instant::now();
        drop(q.acquire(1).await);
        assert!(
            start.elapsed() >= Duration::from_millis(290),
            "a shorter pause never shortens a longer one"
        );
    }
}
