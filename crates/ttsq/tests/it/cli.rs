//! The `ttsq` command line as a user meets it, running the real binary
//! against a running stack: `batch` through the batches endpoint, its
//! resume after a crash, exit codes by class of failure, `say -` from
//! stdin, `say --file` of a long text, shell completions and
//! `--output table|json|csv`.

use std::{io::Cursor, path::Path, process::Output, time::Duration};

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use ttsq_fake_provider::{FakeConfig, FakeProvider};
use ttsq_testkit::{FakeRoutes, TestApp, TestOptions};

/// The `ttsq` binary pointed at `app`, with nothing else of the test's environment.
fn ttsq(app: &TestApp) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ttsq"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TTSQ_URL", &app.base_url)
        .env("TTSQ_API_KEY", &app.api_key)
        .stdin(std::process::Stdio::null());
    command
}

async fn run(command: &mut tokio::process::Command) -> Output {
    tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the command finished within 2 minutes")
        .expect("the command ran")
}

/// Runs `command` with `input` on its stdin.
async fn run_with_stdin(command: &mut tokio::process::Command, input: &[u8]) -> Output {
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the command started");
    let mut stdin = child.stdin.take().expect("a piped stdin");
    // The command may stop reading early (over the limit): a broken pipe
    // is part of what is tested.
    let _ = stdin.write_all(input).await;
    drop(stdin);
    tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the command finished within 2 minutes")
        .expect("the command ran")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn results(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("results.jsonl"))
        .expect("results.jsonl written")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// A URL where nothing listens: a port the OS just gave and took back.
fn closed_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

#[tokio::test]
async fn ttsq_batch_submits_batches_of_the_chunk_size_and_a_rerun_after_a_crash_duplicates_nothing()
{
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("jobs.jsonl");
    let out = dir.path().join("out");
    let lines: Vec<String> = [
        json!({"id": "l1", "text": "Line one.", "dialect": "en-gb", "format": "wav"}),
        json!({"id": "l2", "text": "Line two.", "dialect": "en-us"}),
        json!({"id": "l3", "text": "Line three.", "dialect": "xx-nowhere"}),
        json!({"id": "l4", "text": "Line four.", "dialect": "en-gb"}),
        json!({"id": "l5", "text": "Line five.", "dialect": "en-gb", "format": "wav"}),
    ]
    .iter()
    .map(Value::to_string)
    .collect();
    std::fs::write(&input, lines.join("\n")).expect("input written");
    let batch = |app: &TestApp| {
        let mut command = ttsq(app);
        command
            .arg("batch")
            .arg(&input)
            .arg("--out")
            .arg(&out)
            .args(["--chunk-size", "2"]);
        command
    };

    let first = run(&mut batch(&app)).await;

    assert_eq!(first.status.code(), Some(1), "{}", stderr(&first));
    assert_eq!(
        app.scalar("SELECT count(*) FROM batches").await,
        3,
        "[l1 l2], [l3 l4] refused for l3 then [l4] alone, [l5]"
    );
    assert_eq!(
        app.scalar("SELECT max(items)::bigint FROM batches").await,
        2
    );
    assert_eq!(app.scalar("SELECT count(*) FROM tasks").await, 4);
    let recorded = results(&out);
    assert_eq!(recorded.len(), 5, "one result per line");
    let of = |id: &str| {
        recorded
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("a result for {id}"))
            .clone()
    };
    assert_eq!(of("l3")["status"], "error");
    assert!(
        of("l3")["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("dialect")),
        "{}",
        of("l3")
    );
    for id in ["l1", "l2", "l4", "l5"] {
        assert_eq!(of(id)["status"], "succeeded", "{}", of(id));
    }
    assert!(out.join("l5.wav").is_file() && out.join("l4.mp3").is_file());

    // A crash after the batches were accepted, before anything was
    // recorded: the rerun waits for the tasks already made.
    std::fs::remove_file(out.join("results.jsonl")).expect("results removed");
    std::fs::remove_file(out.join("l4.mp3")).expect("audio removed");
    let second = run(&mut batch(&app)).await;
    assert_eq!(second.status.code(), Some(1), "{}", stderr(&second));
    assert!(out.join("l4.mp3").is_file(), "downloaded again");
    assert_eq!(app.scalar("SELECT count(*) FROM tasks").await, 4);
    assert_eq!(app.scalar("SELECT count(*) FROM batches").await, 3);

    // A crash between the request and any record at all: the batches'
    // idempotency keys answer the batches already made.
    std::fs::remove_dir_all(&out).expect("output removed");
    let third = run(&mut batch(&app)).await;
    assert_eq!(third.status.code(), Some(1), "{}", stderr(&third));
    assert_eq!(app.scalar("SELECT count(*) FROM tasks").await, 4);
    assert_eq!(app.scalar("SELECT count(*) FROM batches").await, 3);
    assert_eq!(results(&out).len(), 5);
}

#[tokio::test]
async fn ttsq_exits_with_a_code_for_each_class_of_failure() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..TestOptions::default()
    })
    .await;

    let usage = run(ttsq(&app).args(["say"])).await;
    let keyless = run(ttsq(&app).env_remove("TTSQ_API_KEY").args(["jobs", "list"])).await;
    let bad_input =
        run(ttsq(&app).args(["batch", "/nonexistent/jobs.jsonl", "--out", "/tmp"])).await;
    let unreachable = run(ttsq(&app).env("TTSQ_URL", closed_url()).args([
        "say",
        "Anyone there?",
        "--dialect",
        "en-gb",
    ]))
    .await;
    let refused_key = run(ttsq(&app)
        .env("TTSQ_API_KEY", "ttsq_00000000_not-a-real-key")
        .args(["jobs", "list"]))
    .await;
    let refused_job = run(ttsq(&app).args(["say", "Where?", "--dialect", "xx-nowhere"])).await;
    let bad_settings = run(ttsq(&app)
        .env_remove("TTSQ_URL")
        .env_remove("TTSQ_API_KEY")
        .env("TTSQ_SERVER_LISTEN", "nowhere")
        .args(["config", "check"]))
    .await;
    let help = run(ttsq(&app).arg("--help")).await;

    assert_eq!(usage.status.code(), Some(2), "{}", stderr(&usage));
    assert_eq!(keyless.status.code(), Some(2), "{}", stderr(&keyless));
    assert!(
        stderr(&keyless).contains("TTSQ_API_KEY"),
        "{}",
        stderr(&keyless)
    );
    assert_eq!(bad_input.status.code(), Some(2), "{}", stderr(&bad_input));
    assert_eq!(
        bad_settings.status.code(),
        Some(2),
        "{}",
        stderr(&bad_settings)
    );
    assert!(
        stderr(&bad_settings).contains("TTSQ_SERVER_LISTEN"),
        "{}",
        stderr(&bad_settings)
    );
    assert_eq!(
        unreachable.status.code(),
        Some(3),
        "{}",
        stderr(&unreachable)
    );
    assert!(
        stderr(&unreachable).contains("cannot reach the API"),
        "{}",
        stderr(&unreachable)
    );
    assert_eq!(
        refused_key.status.code(),
        Some(4),
        "{}",
        stderr(&refused_key)
    );
    assert!(
        stderr(&refused_key).contains("401"),
        "{}",
        stderr(&refused_key)
    );
    assert_eq!(
        refused_job.status.code(),
        Some(1),
        "{}",
        stderr(&refused_job)
    );
    let help = stdout(&help);
    assert!(
        help.contains("Exit codes:") && help.contains("4  the API refused the key"),
        "{help}"
    );
}

