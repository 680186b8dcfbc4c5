//! One synthesis per content hash across the batches a worker runs at once.
//!
//! A batch dedupes its own jobs, but a worker runs several batches
//! concurrently: without coordination, two batches holding the same text both
//! miss the cache and both pay the provider. Every batch registers its hashes
//! here *before* its cache lookup; the first to synthesize a hash does it,
//! the others wait for its result and take it as a cache hit. A hash whose
//! synthesizer failed is tried again by the next waiter.
//!
//! Registering before the lookup closes the gap between "the cache had no
//! row" and "someone else is already on it": a synthesizer indexes its audio
//! in Postgres before its entry leaves the map, so a batch that registers
//! after that finds the row in its lookup.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::OnceCell;
use ttsq_store::AudioObject;

type Cell = Arc<OnceCell<AudioObject>>;

/// The hashes being resolved in this process. Cheap to clone; clones share.
#[derive(Clone, Default)]
pub struct InFlightHashes {
    cells: Arc<Mutex<HashMap<String, Cell>>>,
}

/// A batch's hold on one hash; leaving the map is done on drop.
pub struct Registration {
    owner: InFlightHashes,
    hash: String,
    cell: Cell,
}

impl InFlightHashes {
    /// Registers interest in `hash`; hold the registration until the hash is
    /// resolved.
    pub fn register(&self, hash: &str) -> Registration {
        let mut cells = self.cells.lock().unwrap_or_else(PoisonError::into_inner);
        let cell = Arc::clone(cells.entry(hash.to_owned()).or_default());
        Registration {
            owner: self.clone(),
            hash: hash.to_owned(),
            cell,
        }
    }

    /// Hashes registered now (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.cells
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no hash is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Registration {
    /// Runs `synthesize` unless another registration of the same hash
    /// already did (or is doing) it successfully, in which case its object
    /// comes back. `Ok((object, true))`: this call synthesized it.
    pub async fn resolve<F, Fut, E>(&self, synthesize: F) -> Result<(AudioObject, bool), E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<AudioObject, E>>,
    {
        let mut ran = false;
        let object = self
            .cell
            .get_or_try_init(|| {
                ran = true;
                synthesize()
            })
            .await?;
        Ok((object.clone(), ran))
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut cells = self
            .owner
            .cells
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Clones are only made under this lock: two references (the map's
        // and ours) mean nobody else holds the hash.
        if let Some(cell) = cells.get(&self.hash)
            && Arc::ptr_eq(cell, &self.cell)
            && Arc::strong_count(&self.cell) == 2
        {
            cells.remove(&self.hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn object(hash: &str) -> AudioObject {
        AudioObject {
            hash: hash.to_owned(),
            s3_key: format!("audio/{hash}.wav"),
            bytes: 1,
            format: "wav".to_owned(),
            duration_ms: 1,
            provider: "fake".to_owned(),
            sha256: String::new(),
            created_at: chrono::Utc::now(),
        }
    }

    #[tokio::test]
    async fn concurrent_registrations_of_one_hash_synthesize_once() {
        let in_flight = InFlightHashes::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let registrations: Vec<_> = (0..8).map(|_| in_flight.register("h1")).collect();
        let results = futures::future::join_all(registrations.iter().map(|r| {
            let calls = Arc::clone(&calls);
            r.resolve(|| async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Ok::<_, ()>(object("h1"))
            })
        }))
        .await;

        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let paid = results
            .iter()
            .filter(|r| matches!(r, Ok((_, true))))
            .count();
        assert_eq!(paid, 1, "exactly one registration paid");
        assert!(results.iter().all(|r| r.as_ref().unwrap().0.hash == "h1"));
        drop(registrations);
        assert!(in_flight.is_empty(), "resolved hashes leave the map");
    }

    #[tokio::test]
    async fn a_failed_synthesis_is_tried_again_by_the_next_waiter() {
        let in_flight = InFlightHashes::default();
        let first = in_flight.register("h2");
        let second = in_flight.register("h2");

        let failed = first
            .resolve(|| async { Err::<AudioObject, _>("vendor down") })
            .await;
        let retried = second
            .resolve(|| async { Ok::<_, &str>(object("h2")) })
            .await;

        assert_eq!(failed.unwrap_err(), "vendor down");
        assert!(retried.unwrap().1, "the second registration synthesized");
        drop((first, second));
        assert_eq!(in_flight.len(), 0);
    }
}
