//! Exponential back-off with jitter, shared by every retry loop (provider
//! calls, reconnects, re-subscribes, storage retries) so replicas that fail
//! together do not retry in lockstep.

use std::time::Duration;

/// The wait before retry number `attempt` (1-based): `base` doubled per
/// attempt, capped at `max`, then scaled by a jitter factor in [0.5, 1.0).
pub fn backoff_delay(base: Duration, max: Duration, attempt: u32) -> Duration {
    let step = base
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(31)))
        .min(max);
    // The clock's sub-second nanoseconds are enough to de-synchronise
    // replicas; no RNG needed.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    step.mul_f64(0.5 + f64::from(nanos.wrapping_mul(2_654_435_761) % 1000) / 2000.0)
}

/// A back-off sequence for a loop that retries until it succeeds.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at about `base` and doubles up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// The next wait.
    pub fn next_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        backoff_delay(self.base, self.max, self.attempt)
    }

    /// Back to the first step after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_jitter_and_stop_at_the_cap() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for (attempt, step_ms) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            let delay = backoff_delay(base, max, attempt);
            let step = Duration::from_millis(step_ms);
            assert!(
                delay >= step / 2 && delay < step,
                "attempt {attempt}: {delay:?}"
            );
        }
    }

    #[test]
    fn a_reset_starts_over() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        for _ in 0..5 {
            backoff.next_delay();
        }
        backoff.reset();
        assert!(backoff.next_delay() < Duration::from_millis(100));
    }
}
