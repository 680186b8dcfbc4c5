//! Fleet-wide single flight and fencing, straight against the store on a
//! real Postgres: one lease per content hash, taken over only from a dead
//! holder; a claim that was taken over changes nothing; the index row and
//! the paying task's ledger row commit together.

use std::time::Duration;

use ttsq_core::Job;
use ttsq_store::{
    AudioObject, ClaimCommit, FinishedTask, MadeAudio, NewTask, Reschedule, Store, SweepLease,
    TaskOutcome, TenantLimits,
};
use uuid::Uuid;

use crate::support::{count, fresh_store, job, tenant};

const TTL: Duration = Duration::from_secs(3);
const LEASE: Duration = Duration::from_secs(600);

/// A live replica that has heartbeated without a gap for a minute.
async fn replica(store: &Store) -> Uuid {
    let id = Uuid::now_v7();
    store
        .heartbeat(id, "worker", TTL)
        .await
        .expect("heartbeat recorded");
    sqlx::query(
        "UPDATE workers SET heartbeating_since = now() - interval '1 minute' WHERE id = $1",
    )
    .bind(id)
    .execute(store.pool())
    .await
    .expect("heartbeat run aged");
    id
}

/// Makes `replica` look dead: its last heartbeat an hour ago.
async fn silence(store: &Store, replica: Uuid) {
    sqlx::query("UPDATE workers SET last_seen = now() - interval '1 hour' WHERE id = $1")
        .bind(replica)
        .execute(store.pool())
        .await
        .expect("heartbeat aged");
}

async fn queued(store: &Store, tenant_id: Uuid, job: &Job) -> Uuid {
    let task = NewTask {
        id: Uuid::now_v7(),
        tenant_id,
        job,
        idempotency_key: None,
        key_prefix: None,
        estimate: None,
        traceparent: None,
    };
    store.insert_queued(&task).await.expect("task queued");
    task.id
}

fn audio(job: &Job) -> AudioObject {
    let hash = job.hash.as_str().to_owned();
    AudioObject {
        s3_key: format!("audio/{}/{hash}.wav", &hash[..2]),
        hash,
        bytes: 1_000,
        format: "wav".into(),
        duration_ms: 500,
        provider: "fake".into(),
        sha256: "ab".repeat(32),
        created_at: chrono::Utc::now(),
    }
}

fn success(task_id: Uuid, object: &AudioObject) -> FinishedTask {
    FinishedTask {
        task_id,
        outcome: TaskOutcome::Succeeded {
            audio_hash: object.hash.clone(),
            cache_hit: false,
            provider: object.provider.clone(),
            price_per_1k: 10.0,
            currency: "USD".into(),
        },
    }
}

async fn status(store: &Store, task_id: Uuid) -> (String, Option<Uuid>) {
    sqlx::query_as("SELECT status, worker_batch_id FROM tasks WHERE id = $1")
        .bind(task_id)
        .fetch_one(store.pool())
        .await
        .expect("task read")
}

#[tokio::test]
async fn a_claim_taken_over_cannot_finish_or_requeue_what_its_successor_holds() {
    let (store, _db) = fresh_store().await;
    let tenant_id = tenant(&store, "fenced", TenantLimits::default()).await;
    let job = job("paused worker");
    let task = queued(&store, tenant_id, &job).await;
    let (stale, live) = (replica(&store).await, replica(&store).await);
    let (old_claim, new_claim) = (Uuid::now_v7(), Uuid::now_v7());
    store
        .claim(&[task], old_claim, stale, TTL)
        .await
        .expect("first claim");
    // The first replica pauses past its TTL; the task is claimed again.
    silence(&store, stale).await;
    let taken = store
        .claim(&[task], new_claim, live, TTL)
        .await
        .expect("second claim");
    assert_eq!(taken.len(), 1, "a dead replica's task is claimed again");

    // The paused replica wakes up and tries to finish, then to requeue.
    let failed = FinishedTask {
        task_id: task,
        outcome: TaskOutcome::Failed {
            code: "stale".into(),
            message: "written by a stale claim".into(),
        },
    };
    let finish = store
        .commit_claim(ClaimCommit {
            token: old_claim,
            made: &[],
            finished: &[failed],
            retries: &[],
        })
        .await
        .expect("commit runs");
    let requeue = store
        .commit_claim(ClaimCommit {
            token: old_claim,
            made: &[],
            finished: &[],
            retries: &[Reschedule {
                task_id: task,
                not_before: chrono::Utc::now(),
                error_code: "stale".into(),
                error_message: "requeued by a stale claim".into(),
                refund_attempt: false,
            }],
        })
        .await
        .expect("commit runs");

    assert!(finish.fenced.contains(&task) && finish.settled.is_empty());
    assert!(requeue.fenced.contains(&task) && requeue.settled.is_empty());
    assert_eq!(
        status(&store, task).await,
        ("processing".to_owned(), Some(new_claim))
    );
    assert_eq!(count(&store, "SELECT count(*) FROM usage_ledger").await, 0);
}

