//! The API's hot cache: a repeated high-priority request answers from the
//! replica's memory, not from S3; only for the same cache scope; never for
//! audio the index no longer holds; never beyond its byte bound.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use ttsq_testkit::{TestApp, TestOptions};
use uuid::Uuid;

use crate::metrics::Scrape;

/// An API without a worker: high priority needs none.
async fn spawn(env: &[(&str, &str)]) -> TestApp {
    TestApp::spawn_with(TestOptions {
        worker: false,
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..TestOptions::default()
    })
    .await
}

/// A high-priority WAV job for `text` (each test has its own bucket and
/// database, so nothing is stored for it yet).
fn job(text: &str) -> Value {
    json!({"text": text, "dialect": "en-us", "format": "wav", "priority": "high"})
}

/// What a high-priority answer said: `X-Cache`, the task id and the bytes.
struct Answer {
    cache: String,
    task_id: Uuid,
    bytes: Vec<u8>,
}

async fn answer(response: reqwest::Response) -> Answer {
    assert_eq!(response.status(), 200);
    let header = |name: &str| {
        response.headers()[name]
            .to_str()
            .expect("ascii header")
            .to_owned()
    };
    let cache = header("x-cache");
    let task_id = header("x-task-id").parse().expect("a task id");
    let bytes = response.bytes().await.expect("audio").to_vec();
    Answer {
        cache,
        task_id,
        bytes,
    }
}

async fn submit_as(app: &TestApp, key: &str, body: &Value) -> Answer {
    answer(app.submit_as(key, body).await).await
}

/// The S3 key of a task's audio.
async fn audio_key(app: &TestApp, task_id: Uuid) -> String {
    ttsq_store::sqlx::query_scalar(
        "SELECT a.s3_key FROM tasks t JOIN audio_objects a ON a.hash = t.audio_hash WHERE t.id = $1",
    )
    .bind(task_id)
    .fetch_one(app.services.store.pool())
    .await
    .expect("the task has audio")
}

/// The S3 object of `task_id`'s audio deleted behind ttsq's back: only
/// memory can answer with it now.
async fn delete_from_s3(app: &TestApp, task_id: Uuid) {
    let key = audio_key(app, task_id).await;
    app.services.audio.delete(&key).await.expect("deleted");
}

#[tokio::test]
async fn a_repeated_high_priority_request_is_answered_from_memory_without_reading_s3() {
    let app = spawn(&[]).await;
    let body = job("Once from the provider, then from memory.");
    let first = submit_as(&app, &app.api_key, &body).await;
    assert_eq!(first.cache, "miss");
    delete_from_s3(&app, first.task_id).await;

    let second = submit_as(&app, &app.api_key, &body).await;

    assert_eq!(second.cache, "hit", "answered although S3 lost the object");
    assert_eq!(second.bytes, first.bytes);
    assert_ne!(second.task_id, first.task_id, "a task of its own");
    assert_eq!(app.provider_calls("espeak"), 1);
    let sha = hex::encode(Sha256::digest(&first.bytes));
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM tasks t JOIN audio_objects a ON a.hash = t.audio_hash
              WHERE t.id = '{}' AND t.cache_hit AND a.sha256 = '{sha}' AND a.lost_at IS NULL",
            second.task_id
        ))
        .await,
        1,
        "the hit is recorded against the object it answered"
    );
    let scrape = Scrape::of(&app).await;
    assert_eq!(
        scrape.get("tts_hot_cache_requests_total", &[("outcome", "hit")]),
        Some(1.0)
    );
    assert_eq!(
        scrape.get("tts_hot_cache_requests_total", &[("outcome", "miss")]),
        Some(1.0)
    );
    assert_eq!(scrape.get("tts_hot_cache_entries", &[]), Some(1.0));
    assert_eq!(
        scrape.get("tts_hot_cache_bytes", &[]),
        Some(first.bytes.len() as f64)
    );
}

#[tokio::test]
async fn the_openai_speech_endpoint_answers_a_repeat_from_memory_too() {
    let app = spawn(&[]).await;
    let body = json!({"model": "tts-1", "input": "Speak twice.", "voice": "alloy", "response_format": "wav"});
    let speak = || async {
        answer(
            app.http
                .post(format!("{}/v1/audio/speech", app.base_url))
                .bearer_auth(&app.api_key)
                .json(&body)
                .send()
                .await
                .expect("sent"),
        )
        .await
    };
    let first = speak().await;
    delete_from_s3(&app, first.task_id).await;

    let second = speak().await;

    assert_eq!(
        (first.cache.as_str(), second.cache.as_str()),
        ("miss", "hit")
    );
    assert_eq!(second.bytes, first.bytes);
    assert_eq!(app.provider_calls("espeak"), 1);
}

