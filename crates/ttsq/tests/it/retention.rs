//! Retention per tenant: the sweeper removes finished tasks older than the
//! tenant's retention and the audio no remaining task of any tenant uses;
//! shared audio and every ledger row stay.

use serde_json::json;
use ttsq_store::sqlx;
use ttsq_testkit::{TestApp, TestOptions};
use uuid::Uuid;

const TTSQ: &str = env!("CARGO_BIN_EXE_ttsq");
const ADMIN_TOKEN: &str = "admin-token-for-retention-tests-0123";

/// The S3 key of a task's audio.
async fn audio_key(app: &TestApp, task_id: Uuid) -> String {
    sqlx::query_scalar(
        "SELECT a.s3_key FROM tasks t JOIN audio_objects a ON a.hash = t.audio_hash WHERE t.id = $1",
    )
    .bind(task_id)
    .fetch_one(app.services.store.pool())
    .await
    .expect("the task has audio")
}

async fn stored(app: &TestApp, key: &str) -> bool {
    match app.services.audio.get(key).await {
        Ok(_) => true,
        Err(err) if err.is_not_found() => false,
        Err(err) => panic!("reading {key}: {err}"),
    }
}

#[tokio::test]
async fn expired_tasks_and_their_unshared_audio_are_swept_and_the_ledger_stays() {
    let app = TestApp::spawn_with(TestOptions {
        env: vec![("TTSQ_ADMIN_TOKEN".into(), ADMIN_TOKEN.into())],
        ..TestOptions::default()
    })
    .await;
    let other_key = app.new_tenant("other").await;
    // Both in one cache pool, so that they share the audio of a text.
    app.join_cache_pool(&["default", "other"], "retention-test")
        .await;
    // Texts unique to this test.
    let run = Uuid::new_v4().simple().to_string();
    let job =
        |text: &str| json!({"text": format!("{text} {run}"), "dialect": "en-us", "format": "wav"});

    let own = app
        .submit_ok(&job("Only the default tenant says this."))
        .await;
    let shared_mine = app.submit_ok(&job("Both tenants say this.")).await;
    let mut theirs = Vec::new();
    for text in ["Both tenants say this.", "Only the other tenant says this."] {
        let response = app.submit_as(&other_key, &job(text)).await;
        assert_eq!(response.status(), 202);
        let body: serde_json::Value = response.json().await.expect("JSON");
        theirs.push(
            body["task_id"]
                .as_str()
                .expect("id")
                .parse::<Uuid>()
                .expect("uuid"),
        );
    }
    for id in [own, shared_mine] {
        assert_eq!(app.wait_for(id).await["status"], "succeeded");
    }
    app.drain(std::time::Duration::from_secs(60)).await;
    let own_audio = audio_key(&app, own).await;
    let shared_audio = audio_key(&app, shared_mine).await;
    let their_audio = audio_key(&app, theirs[1]).await;
    assert_eq!(audio_key(&app, theirs[0]).await, shared_audio);
    assert_eq!(app.scalar("SELECT count(*) FROM usage_ledger").await, 4);

    // The default tenant keeps tasks one day (set with the CLI); the other
    // keeps them forever (no retention of its own, default 0 = forever).
    let output = app
        .cli_command(TTSQ)
        .args(["tenant", "update", "default", "--retention-days", "1"])
        .output()
        .expect("ttsq runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Everything finished three days ago.
    app.execute(
        "UPDATE tasks SET created_at = now() - interval '3 days', finished_at = now() - interval '3 days'",
    )
    .await;

    let report = app.services.sweep_retention().await.expect("sweep");

    assert_eq!((report.tasks, report.audio_objects), (2, 1), "{report:?}");
    assert_eq!(
        app.get_as(&app.api_key, &format!("/v1/tts/jobs/{own}"))
            .await
            .status(),
        404
    );
    assert!(!stored(&app, &own_audio).await, "unshared audio is deleted");
    assert!(
        stored(&app, &shared_audio).await,
        "audio another tenant uses stays"
    );
    assert!(stored(&app, &their_audio).await);
    assert_eq!(
        app.get_as(&other_key, &format!("/v1/tts/jobs/{}", theirs[0]))
            .await
            .status(),
        200
    );
    assert_eq!(app.scalar("SELECT count(*) FROM usage_ledger").await, 4);

    // Now the other tenant gets a retention too, through the admin API.
    let patched: serde_json::Value = app
        .http
        .patch(format!("{}/v1/admin/tenants/other", app.base_url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"retention_days": 2}))
        .send()
        .await
        .expect("PATCH sent")
        .json()
        .await
        .expect("tenant JSON");
    assert_eq!(patched["retention_days"], 2, "{patched}");

    let report = app.services.sweep_retention().await.expect("sweep");

    assert_eq!((report.tasks, report.audio_objects), (2, 2), "{report:?}");
    assert!(!stored(&app, &shared_audio).await);
    assert!(!stored(&app, &their_audio).await);
    assert_eq!(app.scalar("SELECT count(*) FROM tasks").await, 0);
    assert_eq!(app.scalar("SELECT count(*) FROM audio_objects").await, 0);
    assert_eq!(
        app.scalar("SELECT count(*) FROM usage_ledger").await,
        4,
        "ledger rows are kept forever"
    );
}

#[tokio::test]
async fn open_tasks_are_never_swept_however_old() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        env: vec![("TTSQ_RETENTION_DEFAULT_DAYS".into(), "1".into())],
        ..TestOptions::default()
    })
    .await;
    let run = Uuid::new_v4().simple().to_string();
    let queued = app
        .submit_ok(&json!({"text": format!("Still waiting {run}"), "dialect": "en-us"}))
        .await;
    app.execute("UPDATE tasks SET created_at = now() - interval '30 days'")
        .await;

    let report = app.services.sweep_retention().await.expect("sweep");

    assert_eq!(report.tasks, 0, "a queued task is never swept");
    assert_eq!(
        app.get_as(&app.api_key, &format!("/v1/tts/jobs/{queued}"))
            .await
            .status(),
        200
    );
}
