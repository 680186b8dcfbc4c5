//! Admission within tenant limits, straight against the store on a real
//! Postgres: concurrency, idempotent repeats, usage fractions.

use futures::future::join_all;
use ttsq_core::Job;
use ttsq_store::{LimitKind, NewTask, StoreError, TenantLimits};
use uuid::Uuid;

use crate::support::{count, fresh_store, job, tenant};

#[tokio::test]
async fn concurrent_submissions_never_overshoot_a_daily_character_limit() {
    let (store, _db) = fresh_store().await;
    let tenant_id = tenant(
        &store,
        "chars",
        TenantLimits {
            daily_characters: Some(250),
            ..TenantLimits::default()
        },
    )
    .await;
    // 100 jobs of 10 characters, all at once: 25 fit.
    let jobs: Vec<Job> = (0..100).map(|i| job(&format!("text {i:05}"))).collect();
    let results = join_all(jobs.iter().map(|job| {
        let store = store.clone();
        async move {
            store
                .insert_queued(&NewTask {
                    id: Uuid::now_v7(),
                    tenant_id,
                    job,
                    idempotency_key: None,
                    key_prefix: Some("ttsq_abcdef12"),
                    estimate: None,
                    traceparent: None,
                })
                .await
        }
    }))
    .await;
    let mut accepted = 0;
    for result in results {
        match result {
            Ok((_, true)) => accepted += 1,
            Err(StoreError::LimitExceeded(e)) => {
                assert_eq!(e.limit, LimitKind::DailyCharacters);
                assert_eq!((e.max, e.requested), (250.0, 10.0));
                assert!(e.used + e.requested > e.max);
                assert!(e.retry_after.as_secs() >= 1);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(accepted, 25);
    assert_eq!(
        count(&store, "SELECT sum(characters)::bigint FROM tasks").await,
        250
    );
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM audit_log WHERE action = 'task.submit'"
        )
        .await,
        25
    );
    // The gauge's view: this limit is full.
    let fractions = store.limit_fractions();
    assert!(
        fractions
            .iter()
            .any(|&(t, k, f)| t == tenant_id && k == LimitKind::DailyCharacters && f == 1.0),
        "{fractions:?}"
    );
}

#[tokio::test]
async fn concurrent_submissions_never_overshoot_max_queued_jobs() {
    let (store, _db) = fresh_store().await;
    let tenant_id = tenant(
        &store,
        "queue",
        TenantLimits {
            max_queued_jobs: Some(7),
            ..TenantLimits::default()
        },
    )
    .await;
    let jobs: Vec<Job> = (0..40).map(|i| job(&format!("queued {i}"))).collect();
    let results = join_all(jobs.iter().map(|job| {
        let store = store.clone();
        async move {
            store
                .insert_queued(&NewTask {
                    id: Uuid::now_v7(),
                    tenant_id,
                    job,
                    idempotency_key: None,
                    key_prefix: None,
                    estimate: None,
                    traceparent: None,
                })
                .await
        }
    }))
    .await;
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(accepted, 7);
    for result in &results {
        if let Err(err) = result {
            assert!(
                matches!(err, StoreError::LimitExceeded(e) if e.limit == LimitKind::MaxQueuedJobs),
                "{err}"
            );
        }
    }
    assert_eq!(count(&store, "SELECT count(*) FROM tasks").await, 7);
}

#[tokio::test]
async fn an_idempotent_repeat_is_answered_even_at_the_limit() {
    let (store, _db) = fresh_store().await;
    let tenant_id = tenant(
        &store,
        "repeat",
        TenantLimits {
            daily_characters: Some(10),
            ..TenantLimits::default()
        },
    )
    .await;
    let first_job = job("0123456789");
    let task = |job| NewTask {
        id: Uuid::now_v7(),
        tenant_id,
        job,
        idempotency_key: Some("same-key"),
        key_prefix: None,
        estimate: None,
        traceparent: None,
    };
    let (first, created) = store.insert_queued(&task(&first_job)).await.expect("first");
    assert!(created);
    // The limit is reached, yet the same key returns the first task.
    let (again, created) = store
        .insert_queued(&task(&first_job))
        .await
        .expect("repeat");
    assert!(!created);
    assert_eq!(again.id, first.id);
    // A new job is refused, and the usage says why.
    let other = job("more");
    let err = store
        .insert_queued(&NewTask {
            idempotency_key: None,
            ..task(&other)
        })
        .await
        .expect_err("over the limit");
    assert!(
        matches!(err, StoreError::LimitExceeded(ref e) if e.used == 10.0),
        "{err}"
    );
    let usage = store.limit_usage(tenant_id).await.expect("usage");
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].fraction(), 1.0);
    // Lifting the limit lets it through.
    store
        .update_tenant(
            "repeat",
            &ttsq_store::TenantUpdate {
                daily_characters: Some(None),
                ..Default::default()
            },
            "test",
        )
        .await
        .expect("limit lifted");
    store
        .insert_queued(&NewTask {
            idempotency_key: None,
            ..task(&other)
        })
        .await
        .expect("admitted without a limit");
}

#[tokio::test]
async fn invalid_limits_are_refused_naming_the_field() {
    let (store, _db) = fresh_store().await;
    let err = store
        .create_tenant_with(
            "bad",
            &TenantLimits {
                max_queued_jobs: Some(0),
                ..TenantLimits::default()
            },
            None,
            "test",
        )
        .await
        .expect_err("zero jobs is no limit anyone wants");
    assert!(err.to_string().starts_with("max_queued_jobs:"), "{err}");
    let err = store
        .create_tenant_with("bad", &TenantLimits::default(), Some("usd"), "test")
        .await
        .expect_err("currency codes are upper case");
    assert!(err.to_string().starts_with("currency:"), "{err}");
    assert_eq!(count(&store, "SELECT count(*) FROM tenants").await, 0);
}

/// A budget just under the documented bound (10^12) is stored as sent: a
/// `float8` cast straight to `numeric` keeps 15 digits, rounding
/// 999999999999.9999 up to 10^12, which overflowed `numeric(18, 6)` (a 500
/// the schemathesis pass found).
#[tokio::test]
async fn a_budget_just_under_the_bound_is_stored_as_sent() {
    let (store, _db) = fresh_store().await;
    let budget = 999_999_999_999.999_9;
    store
        .create_tenant_with(
            "rich",
            &TenantLimits {
                monthly_budget: Some(budget),
                ..TenantLimits::default()
            },
            None,
            "test",
        )
        .await
        .expect("a budget under 10^12 is valid");
    store
        .update_tenant(
            "rich",
            &ttsq_store::TenantUpdate {
                monthly_budget: Some(Some(budget)),
                ..Default::default()
            },
            "test",
        )
        .await
        .expect("and may be set again");
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM tenants WHERE monthly_budget = 999999999999.9999"
        )
        .await,
        1
    );
}