#[tokio::test]
async fn ttsq_say_dash_reads_the_text_from_stdin_within_a_bound() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("piped.wav");

    let said = run_with_stdin(
        ttsq(&app)
            .args(["say", "-", "--dialect", "en-gb", "-o"])
            .arg(&file),
        b"Hello from standard input.\n",
    )
    .await;
    let huge = run_with_stdin(
        ttsq(&app).args(["say", "-", "--dialect", "en-gb"]),
        &vec![b'a'; 2 * 1024 * 1024],
    )
    .await;

    assert!(said.status.success(), "{}", stderr(&said));
    assert!(std::fs::metadata(&file).expect("piped.wav").len() > 1000);
    assert_eq!(
        app.scalar("SELECT count(*) FROM tasks WHERE text LIKE 'Hello from standard input.%'")
            .await,
        1
    );
    assert_eq!(huge.status.code(), Some(2), "{}", stderr(&huge));
    assert!(
        stderr(&huge).contains("stdin holds more than"),
        "{}",
        stderr(&huge)
    );
    assert_eq!(app.scalar("SELECT count(*) FROM tasks").await, 1);
}

#[tokio::test]
async fn ttsq_completions_prints_a_script_for_bash_zsh_and_fish() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..TestOptions::default()
    })
    .await;
    for shell in ["bash", "zsh", "fish"] {
        let script = run(ttsq(&app).args(["completions", shell])).await;

        assert!(script.status.success(), "{shell}: {}", stderr(&script));
        let text = stdout(&script);
        assert!(
            text.contains("ttsq") && text.contains("batch") && text.contains("completions"),
            "{shell}: {text}"
        );
    }
    let unknown = run(ttsq(&app).args(["completions", "tcsh"])).await;
    assert_eq!(unknown.status.code(), Some(2));
}

