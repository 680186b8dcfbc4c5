//! Provider quotas coordinated across replicas, from the router's side: one
//! task per provider and replica polls the shared limiter (the contract of
//! `ttsq-quota`, re-exported here), sleeps the wait it is told, and releases
//! the lease when the call ends. The implementation on Postgres is
//! `ttsq-store`'s.

use std::{sync::Arc, time::Duration};

use tokio::sync::Notify;
pub use ttsq_quota::{
    Acquired, CoordinatorError, Lease, QuotaCoordinator, SharedLimits, WaitReason,
};

/// Shortest sleep between two tries, whatever the wait.
const MIN_POLL: Duration = Duration::from_millis(2);
/// Longest sleep between two tries: a pause or a slow rate is re-checked
/// this often, so a change by another replica is seen soon.
const MAX_POLL: Duration = Duration::from_millis(50);
/// Sleep between tries while every slot is taken by another replica; a
/// release by this replica wakes the poller at once.
const CONCURRENCY_POLL: Duration = Duration::from_millis(10);
/// Longest a single try may take before the coordinator counts as down.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// One provider's coordinated quota within this replica: one task at a time
/// polls the coordinator (the others queue here, in order), and a lease
/// released by this replica wakes that poller at once.
pub(crate) struct Gate {
    /// The limits sent with every try.
    limits: SharedLimits,
    /// Held by the task polling for this provider.
    turn: tokio::sync::Mutex<()>,
    /// Signalled after this replica released one of the provider's slots.
    released: Arc<Notify>,
}

impl Gate {
    /// A gate enforcing `limits`.
    pub(crate) fn new(limits: SharedLimits) -> Self {
        Self {
            limits,
            turn: tokio::sync::Mutex::new(()),
            released: Arc::new(Notify::new()),
        }
    }

    /// Waits for this replica's turn to poll for the provider; the others
    /// queue behind it in order.
    pub(crate) async fn turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.turn.lock().await
    }

    /// Polls `coordinator`, during this replica's `_turn`, until it grants a
    /// request of `characters` to `provider`. Fails as soon as the
    /// coordinator does, so the caller can fall back.
    pub(crate) async fn acquire(
        &self,
        _turn: &tokio::sync::MutexGuard<'_, ()>,
        coordinator: &Arc<dyn QuotaCoordinator>,
        provider: &Arc<str>,
        characters: u32,
    ) -> Result<SharedPermit, CoordinatorError> {
        loop {
            let answer = tokio::time::timeout(
                CALL_TIMEOUT,
                coordinator.try_acquire(provider, characters, &self.limits),
            )
            .await
            .map_err(|_| CoordinatorError(format!("no answer within {CALL_TIMEOUT:?}")))??;
            match answer {
                Acquired::Granted(lease) => {
                    return Ok(SharedPermit {
                        coordinator: Arc::clone(coordinator),
                        provider: Arc::clone(provider),
                        lease,
                        released: Arc::clone(&self.released),
                    });
                }
                Acquired::Wait {
                    wait,
                    reason: WaitReason::Concurrency,
                } => {
                    let nap = wait.clamp(MIN_POLL, CONCURRENCY_POLL);
                    tokio::select! {
                        () = tokio::time::sleep(nap) => {}
                        () = self.released.notified() => {}
                    }
                }
                Acquired::Wait { wait, .. } => {
                    tokio::time::sleep(wait.clamp(MIN_POLL, MAX_POLL)).await;
                }
            }
        }
    }
}

/// A granted lease; gives its concurrency slot back when dropped (in the
/// background, so a cancelled call frees its slot too).
pub(crate) struct SharedPermit {
    coordinator: Arc<dyn QuotaCoordinator>,
    provider: Arc<str>,
    lease: Lease,
    released: Arc<Notify>,
}

impl Drop for SharedPermit {
    fn drop(&mut self) {
        if self.lease.slot.is_none() {
            return;
        }
        // Outside a runtime the lease simply expires.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let coordinator = Arc::clone(&self.coordinator);
        let provider = Arc::clone(&self.provider);
        let lease = self.lease;
        let released = Arc::clone(&self.released);
        runtime.spawn(async move {
            let outcome =
                tokio::time::timeout(CALL_TIMEOUT, coordinator.release(&provider, &lease)).await;
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::debug!(provider = %provider, error = %err, "releasing a quota slot failed; it expires on its own")
                }
                Err(_) => {
                    tracing::debug!(provider = %provider, "releasing a quota slot timed out; it expires on its own")
                }
            }
            // One stored wake-up if nobody polls right now: the next poll
            // then does not sleep first.
            released.notify_one();
        });
    }
}
