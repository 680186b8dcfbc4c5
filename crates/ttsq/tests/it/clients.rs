//! The clients end to end against a running stack: the Rust SDK
//! (`ttsq-client`), the `ttsq` command line, the OpenAI-compatible speech
//! endpoint (from Rust and from the official `openai` Python package), and
//! a schemathesis fuzz pass driven by the committed OpenAPI document.
//!
//! The Python checks need `TTSQ_TEST_PYTHON`: a python with `openai` and
//! `schemathesis`, which `deploy/local/test.sh` creates and exports.

use std::{
    collections::HashSet,
    io::Cursor,
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use serde_json::{Value, json};
use ttsq_client::{BatchItem, Client, ListOptions, NewBatch, NewJob, TaskStatus};
use ttsq_testkit::{TestApp, TestOptions};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

fn client(app: &TestApp) -> Client {
    Client::new(&app.base_url, &app.api_key).expect("a valid URL and key")
}

fn wav_seconds(bytes: &[u8]) -> f64 {
    let reader = hound::WavReader::new(Cursor::new(bytes)).expect("a valid WAV file");
    f64::from(reader.duration()) / f64::from(reader.spec().sample_rate)
}

async fn ledger_rows(app: &TestApp, task_id: Uuid, filter: &str) -> i64 {
    app.scalar(&format!(
        "SELECT count(*) FROM usage_ledger WHERE task_id = '{task_id}' {filter}"
    ))
    .await
}

#[tokio::test]
async fn the_client_submits_waits_downloads_lists_and_reads_the_catalog() {
    let app = TestApp::spawn().await;
    let client = client(&app);

    let dialects = client.dialects().await.expect("dialects");
    assert!(
        dialects
            .iter()
            .any(|d| d.id == "en-gb" && !d.voices.is_empty())
    );

    let job = NewJob {
        format: Some("wav".into()),
        ..NewJob::new("Hello from the Rust client.", "en-gb")
    };
    let accepted = client.submit(&job, None).await.expect("submitted");
    let task = client.wait(accepted.task_id, WAIT).await.expect("finished");
    assert_eq!(task.status, TaskStatus::Succeeded, "{task:?}");
    let audio = client.download(task.task_id).await.expect("downloaded");
    assert_eq!(Some(audio.len() as i64), task.audio_bytes);
    assert!(wav_seconds(&audio) > 0.5);

    let keyed = NewJob::new("Only once, please.", "en-us");
    let first = client
        .submit(&keyed, Some("client-key-1"))
        .await
        .expect("submitted");
    let again = client
        .submit(&keyed, Some("client-key-1"))
        .await
        .expect("resubmitted");
    assert_eq!(
        first.task_id, again.task_id,
        "an idempotency key names one task"
    );
    client.wait(first.task_id, WAIT).await.expect("finished");

    let batch = [
        ("batch-1".to_owned(), NewJob::new("One of two.", "en-gb")),
        ("batch-2".to_owned(), NewJob::new("Two of two.", "en-gb")),
    ];
    let submitted: Vec<Uuid> = client
        .submit_each(&batch, 2)
        .await
        .into_iter()
        .map(|r| r.expect("submitted").task_id)
        .collect();
    let resubmitted: Vec<Uuid> = client
        .submit_each(&batch, 2)
        .await
        .into_iter()
        .map(|r| r.expect("resubmitted").task_id)
        .collect();
    assert_eq!(submitted, resubmitted, "a batch resubmits safely");
    for id in &submitted {
        client.wait(*id, WAIT).await.expect("finished");
    }

    let speech = client
        .synthesize(&NewJob::new("Right away.", "en-us"))
        .await
        .expect("synthesized");
    assert_eq!(speech.content_type, "audio/mpeg");
    assert!(speech.audio.len() > 1000);

    let first_page = client
        .list(&ListOptions {
            limit: Some(2),
            ..ListOptions::default()
        })
        .await
        .expect("first page");
    assert_eq!(first_page.jobs.len(), 2);
    let cursor = first_page.next_cursor.clone().expect("a second page");
    let second_page = client
        .list(&ListOptions {
            limit: Some(2),
            cursor: Some(cursor),
            ..ListOptions::default()
        })
        .await
        .expect("second page");
    assert_eq!(second_page.jobs.len(), 2);
    let cursor = second_page.next_cursor.clone().expect("a third page");
    let third_page = client
        .list(&ListOptions {
            limit: Some(2),
            cursor: Some(cursor),
            ..ListOptions::default()
        })
        .await
        .expect("third page");
    assert_eq!(third_page.jobs.len(), 1);
    assert!(third_page.next_cursor.is_none());
    let listed: Vec<_> = first_page
        .jobs
        .iter()
        .chain(&second_page.jobs)
        .chain(&third_page.jobs)
        .collect();
    assert!(
        listed
            .windows(2)
            .all(|w| w[0].created_at >= w[1].created_at),
        "newest first"
    );
    let ids: HashSet<Uuid> = listed.iter().map(|t| t.task_id).collect();
    assert_eq!(
        ids,
        HashSet::from([
            task.task_id,
            first.task_id,
            submitted[0],
            submitted[1],
            speech.task_id
        ])
    );
    let queued = client
        .list(&ListOptions {
            status: Some(TaskStatus::Queued),
            ..ListOptions::default()
        })
        .await
        .expect("filtered list");
    assert!(queued.jobs.is_empty());

    let refused = client
        .submit(&NewJob::new("", "xx-nowhere"), None)
        .await
        .expect_err("an invalid job is refused");
    let problem = refused.problem().expect("a problem body");
    assert_eq!(problem.status, 400);
    assert_eq!(problem.kind, "urn:ttsq:problem:validation");
    let fields: Vec<_> = problem.errors.iter().map(|e| e.field.as_str()).collect();
    assert!(
        fields.contains(&"text") && fields.contains(&"dialect"),
        "{fields:?}"
    );
    let missing = client.get(Uuid::now_v7()).await.expect_err("no such task");
    assert_eq!(missing.status(), Some(404));
}

#[tokio::test]
async fn a_queued_task_is_cancelled_once_billed_nothing_and_skipped_by_the_worker() {
    let mut app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..TestOptions::default()
    })
    .await;
    let client = client(&app);
    let queued = client
        .submit(&NewJob::new("Never mind.", "en-gb"), None)
        .await
        .expect("submitted");
    assert_eq!(queued.status, TaskStatus::Queued);
    // Its message is on the queue before the cancel, as when a worker is
    // slow to take it.
    app.wait_published(1).await;

    let cancelled = client.cancel(queued.task_id).await.expect("cancelled");

    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    assert!(cancelled.finished_at.is_some());
    assert_eq!(
        ledger_rows(
            &app,
            queued.task_id,
            "AND billable_characters = 0 AND status = 'cancelled'"
        )
        .await,
        1,
        "a cancelled task has its one ledger row, with nothing billable"
    );
    let again = client
        .cancel(queued.task_id)
        .await
        .expect_err("already cancelled");
    assert_eq!(again.status(), Some(409));
    let stranger = Client::new(&app.base_url, &app.new_tenant("stranger").await).expect("client");
    let hidden = stranger
        .cancel(queued.task_id)
        .await
        .expect_err("not theirs");
    assert_eq!(hidden.status(), Some(404));
    let listed = client
        .list(&ListOptions {
            status: Some(TaskStatus::Cancelled),
            ..ListOptions::default()
        })
        .await
        .expect("list");
    assert_eq!(listed.jobs.len(), 1);

    // The cancelled task's message is still queued: the worker skips it
    // and acknowledges it.
    assert_eq!(app.services.broker.depths().await.expect("depths"), (1, 0));
    app.start_worker();
    let next = client
        .submit(&NewJob::new("After the cancel.", "en-gb"), None)
        .await
        .expect("submitted");
    let done = client.wait(next.task_id, WAIT).await.expect("finished");
    assert_eq!(done.status, TaskStatus::Succeeded);
    app.drain(WAIT).await;
    let still = client.get(queued.task_id).await.expect("task");
    assert_eq!((still.status, still.attempts), (TaskStatus::Cancelled, 0));
    assert_eq!(ledger_rows(&app, queued.task_id, "").await, 1);
    app.stop_workers().await;
    assert_eq!(
        app.services.broker.depths().await.expect("depths"),
        (0, 0),
        "nothing left to redeliver, nothing dead-lettered"
    );
    let late = client
        .cancel(next.task_id)
        .await
        .expect_err("already finished");
    assert_eq!(late.status(), Some(409));
    assert_eq!(
        late.problem().map(|p| p.kind.as_str()),
        Some("urn:ttsq:problem:conflict")
    );
}