#[tokio::test]
async fn ttsq_output_prints_listings_as_a_table_json_or_csv() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..TestOptions::default()
    })
    .await;
    let queued = app
        .submit_ok(&json!({"text": "Waiting in line.", "dialect": "en-gb"}))
        .await
        .to_string();

    let table = run(ttsq(&app).args(["jobs", "list", "--output", "table"])).await;
    let json = run(ttsq(&app).args(["--output", "json", "jobs", "list"])).await;
    let csv = run(ttsq(&app).args(["jobs", "list", "--output", "csv"])).await;
    let dialects = run(ttsq(&app).args(["dialects", "--output", "csv"])).await;
    let deprecated = run(ttsq(&app).args(["jobs", "get", &queued, "--json"])).await;
    let wrong = run(ttsq(&app).args(["jobs", "list", "--output", "yaml"])).await;

    let table = stdout(&table);
    assert!(
        table.starts_with("TASK") && table.contains(&queued),
        "{table}"
    );
    let json: Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(json["jobs"][0]["task_id"], queued.as_str());
    let csv = stdout(&csv);
    let mut rows = csv.lines();
    assert_eq!(
        rows.next(),
        Some("TASK,STATUS,DIALECT,FORMAT,CHARS,CREATED (UTC),ERROR")
    );
    assert!(
        rows.next()
            .is_some_and(|r| r.starts_with(&format!("{queued},queued,en-gb,mp3,16,"))),
        "{csv}"
    );
    assert!(
        stdout(&dialects).starts_with("DIALECT,NAME,VOICES,FORMATS,PROVIDERS\r\n"),
        "{}",
        stdout(&dialects)
    );
    let task: Value = serde_json::from_slice(&deprecated.stdout).expect("JSON task");
    assert_eq!(task["task_id"], queued.as_str());
    assert!(stderr(&deprecated).contains("--json is deprecated"));
    assert_eq!(wrong.status.code(), Some(2));
}

