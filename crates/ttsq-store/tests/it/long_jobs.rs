//! Long jobs in the store, on a real Postgres: a long job is one task the
//! tenant sees, `processing` over chunks that are ordinary tasks hidden from
//! it; the trigger of the migration `20261211100000_long_jobs` counts their
//! progress, fails or cancels the long job with them, and bills each chunk
//! on its own ledger row.

use std::time::Duration;

use ttsq_core::{ContentHash, Job};
use ttsq_store::{
    Cancellation, ClaimCommit, CostEstimate, FinishedTask, LimitKind, NewBatch, NewBatchItem,
    NewChunk, NewTask, Round, Store, StoreError, Submission, SweepLease, TaskOutcome, TenantLimits,
};
use uuid::Uuid;

use crate::support::{count, fresh_store, job, tenant};

const TTL: Duration = Duration::from_secs(30);
const PRICE: f64 = 10.0;

/// The chunks' texts of the long jobs of these tests, and the whole text.
struct Texts {
    whole: Job,
    chunks: Vec<Job>,
}

fn texts(parts: &[&str]) -> Texts {
    Texts {
        whole: job(&parts.join(" ")),
        chunks: parts.iter().map(|p| job(p)).collect(),
    }
}

fn estimate(cost: f64) -> Option<CostEstimate<'static>> {
    Some(CostEstimate {
        cost,
        currency: "USD",
    })
}

/// The chunks of `texts`, the first `cached` of them found stored.
fn chunks<'a>(texts: &'a Texts, cached: &[usize]) -> Vec<NewChunk<'a>> {
    let mut offset = 0;
    texts
        .chunks
        .iter()
        .enumerate()
        .map(|(i, job)| {
            let chunk = NewChunk {
                task_id: Uuid::now_v7(),
                job,
                offset,
                estimate: estimate(0.1),
                cached: cached.contains(&i).then(|| hit(job)),
            };
            offset += i32::try_from(job.characters).expect("a short text") + 1;
            chunk
        })
        .collect()
}

fn hit(job: &Job) -> TaskOutcome {
    TaskOutcome::Succeeded {
        audio_hash: job.hash.as_str().to_owned(),
        cache_hit: true,
        provider: "fake".into(),
        price_per_1k: PRICE,
        currency: "USD".into(),
    }
}

fn made(job: &Job) -> TaskOutcome {
    TaskOutcome::Succeeded {
        audio_hash: job.hash.as_str().to_owned(),
        cache_hit: false,
        provider: "fake".into(),
        price_per_1k: PRICE,
        currency: "USD".into(),
    }
}

fn long<'a>(
    tenant_id: Uuid,
    texts: &'a Texts,
    cached: &[usize],
    key: Option<&'a str>,
) -> Submission<'a> {
    Submission {
        task: NewTask {
            id: Uuid::now_v7(),
            tenant_id,
            job: &texts.whole,
            idempotency_key: key,
            key_prefix: Some("ttsq_abcdef12"),
            estimate: estimate(0.3),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        },
        finished: None,
        claim: None,
        chunks: chunks(texts, cached),
    }
}

/// Indexes audio for `hash`, as a worker's commit would.
async fn store_audio(store: &Store, hash: &str) {
    sqlx::query(
        "INSERT INTO audio_objects (hash, s3_key, bytes, format, duration_ms, provider, sha256)
         VALUES ($1, 'audio/' || $1 || '.wav', 100, 'wav', 500, 'fake', repeat('0', 64))
         ON CONFLICT DO NOTHING",
    )
    .bind(hash)
    .execute(store.pool())
    .await
    .expect("audio indexed");
}

async fn submit(store: &Store, submission: Submission<'_>) -> Result<(Uuid, bool), StoreError> {
    for chunk in &submission.chunks {
        if chunk.cached.is_some() {
            store_audio(store, chunk.job.hash.as_str()).await;
        }
    }
    let mut answers = store
        .insert_submissions(std::slice::from_ref(&submission))
        .await?;
    answers
        .pop()
        .expect("one answer")
        .map(|(row, created)| (row.id, created))
}

