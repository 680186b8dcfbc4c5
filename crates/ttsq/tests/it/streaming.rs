//! Streaming at high priority, through the fake vendor sending its audio in
//! chunks spread over time: the client gets the first bytes before the
//! synthesis ends, and the stored object, the task and the ledger row are
//! still written once, complete. Also OpenAI's `stream_format: "sse"` and
//! `instructions`, and the official `openai` Python package streaming.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use ttsq_fake_provider::{FakeConfig, FakeProvider, Streaming};
use ttsq_testkit::{FakeRoutes, TestApp, TestOptions};
use uuid::Uuid;

use crate::{clients::test_python, metrics::Scrape};

const KEY: &str = "sk-fake-stream-key-0123456789";

/// The fake streams every answer in 10 chunks over this long.
const SPREAD: Duration = Duration::from_millis(1_500);

async fn fake(change: impl FnOnce(&mut FakeConfig)) -> FakeProvider {
    let mut config = FakeConfig::default();
    config.keys.openai = Some(KEY.to_owned());
    config.streaming = Streaming {
        chunks: 10,
        spread_ms: SPREAD.as_millis() as u64,
        fail_after_chunks: None,
    };
    change(&mut config);
    FakeProvider::start(config)
        .await
        .expect("fake provider starts")
}

/// A stack whose `en-gb` goes to the fake (OpenAI wire format, a model that
/// takes instructions), then espeak: a fallback that must not be taken
/// once bytes were sent.
async fn stack(fake: &FakeProvider) -> TestApp {
    let config = FakeRoutes::new(fake.base_url())
        .with(r#"model = "gpt-4o-mini-tts""#)
        .with("price_per_1k_chars = 15.0")
        .espeak_fallback()
        .toml();
    TestApp::spawn_with(TestOptions {
        worker: false,
        env: vec![("TTSQ_PROVIDERS_FAKE_API_KEY".into(), KEY.into())],
        config_toml: Some(config),
        ..TestOptions::default()
    })
    .await
}

fn speech(text: &str) -> Value {
    json!({"model": "gpt-4o-mini-tts", "voice": "en-gb/rachel", "input": text, "response_format": "mp3"})
}

async fn post_speech(app: &TestApp, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v1/audio/speech", app.base_url))
        .bearer_auth(&app.api_key)
        .json(body)
        .send()
        .await
        .expect("request sent")
}

/// What a client read of a streamed body: its chunks' arrival and bytes,
/// and whether it ended cleanly.
struct Received {
    first_chunk_after: Duration,
    finished_after: Duration,
    bytes: Vec<u8>,
    chunks: usize,
    cut_off: bool,
}

async fn receive(mut response: reqwest::Response, sent: Instant) -> Received {
    let mut received = Received {
        first_chunk_after: Duration::ZERO,
        finished_after: Duration::ZERO,
        bytes: Vec::new(),
        chunks: 0,
        cut_off: false,
    };
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if received.chunks == 0 {
                    received.first_chunk_after = sent.elapsed();
                }
                received.chunks += 1;
                received.bytes.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(_) => {
                received.cut_off = true;
                break;
            }
        }
    }
    received.finished_after = sent.elapsed();
    received
}

fn task_id(response: &reqwest::Response) -> Uuid {
    response
        .headers()
        .get("x-task-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("an X-Task-Id")
}

async fn stored_audio(app: &TestApp, task_id: Uuid) -> Vec<u8> {
    let response = app
        .get_as(
            &app.api_key,
            &format!("/v1/tts/jobs/{task_id}/audio?inline=1"),
        )
        .await;
    assert_eq!(response.status(), 200);
    response.bytes().await.expect("audio").to_vec()
}

async fn ledger_rows(app: &TestApp, task_id: Uuid) -> i64 {
    app.scalar(&format!(
        "SELECT count(*) FROM usage_ledger WHERE task_id = '{task_id}'"
    ))
    .await
}

async fn billed_characters(app: &TestApp, task_id: Uuid) -> i64 {
    app.scalar(&format!(
        "SELECT coalesce(sum(billable_characters), 0)::bigint FROM usage_ledger WHERE task_id = '{task_id}'"
    ))
    .await
}

/// Waits for the task to reach a terminal state and returns it.
async fn settled(app: &TestApp, task_id: Uuid) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let task = app.wait_for(task_id).await;
        let status = task["status"].as_str().unwrap_or_default().to_owned();
        if ["succeeded", "failed", "cancelled"].contains(&status.as_str())
            || Instant::now() > deadline
        {
            return task;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `data:` payloads of a server-sent event stream.
fn parse_events(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data.trim()).expect("a JSON event"))
        .collect()
}