#[tokio::test]
async fn a_hash_lease_is_held_by_one_claim_until_its_holder_dies() {
    let (store, _db) = fresh_store().await;
    let (first, second) = (replica(&store).await, replica(&store).await);
    let hash = vec![job("leased text").hash.as_str().to_owned()];
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());

    let got_a = store.acquire_leases(&hash, first, a, LEASE, TTL).await;
    let got_b = store.acquire_leases(&hash, second, b, LEASE, TTL).await;
    let again_a = store.acquire_leases(&hash, first, a, LEASE, TTL).await;
    silence(&store, first).await;
    let after_death = store.acquire_leases(&hash, second, b, LEASE, TTL).await;

    assert_eq!(got_a.expect("acquire").len(), 1, "a free hash is leased");
    assert!(got_b.expect("acquire").is_empty(), "a held hash is not");
    assert_eq!(again_a.expect("acquire").len(), 1, "the holder keeps it");
    assert_eq!(
        after_death.expect("acquire").len(),
        1,
        "a dead holder's lease is taken over"
    );
}

#[tokio::test]
async fn a_replica_back_from_an_outage_takes_over_no_silent_holders_lease_at_once() {
    let (store, _db) = fresh_store().await;
    let (holder, other) = (replica(&store).await, replica(&store).await);
    let hash = vec![job("outage").hash.as_str().to_owned()];
    store
        .acquire_leases(&hash, holder, Uuid::now_v7(), LEASE, TTL)
        .await
        .expect("acquire");
    // Postgres was away longer than the TTL: both look silent, and the
    // other replica's first heartbeat after it restarts its run.
    silence(&store, holder).await;
    silence(&store, other).await;
    store
        .heartbeat(other, "worker", TTL)
        .await
        .expect("heartbeat recorded");

    let taken = store
        .acquire_leases(&hash, other, Uuid::now_v7(), LEASE, TTL)
        .await
        .expect("acquire");

    assert!(
        taken.is_empty(),
        "the holder may be alive and just as cut off"
    );
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_even_from_a_live_holder() {
    let (store, _db) = fresh_store().await;
    let (first, second) = (replica(&store).await, replica(&store).await);
    let hash = vec![job("expiring").hash.as_str().to_owned()];

    store
        .acquire_leases(&hash, first, Uuid::now_v7(), Duration::ZERO, TTL)
        .await
        .expect("acquire");
    // The first lease (no time to live) expires.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let taken = store
        .acquire_leases(&hash, second, Uuid::now_v7(), LEASE, TTL)
        .await
        .expect("acquire");

    assert_eq!(taken.len(), 1);
}

#[tokio::test]
async fn audio_is_indexed_only_with_one_billed_task_in_the_same_commit() {
    let (store, _db) = fresh_store().await;
    let tenant_id = tenant(&store, "billed", TenantLimits::default()).await;
    let job = job("paid once");
    let tasks = [
        queued(&store, tenant_id, &job).await,
        queued(&store, tenant_id, &job).await,
        queued(&store, tenant_id, &job).await,
    ];
    let holder = replica(&store).await;
    let claim = Uuid::now_v7();
    store
        .claim(&tasks, claim, holder, TTL)
        .await
        .expect("claimed");
    let hash = job.hash.as_str().to_owned();
    store
        .acquire_leases(std::slice::from_ref(&hash), holder, claim, LEASE, TTL)
        .await
        .expect("leased");
    let object = audio(&job);
    let made = [MadeAudio {
        lease_hash: hash.clone(),
        object: object.clone(),
    }];
    let finished: Vec<FinishedTask> = tasks.iter().map(|t| success(*t, &object)).collect();

    let committed = store
        .commit_claim(ClaimCommit {
            token: claim,
            made: &made,
            finished: &finished,
            retries: &[],
        })
        .await
        .expect("committed");

    assert_eq!(committed.settled.len(), 3);
    assert_eq!(committed.billed.len(), 1, "one task pays for the synthesis");
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM usage_ledger WHERE NOT cache_hit AND billable_characters > 0"
        )
        .await,
        1
    );
    assert_eq!(count(&store, "SELECT count(*) FROM usage_ledger").await, 3);
    assert_eq!(count(&store, "SELECT count(*) FROM audio_objects").await, 1);
    assert_eq!(
        count(&store, "SELECT count(*) FROM synthesis_leases").await,
        0,
        "the commit releases the lease"
    );
}