async fn speech(app: &TestApp, key: &str, body: &Value) -> reqwest::Response {
    app.http
        .post(format!("{}/v1/audio/speech", app.base_url))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("request sent")
}

#[tokio::test]
async fn openai_speech_answers_audio_at_high_priority_and_errors_in_openai_shape() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..TestOptions::default()
    })
    .await;
    let body = json!({"model": "tts-1", "input": "Hello there.", "voice": "fable", "response_format": "wav"});

    let response = speech(&app, &app.api_key, &body).await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "audio/wav");
    assert_eq!(response.headers()["x-cache"], "miss");
    let task_id: Uuid = response.headers()["x-task-id"]
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("a task id");
    assert!(wav_seconds(&response.bytes().await.expect("audio")) > 0.3);
    let task = client(&app)
        .get(task_id)
        .await
        .expect("the task is recorded");
    assert_eq!(
        (task.priority.as_str(), task.dialect.as_str(), task.status),
        ("high", "en-gb", TaskStatus::Succeeded),
        "fable maps to en-gb by default"
    );
    assert_eq!(
        ledger_rows(
            &app,
            task_id,
            "AND billable_characters = characters AND NOT cache_hit"
        )
        .await,
        1
    );
    let repeat = speech(&app, &app.api_key, &body).await;
    assert_eq!(
        repeat.headers()["x-cache"],
        "hit",
        "same cache as the job API"
    );

    let cases = [
        (
            json!({"model": "tts-1", "input": "x", "voice": "alloy", "response_format": "aac"}),
            "response_format",
            "unsupported_value",
        ),
        (
            json!({"model": "tts-1", "input": "x", "voice": "alloy", "response_format": "ogg"}),
            "response_format",
            "unsupported_value",
        ),
        (
            json!({"model": "tts-1", "voice": "alloy"}),
            "input",
            "missing_required_parameter",
        ),
        (
            json!({"input": "x", "voice": "alloy"}),
            "model",
            "missing_required_parameter",
        ),
        (
            json!({"model": "tts-1", "input": "x"}),
            "voice",
            "missing_required_parameter",
        ),
        (
            json!({"model": "tts-1", "input": "x", "voice": "alloy", "speed": 9}),
            "speed",
            "invalid_value",
        ),
        (
            json!({"model": "tts-1", "input": "   ", "voice": "alloy"}),
            "input",
            "invalid_value",
        ),
        (
            json!({"model": "tts-1", "input": 5, "voice": "alloy"}),
            "input",
            "invalid_value",
        ),
    ];
    for (body, param, code) in cases {
        let response = speech(&app, &app.api_key, &body).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.expect("JSON error");
        assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
        assert_eq!(error["error"]["param"], param, "{error}");
        assert_eq!(error["error"]["code"], code, "{error}");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let unauthorized = speech(&app, "not-a-key", &body).await;
    assert_eq!(unauthorized.status(), 401);
    let error: Value = unauthorized.json().await.expect("JSON error");
    assert_eq!(error["error"]["code"], "invalid_api_key", "{error}");
}