#[tokio::test]
async fn the_first_bytes_arrive_before_the_synthesis_ends_and_the_object_is_stored_once_whole() {
    let fake = fake(|_| {}).await;
    let app = stack(&fake).await;

    let sent = Instant::now();
    let response = post_speech(&app, &speech("Streaming arrives before it is done.")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "audio/mpeg");
    assert_eq!(response.headers()["x-cache"], "miss");
    let id = task_id(&response);
    let received = receive(response, sent).await;

    assert!(!received.cut_off, "the stream ended cleanly");
    assert!(received.chunks > 1, "{} chunks", received.chunks);
    assert!(
        received.finished_after >= SPREAD,
        "the whole answer took {:?}",
        received.finished_after
    );
    assert!(
        received.first_chunk_after + Duration::from_millis(900) < received.finished_after,
        "first byte after {:?}, the whole after {:?}",
        received.first_chunk_after,
        received.finished_after
    );
    let task = settled(&app, id).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(stored_audio(&app, id).await, received.bytes);
    assert_eq!(ledger_rows(&app, id).await, 1);
    assert_eq!(fake.stats().synthesis_requests, 1);
    assert_eq!(
        app.scalar("SELECT count(*) FROM audio_objects").await,
        1,
        "one object"
    );

    // The job API's high priority streams the same way.
    let sent = Instant::now();
    let response = app
        .submit(&json!({"text": "The job API streams too.", "dialect": "en-gb", "voice": "rachel", "priority": "high"}))
        .await;
    assert_eq!(response.status(), 200);
    let id = task_id(&response);
    let received = receive(response, sent).await;
    assert!(!received.cut_off);
    assert!(
        received.first_chunk_after + Duration::from_millis(900) < received.finished_after,
        "first byte after {:?}, the whole after {:?}",
        received.first_chunk_after,
        received.finished_after
    );
    assert_eq!(stored_audio(&app, id).await, received.bytes);
    assert_eq!(ledger_rows(&app, id).await, 1);
    // Ops see both streams, and when their first bytes went out.
    assert_eq!(
        Scrape::of(&app)
            .await
            .value("tts_streamed_responses_total", &[("outcome", "complete")]),
        2.0
    );
    assert_eq!(
        Scrape::of(&app)
            .await
            .value("tts_stream_first_byte_seconds_count", &[]),
        2.0
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_stream_still_has_its_audio_stored_and_billed_once() {
    let fake = fake(|_| {}).await;
    let app = stack(&fake).await;

    let mut response = post_speech(&app, &speech("Nobody listens to the end of this.")).await;
    assert_eq!(response.status(), 200);
    let id = task_id(&response);
    let first = response.chunk().await.expect("a first chunk");
    assert!(first.is_some_and(|c| !c.is_empty()));
    drop(response);

    let task = settled(&app, id).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(ledger_rows(&app, id).await, 1);
    assert_eq!(billed_characters(&app, id).await, 34);
    assert!(stored_audio(&app, id).await.len() > 1_000);
    assert_eq!(fake.stats().synthesis_requests, 1);
    fake.shutdown().await;
}

#[tokio::test]
async fn a_provider_failing_mid_stream_cuts_the_stream_off_and_fails_the_task_unbilled() {
    let fake = fake(|c| c.streaming.fail_after_chunks = Some(3)).await;
    let app = stack(&fake).await;

    let sent = Instant::now();
    let response = post_speech(&app, &speech("This stream breaks in the middle.")).await;
    assert_eq!(response.status(), 200);
    let id = task_id(&response);
    let received = receive(response, sent).await;

    assert!(received.chunks >= 1, "bytes were passed on first");
    assert!(received.cut_off, "the body ends in an error, not cleanly");
    let task = settled(&app, id).await;
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(ledger_rows(&app, id).await, 1, "one row per finished task");
    assert_eq!(billed_characters(&app, id).await, 0);
    assert_eq!(app.scalar("SELECT count(*) FROM audio_objects").await, 0);
    assert_eq!(
        fake.stats().synthesis_requests,
        1,
        "neither retried nor another provider after bytes were sent"
    );
    assert_eq!(app.provider_calls("espeak"), 0);

    // With server-sent events, the stream ends in an `error` event.
    let response = post_speech(
        &app,
        &json!({"model": "gpt-4o-mini-tts", "voice": "en-gb/rachel", "input": "Events that break.", "stream_format": "sse"}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.expect("the event stream");
    let events = parse_events(&body);
    assert!(
        events
            .first()
            .is_some_and(|e| e["type"] == "speech.audio.delta"),
        "{body}"
    );
    assert_eq!(
        events.last().map(|e| e["type"].clone()),
        Some(json!("error")),
        "{body}"
    );
    assert!(!events.iter().any(|e| e["type"] == "speech.audio.done"));
    assert_eq!(
        Scrape::of(&app)
            .await
            .value("tts_streamed_responses_total", &[("outcome", "cut_off")]),
        2.0
    );
    assert_eq!(
        Scrape::of(&app)
            .await
            .get("tts_streamed_responses_total", &[("outcome", "complete")])
            .unwrap_or(0.0),
        0.0
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn server_sent_events_carry_the_audio_then_the_usage_also_from_the_cache() {
    let fake = fake(|_| {}).await;
    let app = stack(&fake).await;
    let body = json!({"model": "gpt-4o-mini-tts", "voice": "en-gb/rachel", "input": "Events, please.", "response_format": "mp3", "stream_format": "sse"});

    let sent = Instant::now();
    let response = post_speech(&app, &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let id = task_id(&response);
    let received = receive(response, sent).await;
    assert!(
        received.first_chunk_after + Duration::from_millis(900) < received.finished_after,
        "first event after {:?}, the last after {:?}",
        received.first_chunk_after,
        received.finished_after
    );
    let events = parse_events(&String::from_utf8(received.bytes).expect("UTF-8 events"));
    let audio: Vec<u8> = events
        .iter()
        .filter(|e| e["type"] == "speech.audio.delta")
        .flat_map(|e| {
            base64::engine::general_purpose::STANDARD
                .decode(e["audio"].as_str().expect("base64 audio"))
                .expect("valid base64")
        })
        .collect();
    let done = events.last().expect("events");
    assert_eq!(done["type"], "speech.audio.done");
    assert_eq!(done["usage"]["input_tokens"], 15);
    assert_eq!(done["usage"]["total_tokens"], 15);
    assert_eq!(audio, stored_audio(&app, id).await);

    // A cache hit answers as events too.
    let response = post_speech(&app, &body).await;
    assert_eq!(response.headers()["x-cache"], "hit");
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let again = parse_events(&response.text().await.expect("events"));
    assert_eq!(
        again.first().map(|e| e["type"].clone()),
        Some(json!("speech.audio.delta"))
    );
    assert_eq!(
        again.last().map(|e| e["type"].clone()),
        Some(json!("speech.audio.done"))
    );
    assert_eq!(fake.stats().synthesis_requests, 1);

    let refused = post_speech(
        &app,
        &json!({"model": "tts-1", "voice": "alloy", "input": "x", "stream_format": "chunks"}),
    )
    .await;
    assert_eq!(refused.status(), 400);
    let error: Value = refused.json().await.expect("JSON error");
    assert_eq!(error["error"]["param"], "stream_format", "{error}");
    fake.shutdown().await;
}

#[tokio::test]
async fn instructions_reach_the_provider_and_tell_the_cache_apart() {
    let fake = fake(|c| c.streaming.chunks = 0).await;
    let app = stack(&fake).await;
    let with = |instructions: &str| json!({"model": "gpt-4o-mini-tts", "voice": "en-gb/rachel", "input": "Say it like you mean it.", "instructions": instructions});

    let calm = post_speech(&app, &with("Speak calmly.")).await;
    let cheerful = post_speech(&app, &with("Speak cheerfully.")).await;
    let calm_again = post_speech(&app, &with("Speak calmly.")).await;
    let too_long = post_speech(&app, &with(&"x".repeat(4_097))).await;

    let calm_task = task_id(&calm);
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM tasks WHERE id = '{calm_task}' AND instructions = 'Speak calmly.'"
        ))
        .await,
        1,
        "the task keeps its instructions, for a worker that takes it over"
    );
    assert_eq!(calm.headers()["x-cache"], "miss");
    assert_eq!(cheerful.headers()["x-cache"], "miss");
    assert_eq!(calm_again.headers()["x-cache"], "hit");
    let sent: Vec<Value> = fake
        .stats()
        .recent
        .iter()
        .filter_map(|r| r.body.as_ref()?.get("instructions").cloned())
        .collect();
    assert_eq!(sent, [json!("Speak calmly."), json!("Speak cheerfully.")]);
    assert_eq!(too_long.status(), 400);
    let error: Value = too_long.json().await.expect("JSON error");
    assert_eq!(error["error"]["param"], "instructions", "{error}");
    fake.shutdown().await;
}

const OPENAI_STREAMING_SCRIPT: &str = r#"
import base64, json, sys, time
import openai

base_url, api_key = sys.argv[1:3]
client = openai.OpenAI(base_url=base_url + "/v1", api_key=api_key, max_retries=0)
started = time.monotonic()
first = None
audio = b""
with client.audio.speech.with_streaming_response.create(
    model="gpt-4o-mini-tts", voice="en-gb/rachel", input="The SDK streams this.",
    response_format="mp3", stream_format="audio", instructions="Speak slowly.",
) as response:
    task_id = response.headers["x-task-id"]
    for chunk in response.iter_bytes():
        if first is None:
            first = time.monotonic() - started
        audio += chunk
whole = time.monotonic() - started

events = []
with client.audio.speech.with_streaming_response.create(
    model="gpt-4o-mini-tts", voice="en-gb/rachel", input="The SDK reads events.",
    response_format="mp3", stream_format="sse",
) as response:
    assert response.headers["content-type"] == "text/event-stream", response.headers
    for line in response.iter_lines():
        if line.startswith("data: "):
            events.append(json.loads(line[len("data: "):]))
sse_audio = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
assert events[-1]["type"] == "speech.audio.done", events[-1]
print(json.dumps({"task_id": task_id, "first": first, "whole": whole, "bytes": len(audio),
                  "sse_bytes": len(sse_audio), "usage": events[-1]["usage"]}))
"#;

#[tokio::test]
async fn the_openai_python_package_streams_audio_and_reads_events() {
    let python = test_python();
    let fake = fake(|_| {}).await;
    let app = stack(&fake).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("stream.py");
    std::fs::write(&script, OPENAI_STREAMING_SCRIPT).expect("script written");

    let output = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(&app.base_url)
        .arg(&app.api_key)
        .output()
        .await
        .expect("python runs");

    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    let (first, whole) = (
        report["first"].as_f64().expect("first"),
        report["whole"].as_f64().expect("whole"),
    );
    assert!(
        first + 0.9 < whole,
        "first chunk after {first}s, whole after {whole}s"
    );
    let id: Uuid = report["task_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("a task id");
    assert_eq!(
        report["bytes"].as_u64(),
        Some(stored_audio(&app, id).await.len() as u64)
    );
    assert!(report["sse_bytes"].as_u64().is_some_and(|n| n > 1_000));
    assert_eq!(report["usage"]["input_tokens"], 21);
    assert_eq!(fake.stats().synthesis_requests, 2);
    fake.shutdown().await;
}

/// ElevenLabs streams from its `/stream` route through the whole stack: the
/// job API's high priority passes MP3 and PCM on as they come; WAV (which
/// the adapter wraps) is answered whole from the plain route.
#[tokio::test]
async fn elevenlabs_streams_from_its_stream_route_through_the_whole_stack() {
    let fake = fake(|c| c.keys.elevenlabs = Some(KEY.to_owned())).await;
    let base = fake.base_url();
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        env: vec![("TTSQ_PROVIDERS_ELEVEN_API_KEY".into(), KEY.into())],
        config_toml: Some(format!(
            r#"
[providers.eleven]
kind = "elevenlabs"
base_url = "{base}"
dialects = [{{ id = "en-gb", voices = ["rachel"] }}]

[[routes]]
dialects = ["en-gb"]
chain = ["eleven"]

[[routes]]
dialects = ["*"]
chain = ["espeak"]
"#
        )),
        ..TestOptions::default()
    })
    .await;

    for (format, text) in [
        ("mp3", "Eleven streams its MP3."),
        ("pcm", "Eleven streams raw PCM."),
    ] {
        let sent = Instant::now();
        let response = app
            .submit(&json!({"text": text, "dialect": "en-gb", "voice": "rachel", "priority": "high", "format": format}))
            .await;
        assert_eq!(response.status(), 200, "{format}");
        let id = task_id(&response);
        let received = receive(response, sent).await;
        assert!(!received.cut_off, "{format}");
        assert!(
            received.first_chunk_after + Duration::from_millis(900) < received.finished_after,
            "{format}: first byte after {:?}, the whole after {:?}",
            received.first_chunk_after,
            received.finished_after
        );
        assert_eq!(stored_audio(&app, id).await, received.bytes, "{format}");
        assert_eq!(ledger_rows(&app, id).await, 1, "{format}");
    }
    let sent = Instant::now();
    let response = app
        .submit(&json!({"text": "Eleven answers WAV whole.", "dialect": "en-gb", "voice": "rachel", "priority": "high", "format": "wav"}))
        .await;
    assert_eq!(response.status(), 200);
    let received = receive(response, sent).await;
    assert!(
        received.first_chunk_after + Duration::from_millis(500) > received.finished_after,
        "WAV is not streamed: first byte after {:?}, the whole after {:?}",
        received.first_chunk_after,
        received.finished_after
    );
    let stats = fake.stats();
    assert_eq!(
        stats
            .by_route
            .get("POST /v1/text-to-speech/{voice_id}/stream"),
        Some(&2),
        "{:?}",
        stats.by_route
    );
    assert_eq!(
        stats.by_route.get("POST /v1/text-to-speech/{voice_id}"),
        Some(&1),
        "{:?}",
        stats.by_route
    );
    assert_eq!(
        Scrape::of(&app)
            .await
            .value("tts_streamed_responses_total", &[("outcome", "complete")]),
        2.0
    );
    fake.shutdown().await;
}
