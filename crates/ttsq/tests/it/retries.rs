//! Retries and the dead-letter queue end to end: a job that fails every
//! attempt ends `failed` with the last error and a copy in the DLQ, and
//! `ttsq dlq` lists, replays and purges dead letters with their tasks' states.

use serde_json::{Value, json};
use ttsq_fake_provider::{FakeConfig, FakeProvider};
use ttsq_testkit::{FakeRoutes, TestApp, TestOptions};

const TTSQ: &str = env!("CARGO_BIN_EXE_ttsq");
const KEY: &str = "sk-retries-test-key-0123456789";

/// Runs `ttsq dlq …` against the app; returns (success, stdout, stderr).
fn dlq(app: &TestApp, args: &[&str]) -> (bool, String, String) {
    let output = app
        .cli_command(TTSQ)
        .arg("dlq")
        .args(args)
        .output()
        .expect("ttsq runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn listed(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

#[tokio::test]
async fn a_job_failing_every_attempt_ends_failed_with_the_last_error_and_a_dlq_copy() {
    let mut config = FakeConfig::default();
    config.keys.openai = Some(KEY.to_owned());
    config.down = true;
    let fake = FakeProvider::start(config).await.expect("fake starts");
    let app = TestApp::spawn_with(TestOptions {
        env: vec![
            ("TTSQ_PROVIDERS_FAKE_API_KEY".into(), KEY.into()),
            // Three attempts, a second apart; no breaker in the way.
            ("TTSQ_QUEUE_RETRY_DELAYS_SECS".into(), "1,1".into()),
            ("TTSQ_BREAKER_FAILURE_THRESHOLD".into(), "1000".into()),
        ],
        config_toml: Some(FakeRoutes::new(fake.base_url()).toml()),
        ..TestOptions::default()
    })
    .await;

    let id = app
        .submit_ok(&json!({"text": "Never to be spoken.", "dialect": "en-gb", "voice": "rachel", "format": "wav"}))
        .await;
    let task = app.wait_for(id).await;

    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["error"]["code"], "provider_unavailable", "{task}");
    assert_eq!(task["attempts"], 3, "{task}");
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM usage_ledger WHERE task_id = '{id}' AND billable_characters = 0"
        ))
        .await,
        1
    );
    // The copy is published once the task's end is committed, so it may
    // trail the status a client sees by a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (stdout, letters) = loop {
        let (ok, stdout, stderr) = dlq(&app, &["list", "--json"]);
        assert!(ok, "{stderr}");
        let letters = listed(&stdout);
        if !letters.is_empty() || std::time::Instant::now() > deadline {
            break (stdout, letters);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(letters.len(), 1, "{stdout}");
    assert_eq!(letters[0]["task_id"], id.to_string());
    assert_eq!(letters[0]["reason"], "provider_unavailable");
    assert_eq!(letters[0]["task_status"], "failed");
    assert_eq!(
        letters[0]["replayable"], false,
        "a failed task stays failed"
    );
}

#[tokio::test]
async fn ttsq_dlq_lists_replays_unfinished_tasks_and_purges() {
    let mut app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..TestOptions::default()
    })
    .await;
    let id = app
        .submit_ok(
            &json!({"text": "Back from the dead letters.", "dialect": "en-gb", "format": "wav"}),
        )
        .await;
    let broker = app.services.broker.clone();
    broker.publish_raw(b"not a job").await.expect("published");
    // Both messages go to the DLQ as a worker would send them.
    let mut consumer = broker.consume(4, "test").await.expect("consuming");
    for _ in 0..2 {
        let delivery = consumer
            .next()
            .await
            .expect("a delivery")
            .expect("delivered");
        let reason = match delivery.decode() {
            Ok(_) => "operator_test".to_owned(),
            Err(err) => err.code().to_owned(),
        };
        delivery.dead_letter(&reason).await.expect("dead-lettered");
    }
    consumer.close().await;

    let (ok, stdout, stderr) = dlq(&app, &["list", "--json"]);
    assert!(ok, "{stderr}");
    let letters = listed(&stdout);
    assert_eq!(letters.len(), 2, "{stdout}");
    let ours = letters
        .iter()
        .find(|l| l["task_id"] == id.to_string())
        .expect("the job's letter");
    assert_eq!(ours["task_status"], "queued");
    assert_eq!(ours["replayable"], true);
    let garbage = letters
        .iter()
        .find(|l| l["task_id"].is_null())
        .expect("the undecodable letter");
    assert_eq!(garbage["reason"], "malformed");
    let (ok, table, _) = dlq(&app, &["list"]);
    assert!(
        ok && table.contains("(undecodable)") && table.contains(&id.to_string()),
        "{table}"
    );

    let (ok, _, stderr) = dlq(&app, &["replay"]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("replayed 1"), "{stderr}");
    app.start_worker();
    assert_eq!(app.wait_for(id).await["status"], "succeeded");

    let (ok, _, stderr) = dlq(&app, &["purge"]);
    assert!(!ok, "purging needs --yes");
    assert!(stderr.contains("--yes"), "{stderr}");
    let (ok, _, stderr) = dlq(&app, &["purge", "--yes"]);
    assert!(ok && stderr.contains("purged 1"), "{stderr}");
    assert_eq!(broker.depths().await.expect("depths").1, 0);
}
