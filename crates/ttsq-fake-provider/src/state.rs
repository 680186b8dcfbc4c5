//! State shared by every request: the live configuration, the counters and
//! log, the quota windows and the random source for latency and faults.
//!
//! One `std::sync::Mutex` guards counters, windows and log together; it is
//! held for a few hundred nanoseconds per request and never across an await.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio_util::sync::CancellationToken;

use crate::{
    audio::AudioCache,
    config::{FakeConfig, Quota},
    stats::{FakeStats, Outcome, RequestRecord, Vendor},
};

/// Window of `requests_per_second`.
const SECOND: Duration = Duration::from_secs(1);

/// Window of `characters_per_minute`.
const MINUTE: Duration = Duration::from_secs(60);

/// Which quota limit a request exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// `max_concurrent`.
    Concurrency,
    /// `requests_per_second`.
    Requests,
    /// `characters_per_minute`.
    Characters,
}

/// A refused admission: why, and the whole seconds until a retry can pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Throttled {
    /// The limit exceeded.
    pub limit: Limit,
    /// `Retry-After`, at least 1.
    pub retry_after_secs: u64,
}

/// Everything the handlers share.
pub(crate) struct Shared {
    /// The live knobs; replaced whole on every change, so a request reads
    /// one consistent version.
    config: RwLock<Arc<FakeConfig>>,
    /// Counters, log, quota windows and the random state.
    state: Mutex<State>,
    /// Generated audio.
    pub audio: AudioCache,
    /// When the fake started; log timestamps count from here.
    started: Instant,
    /// Cancelled on shutdown: ends held "timeout" requests and the server.
    pub shutdown: CancellationToken,
}

struct State {
    stats: FakeStats,
    recent: VecDeque<RequestRecord>,
    seq: u64,
    /// Admission times of synthesis requests in the last second.
    admitted: VecDeque<Instant>,
    /// Admission times and characters in the last minute.
    characters: VecDeque<(Instant, u64)>,
    /// Sum of the characters in `characters`.
    characters_in_window: u64,
    /// xorshift64* state; never 0.
    rng: u64,
}