#[tokio::test]
async fn audio_made_under_a_lost_lease_or_for_no_held_task_is_not_indexed() {
    let (store, _db) = fresh_store().await;
    let tenant_id = tenant(&store, "unpaid", TenantLimits::default()).await;
    let job = job("nobody pays");
    let task = queued(&store, tenant_id, &job).await;
    let (stale, live) = (replica(&store).await, replica(&store).await);
    let (old_claim, new_claim) = (Uuid::now_v7(), Uuid::now_v7());
    let hash = vec![job.hash.as_str().to_owned()];
    store
        .claim(&[task], old_claim, stale, TTL)
        .await
        .expect("claimed");
    store
        .acquire_leases(&hash, stale, old_claim, LEASE, TTL)
        .await
        .expect("leased");
    // Presumed dead: its lease goes to another claim, the task stays its own.
    silence(&store, stale).await;
    store
        .acquire_leases(&hash, live, new_claim, LEASE, TTL)
        .await
        .expect("taken over");
    let object = audio(&job);
    let made = [MadeAudio {
        lease_hash: hash[0].clone(),
        object: object.clone(),
    }];

    let lost = store
        .commit_claim(ClaimCommit {
            token: old_claim,
            made: &made,
            finished: &[success(task, &object)],
            retries: &[],
        })
        .await
        .expect("commit runs");

    assert!(lost.lease_lost.contains(&task), "{lost:?}");
    assert!(lost.settled.is_empty());
    assert_eq!(count(&store, "SELECT count(*) FROM audio_objects").await, 0);
    assert_eq!(count(&store, "SELECT count(*) FROM usage_ledger").await, 0);
    assert_eq!(status(&store, task).await.0, "processing");

    // The new holder has the lease but holds no task: nothing to bill, so
    // nothing is indexed either.
    let orphan = store
        .commit_claim(ClaimCommit {
            token: new_claim,
            made: &made,
            finished: &[success(task, &object)],
            retries: &[],
        })
        .await
        .expect("commit runs");
    assert!(orphan.fenced.contains(&task));
    assert_eq!(count(&store, "SELECT count(*) FROM audio_objects").await, 0);
}

#[tokio::test]
async fn a_swept_hash_stays_leased_until_its_object_is_deleted() {
    let (store, _db) = fresh_store().await;
    let tenant_id = tenant(&store, "swept", TenantLimits::default()).await;
    sqlx::query("UPDATE tenants SET retention_days = 1 WHERE id = $1")
        .bind(tenant_id)
        .execute(store.pool())
        .await
        .expect("retention set");
    let job = job("expires");
    let task = queued(&store, tenant_id, &job).await;
    let (sweeper, synthesizer) = (replica(&store).await, replica(&store).await);
    let claim = Uuid::now_v7();
    store
        .claim(&[task], claim, synthesizer, TTL)
        .await
        .expect("claimed");
    let object = audio(&job);
    store
        .acquire_leases(
            std::slice::from_ref(&object.hash),
            synthesizer,
            claim,
            LEASE,
            TTL,
        )
        .await
        .expect("leased");
    store
        .commit_claim(ClaimCommit {
            token: claim,
            made: &[MadeAudio {
                lease_hash: object.hash.clone(),
                object: object.clone(),
            }],
            finished: &[success(task, &object)],
            retries: &[],
        })
        .await
        .expect("finished");
    sqlx::query("UPDATE tasks SET finished_at = now() - interval '2 days'")
        .execute(store.pool())
        .await
        .expect("task aged");
    let lease = SweepLease {
        holder: sweeper,
        token: Uuid::now_v7(),
        ttl: LEASE,
    };

    let swept = store
        .sweep_expired_tasks(None, 100, lease)
        .await
        .expect("swept");
    let hash = vec![object.hash.clone()];
    let during = store
        .acquire_leases(&hash, synthesizer, Uuid::now_v7(), LEASE, TTL)
        .await
        .expect("acquire");
    store.release_leases(lease.token).await.expect("released");
    let after = store
        .acquire_leases(&hash, synthesizer, Uuid::now_v7(), LEASE, TTL)
        .await
        .expect("acquire");

    assert_eq!(swept.audio.len(), 1, "the audio's index row went");
    assert!(
        during.is_empty(),
        "no re-synthesis while the object is deleted"
    );
    assert_eq!(after.len(), 1);
}

#[tokio::test]
async fn a_claim_retried_after_its_answer_was_lost_gets_its_tasks_back_once() {
    let (store, _db) = fresh_store().await;
    let tenant_id = tenant(&store, "retried", TenantLimits::default()).await;
    let job = job("claimed twice");
    let task = queued(&store, tenant_id, &job).await;
    let holder = replica(&store).await;
    let claim = Uuid::now_v7();

    let first = store
        .claim(&[task], claim, holder, TTL)
        .await
        .expect("claim");
    // The commit reached Postgres but its answer did not: the same claim again.
    let again = store
        .claim(&[task], claim, holder, TTL)
        .await
        .expect("claim");
    let other = store
        .claim(&[task], Uuid::now_v7(), holder, TTL)
        .await
        .expect("claim");

    assert_eq!(first.len(), 1);
    assert_eq!(again.len(), 1, "the batch still finds its own task");
    assert_eq!(again[0].attempts, 1, "one attempt, however often claimed");
    assert!(other.is_empty(), "another batch of a live holder does not");
}
