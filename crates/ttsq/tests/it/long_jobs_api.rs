//! Long jobs at the API (issue 21) on real Postgres, RabbitMQ and S3: what
//! `POST /v1/tts/jobs` and `POST /v1/tts/batches` accept as a long job and
//! refuse, how its task reads (`chunks_total`, `chunks_done`), and that its
//! chunks stay hidden. Requests are cut at `limits.max_text_chars` here, so
//! that the tests do not depend on a provider's own request limit; the
//! whole flow against providers' limits is in `long_jobs`.

use serde_json::{Value, json};
use ttsq_testkit::{TestApp, TestOptions};
use uuid::Uuid;

use crate::documented::assert_documented;

/// Most characters of one request in these tests: one [`paragraph`] fits,
/// two do not.
const REQUEST_CHARS: usize = 300;

/// Most characters of a long job in these tests.
const LONG_CHARS: usize = 3_000;

/// A paragraph of about 170 characters, different for every `i`.
fn paragraph(i: usize) -> String {
    format!(
        "Paragraph {i} starts here, and it says a few plain things in a row. \
         It carries on for a little while, then paragraph {i} comes to its end."
    )
}

/// `count` paragraphs, blank lines between them.
fn chapter(count: usize) -> String {
    (0..count).map(paragraph).collect::<Vec<_>>().join("\n\n")
}

fn job(text: &str, format: &str) -> Value {
    json!({"text": text, "dialect": "en-us", "format": format})
}

async fn spawn(worker: bool) -> TestApp {
    TestApp::spawn_with(TestOptions {
        worker,
        env: vec![
            (
                "TTSQ_LIMITS_MAX_TEXT_CHARS".into(),
                REQUEST_CHARS.to_string(),
            ),
            (
                "TTSQ_LIMITS_MAX_LONG_TEXT_CHARS".into(),
                LONG_CHARS.to_string(),
            ),
        ],
        ..TestOptions::default()
    })
    .await
}