/// Claims `ids` and commits `outcomes` for them, as a worker does.
async fn work(store: &Store, outcomes: &[(Uuid, TaskOutcome)]) {
    let replica = Uuid::now_v7();
    store
        .heartbeat(replica, "worker", TTL)
        .await
        .expect("heartbeat");
    let token = Uuid::now_v7();
    let ids: Vec<Uuid> = outcomes.iter().map(|(id, _)| *id).collect();
    let claimed = store
        .claim(&ids, token, replica, TTL)
        .await
        .expect("claimed");
    assert_eq!(claimed.len(), ids.len(), "every chunk given is claimable");
    for (_, outcome) in outcomes {
        if let TaskOutcome::Succeeded { audio_hash, .. } = outcome {
            store_audio(store, audio_hash).await;
        }
    }
    let finished: Vec<FinishedTask> = outcomes
        .iter()
        .map(|(task_id, outcome)| FinishedTask {
            task_id: *task_id,
            outcome: outcome.clone(),
        })
        .collect();
    store
        .commit_claim(ClaimCommit {
            token,
            made: &[],
            finished: &finished,
            retries: &[],
        })
        .await
        .expect("committed");
}

/// `(id, status, chunk_index)` of a long job's chunks, in order.
async fn chunk_rows(store: &Store, parent: Uuid) -> Vec<(Uuid, String, i32)> {
    sqlx::query_as(
        "SELECT id, status, chunk_index FROM tasks WHERE parent_id = $1 ORDER BY chunk_index",
    )
    .bind(parent)
    .fetch_all(store.pool())
    .await
    .expect("chunks read")
}

/// `(status, chunks_done, long_jobs.state)` of a long job.
async fn progress(store: &Store, parent: Uuid) -> (String, i32, Option<String>) {
    sqlx::query_as(
        "SELECT t.status, t.chunks_done, l.state
           FROM tasks t LEFT JOIN long_jobs l ON l.task_id = t.id
          WHERE t.id = $1",
    )
    .bind(parent)
    .fetch_one(store.pool())
    .await
    .expect("long job read")
}

/// `(status, characters, billable, cost, currency, long_task_id)` of a
/// task's ledger row.
type Ledger = (String, i32, i32, f64, Option<String>, Option<Uuid>);

async fn ledger(store: &Store, task: Uuid) -> Ledger {
    sqlx::query_as(
        "SELECT status, characters, billable_characters, cost::float8, currency, long_task_id
           FROM usage_ledger WHERE task_id = $1",
    )
    .bind(task)
    .fetch_one(store.pool())
    .await
    .expect("one ledger row")
}