#[tokio::test]
async fn another_scope_with_the_same_text_gets_a_miss_and_its_own_synthesis() {
    let app = spawn(&[]).await;
    let other = app.new_tenant("other").await;
    let body = job("Both tenants say this.");
    let mine = submit_as(&app, &app.api_key, &body).await;
    let mine_again = submit_as(&app, &app.api_key, &body).await;

    let theirs = submit_as(&app, &other, &body).await;
    let theirs_again = submit_as(&app, &other, &body).await;

    assert_eq!(
        [&mine, &mine_again, &theirs, &theirs_again].map(|a| a.cache.as_str()),
        ["miss", "hit", "miss", "hit"],
        "each scope has its own entries"
    );
    assert_eq!(app.provider_calls("espeak"), 2, "one synthesis per scope");
    let scrape = Scrape::of(&app).await;
    assert_eq!(scrape.get("tts_hot_cache_entries", &[]), Some(2.0));
}

#[tokio::test]
async fn tenants_of_one_cache_pool_share_its_entries() {
    let app = spawn(&[]).await;
    let other = app.new_tenant("other").await;
    app.join_cache_pool(&["default", "other"], "hot-cache-test")
        .await;
    let body = job("The pool says this.");
    let mine = submit_as(&app, &app.api_key, &body).await;
    delete_from_s3(&app, mine.task_id).await;

    let theirs = submit_as(&app, &other, &body).await;

    assert_eq!(theirs.cache, "hit");
    assert_eq!(theirs.bytes, mine.bytes);
    assert_eq!(app.provider_calls("espeak"), 1);
}

#[tokio::test]
async fn audio_the_index_lost_or_removed_is_not_answered_from_memory() {
    let app = spawn(&[]).await;

    // Found missing from the bucket by a worker or another replica, and
    // marked lost: the index no longer offers the object, so memory must
    // not either.
    let lost = job("Marked lost elsewhere.");
    let first = submit_as(&app, &app.api_key, &lost).await;
    delete_from_s3(&app, first.task_id).await;
    app.execute(&format!(
        "UPDATE audio_objects SET lost_at = now()
          WHERE hash = (SELECT audio_hash FROM tasks WHERE id = '{}')",
        first.task_id
    ))
    .await;
    let again = submit_as(&app, &app.api_key, &lost).await;
    assert_eq!(
        again.cache, "miss",
        "synthesized again, not served from memory"
    );
    assert_eq!(app.provider_calls("espeak"), 2);

    // Removed by retention: its tasks, its index row and its object go.
    let purged = job("Swept by retention.");
    let first = submit_as(&app, &app.api_key, &purged).await;
    let key = audio_key(&app, first.task_id).await;
    app.execute(&format!(
        "WITH gone AS (DELETE FROM tasks WHERE id = '{}' RETURNING audio_hash)
         DELETE FROM audio_objects WHERE hash IN (SELECT audio_hash FROM gone)",
        first.task_id
    ))
    .await;
    app.services.audio.delete(&key).await.expect("deleted");
    let again = submit_as(&app, &app.api_key, &purged).await;
    assert_eq!(
        again.cache, "miss",
        "synthesized again, not served from memory"
    );
    assert_eq!(app.provider_calls("espeak"), 4);
    assert!(
        app.services.audio.get(&key).await.is_ok(),
        "the object is stored again"
    );
}

#[tokio::test]
async fn the_hot_cache_never_holds_more_than_its_bound() {
    let bound = 1024 * 1024;
    let app = spawn(&[("TTSQ_API_HOT_CACHE_BYTES", &bound.to_string())]).await;
    let mut sizes = Vec::new();
    for i in 0..30 {
        let answer = submit_as(&app, &app.api_key, &job(&format!("Text number {i}."))).await;
        sizes.push(answer.bytes.len());
        let scrape = Scrape::of(&app).await;
        let held = scrape.get("tts_hot_cache_bytes", &[]).unwrap_or(0.0);
        assert!(held <= bound as f64, "{held} bytes held after {i}");
    }
    assert!(
        sizes.iter().all(|s| *s <= bound / 8),
        "every answer fits an entry: {sizes:?}"
    );
    assert!(
        sizes.iter().sum::<usize>() > bound,
        "the texts overflow the bound: {sizes:?}"
    );
    let scrape = Scrape::of(&app).await;
    let entries = scrape.get("tts_hot_cache_entries", &[]).unwrap_or(0.0);
    assert!((1.0..30.0).contains(&entries), "{entries} entries");
}

#[tokio::test]
async fn a_hot_cache_of_zero_bytes_reads_s3_every_time() {
    let app = spawn(&[("TTSQ_API_HOT_CACHE_BYTES", "0")]).await;
    let body = job("No memory of this.");
    let first = submit_as(&app, &app.api_key, &body).await;
    delete_from_s3(&app, first.task_id).await;

    let second = submit_as(&app, &app.api_key, &body).await;

    assert_eq!(
        second.cache, "miss",
        "the object was missing: synthesized again"
    );
    assert_eq!(app.provider_calls("espeak"), 2);
    let scrape = Scrape::of(&app).await;
    assert_eq!(scrape.get("tts_hot_cache_entries", &[]), Some(0.0));
    assert_eq!(scrape.get("tts_hot_cache_bytes", &[]), Some(0.0));
    assert_eq!(scrape.get("tts_hot_cache_requests_total", &[]), None);
}
