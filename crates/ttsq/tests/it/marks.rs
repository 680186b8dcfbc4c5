//! Speech marks end to end: espeak-ng's word, sentence and viseme timings
//! stored beside the audio and linked from the task; ElevenLabs'
//! `/with-timestamps` character alignment folded into words (through the
//! fake vendor); and a clear 422 where the provider gives no timings.

use serde_json::{Value, json};
use ttsq_fake_provider::{FakeConfig, FakeProvider};
use ttsq_testkit::{TestApp, TestOptions};
use uuid::Uuid;

const KEY: &str = "sk-fake-marks-key-0123456789";

/// The marks of a succeeded task, read both ways: the presigned `marks_url`
/// and `GET /v1/tts/jobs/{id}/marks`; asserts they agree.
async fn marks_of(app: &TestApp, task: &Value) -> Vec<Value> {
    let id = task["task_id"].as_str().expect("task id");
    let url = task["marks_url"]
        .as_str()
        .expect("a succeeded task with marks links them");
    let presigned: Value = reqwest::get(url)
        .await
        .expect("presigned GET")
        .json()
        .await
        .expect("marks JSON from S3");
    let response = app
        .get_as(&app.api_key, &format!("/v1/tts/jobs/{id}/marks"))
        .await;
    assert_eq!(response.status(), 200);
    let served: Value = response.json().await.expect("marks JSON");
    assert_eq!(presigned, served);
    served.as_array().expect("an array of marks").clone()
}

fn of_type<'a>(marks: &'a [Value], kind: &str) -> Vec<&'a Value> {
    marks.iter().filter(|m| m["type"] == kind).collect()
}

fn ms(mark: &Value, field: &str) -> u64 {
    mark[field].as_u64().expect("a millisecond count")
}

#[tokio::test]
async fn espeak_times_words_sentences_and_visemes_against_the_audio() {
    let app = TestApp::spawn().await;
    let text = "The quick brown fox jumps. Over the lazy dog!";
    let task_id = app
        .submit_ok(&json!({
            "text": text, "dialect": "en-us", "format": "wav",
            "marks": ["word", "sentence", "viseme"]
        }))
        .await;

    let task = app.wait_for(task_id).await;

    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["marks"], json!(["word", "sentence", "viseme"]));
    let duration = task["duration_ms"].as_u64().expect("duration");
    let marks = marks_of(&app, &task).await;
    let words = of_type(&marks, "word");
    let spoken: Vec<&str> = words
        .iter()
        .map(|w| w["value"].as_str().unwrap_or(""))
        .collect();
    let expected: Vec<&str> = text
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
        .collect();
    assert_eq!(spoken, expected, "words cover the text in order");
    for word in &words {
        let (start, end) = (
            word["start"].as_u64().expect("start"),
            word["end"].as_u64().expect("end"),
        );
        let at: String = text
            .chars()
            .skip(start as usize)
            .take((end - start) as usize)
            .collect();
        assert_eq!(at, word["value"], "character offsets point at the word");
        assert!(ms(word, "start_ms") <= ms(word, "end_ms"));
        assert!(
            ms(word, "end_ms") <= duration,
            "{word} ends after {duration} ms"
        );
    }
    assert!(
        words
            .windows(2)
            .all(|w| ms(w[0], "start_ms") < ms(w[1], "start_ms")),
        "word starts rise strictly: {words:?}"
    );
    let sentences = of_type(&marks, "sentence");
    assert_eq!(sentences.len(), 2, "{sentences:?}");
    assert_eq!(sentences[0]["value"], "The quick brown fox jumps.");
    assert!(ms(sentences[1], "start_ms") > ms(sentences[0], "end_ms").saturating_sub(1));
    let visemes = of_type(&marks, "viseme");
    assert!(visemes.len() > words.len(), "several visemes per word");
    let polly = [
        "p", "t", "S", "T", "f", "k", "i", "r", "s", "u", "@", "a", "e", "E", "o", "O", "sil",
    ];
    assert!(
        visemes
            .iter()
            .all(|v| polly.contains(&v["value"].as_str().unwrap_or("?")))
    );
    assert!(
        visemes.iter().any(|v| v["value"] == "p"),
        "`brown`, `jumps` close the lips"
    );
    assert!(visemes.iter().all(|v| ms(v, "end_ms") <= duration));

    // The same job again is a cache hit with the same marks; without marks
    // it is another object, and links none.
    let again = app
        .submit_ok(&json!({
            "text": text, "dialect": "en-us", "format": "wav",
            "marks": ["viseme", "sentence", "word", "word"]
        }))
        .await;
    let again = app.wait_for(again).await;
    assert_eq!(again["cache_hit"], true, "{again}");
    assert_eq!(marks_of(&app, &again).await, marks);
    let plain = app
        .submit_ok(&json!({"text": text, "dialect": "en-us", "format": "wav"}))
        .await;
    let plain = app.wait_for(plain).await;
    assert!(plain.get("marks_url").is_none(), "{plain}");
    assert_eq!(
        app.get_as(
            &app.api_key,
            &format!(
                "/v1/tts/jobs/{}/marks",
                plain["task_id"].as_str().unwrap_or("")
            )
        )
        .await
        .status(),
        404
    );
}