#[tokio::test]
async fn openai_speech_over_a_tenant_limit_is_429_with_retry_after_in_openai_shape() {
    use secrecy::ExposeSecret;
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..TestOptions::default()
    })
    .await;
    let (_, key) = app
        .services
        .store
        .create_tenant_with(
            "small",
            &ttsq_store::TenantLimits {
                daily_characters: Some(5),
                ..ttsq_store::TenantLimits::default()
            },
            None,
            "test",
        )
        .await
        .expect("tenant created");
    let body = json!({"model": "tts-1", "input": "Hello there.", "voice": "alloy"});

    let response = speech(&app, key.key.expose_secret(), &body).await;

    assert_eq!(response.status(), 429);
    let retry: u64 = response
        .headers()
        .get("retry-after")
        .expect("Retry-After on a limit's 429")
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("Retry-After in seconds");
    assert!(
        (1..=86_400).contains(&retry),
        "until the UTC day ends: {retry}"
    );
    let error: Value = response.json().await.expect("JSON error");
    assert_eq!(error["error"]["type"], "rate_limit_error", "{error}");
    assert_eq!(error["error"]["code"], "rate_limit_exceeded", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("daily_characters")),
        "{error}"
    );
    assert_eq!(app.scalar("SELECT count(*) FROM tasks").await, 0);
    assert_eq!(
        app.scalar("SELECT count(*) FROM audit_log WHERE action = 'task.refuse' AND detail->>'reason' = 'limit_exceeded'")
            .await,
        1,
        "refused like the job API: audited"
    );
}