impl Shared {
    /// Shared state starting with `config`.
    pub fn new(config: FakeConfig) -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64);
        Self {
            config: RwLock::new(Arc::new(config)),
            state: Mutex::new(State {
                stats: FakeStats::default(),
                recent: VecDeque::new(),
                seq: 0,
                admitted: VecDeque::new(),
                characters: VecDeque::new(),
                characters_in_window: 0,
                rng: seed | 1,
            }),
            audio: AudioCache::default(),
            started: Instant::now(),
            shutdown: CancellationToken::new(),
        }
    }

    /// The configuration now.
    pub fn config(&self) -> Arc<FakeConfig> {
        Arc::clone(&self.config.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the configuration.
    pub fn set_config(&self, config: FakeConfig) {
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
    }

    /// Changes the configuration in place, atomically with respect to other updates.
    pub fn update(&self, change: impl FnOnce(&mut FakeConfig)) {
        let mut guard = self.config.write().unwrap_or_else(PoisonError::into_inner);
        let mut config = FakeConfig::clone(&guard);
        change(&mut config);
        *guard = Arc::new(config);
    }

    /// A snapshot of the counters and log.
    pub fn stats(&self) -> FakeStats {
        let state = self.lock();
        let mut stats = state.stats.clone();
        stats.recent = state.recent.iter().cloned().collect();
        stats
    }

    /// Characters answered with audio since the last reset.
    pub fn characters_synthesized(&self) -> u64 {
        self.lock().stats.characters_synthesized
    }

    /// Clears counters and log; requests in flight stay counted as in flight.
    /// The quota windows are kept: a reset must not hand out extra quota.
    pub fn reset(&self) {
        let mut state = self.lock();
        let in_flight = state.stats.in_flight;
        state.stats = FakeStats {
            in_flight,
            peak_concurrency: in_flight,
            ..FakeStats::default()
        };
        state.recent.clear();
        state.seq = 0;
    }

    /// Counts one request to a vendor route.
    pub fn count_request(&self, vendor: Vendor, route: &str) {
        let mut state = self.lock();
        state.stats.total_requests += 1;
        *state.stats.by_vendor.entry(vendor).or_default() += 1;
        *state.stats.by_route.entry(route.to_owned()).or_default() += 1;
    }

    /// Marks a synthesis request as in flight until the guard drops.
    pub fn enter(self: &Arc<Self>) -> Flight {
        let mut state = self.lock();
        state.stats.synthesis_requests += 1;
        state.stats.in_flight += 1;
        state.stats.peak_concurrency = state.stats.peak_concurrency.max(state.stats.in_flight);
        Flight {
            shared: Arc::clone(self),
        }
    }

    /// Counts what a parsed synthesis request asked for.
    pub fn count_order(&self, voice: &str, characters: u64) {
        let mut state = self.lock();
        *state.stats.by_voice.entry(voice.to_owned()).or_default() += 1;
        state.stats.characters_received += characters;
    }

    /// Admits a synthesis request of `characters` under `quota`, or says
    /// which limit it exceeds. Admitted requests consume the windows.
    pub fn admit(&self, quota: &Quota, characters: u64) -> Result<(), Throttled> {
        let now = Instant::now();
        let mut state = self.lock();
        let state = &mut *state;
        while state
            .admitted
            .front()
            .is_some_and(|t| now.duration_since(*t) >= SECOND)
        {
            state.admitted.pop_front();
        }
        while let Some(&(t, n)) = state.characters.front() {
            if now.duration_since(t) < MINUTE {
                break;
            }
            state.characters.pop_front();
            state.characters_in_window -= n;
        }

        let throttled = if quota
            .max_concurrent
            .is_some_and(|max| state.stats.in_flight > u64::from(max))
        {
            Some(Throttled {
                limit: Limit::Concurrency,
                retry_after_secs: 1,
            })
        } else if let Some(max) = quota
            .requests_per_second
            .filter(|max| state.admitted.len() >= *max as usize)
        {
            // The window frees a slot when its `len - max + 1`-th oldest entry expires.
            let freeing = state.admitted.len() - max as usize;
            let wait = state
                .admitted
                .get(freeing)
                .map_or(SECOND, |t| SECOND.saturating_sub(now.duration_since(*t)));
            Some(Throttled {
                limit: Limit::Requests,
                retry_after_secs: whole_seconds(wait),
            })
        } else if let Some(max) = quota
            .characters_per_minute
            .filter(|max| state.characters_in_window + characters > *max)
        {
            let mut freed = 0;
            let mut wait = MINUTE;
            if characters <= max {
                for &(t, n) in &state.characters {
                    freed += n;
                    if state.characters_in_window - freed + characters <= max {
                        wait = MINUTE.saturating_sub(now.duration_since(t));
                        break;
                    }
                }
            }
            Some(Throttled {
                limit: Limit::Characters,
                retry_after_secs: whole_seconds(wait),
            })
        } else {
            None
        };

        match throttled {
            Some(throttled) => {
                let counter = match throttled.limit {
                    Limit::Concurrency => &mut state.stats.rate_limited_concurrency,
                    Limit::Requests => &mut state.stats.rate_limited_requests,
                    Limit::Characters => &mut state.stats.rate_limited_characters,
                };
                *counter += 1;
                Err(throttled)
            }
            None => {
                state.admitted.push_back(now);
                if quota.characters_per_minute.is_some() {
                    state.characters.push_back((now, characters));
                    state.characters_in_window += characters;
                }
                Ok(())
            }
        }
    }

    /// A uniform draw from `[0, 1)`.
    pub fn random(&self) -> f64 {
        let mut state = self.lock();
        // xorshift64*: plenty for jitter and fault draws, no dependency.
        let mut x = state.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.rng = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Counts the answer to one request and appends it to the log.
    pub fn finish(&self, mut record: RequestRecord, log_capacity: usize) {
        let elapsed = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut state = self.lock();
        let stats = &mut state.stats;
        match record.outcome {
            Outcome::Audio => {
                stats.audio_responses += 1;
                stats.characters_synthesized += record.characters;
            }
            Outcome::Listing => {}
            Outcome::Unauthorized => stats.unauthorized += 1,
            Outcome::RateLimited => stats.rate_limited += 1,
            Outcome::CreditsExhausted => stats.credits_exhausted += 1,
            Outcome::Rejected => stats.rejected += 1,
            Outcome::ServerError => stats.server_errors += 1,
            Outcome::Unavailable => stats.unavailable += 1,
            Outcome::Timeout => stats.timeouts += 1,
            Outcome::Malformed => stats.malformed += 1,
        }
        state.seq += 1;
        record.seq = state.seq;
        record.elapsed_ms = elapsed;
        if log_capacity == 0 {
            return;
        }
        while state.recent.len() >= log_capacity {
            state.recent.pop_front();
        }
        state.recent.push_back(record);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent, so a panic in
        // another request does not make it unusable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A synthesis request in flight; leaving decrements the count.
pub(crate) struct Flight {
    shared: Arc<Shared>,
}

impl Drop for Flight {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.stats.in_flight = state.stats.in_flight.saturating_sub(1);
    }
}

/// `Retry-After` for a wait: whole seconds rounded up, at least 1.
fn whole_seconds(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Arc<Shared> {
        Arc::new(Shared::new(FakeConfig::default()))
    }

    #[test]
    fn requests_per_second_admits_up_to_the_limit_then_throttles() {
        let shared = shared();
        let quota = Quota {
            requests_per_second: Some(2),
            ..Quota::default()
        };

        assert!(shared.admit(&quota, 1).is_ok());
        assert!(shared.admit(&quota, 1).is_ok());
        let throttled = shared.admit(&quota, 1).unwrap_err();

        assert_eq!(throttled.limit, Limit::Requests);
        assert_eq!(throttled.retry_after_secs, 1);
        assert_eq!(shared.stats().rate_limited_requests, 1);
    }

    #[test]
    fn characters_per_minute_counts_admitted_text_only() {
        let shared = shared();
        let quota = Quota {
            characters_per_minute: Some(100),
            ..Quota::default()
        };

        assert!(shared.admit(&quota, 60).is_ok());
        let throttled = shared.admit(&quota, 60).unwrap_err();
        assert!(shared.admit(&quota, 40).is_ok());

        assert_eq!(throttled.limit, Limit::Characters);
        assert!((59..=60).contains(&throttled.retry_after_secs));
    }

    #[test]
    fn concurrency_counts_requests_in_flight_and_records_the_peak() {
        let shared = shared();
        let quota = Quota {
            max_concurrent: Some(1),
            ..Quota::default()
        };

        let first = shared.enter();
        assert!(shared.admit(&quota, 1).is_ok());
        let second = shared.enter();
        let throttled = shared.admit(&quota, 1).unwrap_err();
        drop(second);
        drop(first);

        assert_eq!(throttled.limit, Limit::Concurrency);
        let stats = shared.stats();
        assert_eq!(stats.peak_concurrency, 2);
        assert_eq!(stats.in_flight, 0);
    }

    #[test]
    fn random_draws_stay_in_the_unit_interval() {
        let shared = shared();
        let draws: Vec<f64> = (0..1000).map(|_| shared.random()).collect();

        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((0.4..0.6).contains(&mean), "{mean}");
    }

    #[test]
    fn whole_seconds_round_up_and_never_say_zero() {
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1_001)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(60)), 60);
    }
}
