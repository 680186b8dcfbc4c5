//! The pipeline end to end on real Postgres, RabbitMQ, S3 and espeak-ng:
//! submit over HTTP → queue → worker batches by dialect → S3 → Postgres → poll.

use std::{io::Cursor, time::Duration};

use futures::{StreamExt, stream};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use ttsq_testkit::TestApp;

/// Seconds of audio in a WAV file.
fn wav_seconds(bytes: &[u8]) -> f64 {
    let reader = hound::WavReader::new(Cursor::new(bytes)).expect("a valid WAV file");
    let spec = reader.spec();
    assert_eq!((spec.channels, spec.bits_per_sample), (1, 16));
    f64::from(reader.duration()) / f64::from(spec.sample_rate)
}

/// Seconds of audio in an MP3 file, by walking its frame headers.
fn mp3_seconds(bytes: &[u8]) -> f64 {
    const BITRATES_V2: [u32; 16] = [
        0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160, 0,
    ];
    const BITRATES_V1: [u32; 16] = [
        0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 0,
    ];
    let mut pos = 0;
    let mut samples = 0u64;
    let mut rate = 0u32;
    let mut frames = 0;
    while pos + 4 <= bytes.len() {
        let h = u32::from_be_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]]);
        assert_eq!(h >> 21, 0x7ff, "frame sync expected at byte {pos}");
        let version_bits = (h >> 19) & 3;
        let mpeg1 = version_bits == 3;
        let bitrate =
            if mpeg1 { BITRATES_V1 } else { BITRATES_V2 }[((h >> 12) & 0xf) as usize] * 1000;
        let base_rate = [44_100, 48_000, 32_000][((h >> 10) & 3) as usize];
        rate = match version_bits {
            3 => base_rate,
            2 => base_rate / 2,
            _ => base_rate / 4,
        };
        let padding = (h >> 9) & 1;
        let per_frame = if mpeg1 { 1152 } else { 576 };
        let length = (per_frame / 8 * bitrate / rate + padding) as usize;
        assert!(length > 4, "implausible frame length");
        samples += u64::from(per_frame);
        frames += 1;
        pos += length;
    }
    assert!(frames > 2, "an MP3 needs several frames");
    samples as f64 / f64::from(rate)
}

async fn download(app: &TestApp, task: &Value) -> Vec<u8> {
    let id = task["task_id"].as_str().expect("task id");
    let redirect = app
        .get_as(&app.api_key, &format!("/v1/tts/jobs/{id}/audio"))
        .await;
    assert_eq!(redirect.status(), 302);
    let location = redirect.headers()["location"]
        .to_str()
        .expect("ascii location")
        .to_owned();
    assert_eq!(
        Some(location.as_str()),
        task["audio_url"].as_str().map(|_| location.as_str())
    );
    // The presigned URL needs no API key: it is what a client hands a player.
    let audio = reqwest::get(&location).await.expect("presigned GET");
    assert_eq!(audio.status(), 200);
    audio.bytes().await.expect("audio bytes").to_vec()
}

#[tokio::test]
async fn a_normal_job_is_queued_processed_and_its_audio_downloads_and_plays() {
    let app = TestApp::spawn().await;
    let text = "Hello world, this is a queued job from ttsq.";

    for format in ["wav", "mp3"] {
        let id = app
            .submit_ok(&json!({"text": text, "dialect": "en-gb", "format": format}))
            .await;
        let task = app.wait_for(id).await;

        assert_eq!(task["status"], "succeeded", "{task}");
        assert_eq!(task["cache_hit"], false);
        assert_eq!(task["format"], format);
        assert_eq!(task["characters"], text.chars().count());
        let bytes = download(&app, &task).await;
        assert_eq!(task["audio_bytes"], bytes.len());
        assert_eq!(task["audio_sha256"], hex::encode(Sha256::digest(&bytes)));
        let seconds = if format == "wav" {
            wav_seconds(&bytes)
        } else {
            mp3_seconds(&bytes)
        };
        // Speech runs at roughly 10–20 characters a second.
        assert!(
            (1.5..8.0).contains(&seconds),
            "{format}: {seconds} s for {} chars",
            text.len()
        );
        let duration_ms = task["duration_ms"].as_f64().expect("duration");
        assert!(
            (duration_ms / 1000.0 - seconds).abs() < 0.2,
            "{duration_ms} ms vs {seconds} s"
        );
    }
    assert_eq!(app.provider_calls("espeak"), 2);
}