#[tokio::test]
async fn a_long_job_is_one_processing_task_over_hidden_queued_chunks_counted_once() {
    let (store, _db) = fresh_store().await;
    let tenant_id = tenant(
        &store,
        "long",
        TenantLimits {
            max_queued_jobs: Some(1),
            daily_requests: Some(10),
            daily_characters: Some(1_000),
            ..TenantLimits::default()
        },
    )
    .await;
    let texts = texts(&["First sentence.", "Second one here.", "And a third."]);
    let submission = long(tenant_id, &texts, &[1], Some("chapter-1"));
    let chunk_ids: Vec<Uuid> = submission.chunks.iter().map(|c| c.task_id).collect();
    store_audio(&store, texts.chunks[1].hash.as_str()).await;
    let mut answers = store
        .insert_submissions(std::slice::from_ref(&submission))
        .await
        .expect("the group commits");
    let (row, created) = answers.pop().unwrap().expect("admitted");
    let parent = row.id;

    assert!(created);
    assert_eq!(parent, submission.task.id);
    assert_eq!(row.status, "processing");
    assert!(row.started_at.is_some());
    assert_eq!((row.chunks_total, row.chunks_done), (Some(3), Some(1)));
    assert_eq!(
        row.characters,
        i32::try_from(texts.whole.characters).unwrap()
    );
    let (reserved, key, state): (Option<f64>, Option<String>, String) = sqlx::query_as(
        "SELECT t.reserved_cost::float8, t.idempotency_key, l.state
           FROM tasks t JOIN long_jobs l ON l.task_id = t.id WHERE t.id = $1",
    )
    .bind(parent)
    .fetch_one(store.pool())
    .await
    .expect("long job and its long_jobs row");
    assert_eq!(
        (reserved, key.as_deref(), state.as_str()),
        (None, Some("chapter-1"), "running")
    );
    type ChunkRow = (
        Uuid,
        String,
        i32,
        i32,
        String,
        Option<f64>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<serde_json::Value>,
        Option<Uuid>,
        Option<i32>,
    );
    let rows: Vec<ChunkRow> = sqlx::query_as(
        "SELECT id, status, chunk_index, chunk_offset, content_hash, reserved_cost::float8,
                key_prefix, traceparent, idempotency_key, metadata, batch_id, chunks_total
           FROM tasks WHERE parent_id = $1 ORDER BY chunk_index",
    )
    .bind(parent)
    .fetch_all(store.pool())
    .await
    .expect("chunks read");
    assert_eq!(rows.len(), 3);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.0, chunk_ids[i]);
        assert_eq!(r.2, i32::try_from(i).unwrap());
        assert_eq!(r.3, submission.chunks[i].offset);
        assert_eq!(r.4, texts.chunks[i].hash.as_str());
        assert_eq!(r.6.as_deref(), Some("ttsq_abcdef12"));
        assert_eq!(r.7.as_deref(), submission.task.traceparent);
        assert_eq!((&r.8, &r.9, r.10, r.11), (&None, &None, None, None));
    }
    let statuses: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(statuses, ["queued", "succeeded", "queued"]);
    let reservations: Vec<Option<f64>> = rows.iter().map(|r| r.5).collect();
    assert_eq!(reservations, [Some(0.1), None, Some(0.1)]);
    let (status, characters, billable, cost, _, long_task) = ledger(&store, chunk_ids[1]).await;
    assert_eq!(
        (status.as_str(), billable, cost, long_task),
        ("succeeded", 0, 0.0, Some(parent))
    );
    assert_eq!(
        characters,
        i32::try_from(texts.chunks[1].characters).unwrap()
    );

    // Counted once: one request, one open job, its whole text.
    let usage = store.limit_usage(tenant_id).await.expect("usage read");
    let used = |kind: LimitKind| usage.iter().find(|u| u.limit == kind).unwrap().used;
    assert_eq!(used(LimitKind::DailyRequests), 1.0);
    assert_eq!(used(LimitKind::MaxQueuedJobs), 1.0);
    assert_eq!(
        used(LimitKind::DailyCharacters),
        f64::from(texts.whole.characters)
    );
    let other = self::texts(&["Another chapter.", "Its end."]);
    assert!(
        matches!(
            submit(&store, long(tenant_id, &other, &[], None)).await,
            Err(StoreError::LimitExceeded(e)) if e.limit == LimitKind::MaxQueuedJobs
        ),
        "a second long job passes the queue limit of one"
    );

    // The same key again: the first long job, nothing created.
    let tasks_before = count(&store, "SELECT count(*) FROM tasks").await;
    let repeat = long(tenant_id, &texts, &[], Some("chapter-1"));
    assert_eq!(
        submit(&store, repeat).await.expect("answered"),
        (parent, false)
    );
    assert_eq!(
        count(&store, "SELECT count(*) FROM tasks").await,
        tasks_before
    );
    assert_eq!(count(&store, "SELECT count(*) FROM long_jobs").await, 1);

    // Hidden from the tenant.
    for chunk in &chunk_ids {
        assert!(store.get_task(tenant_id, *chunk).await.unwrap().is_none());
        assert!(matches!(
            store.cancel_task(tenant_id, *chunk).await.unwrap(),
            Cancellation::NotFound
        ));
    }
    let page = store
        .list_tasks(tenant_id, None, None, 50)
        .await
        .expect("listed");
    let listed: Vec<Uuid> = page.tasks.iter().map(|t| t.id).collect();
    assert_eq!(listed, [parent]);
    assert_eq!(
        store
            .get_task(tenant_id, parent)
            .await
            .unwrap()
            .map(|t| t.id),
        Some(parent)
    );

    // Never taken back to the queue nor claimed itself: its chunks are.
    sqlx::query("UPDATE tasks SET started_at = now() - interval '1 hour' WHERE id = $1")
        .bind(parent)
        .execute(store.pool())
        .await
        .unwrap();
    let recovered = store
        .recover_orphans(Duration::from_secs(1), Duration::from_secs(1))
        .await
        .expect("recovery runs");
    assert_eq!(recovered, 0);
    let replica = Uuid::now_v7();
    store.heartbeat(replica, "worker", TTL).await.unwrap();
    let claimed = store
        .claim(&[parent, chunk_ids[0]], Uuid::now_v7(), replica, TTL)
        .await
        .expect("claim runs");
    let claimed: Vec<Uuid> = claimed.iter().map(|c| c.id).collect();
    assert_eq!(claimed, [chunk_ids[0]]);
    assert_eq!(progress(&store, parent).await.0, "processing");
}