#[tokio::test]
async fn ttsq_batch_sends_at_most_a_thousand_lines_per_request() {
    // No worker: nothing finishes, so the run stops after its --timeout
    // and this costs only the submissions.
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..TestOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("jobs.jsonl");
    let out = dir.path().join("out");
    let lines: Vec<String> = (0..1_001)
        .map(|n| json!({"id": n, "text": "The same words.", "dialect": "en-gb"}).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n")).expect("input written");

    let run = run(ttsq(&app)
        .arg("batch")
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .args(["--timeout", "1"]))
    .await;

    assert_eq!(run.status.code(), Some(1), "{}", stderr(&run));
    assert_eq!(app.scalar("SELECT count(*) FROM batches").await, 2);
    assert_eq!(
        app.scalar("SELECT max(items)::bigint FROM batches").await,
        1_000
    );
    assert_eq!(app.scalar("SELECT count(*) FROM tasks").await, 1_001);
    let waited = results(&out);
    assert_eq!(waited.len(), 1_001);
    assert!(
        waited
            .iter()
            .all(|r| r["status"] == "error" && r["task_id"].is_string()),
        "{:?}",
        waited.first()
    );
}

#[tokio::test]
async fn say_file_shows_progress_and_writes_the_joined_audio() {
    // A provider taking 300 characters a request, 10 ms of audio each.
    const REQUEST_CHARS: usize = 300;
    const MS_PER_CHAR: u32 = 10;
    const KEY: &str = "sk-fake-cli-long";
    let mut config = FakeConfig {
        ms_per_char: MS_PER_CHAR,
        ..FakeConfig::default()
    };
    config.keys.openai = Some(KEY.to_owned());
    let fake = FakeProvider::start(config).await.expect("fake starts");
    let app = TestApp::spawn_with(TestOptions {
        env: vec![("TTSQ_PROVIDERS_FAKE_API_KEY".into(), KEY.into())],
        config_toml: Some(
            FakeRoutes::new(fake.base_url())
                .with(r#"model = "tts-1""#)
                .with(&format!("max_text_chars = {REQUEST_CHARS}"))
                .with("quota = { max_concurrent = 8 }")
                .toml(),
        ),
        ..TestOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let chapter = dir.path().join("chapter.txt");
    let audio = dir.path().join("chapter.wav");
    let text: Vec<String> = (0..5)
        .map(|i| {
            format!(
                "Paragraph {i} of the chapter opens on a quiet street. Dr. Lee walks 2.5 miles \
                 to the station, counting the lamps as she goes. By the time the train comes, \
                 paragraph {i} has said all it had to say."
            )
        })
        .collect();
    let text = text.join("\n\n");
    assert!(text.chars().count() > 3 * REQUEST_CHARS);
    std::fs::write(&chapter, &text).expect("chapter written");

    let said = run(ttsq(&app)
        .args(["--output", "json", "say", "--dialect", "en-gb", "--file"])
        .arg(&chapter)
        .arg("-o")
        .arg(&audio))
    .await;

    assert!(said.status.success(), "{}", stderr(&said));
    let result: Value = serde_json::from_slice(&said.stdout).expect("a JSON result on stdout");
    assert_eq!(result["status"], "succeeded", "{result}");
    let chunks = result["chunks_total"].as_u64().unwrap_or(0);
    assert!(chunks > 1, "split into chunks: {result}");
    // Not a terminal: a plain progress line instead of a bar.
    assert!(
        stderr(&said).contains(&format!("of {chunks} chunks synthesized")),
        "{}",
        stderr(&said)
    );
    let bytes = std::fs::read(&audio).expect("the audio file");
    assert_eq!(result["bytes"], bytes.len(), "{result}");
    let reader = hound::WavReader::new(Cursor::new(&bytes)).expect("a valid WAV file");
    let ms = f64::from(reader.duration()) * 1000.0 / f64::from(reader.spec().sample_rate);
    // As long as the chunks' audio together (the fake rounds each to 100 ms).
    let chunks_ms = app
        .scalar(&format!(
            "SELECT coalesce(sum(a.duration_ms), 0)::bigint FROM tasks t
               JOIN audio_objects a ON a.hash = t.audio_hash WHERE t.parent_id = '{}'",
            result["task_id"].as_str().expect("a task id")
        ))
        .await;
    assert!(
        chunks_ms > 0 && (ms - chunks_ms as f64).abs() < 6.0 * chunks as f64,
        "{ms} ms of audio for {chunks_ms} ms in {chunks} chunks"
    );
    assert_eq!(fake.stats().synthesis_requests, chunks);
}

#[tokio::test]
async fn say_file_refuses_a_file_that_is_not_utf8_and_follows_a_short_one_to_its_audio() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let latin1 = dir.path().join("latin1.txt");
    std::fs::write(&latin1, b"Caf\xe9 au lait.").expect("file written");
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "\u{feff}A short note, read from a file.\n").expect("file written");
    let audio = dir.path().join("short.wav");

    let refused = run(ttsq(&app)
        .args(["say", "--dialect", "en-gb", "--file"])
        .arg(&latin1))
    .await;
    let said = run(ttsq(&app)
        .args(["--output", "json", "say", "--dialect", "en-gb", "--file"])
        .arg(&short)
        .arg("-o")
        .arg(&audio))
    .await;

    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("is not UTF-8"),
        "{}",
        stderr(&refused)
    );
    assert!(said.status.success(), "{}", stderr(&said));
    let result: Value = serde_json::from_slice(&said.stdout).expect("a JSON result on stdout");
    assert_eq!(result["status"], "succeeded", "{result}");
    assert!(
        result.get("chunks_total").is_none(),
        "one request: {result}"
    );
    let bytes = std::fs::read(&audio).expect("the audio file");
    hound::WavReader::new(Cursor::new(&bytes)).expect("a valid WAV file");
    assert_eq!(
        app.scalar("SELECT count(*) FROM tasks WHERE text LIKE 'A short note%'")
            .await,
        1,
        "the byte-order mark is not part of the text"
    );
}