#[tokio::test]
async fn only_word_marks_are_stored_when_only_words_are_asked_for() {
    let app = TestApp::spawn().await;
    let task_id = app
        .submit_ok(
            &json!({"text": "Just the words, please.", "dialect": "en-gb", "marks": ["word"]}),
        )
        .await;
    let task = app.wait_for(task_id).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    let marks = marks_of(&app, &task).await;
    assert!(!marks.is_empty());
    assert!(marks.iter().all(|m| m["type"] == "word"), "{marks:?}");
}

#[tokio::test]
async fn a_high_priority_job_links_its_marks_in_the_json_answer() {
    let app = TestApp::spawn().await;
    let response = app
        .http
        .post(format!("{}/v1/tts/jobs", app.base_url))
        .bearer_auth(&app.api_key)
        .header("accept", "application/json")
        .json(&json!({
            "text": "Spoken at once, with marks.", "dialect": "en-us",
            "priority": "high", "marks": ["sentence", "viseme"]
        }))
        .send()
        .await
        .expect("submit sent");
    assert_eq!(response.status(), 200);
    let task: Value = response.json().await.expect("task JSON");

    let marks = marks_of(&app, &task).await;

    assert_eq!(of_type(&marks, "sentence").len(), 1);
    assert!(!of_type(&marks, "viseme").is_empty());
    assert!(
        of_type(&marks, "word").is_empty(),
        "only what was asked for"
    );
}

async fn fake() -> FakeProvider {
    let mut config = FakeConfig::default();
    config.keys.openai = Some(KEY.to_owned());
    config.keys.elevenlabs = Some(KEY.to_owned());
    FakeProvider::start(config)
        .await
        .expect("fake provider starts")
}

fn options(fake: &FakeProvider) -> TestOptions {
    let base = fake.base_url();
    TestOptions {
        env: vec![
            ("TTSQ_PROVIDERS_OPENAI_API_KEY".into(), KEY.into()),
            ("TTSQ_PROVIDERS_ELEVEN_API_KEY".into(), KEY.into()),
        ],
        config_toml: Some(format!(
            r#"
[providers.openai]
kind = "openai"
base_url = "{base}"
dialects = [{{ id = "en-gb", voices = ["alloy"] }}]

[providers.eleven]
kind = "elevenlabs"
base_url = "{base}"
dialects = [{{ id = "en-au", voices = ["rachel"] }}]

[[routes]]
dialects = ["en-gb"]
chain = ["openai", "espeak"]

[[routes]]
dialects = ["en-au"]
chain = ["eleven"]

[[routes]]
dialects = ["*"]
chain = ["espeak"]
"#
        )),
        ..TestOptions::default()
    }
}

#[tokio::test]
async fn a_dialect_whose_provider_gives_no_timings_refuses_marks_with_a_422() {
    let fake = fake().await;
    let app = TestApp::spawn_with(options(&fake)).await;

    let dialects: Value = app
        .get_as(&app.api_key, "/v1/dialects")
        .await
        .json()
        .await
        .expect("JSON");
    let find = |id: &str| {
        dialects["dialects"]
            .as_array()
            .and_then(|all| all.iter().find(|d| d["id"] == id))
            .cloned()
            .unwrap_or_else(|| panic!("dialect {id} listed: {dialects}"))
    };
    assert_eq!(
        find("en-gb")["marks"],
        json!([]),
        "openai reports no timings"
    );
    assert_eq!(
        find("en-us")["marks"],
        json!(["word", "sentence", "viseme"])
    );
    assert_eq!(find("en-au")["marks"], json!(["word", "sentence"]));

    let response = app
        .submit(&json!({"text": "No timings here.", "dialect": "en-gb", "marks": ["word"]}))
        .await;
    assert_eq!(response.status(), 422);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap_or(""),
        "application/problem+json"
    );
    let problem: Value = response.json().await.expect("problem JSON");
    assert_eq!(problem["errors"][0]["field"], "marks", "{problem}");

    let response = app
        .submit(&json!({"text": "Visemes need phonemes.", "dialect": "en-au", "marks": ["viseme"]}))
        .await;
    assert_eq!(response.status(), 422);
    let response = app
        .submit(&json!({"text": "Bad kind.", "dialect": "en-us", "marks": ["phoneme"]}))
        .await;
    assert_eq!(response.status(), 422);
}

#[tokio::test]
async fn elevenlabs_character_alignment_is_folded_into_words() {
    let fake = fake().await;
    let app = TestApp::spawn_with(options(&fake)).await;
    let run = Uuid::new_v4().simple().to_string();
    let text = format!("Good morning, Sydney. Nice day {run}.");

    let task_id = app
        .submit_ok(&json!({"text": text, "dialect": "en-au", "format": "mp3", "marks": ["word", "sentence"]}))
        .await;
    let task = app.wait_for(task_id).await;

    assert_eq!(task["status"], "succeeded", "{task}");
    let duration = task["duration_ms"].as_u64().expect("duration");
    let marks = marks_of(&app, &task).await;
    let words = of_type(&marks, "word");
    let spoken: Vec<&str> = words
        .iter()
        .map(|w| w["value"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        spoken,
        ["Good", "morning", "Sydney", "Nice", "day", run.as_str()]
    );
    assert!(
        words
            .windows(2)
            .all(|w| ms(w[0], "end_ms") <= ms(w[1], "start_ms"))
    );
    assert!(words.iter().all(|w| ms(w, "end_ms") <= duration));
    assert_eq!(of_type(&marks, "sentence").len(), 2);
    let stats = fake.stats();
    assert!(
        stats
            .recent
            .iter()
            .any(|r| r.path.ends_with("/with-timestamps")),
        "the adapter asked for timestamps"
    );
}
