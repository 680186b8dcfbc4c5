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
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
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
    panic!("the worker did not exit within 30 s of SIGTERM");
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
    assert_eq!(
        app.scalar("SELECT sum(billable_characters)::bigint FROM usage_ledger")
            .await,
        app.scalar("SELECT sum(characters)::bigint FROM tasks")
            .await,
        "every unique job billed exactly once"
    );
    assert_eq!(app.services.broker.depths().await.unwrap(), (0, 0));
    app.teardown().await;
}
