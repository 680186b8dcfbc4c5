//! Credentials and region from the AWS default chain, against the real S3
//! server (which checks every signature).
//!
//! The chain reads the process environment and the files it names. Tests
//! in one process share that environment, and safe Rust cannot change it,
//! so each case runs the production path — `Settings::load` from the
//! environment, then `AudioStore::connect`, a put and a get — in a child
//! process: this test binary again, running only
//! [`child_stores_and_reads_back`] with an environment made from nothing
//! but what the case gives it (`HOME` an empty directory, so no profile of
//! this machine's user is read, and instance metadata switched off, so a
//! failing chain gives up at once instead of asking the network).

use std::{path::Path, process::Stdio};

use bytes::Bytes;
use ttsq_audio::AudioStore;
use ttsq_config::{S3Settings, Settings};

use super::{
    DEFAULT_ACCESS_KEY_ID, DEFAULT_ENDPOINT, DEFAULT_SECRET_ACCESS_KEY, env_or, fresh_settings,
};

/// The child test, by its path in this binary.
const CHILD: &str = "credentials::child_stores_and_reads_back";

/// Set in the child's environment only: the child test does nothing without
/// it. `TTSQ_TEST_*` variables are not settings, so `Settings::load`
/// ignores it.
const CHILD_VAR: &str = "TTSQ_TEST_S3_CREDENTIALS_CHILD";

/// What the child stores and reads back, and under which key.
const KEY: &str = "audio/00/credentials-from-the-chain.mp3";
const AUDIO: &[u8] = b"audio stored with credentials from the AWS default chain";

/// The test server and the keys it accepts.
struct Server {
    endpoint: String,
    access_key_id: String,
    secret_access_key: String,
}

impl Server {
    fn from_env() -> Self {
        Self {
            endpoint: env_or("TTSQ_S3_ENDPOINT", DEFAULT_ENDPOINT),
            access_key_id: env_or("TTSQ_S3_ACCESS_KEY_ID", DEFAULT_ACCESS_KEY_ID),
            secret_access_key: env_or("TTSQ_S3_SECRET_ACCESS_KEY", DEFAULT_SECRET_ACCESS_KEY),
        }
    }
}

/// How the child ended and what it wrote to stderr.
struct ChildRun {
    succeeded: bool,
    stderr: String,
}

/// A fresh bucket, made with the static keys, for the child to use.
async fn fresh_bucket() -> S3Settings {
    let settings = fresh_settings();
    AudioStore::connect(&settings)
        .await
        .expect("create the bucket with static keys (is s3s-fs running?)");
    settings
}

