//! Integration tests against a real S3-compatible server (no mocks).
//!
//! The server comes from `TTSQ_S3_ENDPOINT` (default `http://127.0.0.1:8014`,
//! e.g. s3s-fs) with `TTSQ_S3_ACCESS_KEY_ID` / `TTSQ_S3_SECRET_ACCESS_KEY`.
//! Every test works in its own fresh bucket. The tests of credentials from
//! the AWS default chain are in `credentials.rs`.

mod credentials;

use bytes::Bytes;
use secrecy::SecretString;
use ttsq_audio::{AudioStore, AudioStoreError, PutOutcome};
use ttsq_config::S3Settings;

const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:8014";
const DEFAULT_ACCESS_KEY_ID: &str = "ttsq";
const DEFAULT_SECRET_ACCESS_KEY: &str = "ttsq-local-secret";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// Settings for the test server, with a bucket no other test uses.
fn fresh_settings() -> S3Settings {
    // "ttsq-test-" (10) + 32 hex digits = 42 characters, within S3's 63.
    let bucket = format!("ttsq-test-{}", uuid::Uuid::new_v4().simple()).to_lowercase();
    S3Settings {
        endpoint: env_or("TTSQ_S3_ENDPOINT", DEFAULT_ENDPOINT),
        region: "us-east-1".to_owned(),
        bucket,
        access_key_id: env_or("TTSQ_S3_ACCESS_KEY_ID", DEFAULT_ACCESS_KEY_ID),
        secret_access_key: SecretString::from(env_or(
            "TTSQ_S3_SECRET_ACCESS_KEY",
            DEFAULT_SECRET_ACCESS_KEY,
        )),
        force_path_style: true,
        create_bucket: true,
        presign_ttl_secs: 300,
        conditional_writes: false,
    }
}

async fn fresh_store() -> AudioStore {
    fresh_store_with(false).await
}

/// A store in a fresh bucket, with `s3.conditional_writes` as given: with
/// it, only the server's `If-None-Match` check keeps an object immutable.
async fn fresh_store_with(conditional_writes: bool) -> AudioStore {
    AudioStore::connect(&S3Settings {
        conditional_writes,
        ..fresh_settings()
    })
    .await
    .expect("connect to the test S3 server (is s3s-fs running?)")
}

/// A content-addressed key of the shape ttsq uses.
fn audio_key(tag: &str) -> String {
    let hash = format!("{:0>64}", tag);
    format!("audio/{}/{hash}.mp3", &hash[..2])
}

#[tokio::test]
async fn connect_creates_the_bucket_and_a_second_connect_is_fine() {
    let settings = fresh_settings();

    let first = AudioStore::connect(&settings).await.expect("first connect");
    let second = AudioStore::connect(&settings)
        .await
        .expect("second connect");

    assert_eq!(first.bucket(), settings.bucket);
    first.check().await.expect("bucket exists after connect");
    second.check().await.expect("second store sees the bucket");
}

#[tokio::test]
async fn put_then_get_returns_identical_bytes() {
    let store = fresh_store().await;
    let key = audio_key("a1");
    let audio: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();

    let outcome = store
        .put(&key, Bytes::from(audio.clone()), "audio/mpeg")
        .await
        .expect("put");
    let fetched = store.get(&key).await.expect("get");

    assert_eq!(outcome, PutOutcome::Stored);
    assert_eq!(fetched.as_ref(), audio.as_slice());
}

#[tokio::test]
async fn a_put_signed_with_the_callers_hash_stores_and_a_wrong_hash_is_refused() {
    let store = fresh_store().await;
    let body = Bytes::from_static(b"signed with the caller's hash");
    // SHA-256 of `body`, and of b"other bytes".
    let sha256 = "338918a1af110d3e3822d17e528a2085dc8ed71e4abcfd3bf90983eb6aa9108c";
    let other = "a3ead5eedad5df82318c51685dbc1c147a36d1ff8584fc82de6b08d0bf63a795";
    let (good, bad) = (audio_key("c3"), audio_key("c4"));

    let stored = store
        .put_hashed(&good, body.clone(), sha256, "audio/mpeg", &[])
        .await
        .expect("put with the right hash");
    let refused = store
        .put_hashed(&bad, body.clone(), other, "audio/mpeg", &[])
        .await;
    let unchecked = store
        .put_hashed(
            &audio_key("c5"),
            body.clone(),
            "not a hash",
            "audio/mpeg",
            &[],
        )
        .await
        .expect("put with no usable hash");

    assert_eq!(stored, PutOutcome::Stored);
    assert_eq!(store.get(&good).await.expect("get"), body);
    assert!(refused.is_err(), "a body that is not its hash was stored");
    assert!(store.get(&bad).await.unwrap_err().is_not_found());
    assert_eq!(unchecked, PutOutcome::Stored);
}

