//! The Python SDK (`clients/python`) against a running stack: its pytest
//! suite, unit and live tests alike, sync and async, with a webhook
//! receiver of its own that the stack may deliver to on loopback.
//!
//! Needs `TTSQ_TEST_PYTHON` with `httpx`, `pytest` and `pytest-asyncio`
//! (`deploy/local/test.sh` installs them and the SDK into `.ttsq/pytools`).
//! The SDK is imported from this checkout's `clients/python/src`, whatever
//! the venv was installed from.

use std::{path::Path, time::Duration};

use serde_json::Value;
use ttsq_testkit::{TestApp, TestOptions};
use uuid::Uuid;

use crate::clients::test_python;

/// The webhooks' signing key of this test's stack.
const SIGNING_KEY: &str = "python-sdk-webhook-signing-key";

/// The default tenant's webhook secret, through the admin API.
async fn webhook_secret(app: &TestApp, admin_token: &str) -> String {
    let response = app
        .http
        .get(format!(
            "{}/v1/admin/tenants/default/webhook-secret",
            app.base_url
        ))
        .bearer_auth(admin_token)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON");
    body["webhook_secret"]
        .as_str()
        .expect("a secret")
        .to_owned()
}

#[tokio::test]
async fn the_python_sdk_passes_its_tests_against_a_live_stack() {
    let python = test_python();
    let admin_token = format!("admin-{}", Uuid::new_v4().simple());
    let app = TestApp::spawn_with(TestOptions {
        env: vec![
            ("TTSQ_ADMIN_TOKEN".to_owned(), admin_token.clone()),
            (
                "TTSQ_WEBHOOKS_SIGNING_KEY".to_owned(),
                SIGNING_KEY.to_owned(),
            ),
            // The suite's receiver listens on loopback.
            (
                "TTSQ_WEBHOOKS_ALLOW_PRIVATE".to_owned(),
                "127.0.0.1/32".to_owned(),
            ),
        ],
        ..TestOptions::default()
    })
    .await;
    let secret = webhook_secret(&app, &admin_token).await;
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/python");

    let output = tokio::time::timeout(
        Duration::from_secs(480),
        tokio::process::Command::new(&python)
            .current_dir(&sdk)
            .args([
                "-m",
                "pytest",
                "tests",
                "-q",
                "-rs",
                "-p",
                "no:cacheprovider",
            ])
            .env("PYTHONPATH", sdk.join("src"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("TTSQ_URL", &app.base_url)
            .env("TTSQ_API_KEY", &app.api_key)
            .env("TTSQ_TEST_WEBHOOK_SECRET", &secret)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("pytest finished within 8 minutes")
    .expect("pytest ran");

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "pytest failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // The live tests skip only without a stack; here there is one.
    assert!(
        !stdout.contains("skipped"),
        "some tests were skipped:\n{stdout}"
    );
}