#[tokio::test]
async fn openai_speech_applies_the_content_filter_without_echoing_the_text() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        env: vec![(
            "TTSQ_LIMITS_BLOCKED_PATTERNS".to_owned(),
            "(?i)forbidden\\s+phrase".to_owned(),
        )],
        ..TestOptions::default()
    })
    .await;
    let blocked =
        json!({"model": "tts-1", "input": "Say the Forbidden   Phrase aloud", "voice": "alloy"});

    let response = speech(&app, &app.api_key, &blocked).await;

    assert_eq!(response.status(), 400);
    let text = response.text().await.expect("body");
    let error: Value = serde_json::from_str(&text).expect("JSON error");
    assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
    assert_eq!(error["error"]["code"], "content_rejected", "{error}");
    assert_eq!(error["error"]["param"], "input", "{error}");
    assert!(!text.to_lowercase().contains("forbidden"), "{text}");
    assert_eq!(app.scalar("SELECT count(*) FROM tasks").await, 0);
    assert_eq!(
        app.scalar("SELECT count(*) FROM audit_log WHERE action = 'task.refuse' AND detail->>'reason' = 'content_rejected'")
            .await,
        1
    );
    let fine = json!({"model": "tts-1", "input": "A perfectly fine phrase", "voice": "alloy"});
    assert_eq!(speech(&app, &app.api_key, &fine).await.status(), 200);
}

/// The `ttsq` binary pointed at `app`, with nothing else of the test's environment.
fn ttsq(app: &TestApp) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ttsq"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TTSQ_URL", &app.base_url)
        .env("TTSQ_API_KEY", &app.api_key);
    command
}

async fn run(command: &mut tokio::process::Command) -> Output {
    tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the command finished within 2 minutes")
        .expect("the command ran")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn ttsq_say_writes_the_audio_at_normal_and_high_priority() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let normal = dir.path().join("hello.wav");
    let high = dir.path().join("now.mp3");

    let said = run(ttsq(&app)
        .args([
            "say",
            "Hello from the command line.",
            "--dialect",
            "en-gb",
            "-o",
        ])
        .arg(&normal))
    .await;
    let urgent = run(ttsq(&app)
        .args([
            "say",
            "Right now.",
            "--dialect",
            "en-us",
            "--priority",
            "high",
            "-o",
        ])
        .arg(&high))
    .await;
    let refused = run(ttsq(&app)
        .args(["say", "Where?", "--dialect", "xx-nowhere", "-o"])
        .arg(dir.path().join("never.mp3")))
    .await;

    assert!(said.status.success(), "{}", stderr(&said));
    let wav = std::fs::read(&normal).expect("hello.wav written");
    assert!(
        wav_seconds(&wav) > 0.5,
        "the format follows the file's extension"
    );
    assert!(urgent.status.success(), "{}", stderr(&urgent));
    assert!(std::fs::metadata(&high).expect("now.mp3 written").len() > 1000);
    assert_eq!(
        app.scalar("SELECT count(*) FROM tasks WHERE priority = 'high'")
            .await,
        1
    );
    assert_eq!(refused.status.code(), Some(1));
    let message = stderr(&refused);
    assert_eq!(
        message.trim_end().lines().count(),
        1,
        "one clear line: {message}"
    );
    assert!(
        message.starts_with("error: 400 Bad Request") && message.contains("dialect"),
        "{message}"
    );
}