async fn task(app: &TestApp, id: impl std::fmt::Display) -> (u16, Value) {
    let response = app
        .get_as(&app.api_key, &format!("/v1/tts/jobs/{id}"))
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn cancel(app: &TestApp, id: impl std::fmt::Display) -> (u16, Value) {
    let response = app
        .http
        .delete(format!("{}/v1/tts/jobs/{id}", app.base_url))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .expect("cancel request sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn submit_batch(app: &TestApp, body: &Value) -> (u16, Value) {
    let response = app
        .http
        .post(format!("{}/v1/tts/batches", app.base_url))
        .bearer_auth(&app.api_key)
        .json(body)
        .send()
        .await
        .expect("batch request sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The chunks of long job `id`: (task id, characters), in order.
async fn chunks(app: &TestApp, id: Uuid) -> Vec<(Uuid, i32)> {
    ttsq_store::sqlx::query_as(
        "SELECT id, characters FROM tasks WHERE parent_id = $1 ORDER BY chunk_index",
    )
    .bind(id)
    .fetch_all(app.services.store.pool())
    .await
    .expect("chunks")
}

fn problem_says(problem: &Value, field: &str, words: &str) -> bool {
    problem["errors"].as_array().is_some_and(|errors| {
        errors
            .iter()
            .any(|e| e["field"] == field && e["reason"].as_str().is_some_and(|r| r.contains(words)))
    })
}

#[tokio::test]
async fn a_long_job_is_one_processing_task_whose_chunks_are_counted() {
    let app = spawn(false).await;
    let text = chapter(6);

    let response = app.submit(&job(&text, "mp3")).await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.expect("accepted");
    let id: Uuid = accepted["task_id"].as_str().unwrap().parse().unwrap();
    let (status, long) = task(&app, id).await;
    let parts = chunks(&app, id).await;

    assert_eq!(accepted["status"], "processing", "{accepted}");
    assert_eq!(status, 200);
    assert_eq!(long["status"], "processing", "{long}");
    assert_eq!(long["chunks_total"], 6, "one chunk per paragraph: {long}");
    assert!(
        long["chunks_done"].as_u64().is_some_and(|done| done <= 6),
        "{long}"
    );
    assert_eq!(parts.len(), 6);
    assert!(
        parts
            .iter()
            .all(|(_, chars)| *chars as usize <= REQUEST_CHARS)
    );
    assert_eq!(
        long["characters"].as_i64(),
        Some(ttsq_core::normalize_text(&text).chars().count() as i64),
        "the long job counts the whole text: {long}"
    );
    assert_eq!(app.scalar("SELECT count(*) FROM tasks").await, 7);
    assert_documented(&app, "get", "/v1/tts/jobs/{id}", 200, &long).await;
}

#[tokio::test]
async fn a_short_job_has_no_chunk_counts() {
    let app = spawn(false).await;

    let id = app.submit_ok(&job(&paragraph(1), "mp3")).await;
    let (_, short) = task(&app, id).await;

    assert_eq!(short["status"], "queued", "{short}");
    assert!(short.get("chunks_total").is_none(), "{short}");
    assert!(short.get("chunks_done").is_none(), "{short}");
    assert_eq!(app.scalar("SELECT count(*) FROM tasks").await, 1);
}

#[tokio::test]
async fn long_texts_are_refused_where_they_cannot_be_served_and_nothing_is_written() {
    let app = spawn(false).await;
    let text = chapter(4);

    let mut high = job(&text, "mp3");
    high["priority"] = json!("high");
    let high = app.submit(&high).await;
    let high = (high.status(), high.json::<Value>().await.expect("problem"));
    let opus = app.submit(&job(&text, "opus")).await;
    let opus = (opus.status(), opus.json::<Value>().await.expect("problem"));
    let flac = app.submit(&job(&text, "flac")).await;
    let too_long = app.submit(&job(&"word ".repeat(700), "mp3")).await;
    let too_long = (
        too_long.status(),
        too_long.json::<Value>().await.expect("problem"),
    );
    let short_opus = app.submit(&job(&paragraph(1), "opus")).await;

    assert_eq!(high.0, 400);
    assert!(
        problem_says(
            &high.1,
            "text",
            "high priority is one provider request of at most 300"
        ),
        "{}",
        high.1
    );
    assert_eq!(opus.0, 400);
    assert!(
        problem_says(&opus.1, "format", "mp3, wav or pcm"),
        "{}",
        opus.1
    );
    assert_eq!(flac.status(), 400);
    assert_eq!(too_long.0, 400);
    assert!(
        problem_says(&too_long.1, "text", &format!("the limit is {LONG_CHARS}")),
        "{}",
        too_long.1
    );
    assert_eq!(short_opus.status(), 202, "a short job may still be opus");
    assert_eq!(app.scalar("SELECT count(*) FROM tasks").await, 1);
}

#[tokio::test]
async fn a_batch_item_may_be_a_long_job_and_is_refused_by_its_position() {
    let app = spawn(false).await;

    let (refused, problem) = submit_batch(
        &app,
        &json!({"items": [job("Short.", "opus"), job(&chapter(3), "opus")]}),
    )
    .await;
    let (accepted, batch) = submit_batch(
        &app,
        &json!({"items": [job("Short.", "mp3"), job(&chapter(3), "mp3")]}),
    )
    .await;

    assert_eq!(refused, 400);
    assert!(
        problem_says(&problem, "items[1].format", "mp3, wav or pcm"),
        "{problem}"
    );
    assert_eq!(accepted, 202, "{batch}");
    let long_id: Uuid = batch["task_ids"][1].as_str().unwrap().parse().unwrap();
    let (_, long) = task(&app, long_id).await;
    assert_eq!(long["status"], "processing", "{long}");
    assert_eq!(long["chunks_total"], 3, "{long}");
    assert_eq!(chunks(&app, long_id).await.len(), 3);
}

#[tokio::test]
async fn a_chunks_id_is_not_found_anywhere() {
    let app = spawn(false).await;
    let id = app.submit_ok(&job(&chapter(3), "mp3")).await;
    let (chunk, _) = chunks(&app, id).await[0];

    let (read, _) = task(&app, chunk).await;
    let audio = app
        .get_as(&app.api_key, &format!("/v1/tts/jobs/{chunk}/audio"))
        .await;
    let (cancelled, _) = cancel(&app, chunk).await;
    let listed: Value = app
        .get_as(&app.api_key, "/v1/tts/jobs")
        .await
        .json()
        .await
        .expect("a page of tasks");

    assert_eq!(read, 404);
    assert_eq!(audio.status(), 404);
    assert_eq!(cancelled, 404);
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(1), "{listed}");
}

#[tokio::test]
async fn a_long_job_is_cancelled_while_it_runs_and_not_once_it_ended() {
    let app = spawn(false).await;
    let id = app.submit_ok(&job(&chapter(4), "mp3")).await;

    let (first, cancelled) = cancel(&app, id).await;
    let (again, problem) = cancel(&app, id).await;

    assert_eq!(first, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["chunks_total"], 4, "{cancelled}");
    assert_eq!(again, 409, "{problem}");
    assert!(
        problem.to_string().contains("the long job is cancelled"),
        "{problem}"
    );
}

#[tokio::test]
async fn a_long_job_succeeds_once_every_chunk_is_done_and_a_short_job_shares_a_chunks_audio() {
    let app = spawn(true).await;
    let text = chapter(3);

    let id = app.submit_ok(&job(&text, "wav")).await;
    let done = app.wait_for(id).await;
    let again = app.submit_ok(&job(&text, "wav")).await;
    let (_, again) = task(&app, again).await;
    let short = app.submit_ok(&job(&paragraph(1), "wav")).await;
    let short = app.wait_for(short).await;

    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["chunks_total"], 3, "{done}");
    assert_eq!(done["chunks_done"], 3, "{done}");
    assert_eq!(
        again["status"], "succeeded",
        "the joined audio is stored: {again}"
    );
    assert_eq!(again["cache_hit"], true, "{again}");
    assert_eq!(short["cache_hit"], true, "its text is a chunk's: {short}");
}