#[tokio::test]
async fn second_put_of_a_key_is_already_existed_and_keeps_the_first_bytes() {
    for conditional_writes in [false, true] {
        let store = fresh_store_with(conditional_writes).await;
        let key = audio_key("b2");
        let original = Bytes::from_static(b"first audio bytes");
        store
            .put(&key, original.clone(), "audio/mpeg")
            .await
            .expect("first put");

        let outcome = store
            .put(&key, Bytes::from_static(b"DIFFERENT bytes"), "audio/mpeg")
            .await
            .expect("second put");

        assert_eq!(
            outcome,
            PutOutcome::AlreadyExisted,
            "conditional_writes = {conditional_writes}"
        );
        assert_eq!(
            store.get(&key).await.expect("get"),
            original,
            "conditional_writes = {conditional_writes}"
        );
    }
}

#[tokio::test]
async fn concurrent_puts_of_one_key_store_it_once() {
    for conditional_writes in [false, true] {
        let store = fresh_store_with(conditional_writes).await;
        let key = audio_key("c3");
        let audio = Bytes::from(vec![7u8; 4096]);

        let outcomes = await_outcomes((0..8).map(|_| {
            let store = store.clone();
            let key = key.clone();
            let audio = audio.clone();
            tokio::spawn(async move { store.put(&key, audio, "audio/mpeg").await })
        }))
        .await;

        let stored = outcomes
            .iter()
            .filter(|outcome| **outcome == PutOutcome::Stored)
            .count();
        assert!(stored >= 1, "at least one put stores the object");
        assert_eq!(store.get(&key).await.expect("get"), audio);
    }
}

/// Awaits spawned tasks in order, failing the test on any error.
async fn await_outcomes(
    handles: impl Iterator<Item = tokio::task::JoinHandle<Result<PutOutcome, AudioStoreError>>>,
) -> Vec<PutOutcome> {
    let mut outcomes = Vec::new();
    for handle in handles {
        outcomes.push(handle.await.expect("task").expect("put"));
    }
    outcomes
}