#[tokio::test]
async fn chunks_count_as_they_succeed_and_the_last_leaves_the_long_job_to_join() {
    let (store, _db) = fresh_store().await;
    let tenant_id = tenant(&store, "progress", TenantLimits::default()).await;
    let texts = texts(&["One paragraph.", "Two paragraphs.", "Three paragraphs."]);
    let (parent, _) = submit(&store, long(tenant_id, &texts, &[], None))
        .await
        .expect("submitted");
    let chunks = chunk_rows(&store, parent).await;

    work(
        &store,
        &[
            (chunks[0].0, made(&texts.chunks[0])),
            (chunks[2].0, made(&texts.chunks[2])),
        ],
    )
    .await;
    assert_eq!(
        progress(&store, parent).await,
        ("processing".into(), 2, Some("running".into()))
    );
    let row = store.get_task(tenant_id, parent).await.unwrap().unwrap();
    assert_eq!((row.chunks_total, row.chunks_done), (Some(3), Some(2)));
    work(&store, &[(chunks[1].0, made(&texts.chunks[1]))]).await;
    assert_eq!(
        progress(&store, parent).await,
        ("processing".into(), 3, Some("joining".into()))
    );

    // Each chunk billed on its own row, naming the long job.
    let mut billed = 0;
    for (i, (id, _, _)) in chunks.iter().enumerate() {
        let (status, characters, billable, cost, currency, long_task) = ledger(&store, *id).await;
        let expected = i32::try_from(texts.chunks[i].characters).unwrap();
        assert_eq!(
            (
                status.as_str(),
                characters,
                billable,
                currency.as_deref(),
                long_task
            ),
            ("succeeded", expected, expected, Some("USD"), Some(parent))
        );
        assert!((cost - f64::from(expected) * PRICE / 1000.0).abs() < 1e-6);
        billed += expected;
    }

    // The joiner's success: the trigger writes the long job's row (its
    // characters, nothing billable) and closes its join.
    let joined = ContentHash::of_chunks(texts.chunks.iter().map(|j| &j.hash));
    store_audio(&store, joined.as_str()).await;
    sqlx::query(
        "UPDATE tasks SET status = 'succeeded', audio_hash = $2, cache_hit = false,
                          provider = 'fake', finished_at = now()
          WHERE id = $1",
    )
    .bind(parent)
    .bind(joined.as_str())
    .execute(store.pool())
    .await
    .expect("joined");
    let whole = i32::try_from(texts.whole.characters).unwrap();
    assert_eq!(
        ledger(&store, parent).await,
        ("succeeded".into(), whole, 0, 0.0, Some("USD".into()), None)
    );
    assert_eq!(progress(&store, parent).await.2.as_deref(), Some("done"));
    let (tasks, characters, billable, cost): (i64, i64, i64, f64) = sqlx::query_as(
        "SELECT sum(tasks)::bigint, sum(characters)::bigint, sum(billable_characters)::bigint,
                sum(cost)::float8
           FROM usage_daily WHERE tenant_id = $1",
    )
    .bind(tenant_id)
    .fetch_one(store.pool())
    .await
    .expect("usage_daily read");
    assert_eq!(
        (tasks, characters, billable),
        (1, i64::from(whole), i64::from(billed))
    );
    assert!((cost - f64::from(billed) * PRICE / 1000.0).abs() < 1e-6);
    let today = store.usage_today().await.expect("usage today");
    assert_eq!(
        (today.tasks, today.billable_characters),
        (1, i64::from(billed))
    );

    // Finishing a long job through the ordinary finish path bills nothing
    // either (a joiner that used it would not bill the text twice).
    let other = self::texts(&["Fourth text.", "Fifth text."]);
    let (second, _) = submit(&store, long(tenant_id, &other, &[0, 1], None))
        .await
        .unwrap();
    assert_eq!(progress(&store, second).await.2.as_deref(), Some("joining"));
    sqlx::query("UPDATE tasks SET claimed_by = NULL, worker_batch_id = $2 WHERE id = $1")
        .bind(second)
        .bind(Uuid::nil())
        .execute(store.pool())
        .await
        .unwrap();
    let joined = ContentHash::of_chunks(other.chunks.iter().map(|j| &j.hash));
    store_audio(&store, joined.as_str()).await;
    store
        .commit_claim(ClaimCommit {
            token: Uuid::nil(),
            made: &[],
            finished: &[FinishedTask {
                task_id: second,
                outcome: TaskOutcome::Succeeded {
                    audio_hash: joined.as_str().to_owned(),
                    cache_hit: false,
                    provider: "fake".into(),
                    price_per_1k: PRICE,
                    currency: "USD".into(),
                },
            }],
            retries: &[],
        })
        .await
        .unwrap();
    let (status, _, billable, cost, _, long_task) = ledger(&store, second).await;
    assert_eq!(
        (status.as_str(), billable, cost, long_task),
        ("succeeded", 0, 0.0, None)
    );
}