#[tokio::test]
async fn ttsq_jobs_and_dialects_print_tables_or_json() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..TestOptions::default()
    })
    .await;
    let queued = client(&app)
        .submit(&NewJob::new("Waiting in line.", "en-gb"), None)
        .await
        .expect("submitted");
    let id = queued.task_id.to_string();

    let table = run(ttsq(&app).args(["jobs", "list"])).await;
    let cancelled = run(ttsq(&app).args(["jobs", "cancel", &id, "--output", "json"])).await;
    let shown = run(ttsq(&app).args(["jobs", "get", &id])).await;
    let again = run(ttsq(&app).args(["jobs", "cancel", &id])).await;
    let dialects = run(ttsq(&app).args(["dialects", "--output", "json"])).await;
    let keyless = run(ttsq(&app).env_remove("TTSQ_API_KEY").arg("dialects")).await;

    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(
        table.starts_with("TASK") && table.contains(&id) && table.contains("queued"),
        "{table}"
    );
    let task: Value = serde_json::from_slice(&cancelled.stdout).expect("JSON task");
    assert_eq!(
        (task["task_id"].as_str(), task["status"].as_str()),
        (Some(id.as_str()), Some("cancelled"))
    );
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("status:") && l.ends_with("cancelled")),
        "{shown}"
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).starts_with("error: 409 Conflict"),
        "{}",
        stderr(&again)
    );
    let dialects: Value = serde_json::from_slice(&dialects.stdout).expect("JSON dialects");
    assert!(
        dialects
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d["id"] == "en-gb"))
    );
    assert_eq!(keyless.status.code(), Some(2), "a usage error");
    assert!(
        stderr(&keyless).contains("set TTSQ_API_KEY"),
        "{}",
        stderr(&keyless)
    );
}

fn results(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("results.jsonl"))
        .expect("results.jsonl written")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[tokio::test]
async fn ttsq_batch_downloads_records_resumes_and_fails_loudly() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("jobs.jsonl");
    let out = dir.path().join("out");
    let lines = |third_dialect: &str| {
        format!(
            "{}\n{}\n\n{}\n",
            json!({"id": "a", "text": "First line.", "dialect": "en-gb", "format": "wav"}),
            json!({"id": "b", "text": "Second line.", "dialect": "en-us"}),
            json!({"id": 3, "text": "Third line.", "dialect": third_dialect}),
        )
    };
    std::fs::write(&input, lines("xx-nowhere")).expect("input written");
    let batch = |app: &TestApp| {
        let mut command = ttsq(app);
        command.arg("batch").arg(&input).arg("--out").arg(&out);
        command
    };

    // A first run with one bad line: the rest is done, the exit is non-zero.
    let first = run(&mut batch(&app)).await;
    assert_eq!(first.status.code(), Some(1), "{}", stderr(&first));
    assert!(wav_seconds(&std::fs::read(out.join("a.wav")).expect("a.wav")) > 0.3);
    assert!(std::fs::metadata(out.join("b.mp3")).expect("b.mp3").len() > 1000);
    let recorded = results(&out);
    assert_eq!(recorded.len(), 3);
    let of = |id: &str| {
        recorded
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("a result for {id}"))
            .clone()
    };
    assert_eq!(of("a")["status"], "succeeded");
    assert_eq!(of("b")["file"], "b.mp3");
    assert_eq!(of("3")["status"], "error");
    assert!(
        of("3")["error"]
            .as_str()
            .is_some_and(|e| e.contains("dialect"))
    );
    assert_eq!(app.scalar("SELECT count(*) FROM tasks").await, 2);
    assert_eq!(
        app.scalar("SELECT count(*) FROM batches").await,
        1,
        "the lines went as one batch, the refused line left out"
    );

    // A rerun resumes: finished lines are neither resubmitted nor redone.
    let second = run(&mut batch(&app)).await;
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains("2 of 3 jobs already finished"),
        "{}",
        stderr(&second)
    );
    let recorded = results(&out);
    assert_eq!(recorded.len(), 4, "only the failed line ran again");
    assert_eq!(recorded[3]["id"], "3");

    // Fixed, the last line runs and the batch succeeds.
    std::fs::write(&input, lines("en-gb")).expect("input rewritten");
    let third = run(&mut batch(&app)).await;
    assert!(third.status.success(), "{}", stderr(&third));
    assert!(out.join("3.mp3").is_file());
    assert_eq!(app.scalar("SELECT count(*) FROM tasks").await, 3);
}