#[tokio::test]
async fn get_of_a_missing_key_is_not_found() {
    let store = fresh_store().await;

    let err = store
        .get(&audio_key("d4"))
        .await
        .expect_err("missing key must fail");

    assert!(err.is_not_found(), "expected not found, got {err:?}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn presigned_url_downloads_the_bytes_and_a_tampered_one_is_refused() {
    let store = fresh_store().await;
    let key = audio_key("e5");
    let audio = Bytes::from_static(b"presigned audio");
    store
        .put(&key, audio.clone(), "audio/mpeg")
        .await
        .expect("put");
    let http = reqwest::Client::new();

    let url = store.presign_get(&key).await.expect("presign");
    let response = http.get(&url).send().await.expect("GET presigned URL");

    assert_eq!(response.status(), reqwest::StatusCode::OK, "url: {url}");
    assert_eq!(response.bytes().await.expect("body"), audio);

    let tampered = tamper_signature(&url);
    assert_ne!(tampered, url);
    let refused = http.get(&tampered).send().await.expect("GET tampered URL");
    assert_eq!(refused.status(), reqwest::StatusCode::FORBIDDEN);
}

/// Flips the last hex digit of the `X-Amz-Signature` query parameter.
fn tamper_signature(url: &str) -> String {
    let start = url.find("X-Amz-Signature=").expect("signature in url") + "X-Amz-Signature=".len();
    let end = url[start..].find('&').map_or(url.len(), |i| start + i);
    let mut signature = url[start..end].to_owned();
    let last = signature.pop().expect("non-empty signature");
    signature.push(if last == '0' { '1' } else { '0' });
    format!("{}{signature}{}", &url[..start], &url[end..])
}

#[tokio::test]
async fn wrong_secret_key_fails_check_without_revealing_the_secret() {
    let settings = fresh_settings();
    AudioStore::connect(&settings).await.expect("create bucket");
    let wrong_secret = "wrong-secret-7f3c9a1e5b";
    let bad = S3Settings {
        secret_access_key: SecretString::from(wrong_secret),
        create_bucket: false,
        ..settings
    };
    let store = AudioStore::connect(&bad)
        .await
        .expect("connect without create does no I/O");

    let err = store.check().await.expect_err("wrong secret must fail");

    assert!(
        matches!(err, AudioStoreError::Denied { .. }),
        "expected denied, got {err:?}"
    );
    assert!(!err.is_not_found());
    for text in [err.to_string(), format!("{err:?}"), format!("{store:?}")] {
        assert!(!text.contains(wrong_secret), "secret leaked: {text}");
    }
}

#[tokio::test]
async fn check_succeeds_with_the_right_credentials() {
    let store = fresh_store().await;

    store.check().await.expect("check");
}

#[tokio::test]
async fn check_of_a_missing_bucket_is_not_found() {
    let settings = S3Settings {
        create_bucket: false,
        ..fresh_settings()
    };
    let store = AudioStore::connect(&settings).await.expect("connect");

    let err = store.check().await.expect_err("bucket was never created");

    assert!(err.is_not_found(), "expected not found, got {err:?}");
}

#[tokio::test]
async fn unreachable_server_is_transient() {
    let settings = S3Settings {
        // Port 9 (discard) on loopback: nothing listens there.
        endpoint: "http://127.0.0.1:9".to_owned(),
        create_bucket: false,
        ..fresh_settings()
    };
    let store = AudioStore::connect(&settings).await.expect("connect");

    let err = store.check().await.expect_err("no server");

    assert!(err.is_transient(), "expected unavailable, got {err:?}");
}

#[tokio::test]
async fn out_of_range_presign_ttl_is_rejected_at_connect() {
    let settings = S3Settings {
        presign_ttl_secs: 8 * 24 * 60 * 60,
        create_bucket: false,
        ..fresh_settings()
    };

    let err = AudioStore::connect(&settings)
        .await
        .expect_err("8 days exceeds SigV4's limit");

    assert!(
        matches!(err, AudioStoreError::InvalidSettings(_)),
        "{err:?}"
    );
}

/// S3's smallest part but the last.
const PART: usize = 5 * 1024 * 1024;

/// `len` bytes that differ from one position to the next.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn a_multipart_upload_holds_one_part_at_a_time_and_reads_back_whole() {
    let store = fresh_store().await;
    let key = "batches/join-test/joined.wav";
    let data = pattern(4 * PART + 12_345);

    let mut upload = store
        .create_multipart(key, "audio/wav", PART)
        .await
        .expect("upload started");
    // Odd-sized writes, as a streamed join makes them.
    for piece in data.chunks(700_001) {
        upload.write(piece).await.expect("written");
        assert!(upload.peak_buffered() <= PART);
    }
    assert_eq!(upload.parts_uploaded(), 4, "full parts go out as they fill");
    assert_eq!(upload.bytes_written(), data.len() as u64);
    let size = upload.complete().await.expect("completed");

    assert_eq!(size, data.len() as u64);
    let stored = store.get(key).await.expect("stored");
    assert!(stored == data, "the object is the bytes written, in order");
}

#[tokio::test]
async fn an_aborted_multipart_upload_leaves_no_object() {
    let store = fresh_store().await;
    let key = "batches/aborted/joined.pcm";
    let mut upload = store
        .create_multipart(key, "audio/pcm", PART)
        .await
        .expect("upload started");
    upload.write(&pattern(PART + 10)).await.expect("written");

    upload.abort().await.expect("aborted");

    let err = store.get(key).await.expect_err("nothing stored");
    assert!(err.is_not_found(), "{err}");
}

#[tokio::test]
async fn an_object_is_read_as_a_stream_whole_or_by_range() {
    let store = fresh_store().await;
    let key = audio_key("stream");
    let data = pattern(300_000);
    store
        .put(&key, Bytes::from(data.clone()), "audio/mpeg")
        .await
        .expect("put");

    let mut whole = store.open(&key).await.expect("opened");
    assert_eq!(whole.object_bytes(), data.len() as u64);
    let mut read = Vec::new();
    while let Some(chunk) = whole.next_chunk().await.expect("chunk") {
        read.extend_from_slice(&chunk);
    }
    assert!(read == data);

    let mut head = store
        .open_range(&key, 10, Some(4105))
        .await
        .expect("range opened");
    assert_eq!(head.object_bytes(), data.len() as u64, "the whole size");
    let mut read = Vec::new();
    while let Some(chunk) = head.next_chunk().await.expect("chunk") {
        read.extend_from_slice(&chunk);
    }
    assert_eq!(read, data[10..4106]);

    let missing = store.open(&audio_key("none")).await.expect_err("missing");
    assert!(missing.is_not_found(), "{missing}");
}
