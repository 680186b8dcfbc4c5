//! `ttsq migrate --wait`: what a replica's init container runs, as the
//! service role, so that no replica starts on a schema older than its code
//! while the migration Job has not applied it yet.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use ttsq_store::sqlx;
use ttsq_testkit::{TestApp, TestOptions};

const BINARY: &str = env!("CARGO_BIN_EXE_ttsq");

#[tokio::test]
async fn migrate_wait_holds_a_replica_until_the_schema_is_current() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..TestOptions::default()
    })
    .await;
    let wait = |timeout: &str| {
        let mut command = app.cli_command(BINARY);
        command.args(["migrate", "--wait", "--timeout", timeout]);
        command
    };

    let current = wait("5").output().expect("ttsq runs");
    assert!(
        current.status.success(),
        "a current schema lets the replica start: {}",
        String::from_utf8_lossy(&current.stderr)
    );

    // The newest migration reads as not applied, as before the Job reaches it.
    let mut owner = app.owner_connection().await;
    let (version, checksum): (i64, Vec<u8>) = sqlx::query_as(
        "SELECT version, checksum FROM _sqlx_migrations ORDER BY version DESC LIMIT 1",
    )
    .fetch_one(&mut owner)
    .await
    .expect("migrations recorded");
    let set_checksum = |checksum: Vec<u8>| {
        sqlx::query("UPDATE _sqlx_migrations SET checksum = $1 WHERE version = $2")
            .bind(checksum)
            .bind(version)
    };
    set_checksum(vec![0])
        .execute(&mut owner)
        .await
        .expect("update");

    let behind = wait("2").output().expect("ttsq runs");
    let stderr = String::from_utf8_lossy(&behind.stderr);
    assert!(!behind.status.success(), "it gives up after the timeout");
    assert!(
        stderr.contains(&version.to_string()),
        "names what is missing: {stderr}"
    );

    let mut waiting = wait("60")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ttsq runs");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        waiting.try_wait().expect("status").is_none(),
        "still waiting while the migration is missing"
    );
    // The Job finishes.
    set_checksum(checksum)
        .execute(&mut owner)
        .await
        .expect("update");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = waiting.try_wait().expect("status") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the waiter never noticed the schema is current"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(status.success(), "{status}");
}
