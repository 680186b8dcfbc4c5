//! The provider quota coordinator on a real Postgres, with several
//! "replicas" (each its own coordinator and pool) taking from one quota:
//! concurrency slots, request and character rates, lease expiry, pauses.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use ttsq_quota::{Acquired, Lease, QuotaCoordinator, SharedLimits, WaitReason};
use ttsq_store::PgQuotaCoordinator;
use ttsq_test_db::TestDatabase;
use uuid::Uuid;

/// A fresh, migrated database of its own, dropped with the
/// [`TestDatabase`]; and its URL.
async fn fresh_db() -> (String, TestDatabase) {
    let db = TestDatabase::new()
        .await
        .expect("test database created (TTSQ_TEST_DATABASE_URL)");
    (db.url().to_owned(), db)
}

/// `n` replicas, each with its own coordinator (id and pool).
fn replicas(url: &str, n: usize) -> Vec<Arc<PgQuotaCoordinator>> {
    (0..n)
        .map(|_| {
            Arc::new(
                PgQuotaCoordinator::connect_lazy_url(url, Uuid::now_v7())
                    .expect("coordinator pool"),
            )
        })
        .collect()
}

fn limits() -> SharedLimits {
    SharedLimits {
        requests_per_second: None,
        characters_per_second: None,
        character_burst: 0.0,
        max_concurrent: None,
        lease_ttl: Duration::from_secs(30),
    }
}

/// Polls until granted, sleeping the wait it is told (bounded).
async fn acquire(
    coordinator: &PgQuotaCoordinator,
    provider: &str,
    characters: u32,
    limits: &SharedLimits,
) -> Lease {
    loop {
        match coordinator
            .try_acquire(provider, characters, limits)
            .await
            .expect("coordinator answers")
        {
            Acquired::Granted(lease) => return lease,
            Acquired::Wait { wait, .. } => {
                tokio::time::sleep(wait.clamp(Duration::from_millis(1), Duration::from_millis(20)))
                    .await;
            }
        }
    }
}