#[tokio::test]
async fn a_failed_chunk_fails_its_long_job_wakes_its_waiters_and_cancels_chunks_not_started() {
    let (store, _db) = fresh_store().await;
    let tenant_id = tenant(&store, "failing", TenantLimits::default()).await;
    let texts = texts(&["Good start.", "Refused middle.", "Never reached."]);
    let (parent, _) = submit(&store, long(tenant_id, &texts, &[], None))
        .await
        .expect("submitted");
    let chunks = chunk_rows(&store, parent).await;
    let mut listener = sqlx::postgres::PgListener::connect_with(store.pool())
        .await
        .expect("listener");
    listener
        .listen(ttsq_store::task_events::CHANNEL)
        .await
        .expect("LISTEN");

    work(
        &store,
        &[(
            chunks[1].0,
            TaskOutcome::Failed {
                code: "provider_refused".into(),
                message: "the vendor refused the text".into(),
            },
        )],
    )
    .await;

    let row = store.get_task(tenant_id, parent).await.unwrap().unwrap();
    assert_eq!(row.status, "failed");
    assert_eq!(row.error_code.as_deref(), Some("provider_refused"));
    assert_eq!(
        row.error_message.as_deref(),
        Some("chunk 2 of 3 failed: the vendor refused the text")
    );
    let statuses: Vec<String> = chunk_rows(&store, parent)
        .await
        .into_iter()
        .map(|c| c.1)
        .collect();
    assert_eq!(statuses, ["cancelled", "failed", "cancelled"]);
    for i in [0, 2] {
        let (status, _, billable, cost, _, long_task) = ledger(&store, chunks[i].0).await;
        assert_eq!(
            (status.as_str(), billable, cost, long_task),
            ("cancelled", 0, 0.0, Some(parent))
        );
    }
    let (status, characters, billable, _, _, long_task) = ledger(&store, parent).await;
    assert_eq!((status.as_str(), billable, long_task), ("failed", 0, None));
    assert_eq!(characters, i32::try_from(texts.whole.characters).unwrap());
    assert_eq!(progress(&store, parent).await.2.as_deref(), Some("done"));

    // The long poll of the long job wakes: its id is notified at commit.
    let mut woken = false;
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await {
        if n.payload() == parent.to_string() {
            woken = true;
            break;
        }
    }
    assert!(woken, "the long job's end was notified");
}

