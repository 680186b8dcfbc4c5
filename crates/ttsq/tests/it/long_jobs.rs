//! Long jobs end to end (issue 21) on real Postgres, RabbitMQ and S3: a
//! text longer than one provider request is split into chunks, each an
//! ordinary content-hashed task, synthesized across workers and joined into
//! one object; one task for polling, billing and cancelling.

use std::{io::Cursor, process::Child, time::Duration};

use serde_json::{Value, json};
use ttsq_fake_provider::{FakeConfig, FakeProvider};
use ttsq_testkit::{FakeRoutes, TestApp, TestOptions, signal_and_wait};
use uuid::Uuid;

const KEY: &str = "sk-fake-long-jobs";

/// Most characters the fake takes in one request in these tests: each
/// paragraph of [`chapter`] fits, two do not.
const REQUEST_CHARS: usize = 300;

/// Audio per character the fake answers with: a 250-character paragraph is
/// 2.5 s, under the fake's 10 s cap.
const MS_PER_CHAR: u32 = 10;

/// A paragraph of about 200–260 characters, different for every `i` and
/// `variant`.
fn paragraph(i: usize, variant: &str) -> String {
    format!(
        "Paragraph {i} {variant}begins here, and Dr. Watson measures 3.14 metres of rope. \
         It goes on for a while, so that the paragraph is long enough to count. \
         Then paragraph number {i} ends with a question: is it done yet?"
    )
}

