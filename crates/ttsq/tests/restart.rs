//! A worker process restarted mid-stream with SIGTERM loses no task and
//! bills none twice.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use futures::{StreamExt, stream};
use serde_json::json;
use ttsq_testkit::{TestApp, TestOptions};

fn spawn_worker(app: &TestApp) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ttsq"))
        .arg("worker")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .envs(app.child_env().iter().map(|(k, v)| (k, v)))
        // Small batches so several are in flight when the signal lands.
        .env("TTSQ_WORKER_BATCH_SIZE", "8")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("ttsq worker starts")
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    signal(child, "-TERM")
}

fn signal(child: &mut Child, signal: &str) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    for _ in 0..300 {
        if let Some(exit) = child.try_wait().expect("wait on worker") {
            return exit;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("the worker did not exit within 30 s of {signal}");
}

#[tokio::test]
async fn a_worker_restarted_mid_stream_loses_nothing_and_bills_nothing_twice() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    let jobs: Vec<_> = (0..400)
        .map(|i| json!({"text": format!("Restart test sentence number {i}, long enough to take a moment."), "dialect": if i % 2 == 0 { "en-gb" } else { "fr-fr" }, "format": "mp3"}))
        .collect();
    let accepted: Vec<_> = stream::iter(jobs.iter())
        .map(|job| app.submit_ok(job))
        .buffer_unordered(32)
        .collect()
        .await;
    assert_eq!(accepted.len(), 400);

    let mut first = spawn_worker(&app);
    // Let it get going, then stop it while work remains.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while app
        .scalar("SELECT count(*) FROM tasks WHERE status = 'succeeded'")
        .await
        < 40
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first worker made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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

    assert_eq!(
        app.scalar("SELECT count(*) FROM tasks WHERE status = 'succeeded'")
            .await,
        400
    );
    assert_eq!(app.scalar("SELECT count(*) FROM usage_ledger").await, 400);
    assert_eq!(
        app.scalar("SELECT count(DISTINCT task_id) FROM usage_ledger")
            .await,
        400
    );
    // Each task is billed its characters once, or nothing when its audio was
    // stored by a worker that stopped before finishing it (a cache hit then).
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
    assert_eq!(app.services.broker.depths().await.unwrap(), (0, 0));
    app.teardown().await;
}

#[tokio::test]
async fn a_worker_killed_mid_batch_loses_nothing_and_bills_nothing_twice() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    let jobs: Vec<_> = (0..300)
        .map(|i| json!({"text": format!("Kill test sentence number {i}, long enough to take a moment."), "dialect": "en-us", "format": "mp3"}))
        .collect();
    let accepted: Vec<_> = stream::iter(jobs.iter())
        .map(|job| app.submit_ok(job))
        .buffer_unordered(32)
        .collect()
        .await;
    assert_eq!(accepted.len(), 300);

    let mut first = spawn_worker(&app);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while app
        .scalar("SELECT count(*) FROM tasks WHERE status = 'succeeded'")
        .await
        < 30
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first worker made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // kill -9: no drain, no acks, claimed tasks left `processing`.
    let exit = signal(&mut first, "-KILL");
    assert!(!exit.success());
    assert!(
        app.scalar("SELECT count(*) FROM tasks WHERE status = 'succeeded'")
            .await
            < 300
    );

    let mut second = spawn_worker(&app);
    app.drain(Duration::from_secs(180)).await;
    assert!(terminate(&mut second).success());

    assert_eq!(
        app.scalar("SELECT count(*) FROM tasks WHERE status = 'succeeded'")
            .await,
        300
    );
    assert_eq!(app.scalar("SELECT count(*) FROM usage_ledger").await, 300);
    assert_eq!(
        app.scalar("SELECT count(DISTINCT task_id) FROM usage_ledger")
            .await,
        300
    );
    // Each task is billed its characters once, or nothing when its audio was
    // stored by a worker that stopped before finishing it (a cache hit then).
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
    app.teardown().await;
}