#[tokio::test]
async fn a_long_job_cancelled_while_processing_cancels_chunks_not_started_and_in_flight_ones_bill()
{
    let (store, _db) = fresh_store().await;
    let tenant_id = tenant(&store, "cancelling", TenantLimits::default()).await;
    let texts = texts(&["In flight.", "Waiting one.", "Waiting two."]);
    let (parent, _) = submit(&store, long(tenant_id, &texts, &[], None))
        .await
        .expect("submitted");
    let chunks = chunk_rows(&store, parent).await;
    let replica = Uuid::now_v7();
    store.heartbeat(replica, "worker", TTL).await.unwrap();
    let token = Uuid::now_v7();
    store
        .claim(&[chunks[0].0], token, replica, TTL)
        .await
        .expect("claimed");

    let cancelled = store.cancel_task(tenant_id, parent).await.expect("cancel");
    let Cancellation::Cancelled(row) = cancelled else {
        panic!("a processing long job is cancelled: {cancelled:?}");
    };
    assert_eq!(row.status, "cancelled");
    let statuses: Vec<String> = chunk_rows(&store, parent)
        .await
        .into_iter()
        .map(|c| c.1)
        .collect();
    assert_eq!(statuses, ["processing", "cancelled", "cancelled"]);
    let (status, _, billable, _, _, long_task) = ledger(&store, parent).await;
    assert_eq!(
        (status.as_str(), billable, long_task),
        ("cancelled", 0, None)
    );
    assert!(matches!(
        store.cancel_task(tenant_id, parent).await.unwrap(),
        Cancellation::TooLate(_)
    ));

    // The chunk in flight finishes and is billed; the long job stays cancelled.
    store_audio(&store, texts.chunks[0].hash.as_str()).await;
    store
        .commit_claim(ClaimCommit {
            token,
            made: &[],
            finished: &[FinishedTask {
                task_id: chunks[0].0,
                outcome: made(&texts.chunks[0]),
            }],
            retries: &[],
        })
        .await
        .expect("committed");
    let (status, _, billable, _, _, long_task) = ledger(&store, chunks[0].0).await;
    assert_eq!(
        (status.as_str(), billable, long_task),
        (
            "succeeded",
            i32::try_from(texts.chunks[0].characters).unwrap(),
            Some(parent)
        )
    );
    assert_eq!(
        progress(&store, parent).await,
        ("cancelled".into(), 1, Some("done".into()))
    );
}

#[tokio::test]
async fn batches_hold_long_items_whose_chunks_are_not_items_and_cancel_them() {
    let (store, _db) = fresh_store().await;
    let tenant_id = tenant(&store, "batching", TenantLimits::default()).await;
    let short = job("A short item.");
    let texts = texts(&["Long item start.", "Long item end."]);
    let stored = self::texts(&["Stored long one.", "Stored long two."]);
    let joined = ContentHash::of_chunks(stored.chunks.iter().map(|j| &j.hash));
    store_audio(&store, joined.as_str()).await;
    let batch = NewBatch {
        id: Uuid::now_v7(),
        tenant_id,
        items: vec![
            NewBatchItem {
                task_id: Uuid::now_v7(),
                job: &short,
                custom_id: Some("short"),
                cached: None,
                estimate: estimate(0.1),
                chunks: Vec::new(),
            },
            NewBatchItem {
                task_id: Uuid::now_v7(),
                job: &texts.whole,
                custom_id: Some("long"),
                cached: None,
                estimate: estimate(0.2),
                chunks: chunks(&texts, &[]),
            },
            NewBatchItem {
                task_id: Uuid::now_v7(),
                job: &stored.whole,
                custom_id: Some("stored"),
                cached: Some(TaskOutcome::Succeeded {
                    audio_hash: joined.as_str().to_owned(),
                    cache_hit: false,
                    provider: "fake".into(),
                    price_per_1k: PRICE,
                    currency: "USD".into(),
                }),
                estimate: estimate(0.2),
                chunks: chunks(&stored, &[]),
            },
        ],
        concatenate: false,
        callback_url: None,
        metadata: None,
        idempotency_key: None,
        key_prefix: Some("ttsq_abcdef12"),
        traceparent: None,
    };
    let items: Vec<Uuid> = batch.items.iter().map(|i| i.task_id).collect();
    let (row, ids, created) = store.insert_batch(&batch).await.expect("batch created");
    assert!(created);
    assert_eq!(ids, items);
    assert_eq!((row.items, row.open_items), (3, 2));
    let long_item = items[1];
    let (status, total, reserved, batch_id): (String, Option<i32>, Option<f64>, Option<Uuid>) =
        sqlx::query_as(
            "SELECT status, chunks_total, reserved_cost::float8, batch_id FROM tasks WHERE id = $1",
        )
        .bind(long_item)
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(
        (status.as_str(), total, reserved, batch_id),
        ("processing", Some(2), None, Some(batch.id))
    );
    assert_eq!(
        count(
            &store,
            &format!(
                "SELECT count(*) FROM tasks WHERE parent_id = '{long_item}'
                   AND batch_id IS NULL AND status = 'queued' AND reserved_cost = 0.1"
            )
        )
        .await,
        2
    );
    // The stored long item is a cache hit with no chunk rows.
    let stored_row = store.get_task(tenant_id, items[2]).await.unwrap().unwrap();
    assert_eq!(
        (
            stored_row.status.as_str(),
            stored_row.cache_hit,
            stored_row.chunks_total,
            stored_row.chunks_done
        ),
        ("succeeded", true, Some(2), Some(2))
    );
    assert_eq!(
        count(
            &store,
            &format!(
                "SELECT count(*) FROM tasks WHERE parent_id = '{}'",
                items[2]
            )
        )
        .await,
        0
    );
    assert_eq!(ledger(&store, items[2]).await.2, 0);
    let listed = store.batch_items(batch.id, None, 10).await.unwrap();
    assert_eq!(listed.len(), 3);

    let cancelled = store
        .cancel_batch(tenant_id, batch.id)
        .await
        .expect("cancel runs");
    assert_eq!(cancelled, Some(2));
    assert_eq!(progress(&store, long_item).await.0, "cancelled");
    let statuses: Vec<String> = chunk_rows(&store, long_item)
        .await
        .into_iter()
        .map(|c| c.1)
        .collect();
    assert_eq!(statuses, ["cancelled", "cancelled"]);
    let row = store.get_batch(tenant_id, batch.id).await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.open_items), ("completed", 0));
}

