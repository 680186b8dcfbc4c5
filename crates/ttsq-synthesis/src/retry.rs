//! Riding out S3 and Postgres blips around a paid-for synthesis.

use std::time::{Duration, Instant};

use ttsq_audio::AudioStoreError;
use ttsq_core::backoff::Backoff;

/// Runs an S3 or Postgres operation until it succeeds, fails for good, or
/// `limit` has passed, backing off in between.
pub async fn retry_transient<T, E, F, Fut>(
    limit: Duration,
    what: &str,
    mut operation: F,
) -> Result<T, E>
where
    E: std::fmt::Display + Transient,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + limit;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match operation().await {
            Ok(value) => return Ok(value),
            Err(err) if err.is_transient() => {
                let wait = backoff.next_delay();
                if Instant::now() + wait >= deadline {
                    return Err(err);
                }
                tracing::warn!(error = %err, retry_in = ?wait, "{what} failed; retrying");
                tokio::time::sleep(wait).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Errors that may clear up by themselves.
pub trait Transient {
    /// Whether trying again later may succeed.
    fn is_transient(&self) -> bool;
}

impl Transient for ttsq_store::StoreError {
    fn is_transient(&self) -> bool {
        ttsq_store::StoreError::is_transient(self)
    }
}

impl Transient for AudioStoreError {
    fn is_transient(&self) -> bool {
        AudioStoreError::is_transient(self)
    }
}