/// The python of `TTSQ_TEST_PYTHON`; without it the test fails, saying how
/// to get one, rather than passing without checking anything.
pub(crate) fn test_python() -> PathBuf {
    let python = std::env::var_os("TTSQ_TEST_PYTHON")
        .map(PathBuf::from)
        .expect(
            "TTSQ_TEST_PYTHON is not set: run the tests through deploy/local/test.sh, which \
         creates .ttsq/pytools (openai, schemathesis, standardwebhooks, httpx, pytest and the \
         Python SDK) and exports it",
        );
    assert!(
        python.is_file(),
        "TTSQ_TEST_PYTHON={} does not exist",
        python.display()
    );
    python
}

const OPENAI_SCRIPT: &str = r#"
import io
import sys
import wave
import openai

base_url, api_key, out = sys.argv[1:4]
client = openai.OpenAI(base_url=base_url + "/v1", api_key=api_key, max_retries=0)
text = "Hello from the OpenAI SDK."
with client.audio.speech.with_streaming_response.create(
    model="tts-1", voice="alloy", input=text, response_format="wav"
) as response:
    response.stream_to_file(out)


def speak(**kwargs):
    answer = client.audio.speech.create(model="tts-1", voice="alloy", input=text, **kwargs)
    return answer.response.headers["content-type"], answer.content


def refused(param, **kwargs):
    try:
        client.audio.speech.create(model="tts-1", voice="alloy", input="x", **kwargs)
    except openai.BadRequestError as err:
        assert err.status_code == 400, err.status_code
        assert err.param == param, (param, err.param)
        assert err.code == "unsupported_value" or param != "response_format", err.code
        return err
    sys.exit(f"{kwargs} was accepted")


# pcm is OpenAI's: 16-bit mono at 24 kHz, whatever the voice's own rate.
with wave.open(out, "rb") as w:
    wav_seconds = w.getnframes() / w.getframerate()
    assert w.getframerate() != 24000, "the WAV is at the voice's own rate"
kind, pcm = speak(response_format="pcm")
assert kind == "audio/pcm", kind
pcm_seconds = len(pcm) / 2 / 24000
assert abs(pcm_seconds - wav_seconds) < 0.01, (pcm_seconds, wav_seconds)

kind, flac = speak(response_format="flac")
assert kind == "audio/flac" and flac[:4] == b"fLaC", (kind, flac[:4])
kind, opus = speak(response_format="opus")
assert kind == "audio/ogg" and opus[:4] == b"OggS" and opus[28:36] == b"OpusHead", (kind, opus[:36])
kind, mp3 = speak(response_format="mp3")
assert kind == "audio/mpeg", kind
err = refused("response_format", response_format="aac")
assert "aac" in err.message and "licen" in err.message, err.message
refused("response_format", response_format="ogg_vorbis")

# speed is OpenAI's 0.25 to 4.0, beyond espeak-ng's own rates.
kind, fast = speak(response_format="pcm", speed=3.5)
assert 0 < len(fast) < len(pcm) / 2.5, (len(fast), len(pcm))
kind, slow = speak(response_format="pcm", speed=0.25)
assert len(slow) > len(pcm) * 3, (len(slow), len(pcm))
refused("speed", speed=4.5)
refused("speed", speed=0.2)