#[tokio::test]
async fn a_long_job_stored_already_or_all_cached_needs_no_synthesis() {
    let (store, _db) = fresh_store().await;
    let tenant_id = tenant(&store, "stored", TenantLimits::default()).await;
    let texts = texts(&["Heard before.", "Also before."]);
    let joined = ContentHash::of_chunks(texts.chunks.iter().map(|j| &j.hash));
    store_audio(&store, joined.as_str()).await;
    let submission = Submission {
        finished: Some(made(&texts.whole)).map(|_| TaskOutcome::Succeeded {
            audio_hash: joined.as_str().to_owned(),
            cache_hit: false,
            provider: "fake".into(),
            price_per_1k: PRICE,
            currency: "USD".into(),
        }),
        ..long(tenant_id, &texts, &[], None)
    };
    let (id, _) = submit(&store, submission).await.expect("submitted");
    let row = store.get_task(tenant_id, id).await.unwrap().unwrap();
    assert_eq!(
        (
            row.status.as_str(),
            row.cache_hit,
            row.chunks_total,
            row.chunks_done
        ),
        ("succeeded", true, Some(2), Some(2))
    );
    assert_eq!(count(&store, "SELECT count(*) FROM tasks").await, 1);
    assert_eq!(count(&store, "SELECT count(*) FROM long_jobs").await, 0);
    let (_, _, billable, cost, _, _) = ledger(&store, id).await;
    assert_eq!((billable, cost), (0, 0.0));

    // Every chunk found stored: joining at once.
    let (second, _) = submit(&store, long(tenant_id, &texts, &[0, 1], None))
        .await
        .expect("submitted");
    assert_eq!(
        progress(&store, second).await,
        ("processing".into(), 2, Some("joining".into()))
    );
}

