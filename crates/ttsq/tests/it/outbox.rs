//! The outbox: a job accepted while its message cannot be published, or
//! held by a replica that vanished, still reaches a terminal state (the
//! dispatcher publishes whatever waits unpublished).

use std::time::Duration;

use serde_json::json;
use ttsq_testkit::{TestApp, TestOptions};

#[tokio::test]
async fn jobs_accepted_while_the_queue_is_unavailable_run_once_it_is_back() {
    let mut app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    // With the queue gone every publish is refused by the broker.
    app.services.broker.delete_queues().await.unwrap();

    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            app.submit_ok(
                &json!({"text": format!("Outbox job {i}"), "dialect": "en-gb", "format": "wav"}),
            )
            .await,
        );
    }
    assert_eq!(
        app.scalar("SELECT count(*) FROM tasks WHERE status = 'queued' AND published_at IS NULL")
            .await,
        5,
        "accepted, committed, not yet published"
    );

    app.services.broker.declare_topology().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while app
        .scalar("SELECT count(*) FROM tasks WHERE published_at IS NULL")
        .await
        > 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dispatcher never published"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.start_worker();
    for id in ids {
        assert_eq!(app.wait_for(id).await["status"], "succeeded");
    }
    assert_eq!(app.scalar("SELECT count(*) FROM usage_ledger").await, 5);
}

#[tokio::test]
async fn a_task_held_by_a_vanished_replica_is_recovered_and_finished() {
    let mut app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    let id = app
        .submit_ok(&json!({"text": "Orphaned job", "dialect": "fr-fr", "format": "wav"}))
        .await;
    // The dispatcher publishes it; then a worker claimed it and died, and
    // its message is gone as well (say it was dead-lettered): only the
    // database knows about the task.
    app.wait_published(1).await;
    app.services.broker.delete_queues().await.unwrap();
    app.services.broker.declare_topology().await.unwrap();
    sqlx_update(
        &app,
        &format!(
            "UPDATE tasks SET status = 'processing', claimed_by = gen_random_uuid(),
                    started_at = now() - interval '1 minute' WHERE id = '{id}'"
        ),
    )
    .await;

    app.start_worker();
    let task = app.wait_for(id).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(app.scalar("SELECT count(*) FROM usage_ledger").await, 1);
}

/// A task whose message was lost after it was published (the queue was
/// deleted, a broker lost its data) would hold a slot of its provider's
/// dispatch window for good, and never run. Once it has waited longer than
/// the claim timeout unclaimed, it is published again.
#[tokio::test]
async fn a_task_whose_message_was_lost_is_published_again() {
    let mut app = TestApp::spawn_with(TestOptions {
        worker: false,
        env: vec![("TTSQ_WORKER_CLAIM_TIMEOUT_SECS".into(), "1".into())],
        ..Default::default()
    })
    .await;
    let id = app
        .submit_ok(&json!({"text": "Lost message", "dialect": "fr-fr", "format": "wav"}))
        .await;
    app.wait_published(1).await;
    app.services.broker.delete_queues().await.unwrap();
    app.services.broker.declare_topology().await.unwrap();

    app.start_worker();
    let task = app.wait_for(id).await;
    assert_eq!(task["status"], "succeeded", "{task}");
}

async fn sqlx_update(app: &TestApp, sql: &str) {
    assert_eq!(app.execute(sql).await, 1, "{sql}");
}
