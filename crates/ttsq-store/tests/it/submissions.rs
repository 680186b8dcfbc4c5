//! Group commit of single submissions, straight against the store on a real
//! Postgres: each group in one transaction with the outcomes the same
//! submissions would have one after another.

use ttsq_core::Job;
use ttsq_store::{
    AudioObject, LimitKind, NewTask, StoreError, Submission, TaskOutcome, TenantLimits,
};
use uuid::Uuid;

use crate::support::{count, fresh_store, job, tenant};

fn queued<'a>(tenant_id: Uuid, job: &'a Job, key: Option<&'a str>) -> Submission<'a> {
    Submission {
        task: NewTask {
            id: Uuid::now_v7(),
            tenant_id,
            job,
            idempotency_key: key,
            key_prefix: Some("ttsq_abcdef12"),
            estimate: None,
            traceparent: None,
        },
        finished: None,
        claim: None,
        chunks: Vec::new(),
    }
}

#[tokio::test]
async fn a_group_admits_each_tenant_in_submission_order_within_its_limit() {
    let (store, _db) = fresh_store().await;
    let limited = tenant(
        &store,
        "limited",
        TenantLimits {
            daily_characters: Some(25),
            ..TenantLimits::default()
        },
    )
    .await;
    let free = tenant(&store, "free", TenantLimits::default()).await;
    // Ten, ten, ten, five characters: one after another, the third would be
    // refused (30 > 25) and the fourth still fits (25).
    let ten: Vec<Job> = (0..3).map(|i| job(&format!("ten chars{i}"))).collect();
    let five = job("five!");
    let other: Vec<Job> = (0..3).map(|i| job(&format!("other {i}"))).collect();
    let group = vec![
        queued(limited, &ten[0], None),
        queued(free, &other[0], None),
        queued(limited, &ten[1], None),
        queued(limited, &ten[2], None),
        queued(free, &other[1], None),
        queued(limited, &five, None),
        queued(free, &other[2], None),
    ];

    let answers = store
        .insert_submissions(&group)
        .await
        .expect("the group commits");

    assert_eq!(answers.len(), group.len());
    for (i, answer) in answers.iter().enumerate() {
        if i == 3 {
            match answer {
                Err(StoreError::LimitExceeded(e)) => {
                    assert_eq!(e.limit, LimitKind::DailyCharacters);
                    assert_eq!((e.max, e.used, e.requested), (25.0, 20.0, 10.0));
                }
                other => panic!("the third job of the limited tenant was admitted: {other:?}"),
            }
        } else {
            let (row, created) = answer.as_ref().expect("admitted");
            assert!(created);
            assert_eq!(row.id, group[i].task.id);
            assert_eq!(row.tenant_id, group[i].task.tenant_id);
            assert_eq!(row.status, "queued");
        }
    }
    let per_tenant = |t: Uuid| format!("SELECT count(*) FROM tasks WHERE tenant_id = '{t}'");
    assert_eq!(count(&store, &per_tenant(limited)).await, 3);
    assert_eq!(count(&store, &per_tenant(free)).await, 3);
    assert_eq!(
        count(
            &store,
            &format!("SELECT sum(characters)::bigint FROM tasks WHERE tenant_id = '{limited}'")
        )
        .await,
        25
    );
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM audit_log WHERE action = 'task.submit'"
        )
        .await,
        6
    );
}

#[tokio::test]
async fn a_key_repeated_in_a_group_or_used_before_answers_with_one_task() {
    let (store, _db) = fresh_store().await;
    let tenant_id = tenant(&store, "keys", TenantLimits::default()).await;
    let earlier_job = job("sent yesterday");
    let (earlier, _) = store
        .insert_queued(&queued(tenant_id, &earlier_job, Some("old")).task)
        .await
        .expect("earlier task");
    let a = job("first of two");
    let b = job("second of two");
    let c = job("a third text");
    let group = vec![
        queued(tenant_id, &a, Some("new")),
        queued(tenant_id, &b, Some("new")),
        queued(tenant_id, &c, Some("old")),
        queued(tenant_id, &c, None),
    ];

    let answers: Vec<_> = store
        .insert_submissions(&group)
        .await
        .expect("the group commits")
        .into_iter()
        .map(|a| a.expect("answered"))
        .collect();

    assert_eq!(answers[0].0.id, group[0].task.id);
    assert!(answers[0].1, "the first use of a key creates its task");
    assert_eq!(answers[1].0.id, group[0].task.id);
    assert!(!answers[1].1, "the repeat gets the first task");
    assert_eq!(answers[1].0.content_hash, a.hash.as_str());
    assert_eq!((answers[2].0.id, answers[2].1), (earlier.id, false));
    assert!(answers[3].1);
    assert_eq!(count(&store, "SELECT count(*) FROM tasks").await, 3);
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM audit_log WHERE action = 'task.submit'"
        )
        .await,
        3
    );
}