/// Runs the child with ttsq settings pointing at `bucket` of the test
/// server and static keys empty, plus `vars`, in an otherwise empty
/// environment whose `HOME` is `home`.
async fn run_child(server: &Server, bucket: &str, home: &Path, vars: &[(&str, &str)]) -> ChildRun {
    let exe = std::env::current_exe().expect("the test binary's path");
    let output = tokio::process::Command::new(exe)
        .args([
            CHILD,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env_clear()
        .env(CHILD_VAR, "1")
        .env("HOME", home)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("TTSQ_S3_ENDPOINT", &server.endpoint)
        .env("TTSQ_S3_BUCKET", bucket)
        .env("TTSQ_S3_ACCESS_KEY_ID", "")
        .env("TTSQ_S3_SECRET_ACCESS_KEY", "")
        .env("TTSQ_S3_CREATE_BUCKET", "false")
        // PutObject is then the first request, and its refusal has a body
        // with the S3 error code (a HeadObject's has none).
        .env("TTSQ_S3_CONDITIONAL_WRITES", "true")
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run the test binary as a child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        stdout.contains(&format!("test {CHILD} ...")),
        "the child did not run {CHILD}:\n{stdout}\n{stderr}"
    );
    ChildRun {
        succeeded: output.status.success(),
        stderr,
    }
}

/// Reads the child's object back with the static keys: the child really
/// wrote it to the server.
async fn stored_by_the_child(settings: &S3Settings) -> Bytes {
    let store = AudioStore::connect(&S3Settings {
        create_bucket: false,
        ..settings.clone()
    })
    .await
    .expect("connect with static keys");
    store.get(KEY).await.expect("the child's object")
}

/// Run only by [`run_child`], in a process of its own: loads the settings
/// from its environment as `ttsq` does, connects, stores [`AUDIO`] and
/// reads it back. A failure panics with the store's error, which the parent
/// reads from stderr.
#[tokio::test]
#[ignore = "run by the credential tests in a child process with an environment of its own"]
async fn child_stores_and_reads_back() {
    if std::env::var_os(CHILD_VAR).is_none() {
        return;
    }
    let settings = Settings::load(None, std::env::vars()).expect("settings from the environment");
    let store = match AudioStore::connect(&settings.s3).await {
        Ok(store) => store,
        Err(err) => panic!("connect failed: {err}"),
    };

    if let Err(err) = store
        .put(KEY, Bytes::from_static(AUDIO), "audio/mpeg")
        .await
    {
        panic!("put failed: {err}");
    }
    let read = match store.get(KEY).await {
        Ok(read) => read,
        Err(err) => panic!("get failed: {err}"),
    };

    assert_eq!(read.as_ref(), AUDIO);
}

#[tokio::test]
async fn credentials_and_region_from_the_aws_environment_variables_store_and_read_back() {
    let server = Server::from_env();
    let settings = fresh_bucket().await;
    let home = tempfile::tempdir().unwrap();

    let run = run_child(
        &server,
        &settings.bucket,
        home.path(),
        &[
            ("AWS_ACCESS_KEY_ID", &server.access_key_id),
            ("AWS_SECRET_ACCESS_KEY", &server.secret_access_key),
            ("AWS_REGION", "us-east-1"),
            ("TTSQ_S3_REGION", ""),
        ],
    )
    .await;

    assert!(run.succeeded, "{}", run.stderr);
    assert_eq!(stored_by_the_child(&settings).await.as_ref(), AUDIO);
}

#[tokio::test]
async fn a_wrong_secret_in_the_aws_environment_variables_is_denied_without_revealing_it() {
    let server = Server::from_env();
    let settings = fresh_bucket().await;
    let home = tempfile::tempdir().unwrap();
    let wrong_secret = "wrong-secret-from-the-environment-4d2b";

    let run = run_child(
        &server,
        &settings.bucket,
        home.path(),
        &[
            ("AWS_ACCESS_KEY_ID", &server.access_key_id),
            ("AWS_SECRET_ACCESS_KEY", wrong_secret),
            ("AWS_REGION", "us-east-1"),
        ],
    )
    .await;

    assert!(!run.succeeded, "a wrong secret must fail");
    assert!(
        run.stderr
            .contains("put failed: S3 PutObject denied: HTTP 403"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("SignatureDoesNotMatch"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains(wrong_secret),
        "secret leaked: {}",
        run.stderr
    );
}

#[tokio::test]
async fn credentials_from_a_shared_profile_file_store_and_read_back() {
    let server = Server::from_env();
    let settings = fresh_bucket().await;
    let home = tempfile::tempdir().unwrap();
    let credentials = home.path().join("credentials");
    std::fs::write(
        &credentials,
        format!(
            "[default]\naws_access_key_id = not-this-one\naws_secret_access_key = nor-this\n\n\
             [ttsq-test]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            server.access_key_id, server.secret_access_key
        ),
    )
    .unwrap();
    let config = home.path().join("config");
    std::fs::write(&config, "").unwrap();

    let run = run_child(
        &server,
        &settings.bucket,
        home.path(),
        &[
            ("AWS_PROFILE", "ttsq-test"),
            ("AWS_SHARED_CREDENTIALS_FILE", credentials.to_str().unwrap()),
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
        ],
    )
    .await;

    assert!(run.succeeded, "{}", run.stderr);
    assert_eq!(stored_by_the_child(&settings).await.as_ref(), AUDIO);
}

#[tokio::test]
async fn static_keys_in_the_settings_win_over_the_aws_environment_variables() {
    let server = Server::from_env();
    let settings = fresh_bucket().await;
    let home = tempfile::tempdir().unwrap();

    let run = run_child(
        &server,
        &settings.bucket,
        home.path(),
        &[
            ("AWS_ACCESS_KEY_ID", "AKIDNOTTHEONE"),
            ("AWS_SECRET_ACCESS_KEY", "not-the-secret-either"),
            ("TTSQ_S3_ACCESS_KEY_ID", &server.access_key_id),
            ("TTSQ_S3_SECRET_ACCESS_KEY", &server.secret_access_key),
        ],
    )
    .await;

    assert!(run.succeeded, "{}", run.stderr);
    assert_eq!(stored_by_the_child(&settings).await.as_ref(), AUDIO);
}

#[tokio::test]
async fn no_credentials_anywhere_is_denied_naming_where_they_were_looked_for() {
    let server = Server::from_env();
    let settings = fresh_bucket().await;
    let home = tempfile::tempdir().unwrap();

    let run = run_child(&server, &settings.bucket, home.path(), &[]).await;

    assert!(!run.succeeded, "no credentials must fail");
    assert!(
        run.stderr
            .contains("put failed: S3 PutObject denied: no credentials:"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("AWS_ACCESS_KEY_ID"), "{}", run.stderr);
}

#[tokio::test]
async fn an_empty_region_found_nowhere_in_the_chain_is_refused_at_connect() {
    let server = Server::from_env();
    let bucket = fresh_settings().bucket;
    let home = tempfile::tempdir().unwrap();

    let run = run_child(
        &server,
        &bucket,
        home.path(),
        &[
            ("AWS_ACCESS_KEY_ID", &server.access_key_id),
            ("AWS_SECRET_ACCESS_KEY", &server.secret_access_key),
            ("TTSQ_S3_REGION", ""),
        ],
    )
    .await;

    assert!(!run.succeeded, "no region must fail");
    assert!(
        run.stderr
            .contains("connect failed: invalid S3 settings: s3.region is empty"),
        "{}",
        run.stderr
    );
}