try:
    openai.OpenAI(base_url=base_url + "/v1", api_key="wrong", max_retries=0).audio.speech.create(
        model="tts-1", voice="alloy", input="x"
    )
    sys.exit("a wrong key was accepted")
except openai.AuthenticationError as err:
    assert err.status_code == 401, err.status_code
print("ok")
"#;

#[tokio::test]
async fn the_official_openai_python_package_speaks_through_ttsq() {
    let python = test_python();
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..TestOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("speak.py");
    std::fs::write(&script, OPENAI_SCRIPT).expect("script written");
    let out = dir.path().join("openai.wav");

    let output = run(tokio::process::Command::new(&python)
        .arg(&script)
        .arg(&app.base_url)
        .arg(&app.api_key)
        .arg(&out))
    .await;

    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        stderr(&output)
    );
    let audio = std::fs::read(&out).expect("the SDK wrote the audio");
    assert!(wav_seconds(&audio) > 0.5);
    assert_eq!(
        app.scalar("SELECT count(*) FROM tasks WHERE priority = 'high' AND status = 'succeeded'")
            .await,
        7
    );
}

#[tokio::test]
async fn a_schemathesis_fuzz_pass_over_the_openapi_document_finds_no_server_error() {
    let python = test_python();
    let schemathesis = python.with_file_name("schemathesis");
    // The admin API is on, so its routes are fuzzed past authentication too.
    let admin_token = format!("admin-{}", Uuid::new_v4().simple());
    let app = TestApp::spawn_with(TestOptions {
        env: vec![("TTSQ_ADMIN_TOKEN".to_owned(), admin_token.clone())],
        ..TestOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    // Each security scheme of the document gets its own credential.
    std::fs::write(
        dir.path().join("schemathesis.toml"),
        format!(
            "[auth.openapi.bearer]\nbearer = \"{}\"\n\n[auth.openapi.admin_token]\nbearer = \"{admin_token}\"\n",
            app.api_key
        ),
    )
    .expect("config written");

    let output = tokio::time::timeout(
        Duration::from_secs(540),
        tokio::process::Command::new(&schemathesis)
            .current_dir(dir.path())
            .arg("run")
            .arg(format!("{}/openapi.json", app.base_url))
            .args(["--checks", "not_a_server_error"])
            .args([
                "--max-examples",
                "50",
                "--seed",
                "1",
                "--workers",
                "1",
                "--no-shrink",
            ])
            .args(["--phases", "examples,coverage,fuzzing"])
            // No --max-time: with it, fuzzing repeats until the time is spent.
            .args(["--request-timeout", "60"])
            .env("NO_COLOR", "1")
            .output(),
    )
    .await
    .expect("schemathesis finished within 9 minutes")
    .expect("schemathesis ran");

    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found server errors:\n{report}\n{}",
        stderr(&output)
    );
    if let Some(cases) = report.lines().find(|l| l.contains("generated")) {
        eprintln!("schemathesis: {}", cases.trim());
    }
    // "Selected: 20/20" and "Tested: 20": every operation was exercised.
    let figure = |label: &str| {
        report
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|v| v.trim().rsplit('/').next().unwrap_or_default().to_owned())
    };
    let total = figure("Selected:");
    assert!(
        total.is_some() && total == figure("Tested:"),
        "every operation was exercised:\n{report}"
    );
    // The fuzzer got past the admin token: it created tenants.
    assert!(
        app.scalar("SELECT count(*) FROM audit_log WHERE actor = 'admin-api'")
            .await
            > 0,
        "the admin API was fuzzed with its token:\n{report}"
    );
}