/// `count` paragraphs, blank lines between them; `edit` gives paragraph
/// `edit.0` the variant `edit.1`.
fn chapter(count: usize, edit: Option<(usize, &str)>) -> String {
    (0..count)
        .map(|i| match edit {
            Some((at, variant)) if at == i => paragraph(i, variant),
            _ => paragraph(i, ""),
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

async fn fake(change: impl FnOnce(&mut FakeConfig)) -> FakeProvider {
    let mut config = FakeConfig {
        ms_per_char: MS_PER_CHAR,
        ..FakeConfig::default()
    };
    config.keys.openai = Some(KEY.to_owned());
    change(&mut config);
    FakeProvider::start(config).await.expect("fake starts")
}

fn options(fake: &FakeProvider, worker: bool) -> TestOptions {
    TestOptions {
        worker,
        env: vec![("TTSQ_PROVIDERS_FAKE_API_KEY".into(), KEY.into())],
        config_toml: Some(
            FakeRoutes::new(fake.base_url())
                .with(r#"model = "tts-1""#)
                .with(&format!("max_text_chars = {REQUEST_CHARS}"))
                .with("price_per_1k_chars = 10.0")
                .with("quota = { max_concurrent = 16 }")
                .toml(),
        ),
        ..TestOptions::default()
    }
}

fn long_job(text: &str, format: &str) -> Value {
    json!({"text": text, "dialect": "en-gb", "voice": "rachel", "format": format})
}

async fn task(app: &TestApp, id: Uuid) -> (u16, Value) {
    let response = app
        .get_as(&app.api_key, &format!("/v1/tts/jobs/{id}"))
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The chunks of long job `id`: (task id, characters, status, cache hit),
/// in order.
async fn chunks(app: &TestApp, id: Uuid) -> Vec<(Uuid, i32, String, bool)> {
    ttsq_store::sqlx::query_as(
        "SELECT id, characters, status, cache_hit FROM tasks WHERE parent_id = $1 ORDER BY chunk_index",
    )
    .bind(id)
    .fetch_all(app.services.store.pool())
    .await
    .expect("chunks")
}

async fn ledger_billable(app: &TestApp, sql_filter: &str) -> i64 {
    app.scalar(&format!(
        "SELECT coalesce(sum(billable_characters), 0)::bigint FROM usage_ledger WHERE {sql_filter}"
    ))
    .await
}

async fn inline_audio(app: &TestApp, id: Uuid) -> Vec<u8> {
    let response = app
        .get_as(&app.api_key, &format!("/v1/tts/jobs/{id}/audio?inline=1"))
        .await;
    assert_eq!(response.status(), 200);
    response.bytes().await.expect("audio").to_vec()
}

/// Playing time of the stored audio of long job `id`'s chunks, together
/// (the fake rounds each answer to 100 ms).
async fn chunks_ms(app: &TestApp, id: Uuid) -> f64 {
    app.scalar(&format!(
        "SELECT coalesce(sum(a.duration_ms), 0)::bigint FROM tasks t
           JOIN audio_objects a ON a.hash = t.audio_hash WHERE t.parent_id = '{id}'"
    ))
    .await as f64
}

fn wav_ms(bytes: &[u8]) -> f64 {
    let reader = hound::WavReader::new(Cursor::new(bytes)).expect("a valid WAV file");
    f64::from(reader.duration()) * 1000.0 / f64::from(reader.spec().sample_rate)
}

#[tokio::test]
async fn a_long_job_is_split_synthesized_joined_and_billed_as_one_task() {
    let fake = fake(|_| {}).await;
    let app = TestApp::spawn_with(options(&fake, true)).await;
    let text = chapter(6, None);

    let id = app.submit_ok(&long_job(&text, "wav")).await;
    let done = app.wait_for(id).await;

    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["chunks_total"], 6, "one chunk per paragraph: {done}");
    assert_eq!(done["chunks_done"], 6, "{done}");
    let parts = chunks(&app, id).await;
    assert_eq!(parts.len(), 6);
    let chunk_chars: i64 = parts.iter().map(|c| i64::from(c.1)).sum();
    assert!(parts.iter().all(|c| c.1 as usize <= REQUEST_CHARS));

    // One provider call per chunk, the chunks' characters only.
    let stats = fake.stats();
    assert_eq!(stats.synthesis_requests, 6);
    assert_eq!(stats.characters_synthesized, chunk_chars as u64);

    // One object: the chunks' audio in order, as long as all of them.
    let audio = inline_audio(&app, id).await;
    let expected_ms = chunks_ms(&app, id).await;
    assert!(
        expected_ms >= chunk_chars as f64 * f64::from(MS_PER_CHAR) - 300.0
            && (wav_ms(&audio) - expected_ms).abs() < 6.0,
        "{} ms joined, {expected_ms} ms synthesized",
        wav_ms(&audio)
    );
    assert_eq!(done["audio_bytes"], audio.len());

    // Billed: the characters synthesized, through the chunks' rows that
    // name the long job; the job's own row counts it once, billing nothing.
    assert_eq!(
        ledger_billable(&app, &format!("long_task_id = '{id}'")).await,
        chunk_chars
    );
    assert_eq!(ledger_billable(&app, &format!("task_id = '{id}'")).await, 0);
    let usage: Value = app
        .get_as(&app.api_key, "/v1/usage")
        .await
        .json()
        .await
        .expect("usage JSON");
    let days = usage["days"].as_array().expect("usage rows");
    let tasks: i64 = days.iter().map(|d| d["tasks"].as_i64().unwrap_or(0)).sum();
    let billable: i64 = days
        .iter()
        .map(|d| d["billable_characters"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(tasks, 1, "one long job is one task: {usage}");
    assert_eq!(billable, chunk_chars, "{usage}");

    // The chunks are the service's, not the tenant's.
    let (status, _) = task(&app, parts[0].0).await;
    assert_eq!(status, 404);
    let listed: Value = app
        .get_as(&app.api_key, "/v1/tts/jobs")
        .await
        .json()
        .await
        .expect("listing");
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(1), "{listed}");
}

#[tokio::test]
async fn an_edited_paragraph_is_the_only_chunk_synthesized_again() {
    let fake = fake(|_| {}).await;
    let app = TestApp::spawn_with(options(&fake, true)).await;
    let first = app.submit_ok(&long_job(&chapter(5, None), "mp3")).await;
    assert_eq!(app.wait_for(first).await["status"], "succeeded");
    assert_eq!(fake.stats().synthesis_requests, 5);

    // The same chapter again: its joined audio is stored, nothing is called.
    let again = app.submit_ok(&long_job(&chapter(5, None), "mp3")).await;
    let again = app.wait_for(again).await;
    assert_eq!(again["status"], "succeeded");
    assert_eq!(again["cache_hit"], true, "{again}");
    assert_eq!(fake.stats().synthesis_requests, 5);

    // Paragraph 2 edited: one call, and only its characters billed.
    let edited_text = chapter(5, Some((2, "(edited) ")));
    let edited = app.submit_ok(&long_job(&edited_text, "mp3")).await;
    let edited_task = app.wait_for(edited).await;
    assert_eq!(edited_task["status"], "succeeded", "{edited_task}");
    assert_eq!(fake.stats().synthesis_requests, 6, "one chunk synthesized");
    let parts = chunks(&app, edited).await;
    let fresh: Vec<_> = parts.iter().filter(|c| !c.3).collect();
    assert_eq!(fresh.len(), 1, "{parts:?}");
    assert_eq!(
        ledger_billable(&app, &format!("long_task_id = '{edited}'")).await,
        i64::from(fresh[0].1)
    );
    assert_ne!(edited_task["audio_sha256"], again["audio_sha256"]);

    // A short job with the text of one paragraph shares its chunk's audio.
    let short = app
        .submit_ok(&json!({"text": paragraph(4, ""), "dialect": "en-gb", "voice": "rachel", "format": "mp3"}))
        .await;
    let short = app.wait_for(short).await;
    assert_eq!(short["cache_hit"], true, "{short}");
    assert_eq!(fake.stats().synthesis_requests, 6);
}

#[tokio::test]
async fn speech_marks_run_on_across_chunks() {
    // espeak, which times words, cut into requests of at most 200 characters.
    let app = TestApp::spawn_with(TestOptions {
        env: vec![("TTSQ_PROVIDERS_ESPEAK_MAX_TEXT_CHARS".into(), "200".into())],
        ..TestOptions::default()
    })
    .await;
    let text = chapter(3, None);
    let id = app
        .submit_ok(&json!({"text": text, "dialect": "en-us", "format": "wav", "marks": ["word", "sentence"]}))
        .await;
    let done = app.wait_for(id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let total = done["chunks_total"].as_u64().expect("chunks_total");
    assert!(total >= 3, "{done}");

    let marks: Value = app
        .get_as(&app.api_key, &format!("/v1/tts/jobs/{id}/marks"))
        .await
        .json()
        .await
        .expect("marks JSON");
    let marks = marks.as_array().expect("an array of marks");
    let normalized: Vec<char> = ttsq_core::normalize_text(&text).chars().collect();
    let words: Vec<&Value> = marks.iter().filter(|m| m["type"] == "word").collect();
    assert!(words.len() > 60, "{} word marks", words.len());
    let mut last_start = -1;
    let mut last_offset = -1;
    let mut previous = &Value::Null;
    for word in &words {
        let start_ms = word["start_ms"].as_i64().expect("start_ms");
        let start = word["start"].as_i64().expect("start");
        let end = word["end"].as_i64().expect("end");
        assert!(
            start_ms >= last_start,
            "times run on: {previous} then {word}"
        );
        assert!(
            start >= last_offset,
            "offsets run on: {previous} then {word}"
        );
        let spoken: String = normalized[start as usize..end as usize].iter().collect();
        assert_eq!(
            spoken,
            word["value"].as_str().expect("value"),
            "offsets point into the whole text"
        );
        last_start = start_ms;
        last_offset = start;
        previous = word;
    }
    // The last word is heard within the joined audio.
    let audio_ms = wav_ms(&inline_audio(&app, id).await);
    assert!((last_start as f64) < audio_ms);
    assert!(
        last_start as f64 > audio_ms * 0.8,
        "the last word at {last_start} ms of {audio_ms} ms: later chunks' marks are shifted"
    );
    let sentences = marks.iter().filter(|m| m["type"] == "sentence").count();
    assert!(sentences >= 9, "{sentences} sentence marks");
}

#[tokio::test]
async fn a_chunk_that_fails_fails_the_long_job_and_only_synthesized_chunks_are_billed() {
    // The vendor refuses the fourth paragraph; the others are synthesized
    // (the worker runs them concurrently), none after the failure is.
    let fake = fake(|c| c.refuse_texts_containing = vec!["Paragraph 3 ".into()]).await;
    let app = TestApp::spawn_with(options(&fake, true)).await;
    let id = app.submit_ok(&long_job(&chapter(6, None), "wav")).await;
    let done = app.wait_for(id).await;

    assert_eq!(done["status"], "failed", "{done}");
    let message = done["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("chunk 4 of 6"), "{done}");
    app.drain(Duration::from_secs(30)).await;
    let parts = chunks(&app, id).await;
    let synthesized: i64 = parts
        .iter()
        .filter(|c| c.2 == "succeeded" && !c.3)
        .map(|c| i64::from(c.1))
        .sum();
    assert_eq!(
        ledger_billable(&app, &format!("long_task_id = '{id}'")).await,
        synthesized
    );
    assert_eq!(
        fake.stats().characters_synthesized,
        synthesized as u64,
        "billed exactly what the vendor synthesized"
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM usage_ledger WHERE task_id = '{id}'"
        ))
        .await,
        1
    );
}

#[tokio::test]
async fn cancelling_a_long_job_cancels_its_chunks_not_started() {
    let fake = fake(|_| {}).await;
    let mut app = TestApp::spawn_with(options(&fake, false)).await;
    let id = app.submit_ok(&long_job(&chapter(4, None), "wav")).await;
    let (_, before) = task(&app, id).await;
    assert_eq!(before["status"], "processing");
    assert_eq!(before["chunks_total"], 4);
    assert_eq!(before["chunks_done"], 0);

    let response = app
        .http
        .delete(format!("{}/v1/tts/jobs/{id}", app.base_url))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .expect("cancel sent");
    assert_eq!(response.status(), 200);
    let cancelled: Value = response.json().await.expect("task JSON");
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");

    app.start_worker();
    app.drain(Duration::from_secs(30)).await;
    let parts = chunks(&app, id).await;
    assert!(parts.iter().all(|c| c.2 == "cancelled"), "{parts:?}");
    assert_eq!(fake.stats().synthesis_requests, 0);
    assert_eq!(ledger_billable(&app, "true").await, 0, "nothing billed");
}

fn spawn_worker(app: &TestApp) -> Child {
    app.worker_command(env!("CARGO_BIN_EXE_ttsq"))
        .env("TTSQ_WORKER_BATCH_SIZE", "2")
        .spawn()
        .expect("ttsq worker starts")
}

#[tokio::test]
async fn a_worker_killed_mid_long_job_leaves_it_to_finish_elsewhere() {
    let fake = fake(|c| c.latency.fixed_ms = 300).await;
    let app = TestApp::spawn_with(options(&fake, false)).await;
    let id = app.submit_ok(&long_job(&chapter(12, None), "wav")).await;

    let mut first = spawn_worker(&app);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, now) = task(&app, id).await;
        if now["chunks_done"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no progress: {now}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!signal_and_wait(&mut first, "-KILL").success());
    let (_, midway) = task(&app, id).await;
    assert_eq!(midway["status"], "processing", "{midway}");

    let mut second = spawn_worker(&app);
    let done = app.wait_for(id).await;
    assert!(signal_and_wait(&mut second, "-TERM").success());
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["chunks_done"], 12);
    // Every chunk billed once, the job once.
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM usage_ledger WHERE long_task_id = '{id}'"
        ))
        .await,
        12
    );
    let audio = inline_audio(&app, id).await;
    let expected_ms = chunks_ms(&app, id).await;
    assert!(
        expected_ms > 0.0 && (wav_ms(&audio) - expected_ms).abs() < 12.0,
        "the joined audio holds every chunk: {} ms of {expected_ms}",
        wav_ms(&audio)
    );
}

#[tokio::test]
async fn long_texts_are_refused_where_they_cannot_be_served() {
    let fake = fake(|_| {}).await;
    let app = TestApp::spawn_with(options(&fake, false)).await;
    let text = chapter(4, None);

    let mut high = long_job(&text, "mp3");
    high["priority"] = json!("high");
    let response = app.submit(&high).await;
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.expect("problem");
    assert!(problem.to_string().contains("text"), "{problem}");

    let response = app.submit(&long_job(&text, "opus")).await;
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.expect("problem");
    assert!(problem.to_string().contains("format"), "{problem}");

    let too_long = "word ".repeat(45_000);
    let response = app.submit(&long_job(&too_long, "mp3")).await;
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.expect("problem");
    assert!(problem.to_string().contains("200000"), "{problem}");
}
