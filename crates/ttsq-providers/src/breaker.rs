//! A per-provider circuit breaker: after `threshold` consecutive failures it
//! opens and the router skips the provider; after `cooldown` it lets one
//! trial request through (half-open), which closes it again on success.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// Breaker position, for readiness and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Requests are refused until the cooldown ends.
    Open,
    /// One trial request is in flight.
    HalfOpen,
}

struct Inner {
    failures: u32,
    opened_at: Option<Instant>,
    trial_in_flight: bool,
}

/// One provider's breaker.
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    inner: Mutex<Inner>,
}

impl Breaker {
    /// Opens after `threshold` consecutive failures, for `cooldown`.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            inner: Mutex::new(Inner {
                failures: 0,
                opened_at: None,
                trial_in_flight: false,
            }),
        }
    }

    /// Whether a request may go now; in half-open state only the first caller gets `true`.
    pub fn allow(&self) -> bool {
        let Ok(mut inner) = self.inner.lock() else {
            return true;
        };
        match inner.opened_at {
            None => true,
            Some(at) if at.elapsed() >= self.cooldown && !inner.trial_in_flight => {
                inner.trial_in_flight = true;
                true
            }
            Some(_) => false,
        }
    }

    /// The provider answered well: close.
    pub fn record_success(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.failures = 0;
            inner.opened_at = None;
            inner.trial_in_flight = false;
        }
    }

    /// The provider failed: count, and open (again) at the threshold.
    pub fn record_failure(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.failures += 1;
            if inner.trial_in_flight || inner.failures >= self.threshold {
                inner.opened_at = Some(Instant::now());
                inner.trial_in_flight = false;
            }
        }
    }

    /// Where the breaker stands.
    pub fn state(&self) -> BreakerState {
        match self.inner.lock() {
            Ok(inner) => match inner.opened_at {
                None => BreakerState::Closed,
                Some(_) if inner.trial_in_flight => BreakerState::HalfOpen,
                Some(_) => BreakerState::Open,
            },
            Err(_) => BreakerState::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_at_the_threshold_half_opens_after_the_cooldown_and_closes_on_success() {
        let breaker = Breaker::new(3, Duration::from_millis(30));
        breaker.record_failure();
        breaker.record_failure();
        assert!(breaker.allow());
        breaker.record_failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(!breaker.allow());

        std::thread::sleep(Duration::from_millis(40));
        assert!(breaker.allow(), "one trial after the cooldown");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(!breaker.allow(), "only one trial at a time");
        breaker.record_success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.allow());
    }

    #[test]
    fn a_failed_trial_opens_it_again() {
        let breaker = Breaker::new(1, Duration::from_millis(10));
        breaker.record_failure();
        std::thread::sleep(Duration::from_millis(15));
        assert!(breaker.allow());
        breaker.record_failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(!breaker.allow());
    }
}