#[tokio::test]
async fn cache_hits_in_a_group_finish_with_their_ledger_rows_and_misses_queue() {
    let (store, _db) = fresh_store().await;
    let tenant_id = tenant(
        &store,
        "mixed",
        TenantLimits {
            max_queued_jobs: Some(1),
            ..TenantLimits::default()
        },
    )
    .await;
    let hit = job("stored already");
    let object = AudioObject {
        hash: hit.hash.as_str().to_owned(),
        s3_key: "audio/ab/stored.wav".into(),
        bytes: 1_000,
        format: "wav".into(),
        duration_ms: 500,
        provider: "fake".into(),
        sha256: "00".repeat(32),
        created_at: chrono::Utc::now(),
    };
    sqlx::query(
        "INSERT INTO audio_objects (hash, s3_key, bytes, format, duration_ms, provider, sha256)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&object.hash)
    .bind(&object.s3_key)
    .bind(object.bytes)
    .bind(&object.format)
    .bind(object.duration_ms)
    .bind(&object.provider)
    .bind(&object.sha256)
    .execute(store.pool())
    .await
    .expect("audio recorded");
    let outcome = TaskOutcome::Succeeded {
        audio_hash: object.hash.clone(),
        cache_hit: true,
        provider: object.provider.clone(),
        price_per_1k: 0.0,
        currency: "USD".into(),
    };
    let miss = job("not stored yet");
    let group = vec![
        Submission {
            finished: Some(outcome.clone()),
            ..queued(tenant_id, &hit, None)
        },
        queued(tenant_id, &miss, None),
        // The queue holds one job: a second miss is refused, a hit is not.
        queued(tenant_id, &miss, None),
        Submission {
            finished: Some(outcome),
            ..queued(tenant_id, &hit, None)
        },
    ];

    let answers = store
        .insert_submissions(&group)
        .await
        .expect("the group commits");

    for i in [0, 3] {
        let (row, created) = answers[i].as_ref().expect("a hit is admitted");
        assert!(created);
        assert_eq!(row.status, "succeeded");
        assert!(row.cache_hit);
        assert_eq!(row.s3_key.as_deref(), Some("audio/ab/stored.wav"));
    }
    let (row, _) = answers[1].as_ref().expect("the first miss is admitted");
    assert_eq!(row.status, "queued");
    assert!(
        matches!(&answers[2], Err(StoreError::LimitExceeded(e)) if e.limit == LimitKind::MaxQueuedJobs),
        "{:?}",
        answers[2]
    );
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM usage_ledger WHERE cache_hit AND billable_characters = 0"
        )
        .await,
        2
    );
    assert_eq!(count(&store, "SELECT count(*) FROM usage_ledger").await, 2);
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM tasks WHERE status = 'queued' AND started_at IS NULL"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn a_row_postgres_refuses_fails_alone_and_its_neighbours_are_written() {
    let (store, _db) = fresh_store().await;
    let tenant_id = tenant(&store, "bad", TenantLimits::default()).await;
    let good = job("a fine text");
    // Postgres text cannot hold NUL: the one row it refuses after validation.
    let mut bad = job("bad text");
    bad.text = "bad\0text".into();
    let group = vec![
        queued(tenant_id, &good, None),
        queued(tenant_id, &bad, None),
        queued(tenant_id, &good, None),
    ];

    let answers = store
        .insert_submissions(&group)
        .await
        .expect("the group is answered");

    assert!(answers[0].as_ref().is_ok_and(|(_, created)| *created));
    assert!(
        matches!(&answers[1], Err(StoreError::Database(_))),
        "{:?}",
        answers[1]
    );
    assert!(answers[2].as_ref().is_ok_and(|(_, created)| *created));
    assert_eq!(count(&store, "SELECT count(*) FROM tasks").await, 2);
}
