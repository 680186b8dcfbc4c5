//! `GET /v1/tts/jobs/{id}?wait=N` is woken by Postgres LISTEN/NOTIFY, not by
//! its poll: with the poll fallback set to 10 s, a waiter still answers
//! within moments of the worker finishing, also after its listener's
//! connection was killed.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use ttsq_testkit::{TestApp, TestOptions};
use uuid::Uuid;

/// Far longer than any wake-up by notification may take.
const FALLBACK_MS: &str = "10000";

async fn app_without_worker() -> TestApp {
    TestApp::spawn_with(TestOptions {
        worker: false,
        env: vec![("TTSQ_SERVER_WAIT_POLL_MS".into(), FALLBACK_MS.into())],
        ..TestOptions::default()
    })
    .await
}

/// Starts a `?wait=30` long-poll of `task_id` in the background.
fn start_waiting(app: &TestApp, task_id: Uuid) -> tokio::task::JoinHandle<(Value, Instant)> {
    let request = app
        .http
        .get(format!("{}/v1/tts/jobs/{task_id}?wait=30", app.base_url))
        .bearer_auth(&app.api_key);
    tokio::spawn(async move {
        let task: Value = request
            .send()
            .await
            .expect("long-poll sent")
            .json()
            .await
            .expect("task JSON");
        (task, Instant::now())
    })
}

async fn finished_at(app: &TestApp, task_id: Uuid) -> Instant {
    // Poll the database directly (not the API) to learn when the worker
    // committed, so the comparison measures only the API's wake-up.
    loop {
        let open = app
            .scalar(&format!(
                "SELECT count(*) FROM tasks WHERE id = '{task_id}' AND status IN ('queued', 'processing')"
            ))
            .await;
        if open == 0 {
            return Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_waiter_wakes_as_soon_as_the_worker_finishes() {
    let mut app = app_without_worker().await;
    let task_id = app
        .submit_ok(&json!({"text": "Woken by a notification.", "dialect": "en-us"}))
        .await;
    let waiting = start_waiting(&app, task_id);
    // The window in which the waiter must still be waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the task cannot finish without a worker"
    );

    app.start_worker();
    let finished = finished_at(&app, task_id).await;
    let (task, answered) = waiting.await.expect("waiter");

    assert_eq!(task["status"], "succeeded", "{task}");
    let lag = answered.saturating_duration_since(finished);
    assert!(
        lag < Duration::from_secs(2),
        "the waiter answered {lag:?} after the finish; the poll fallback is {FALLBACK_MS} ms"
    );
}

#[tokio::test]
async fn a_waiter_still_wakes_after_the_listener_connection_is_killed() {
    let mut app = app_without_worker().await;
    let task_id = app
        .submit_ok(&json!({"text": "The listener comes back.", "dialect": "en-us"}))
        .await;
    let waiting = start_waiting(&app, task_id);
    // Time for the waiter to start waiting before its listener goes.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let listener = app
        .scalar(
            "SELECT pid::bigint FROM pg_stat_activity
              WHERE datname = current_database() AND query LIKE 'LISTEN%'",
        )
        .await;
    let killed = app
        .scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = current_database() AND query LIKE 'LISTEN%') k",
        )
        .await;
    assert_eq!(killed, 1, "exactly one listener connection per API process");
    // Let the listener notice and reconnect before the task finishes: a
    // LISTEN from another connection than the killed one.
    let deadline = Instant::now() + Duration::from_secs(10);
    let relistening = loop {
        let relistening = app
            .scalar(&format!(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND query LIKE 'LISTEN%' AND pid <> {listener}"
            ))
            .await;
        if relistening > 0 || Instant::now() >= deadline {
            break relistening;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(relistening, 1, "the listener reconnected");

    app.start_worker();
    let finished = finished_at(&app, task_id).await;
    let (task, answered) = waiting.await.expect("waiter");

    assert_eq!(task["status"], "succeeded", "{task}");
    let lag = answered.saturating_duration_since(finished);
    assert!(
        lag < Duration::from_secs(2),
        "the waiter answered {lag:?} after the finish; the poll fallback is {FALLBACK_MS} ms"
    );
}