#[tokio::test]
async fn the_client_reads_its_tenants_own_usage() {
    let app = TestApp::spawn().await;
    let client = client(&app);
    let job = NewJob {
        format: Some("wav".into()),
        ..NewJob::new("Usage, as the client sees it.", "en-gb")
    };
    let accepted = client.submit(&job, None).await.expect("submitted");
    let task = client.wait(accepted.task_id, WAIT).await.expect("finished");
    assert_eq!(task.status, TaskStatus::Succeeded, "{task:?}");

    let usage = client.usage(None, None).await.expect("usage");
    let billable: i64 = usage
        .days
        .iter()
        .map(|day| day["billable_characters"].as_i64().expect("a count"))
        .sum();
    assert_eq!(
        billable,
        app.scalar("SELECT sum(billable_characters)::bigint FROM usage_ledger")
            .await
    );
    assert!(billable > 0);
    let stranger = Client::new(&app.base_url, &app.new_tenant("stranger").await).expect("client");
    assert!(
        stranger
            .usage(None, None)
            .await
            .expect("usage")
            .days
            .is_empty(),
        "another tenant sees none of it"
    );
}

#[tokio::test]
async fn the_client_runs_jobs_as_batches_and_running_them_again_makes_nothing_new() {
    let app = TestApp::spawn().await;
    let client = client(&app);
    let items: Vec<BatchItem> = ["First.", "Second.", "Third."]
        .iter()
        .enumerate()
        .map(|(n, text)| BatchItem::new(format!("item-{n}"), NewJob::new(*text, "en-gb")))
        .collect();

    let done = client.run_batch(&items, WAIT).await.expect("ran");
    let again = client.run_batch(&items, WAIT).await.expect("ran again");
    let refused = client
        .submit_batch(
            &NewBatch::new(vec![
                BatchItem::new("fine", NewJob::new("Fine.", "en-gb")),
                BatchItem::new("lost", NewJob::new("Lost.", "xx-nowhere")),
            ]),
            None,
        )
        .await
        .expect_err("an invalid item refuses the batch");

    assert_eq!(done.len(), 3);
    assert!(
        done.iter().all(|i| i.status == TaskStatus::Succeeded),
        "{done:?}"
    );
    assert_eq!(
        done.iter()
            .map(|i| i.custom_id.clone().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["item-0", "item-1", "item-2"]
    );
    assert_eq!(
        done.iter().map(|i| i.task_id).collect::<Vec<_>>(),
        again.iter().map(|i| i.task_id).collect::<Vec<_>>(),
        "the same jobs name the same batch"
    );
    assert_eq!(app.scalar("SELECT count(*) FROM batches").await, 1);
    let audio = client.download(done[0].task_id).await.expect("audio");
    assert!(audio.len() > 1000);
    let problem = refused.problem().expect("a problem");
    assert_eq!(problem.status, 400);
    let items = problem.item_errors();
    assert_eq!(items.keys().copied().collect::<Vec<_>>(), [1]);
    assert_eq!(items[&1][0].field, "dialect");
}

#[tokio::test]
async fn the_client_reads_a_tasks_speech_marks() {
    let app = TestApp::spawn().await;
    let client = client(&app);
    let job = NewJob {
        marks: Some(vec!["word".to_owned()]),
        ..NewJob::new("Marks from the client.", "en-us")
    };
    let accepted = client.submit(&job, None).await.expect("submitted");
    let task = client.wait(accepted.task_id, WAIT).await.expect("finished");
    let plain = client
        .submit(&NewJob::new("No marks here.", "en-us"), None)
        .await
        .expect("submitted");
    client.wait(plain.task_id, WAIT).await.expect("finished");

    let marks = client.marks(task.task_id).await.expect("marks");
    let none = client
        .marks(plain.task_id)
        .await
        .expect_err("no marks asked");

    assert!(task.marks_url.is_some(), "{task:?}");
    let words: Vec<&str> = marks
        .iter()
        .filter(|m| m.kind == "word")
        .map(|m| m.value.as_str())
        .collect();
    assert_eq!(words.first(), Some(&"Marks"), "{marks:?}");
    assert!(
        marks.windows(2).all(|w| w[0].start_ms <= w[1].start_ms),
        "{marks:?}"
    );
    assert_eq!(none.status(), Some(404));
}