/// Most events of `times` (sorted) within any window of `window`, each
/// weighted by its `weight`.
fn busiest_window(times: &[(Instant, u64)], window: Duration) -> u64 {
    let mut best = 0;
    for (i, (start, _)) in times.iter().enumerate() {
        let sum: u64 = times[i..]
            .iter()
            .take_while(|(t, _)| t.duration_since(*start) < window)
            .map(|(_, w)| *w)
            .sum();
        best = best.max(sum);
    }
    best
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_never_hold_more_than_max_concurrent_slots() {
    let (url, _db) = fresh_db().await;
    let limits = SharedLimits {
        max_concurrent: Some(3),
        ..limits()
    };
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let granted = Arc::new(AtomicUsize::new(0));
    let until = Instant::now() + Duration::from_secs(2);
    let mut tasks = Vec::new();
    for replica in replicas(&url, 3) {
        // Four callers per replica: twelve want three slots.
        for caller in 0..4u64 {
            let (replica, limits) = (Arc::clone(&replica), limits.clone());
            let (in_flight, peak, granted) = (
                Arc::clone(&in_flight),
                Arc::clone(&peak),
                Arc::clone(&granted),
            );
            tasks.push(tokio::spawn(async move {
                while Instant::now() < until {
                    let lease = acquire(&replica, "vendor", 10, &limits).await;
                    // Counted only after the grant and uncounted before the
                    // release: never more than the slots held in Postgres.
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    granted.fetch_add(1, Ordering::SeqCst);
                    assert!(lease.slot.is_some_and(|s| s < 3), "{lease:?}");
                    tokio::time::sleep(Duration::from_millis(10 + 7 * caller)).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    replica
                        .release("vendor", &lease)
                        .await
                        .expect("release answers");
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("caller finished");
    }
    let peak = peak.load(Ordering::SeqCst);
    let granted = granted.load(Ordering::SeqCst);
    assert!(peak <= 3, "{peak} requests in flight with 3 slots");
    assert_eq!(peak, 3, "the slots were all used at once");
    // Three slots, about 30 ms a hold (plus a round trip or two): well over
    // 100 grants in two seconds if slots come back at once.
    assert!(granted >= 100, "only {granted} grants in 2 s");
    let leftover = replicas(&url, 1)[0]
        .live_leases("vendor")
        .await
        .expect("leases read");
    assert!(leftover.is_empty(), "every slot was released: {leftover:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_character_rates_hold_across_replicas() {
    let (url, _db) = fresh_db().await;
    let requests = SharedLimits {
        requests_per_second: Some(10.0),
        ..limits()
    };
    let characters = SharedLimits {
        characters_per_second: Some(1_000.0),
        character_burst: 200.0,
        ..limits()
    };
    let start = Instant::now();
    let until = start + Duration::from_millis(2_500);
    let mut tasks = Vec::new();
    for replica in replicas(&url, 3) {
        for _ in 0..3 {
            for (provider, limits) in [("by-requests", &requests), ("by-characters", &characters)] {
                let (replica, limits) = (Arc::clone(&replica), limits.clone());
                tasks.push(tokio::spawn(async move {
                    let mut grants = Vec::new();
                    while Instant::now() < until {
                        acquire(&replica, provider, 100, &limits).await;
                        // Callers still waiting at the end are let through
                        // later: count what was granted within the span.
                        let now = Instant::now();
                        if now < until {
                            grants.push((now, 100u64));
                        }
                    }
                    (provider, grants)
                }));
            }
        }
    }
    let mut by_requests = Vec::new();
    let mut by_characters = Vec::new();
    for task in tasks {
        let (provider, grants) = task.await.expect("caller finished");
        match provider {
            "by-requests" => by_requests.extend(grants.into_iter().map(|(t, _)| (t, 1))),
            _ => by_characters.extend(grants),
        }
    }
    by_requests.sort();
    by_characters.sort();
    let second = Duration::from_secs(1);
    // Nine callers would do thousands a second unchecked. Spaced 100 ms
    // apart in Postgres's clock; one more in a window for the jitter of the
    // answer's way back to the caller.
    let busiest = busiest_window(&by_requests, second);
    assert!(busiest <= 11, "{busiest} requests in one second at 10/s");
    assert!(
        (22..=27).contains(&by_requests.len()),
        "{} requests in 2.5 s at 10/s",
        by_requests.len()
    );
    // 1,000 characters a second plus the 200 of burst, and one request's
    // 100 of jitter.
    let busiest = busiest_window(&by_characters, second);
    assert!(busiest <= 1_300, "{busiest} characters in one second");
    let total: u64 = by_characters.iter().map(|(_, n)| n).sum();
    assert!(
        (2_200..=2_800).contains(&total),
        "{total} characters in 2.5 s at 1,000/s"
    );
}

#[tokio::test]
async fn slots_of_a_vanished_replica_expire_and_a_late_release_frees_nothing() {
    let (url, _db) = fresh_db().await;
    let limits = SharedLimits {
        max_concurrent: Some(2),
        lease_ttl: Duration::from_millis(400),
        ..limits()
    };
    let all = replicas(&url, 2);
    let (gone, alive) = (&all[0], &all[1]);
    let first = acquire(gone, "vendor", 1, &limits).await;
    let _second = acquire(gone, "vendor", 1, &limits).await;
    let taken = Instant::now();
    match alive
        .try_acquire("vendor", 1, &limits)
        .await
        .expect("answers")
    {
        Acquired::Wait { reason, wait } => {
            assert_eq!(reason, WaitReason::Concurrency);
            assert!(wait <= Duration::from_millis(400), "{wait:?}");
        }
        granted => panic!("a third slot was granted: {granted:?}"),
    }
    // `gone` never releases: its slots come back when the leases expire.
    let reclaimed = acquire(alive, "vendor", 1, &limits).await;
    let waited = taken.elapsed();
    assert!(
        waited >= Duration::from_millis(350),
        "reclaimed after {waited:?}"
    );
    assert!(
        waited <= Duration::from_millis(1_500),
        "reclaimed after {waited:?}"
    );
    // The vanished replica's late release must not free what `alive` holds
    // now, whichever slot that is.
    gone.release("vendor", &first).await.expect("answers");
    let mut held = alive.live_leases("vendor").await.expect("leases read");
    held.retain(|(_, holder)| *holder == alive.holder());
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].0, reclaimed.slot.map(|s| s as i32).unwrap_or(-1));
    // Releasing a lease frees exactly it.
    alive.release("vendor", &reclaimed).await.expect("answers");
    let held = alive.live_leases("vendor").await.expect("read");
    assert!(
        held.iter().all(|(_, holder)| *holder != alive.holder()),
        "{held:?}"
    );
}

#[tokio::test]
async fn a_pause_holds_every_replica_until_it_ends() {
    let (url, _db) = fresh_db().await;
    let all = replicas(&url, 3);
    let limits = SharedLimits {
        requests_per_second: Some(100.0),
        ..limits()
    };
    acquire(&all[1], "vendor", 1, &limits).await;
    let start = Instant::now();
    all[0]
        .pause("vendor", Duration::from_millis(600))
        .await
        .expect("pause written");
    // A shorter pause never shortens a longer one.
    all[2]
        .pause("vendor", Duration::from_millis(100))
        .await
        .expect("pause written");
    for replica in &all {
        match replica
            .try_acquire("vendor", 1, &limits)
            .await
            .expect("answers")
        {
            Acquired::Wait { reason, wait } => {
                assert_eq!(reason, WaitReason::Paused);
                assert!(wait > Duration::from_millis(400), "{wait:?}");
            }
            granted => panic!("granted during a pause: {granted:?}"),
        }
    }
    // Other providers are not held.
    acquire(&all[1], "other", 1, &limits).await;
    assert!(start.elapsed() < Duration::from_millis(400));
    acquire(&all[2], "vendor", 1, &limits).await;
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(590), "{waited:?}");
    assert!(waited <= Duration::from_millis(1_200), "{waited:?}");
}

#[tokio::test]
async fn the_coordinator_commits_without_waiting_for_the_wal() {
    let (url, _db) = fresh_db().await;
    let coordinator = &replicas(&url, 1)[0];
    let (setting,): (String,) = sqlx::query_as("SHOW synchronous_commit")
        .fetch_one(coordinator.pool())
        .await
        .expect("setting read");
    assert_eq!(setting, "off");
    coordinator.pool().close().await;
}