#[tokio::test]
async fn a_long_job_with_an_inline_claim_is_refused() {
    let (store, _db) = fresh_store().await;
    let tenant_id = tenant(&store, "inline", TenantLimits::default()).await;
    let texts = texts(&["Not inline.", "Never inline."]);
    let submission = Submission {
        claim: Some(ttsq_store::InlineClaim {
            replica_id: Uuid::now_v7(),
            token: Uuid::now_v7(),
        }),
        ..long(tenant_id, &texts, &[], None)
    };
    assert!(matches!(
        submit(&store, submission).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(count(&store, "SELECT count(*) FROM tasks").await, 0);
}

#[tokio::test]
async fn chunks_wait_in_the_bulk_lane_and_each_lane_reads_its_own_index() {
    let (store, _db) = fresh_store().await;
    let tenant_id = tenant(&store, "lanes", TenantLimits::default()).await;
    let single = job("A single job.");
    store
        .insert_queued(&NewTask {
            id: Uuid::now_v7(),
            tenant_id,
            job: &single,
            idempotency_key: None,
            key_prefix: None,
            estimate: None,
            traceparent: None,
        })
        .await
        .expect("queued");
    let texts = texts(&["Lane one.", "Lane two.", "Lane three."]);
    submit(&store, long(tenant_id, &texts, &[], None))
        .await
        .expect("submitted");

    let mut seen = Vec::new();
    let round = store
        .dispatch_round(
            100,
            |queues| {
                seen = queues
                    .iter()
                    .map(|q| (q.batched, q.waiting, q.in_flight))
                    .collect();
                seen.sort_unstable();
                Vec::new()
            },
            |_| async { None },
        )
        .await
        .expect("round runs");
    assert!(matches!(round, Round::Done { .. }));
    assert_eq!(seen, [(false, 1, 0), (true, 3, 0)]);

    for (index, lane) in [
        (
            "tasks_dispatch_single",
            "batch_id IS NULL AND parent_id IS NULL",
        ),
        (
            "tasks_dispatch_batched",
            "(batch_id IS NOT NULL OR parent_id IS NOT NULL)",
        ),
    ] {
        let mut tx = store.pool().begin().await.unwrap();
        sqlx::query("SET LOCAL enable_seqscan = off")
            .execute(&mut *tx)
            .await
            .unwrap();
        let plan: Vec<String> = sqlx::query_scalar(&format!(
            "EXPLAIN SELECT tenant_id, dialect FROM tasks
              WHERE status = 'queued' AND published_at IS NULL AND {lane}
              ORDER BY tenant_id, dialect LIMIT 1"
        ))
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains(index), "{lane} does not use {index}:\n{plan}");
    }
}

#[tokio::test]
async fn retention_removes_a_long_job_with_its_chunks_and_never_chunks_still_to_join() {
    let (store, _db) = fresh_store().await;
    let tenant_id = tenant(&store, "retained", TenantLimits::default()).await;
    sqlx::query("UPDATE tenants SET retention_days = 1 WHERE id = $1")
        .bind(tenant_id)
        .execute(store.pool())
        .await
        .unwrap();
    let ended = texts(&["Old one.", "Old two."]);
    let joining = texts(&["Still one.", "Still two."]);
    let (old, _) = submit(&store, long(tenant_id, &ended, &[], None))
        .await
        .unwrap();
    let (waiting, _) = submit(&store, long(tenant_id, &joining, &[], None))
        .await
        .unwrap();
    let old_chunks = chunk_rows(&store, old).await;
    let waiting_chunks = chunk_rows(&store, waiting).await;
    work(
        &store,
        &[
            (old_chunks[0].0, made(&ended.chunks[0])),
            (
                old_chunks[1].0,
                TaskOutcome::Failed {
                    code: "x".into(),
                    message: "y".into(),
                },
            ),
            (waiting_chunks[0].0, made(&joining.chunks[0])),
            (waiting_chunks[1].0, made(&joining.chunks[1])),
        ],
    )
    .await;
    assert_eq!(progress(&store, old).await.0, "failed");
    assert_eq!(
        progress(&store, waiting).await.2.as_deref(),
        Some("joining")
    );
    sqlx::query(
        "UPDATE tasks SET finished_at = now() - interval '3 days', created_at = now() - interval '3 days'
          WHERE status IN ('succeeded', 'failed', 'cancelled')",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let replica = Uuid::now_v7();
    store.heartbeat(replica, "worker", TTL).await.unwrap();

    let swept = store
        .sweep_expired_tasks(
            None,
            100,
            SweepLease {
                holder: replica,
                token: Uuid::now_v7(),
                ttl: TTL,
            },
        )
        .await
        .expect("swept");

    assert_eq!(swept.tasks, 3, "the failed long job and its two chunks");
    let gone: Vec<&str> = swept.audio.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(gone, [ended.chunks[0].hash.as_str()]);
    assert_eq!(
        count(
            &store,
            &format!(
                "SELECT count(*) FROM tasks WHERE id = '{waiting}' OR parent_id = '{waiting}'"
            )
        )
        .await,
        3
    );
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM usage_ledger WHERE long_task_id IS NOT NULL"
        )
        .await,
        4,
        "the ledger keeps the chunks' rows"
    );
}