#[tokio::test]
async fn a_high_priority_job_answers_with_playable_audio_without_the_queue() {
    let app = TestApp::spawn_with(ttsq_testkit::TestOptions {
        worker: false,
        ..Default::default()
    })
    .await;

    let response = app
        .submit(&json!({"text": "Right now, please.", "dialect": "en-us", "format": "wav", "priority": "high"}))
        .await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "audio/wav");
    assert_eq!(response.headers()["x-cache"], "miss");
    let task_id = response.headers()["x-task-id"].to_str().unwrap().to_owned();
    let bytes = response.bytes().await.unwrap();
    assert!(wav_seconds(&bytes) > 0.5);
    let status = app
        .scalar(&format!(
            "SELECT count(*) FROM tasks WHERE id = '{task_id}' AND status = 'succeeded'"
        ))
        .await;
    assert_eq!(status, 1, "the task row is succeeded");
    // No worker runs and nothing was queued: high priority bypasses the queue.
    assert_eq!(app.services.broker.depths().await.unwrap(), (0, 0));

    // With Accept: application/json the answer is the task with a link.
    let json_answer: Value = app
        .http
        .post(format!("{}/v1/tts/jobs", app.base_url))
        .bearer_auth(&app.api_key)
        .header("accept", "application/json")
        .json(&json!({"text": "Right now, please.", "dialect": "en-us", "format": "wav", "priority": "high"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(json_answer["status"], "succeeded");
    assert_eq!(json_answer["cache_hit"], true);
    let via_link = reqwest::get(json_answer["audio_url"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(via_link.bytes().await.unwrap(), bytes);
    assert_eq!(app.provider_calls("espeak"), 1);
}

#[tokio::test]
async fn the_same_text_twice_is_synthesized_and_billed_once() {
    let app = TestApp::spawn_with(ttsq_testkit::TestOptions {
        env: vec![(
            "TTSQ_PROVIDERS_ESPEAK_PRICE_PER_1K_CHARS".into(),
            "2.5".into(),
        )],
        ..Default::default()
    })
    .await;
    let job = json!({"text": "Say it once, serve it twice.", "dialect": "fr-fr", "format": "mp3"});

    let first = app.wait_for(app.submit_ok(&job).await).await;
    let second_id = app.submit_ok(&job).await;
    let second = app.wait_for(second_id).await;
    let high = app
        .submit(&json!({"text": "Say it once,   serve it twice. ", "dialect": "fr-fr", "format": "mp3", "priority": "high"}))
        .await;

    assert_eq!(first["cache_hit"], false);
    assert_eq!(second["status"], "succeeded");
    assert_eq!(second["cache_hit"], true);
    assert_eq!(second["audio_sha256"], first["audio_sha256"]);
    assert_eq!(
        high.headers()["x-cache"],
        "hit",
        "normalised text hits the cache too"
    );
    assert_eq!(high.headers()["content-type"], "audio/mpeg");
    assert_eq!(
        Value::String(hex::encode(Sha256::digest(high.bytes().await.unwrap()))),
        first["audio_sha256"],
        "the hit answers with the stored audio"
    );
    assert_eq!(app.provider_calls("espeak"), 1, "the provider ran once");
    let characters = first["characters"].as_i64().unwrap();
    assert_eq!(app.scalar("SELECT count(*) FROM usage_ledger").await, 3);
    assert_eq!(
        app.scalar("SELECT sum(billable_characters)::bigint FROM usage_ledger")
            .await,
        characters,
        "the characters are billed once"
    );
    // Cost from the provider's price: 2.5 per 1,000 billable characters.
    assert_eq!(
        app.scalar("SELECT (sum(cost) * 1000000)::bigint FROM usage_ledger")
            .await,
        characters * 2500,
    );
    assert_eq!(app.scalar("SELECT count(*) FROM audio_objects").await, 1);
}

#[tokio::test]
async fn three_hundred_jobs_over_six_dialects_all_succeed_in_single_dialect_batches() {
    let app = TestApp::spawn().await;
    let dialects = ["en-us", "en-gb", "es-419", "fr-fr", "cmn", "yue"];
    let jobs: Vec<Value> = (0..300)
        .map(|i| json!({"text": format!("Job number {i}"), "dialect": dialects[i % 6], "format": "pcm"}))
        .collect();

    let ids: Vec<_> = stream::iter(jobs.iter())
        .map(|job| app.submit_ok(job))
        .buffer_unordered(32)
        .collect()
        .await;
    app.drain(Duration::from_secs(120)).await;

    assert_eq!(ids.len(), 300);
    assert_eq!(
        app.scalar("SELECT count(*) FROM tasks WHERE status = 'succeeded'")
            .await,
        300
    );
    let mixed = app
        .scalar("SELECT count(*) FROM (SELECT worker_batch_id FROM tasks GROUP BY 1 HAVING count(DISTINCT dialect) > 1) m")
        .await;
    assert_eq!(mixed, 0, "every batch held one dialect");
    let batches = app
        .scalar("SELECT count(DISTINCT worker_batch_id) FROM tasks")
        .await;
    assert!(
        batches < 300,
        "jobs were batched ({batches} batches for 300 jobs)"
    );
    assert!(batches >= 6, "at least one batch per dialect");
    assert_eq!(app.scalar("SELECT count(*) FROM usage_ledger").await, 300);
}

#[tokio::test]
async fn a_tenant_never_sees_another_tenants_task_or_audio() {
    let app = TestApp::spawn().await;
    let other_key = app.new_tenant("other").await;
    let id = app
        .submit_ok(&json!({"text": "Private words.", "dialect": "en-gb", "format": "wav"}))
        .await;
    app.wait_for(id).await;

    for path in [
        format!("/v1/tts/jobs/{id}"),
        format!("/v1/tts/jobs/{id}?wait=1"),
        format!("/v1/tts/jobs/{id}/audio"),
        format!("/v1/tts/jobs/{id}/audio?inline=1"),
    ] {
        let response = app.get_as(&other_key, &path).await;
        assert_eq!(response.status(), 404, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        // The owner does see it.
        let own = app.get_as(&app.api_key, &path).await.status();
        assert!(own == 200 || own == 302, "{path}: owner got {own}");
    }
    assert_eq!(
        app.get_as(&app.api_key, "/v1/tts/jobs/not-a-uuid")
            .await
            .status(),
        404
    );
}

#[tokio::test]
async fn inline_audio_and_the_dialect_catalog_are_served() {
    let app = TestApp::spawn().await;
    let id = app
        .submit_ok(&json!({"text": "Inline bytes.", "dialect": "en-029", "format": "wav"}))
        .await;
    let task = app.wait_for(id).await;
    let inline = app
        .get_as(&app.api_key, &format!("/v1/tts/jobs/{id}/audio?inline=1"))
        .await;
    assert_eq!(inline.status(), 200);
    let bytes = inline.bytes().await.unwrap();
    assert_eq!(task["audio_sha256"], hex::encode(Sha256::digest(&bytes)));

    let catalog: Value = app
        .get_as(&app.api_key, "/v1/dialects")
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = catalog["dialects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    for wanted in [
        "en-us",
        "en-gb",
        "en-gb-scotland",
        "en-029",
        "cmn",
        "yue",
        "es-419",
        "fr-fr",
    ] {
        assert!(ids.contains(&wanted), "{wanted} missing from {ids:?}");
    }
    let health = app
        .http
        .get(format!("{}/health", app.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready: Value = app
        .http
        .get(format!("{}/ready", app.ops_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true, "{ready}");
    for dependency in ["postgres", "rabbitmq", "s3", "provider:espeak"] {
        assert_eq!(
            ready["checks"][dependency]["ok"], true,
            "{dependency}: {ready}"
        );
    }
}

/// The content hash and audio key of the task `id`.
async fn hash_and_key(app: &TestApp, id: &str) -> (String, String) {
    let (hash, format): (String, String) =
        ttsq_store::sqlx::query_as("SELECT content_hash, format FROM tasks WHERE id = $1::uuid")
            .bind(id)
            .fetch_one(app.services.store.pool())
            .await
            .expect("task read");
    let format: ttsq_core::AudioFormat = format.parse().expect("a known format");
    let key = ttsq_core::ContentHash::parse(&hash)
        .expect("a content hash")
        .object_key(format);
    (hash, key)
}

#[tokio::test]
async fn an_object_already_under_the_key_is_what_the_index_records() {
    let mut app = ttsq_testkit::TestApp::spawn_with(ttsq_testkit::TestOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    let id = app
        .submit_ok(
            &json!({"text": "Someone stored me first.", "dialect": "en-us", "format": "wav"}),
        )
        .await;
    let (_, key) = hash_and_key(&app, &id.to_string()).await;
    // Left by an attempt that crashed after its upload (other bytes, no facts).
    let stored = b"RIFF audio a crashed attempt uploaded".to_vec();
    app.services
        .audio
        .put(&key, stored.clone().into(), "audio/wav")
        .await
        .expect("object stored");

    app.start_worker();
    let task = app.wait_for(id).await;

    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(
        task["audio_sha256"],
        hex::encode(Sha256::digest(&stored)),
        "the index records the bytes stored, not the discarded ones"
    );
    assert_eq!(task["audio_bytes"], stored.len());
}

#[tokio::test]
async fn a_cache_hit_whose_object_is_gone_is_synthesized_again_not_a_dead_url() {
    let app = TestApp::spawn().await;
    let body = json!({"text": "Deleted behind our back.", "dialect": "en-us", "format": "wav", "priority": "high"});
    let submit = || async {
        app.http
            .post(format!("{}/v1/tts/jobs", app.base_url))
            .bearer_auth(&app.api_key)
            .header("accept", "application/json")
            .json(&body)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let first = submit().await;
    let (_, key) = hash_and_key(&app, first["task_id"].as_str().unwrap()).await;
    app.services
        .audio
        .delete(&key)
        .await
        .expect("object deleted");

    let again = submit().await;
    let download = reqwest::get(again["audio_url"].as_str().expect("an audio URL"))
        .await
        .unwrap();

    assert_eq!(again["status"], "succeeded", "{again}");
    assert_eq!(again["cache_hit"], false, "synthesized again: {again}");
    assert_eq!(app.provider_calls("espeak"), 2);
    assert!(download.status().is_success(), "{}", download.status());
    assert_eq!(
        hex::encode(Sha256::digest(download.bytes().await.unwrap())),
        again["audio_sha256"].as_str().unwrap()
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM usage_ledger WHERE NOT cache_hit")
            .await,
        2,
        "each synthesis is billed"
    );
}

#[tokio::test]
async fn an_idempotency_key_reused_with_another_body_is_a_422_not_the_first_tasks_audio() {
    let app = TestApp::spawn().await;
    let send = |key: &'static str, body: Value| {
        app.http
            .post(format!("{}/v1/tts/jobs", app.base_url))
            .bearer_auth(&app.api_key)
            .header("idempotency-key", key)
            .header("accept", "application/json")
            .json(&body)
            .send()
    };
    let first = json!({"text": "The first request.", "dialect": "en-us", "format": "wav"});
    let other = json!({"text": "Another request entirely.", "dialect": "en-us", "format": "wav"});
    let high =
        |text: &str| json!({"text": text, "dialect": "en-us", "format": "wav", "priority": "high"});

    let accepted: Value = send("key-normal", first.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let repeat: Value = send("key-normal", first)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reused = send("key-normal", other).await.unwrap();
    let inline = send("key-high", high("Spoken now.")).await.unwrap();
    let reused_inline = send("key-high", high("Something else now.")).await.unwrap();

    assert_eq!(
        repeat["task_id"], accepted["task_id"],
        "the same request is the same task"
    );
    assert_eq!(inline.status(), 200);
    for refused in [reused, reused_inline] {
        assert_eq!(refused.status(), 422);
        let problem: Value = refused.json().await.unwrap();
        assert_eq!(
            problem["errors"][0]["field"], "Idempotency-Key",
            "{problem}"
        );
    }
}
