//! A worker process restarted mid-stream with SIGTERM loses no task and
//! bills none twice.

use std::{process::Child, time::Duration};

use futures::{StreamExt, stream};
use serde_json::json;
use ttsq_testkit::{TestApp, TestOptions, signal_and_wait};

fn spawn_worker(app: &TestApp) -> Child {
    app.worker_command(env!("CARGO_BIN_EXE_ttsq"))
        // Small batches so several are in flight when the signal lands.
        .env("TTSQ_WORKER_BATCH_SIZE", "8")
        .spawn()
        .expect("ttsq worker starts")
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    signal_and_wait(child, "-TERM")
}

/// Accepts `count` unique jobs through the API.
async fn submit_jobs(app: &TestApp, count: usize, prefix: &str, dialects: &[&str]) {
    let jobs: Vec<_> = (0..count)
        .map(|i| {
            let dialect = dialects[i % dialects.len()];
            json!({"text": format!("{prefix} sentence number {i}, long enough to take a moment."), "dialect": dialect, "format": "mp3"})
        })
        .collect();
    let accepted: Vec<_> = stream::iter(jobs.iter())
        .map(|job| app.submit_ok(job))
        .buffer_unordered(32)
        .collect()
        .await;
    assert_eq!(accepted.len(), count);
}

/// Waits until at least `count` tasks succeeded, so a worker is mid-stream.
async fn wait_for_progress(app: &TestApp, count: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while app
        .scalar("SELECT count(*) FROM tasks WHERE status = 'succeeded'")
        .await
        < count
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every task succeeded, has one ledger row, and is billed its characters
/// once — or nothing, when audio stored by a worker that stopped before
/// finishing it made it a cache hit.
async fn assert_all_done_and_billed_once(app: &TestApp, count: i64) {
    assert_eq!(
        app.scalar("SELECT count(*) FROM tasks WHERE status = 'succeeded'")
            .await,
        count
    );
    assert_eq!(app.scalar("SELECT count(*) FROM usage_ledger").await, count);
    assert_eq!(
        app.scalar("SELECT count(DISTINCT task_id) FROM usage_ledger")
            .await,
        count
    );
    assert_eq!(
        app.scalar(
            "SELECT count(*) FROM usage_ledger WHERE billable_characters NOT IN (0, characters)"
        )
        .await,
        0
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM usage_ledger WHERE billable_characters = 0")
            .await,
        app.scalar("SELECT count(*) FROM tasks WHERE cache_hit")
            .await,
    );
    let depths = app.services.broker.depths().await.expect("queue depths");
    assert_eq!(depths, (0, 0), "nothing left in the queues");
}

#[tokio::test]
async fn a_worker_restarted_mid_stream_loses_nothing_and_bills_nothing_twice() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    submit_jobs(&app, 400, "Restart test", &["en-gb", "fr-fr"]).await;

    let mut first = spawn_worker(&app);
    wait_for_progress(&app, 40).await;
    let exit = terminate(&mut first);
    assert!(exit.success(), "SIGTERM is a clean exit, got {exit}");
    let done_by_first = app
        .scalar("SELECT count(*) FROM tasks WHERE status = 'succeeded'")
        .await;
    assert!(done_by_first < 400, "the restart happened mid-stream");
    assert_eq!(
        app.scalar("SELECT count(*) FROM tasks WHERE status = 'processing'")
            .await,
        0,
        "the stopping worker finished what it had claimed"
    );

    let mut second = spawn_worker(&app);
    app.drain(Duration::from_secs(180)).await;
    assert!(terminate(&mut second).success());
    assert_all_done_and_billed_once(&app, 400).await;
}

#[tokio::test]
async fn a_worker_killed_mid_batch_loses_nothing_and_bills_nothing_twice() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    submit_jobs(&app, 300, "Kill test", &["en-us"]).await;

    let mut first = spawn_worker(&app);
    wait_for_progress(&app, 30).await;
    // kill -9: no drain, no acks, claimed tasks left `processing`.
    assert!(!signal_and_wait(&mut first, "-KILL").success());
    assert!(
        app.scalar("SELECT count(*) FROM tasks WHERE status = 'succeeded'")
            .await
            < 300
    );

    let mut second = spawn_worker(&app);
    app.drain(Duration::from_secs(180)).await;
    assert!(terminate(&mut second).success());
    assert_all_done_and_billed_once(&app, 300).await;
}
