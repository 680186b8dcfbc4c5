//! The `ttsq api` and `ttsq worker` processes as operators run them, with
//! JSON logs and OTLP trace export to a small receiver in the test:
//!
//! - one job is one trace: the API's submit span and the worker's queue
//!   wait, job, provider call, S3 upload and Postgres commit spans share a
//!   trace id, the worker's spans hanging off the submit span;
//! - the worker serves `/metrics` and `/ready` on its own listener;
//! - every log line is JSON, lines about a task carry its fields, and no
//!   secret (provider key, API key, S3 secret) appears anywhere;
//! - without an exporter, a caller's `traceparent` is still continued: the
//!   task's message, the worker's log lines, the provider call and the
//!   webhook all carry the caller's trace id;
//! - a log written to a file holds no ANSI colour codes.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, http::HeaderMap, routing::post};
use serde_json::{Value, json};
use ttsq_fake_provider::{FakeConfig, FakeProvider};
use ttsq_testkit::{FakeRoutes, TestApp, TestOptions, signal_and_wait};

const PROVIDER_KEY: &str = "sk-observability-secret-7f3a9c";
const S3_SECRET: &str = "ttsq-local-secret";
const BINARY: &str = env!("CARGO_BIN_EXE_ttsq");

/// An OTLP/HTTP receiver keeping every JSON export it is sent.
struct Receiver {
    address: SocketAddr,
    exports: Arc<Mutex<Vec<Value>>>,
}

/// One received span, flattened.
#[derive(Debug, Clone)]
struct SpanRecord {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    raw: Value,
}

impl Receiver {
    async fn start() -> Self {
        let exports = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&exports);
        let app = Router::new().route(
            "/v1/traces",
            post(move |body: Bytes| {
                let kept = Arc::clone(&kept);
                async move {
                    if let Ok(export) = serde_json::from_slice::<Value>(&body) {
                        kept.lock().expect("receiver lock").push(export);
                    }
                    ([("content-type", "application/json")], "{}")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("receiver binds");
        let address = listener.local_addr().expect("receiver address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { address, exports }
    }

    fn spans(&self) -> Vec<SpanRecord> {
        let exports = self.exports.lock().expect("receiver lock").clone();
        let mut spans = Vec::new();
        for export in &exports {
            for resource in export["resourceSpans"].as_array().into_iter().flatten() {
                let service = resource["resource"]["attributes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["key"] == "service.name")
                    .and_then(|a| a["value"]["stringValue"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                    for span in scope["spans"].as_array().into_iter().flatten() {
                        let text = |key: &str| span[key].as_str().unwrap_or_default().to_owned();
                        spans.push(SpanRecord {
                            service: service.clone(),
                            name: text("name"),
                            trace_id: text("traceId"),
                            span_id: text("spanId"),
                            parent_span_id: text("parentSpanId"),
                            raw: span.clone(),
                        });
                    }
                }
            }
        }
        spans
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `ttsq <role>` pointed at the test's stack, logging JSON at debug level
/// into `log`.
fn ttsq(app: &TestApp, role: &str, log: &Path) -> Command {
    let mut command = Command::new(BINARY);
    command
        .arg(role)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(app.child_env().iter().map(|(k, v)| (k, v)))
        .env("TTSQ_LOG_FORMAT", "json")
        .env("RUST_LOG", "debug,h2=info,hyper=info,rustls=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"));
    command
}

/// Webhooks on, signed, and allowed to reach a receiver on loopback.
fn webhook_env() -> Vec<(String, String)> {
    [
        (
            "TTSQ_WEBHOOKS_SIGNING_KEY",
            "observability-webhook-signing-key",
        ),
        ("TTSQ_WEBHOOKS_ALLOW_PRIVATE", "127.0.0.1/32,::1/128"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A webhook receiver keeping the `traceparent` of every delivery.
struct HookReceiver {
    url: String,
    traceparents: Arc<Mutex<Vec<Option<String>>>>,
}

impl HookReceiver {
    async fn start() -> Self {
        let traceparents = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&traceparents);
        let app = Router::new().route(
            "/hook",
            post(move |headers: HeaderMap| {
                let kept = Arc::clone(&kept);
                async move {
                    let traceparent = headers
                        .get("traceparent")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    kept.lock().expect("hook lock").push(traceparent);
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("hook receiver binds");
        let url = format!("http://{}/hook", listener.local_addr().expect("address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, traceparents }
    }

    async fn first(&self) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(first) = self.traceparents.lock().expect("hook lock").first() {
                return first.clone();
            }
            assert!(Instant::now() < deadline, "no webhook arrived");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The trace id and parent span id of a `traceparent`.
fn trace_parts(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[1].len(), 32, "{traceparent}");
    assert_eq!(parts[2].len(), 16, "{traceparent}");
    (parts[1].to_owned(), parts[2].to_owned())
}

async fn wait_until_healthy(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = http.get(format!("{base}/health")).send().await
            && response.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "{base} never became healthy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Stack {
    app: TestApp,
    fake: FakeProvider,
    receiver: Receiver,
    api: Child,
    worker: Child,
    api_url: String,
    worker_url: String,
    dir: tempfile::TempDir,
}

/// How a [`Stack`] runs.
struct StackOptions {
    /// Point both processes at the test's OTLP receiver.
    export_traces: bool,
    /// More settings, for the test's stack and both processes.
    env: Vec<(String, String)>,
}

impl Stack {
    async fn start() -> Self {
        Self::start_with(StackOptions {
            export_traces: true,
            env: Vec::new(),
        })
        .await
    }

    async fn start_with(options: StackOptions) -> Self {
        let mut config = FakeConfig::default();
        config.keys.openai = Some(PROVIDER_KEY.to_owned());
        let fake = FakeProvider::start(config)
            .await
            .expect("fake provider starts");
        let app = TestApp::spawn_with(TestOptions {
            worker: false,
            env: [("TTSQ_PROVIDERS_FAKE_API_KEY".into(), PROVIDER_KEY.into())]
                .into_iter()
                .chain(options.env)
                .collect(),
            config_toml: Some(
                FakeRoutes::new(fake.base_url())
                    .espeak_for_other_dialects()
                    .toml(),
            ),
            ..TestOptions::default()
        })
        .await;
        let receiver = Receiver::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let api_port = free_port();
        let worker_port = free_port();
        let traced = |mut command: Command| {
            if options.export_traces {
                command
                    .env(
                        "OTEL_EXPORTER_OTLP_ENDPOINT",
                        format!("http://{}", receiver.address),
                    )
                    .env("OTEL_BSP_SCHEDULE_DELAY", "100");
            }
            command
        };
        let api = traced(ttsq(&app, "api", &dir.path().join("api.log")))
            .env("TTSQ_SERVER_LISTEN", format!("127.0.0.1:{api_port}"))
            .spawn()
            .expect("ttsq api starts");
        let worker = traced(ttsq(&app, "worker", &dir.path().join("worker.log")))
            .env(
                "TTSQ_WORKER_METRICS_LISTEN",
                format!("127.0.0.1:{worker_port}"),
            )
            .spawn()
            .expect("ttsq worker starts");
        let stack = Self {
            api_url: format!("http://127.0.0.1:{api_port}"),
            worker_url: format!("http://127.0.0.1:{worker_port}"),
            app,
            fake,
            receiver,
            api,
            worker,
            dir,
        };
        wait_until_healthy(&stack.app.http, &stack.api_url).await;
        wait_until_healthy(&stack.app.http, &stack.worker_url).await;
        stack
    }

    async fn submit(&self, job: &Value) -> reqwest::Response {
        self.submit_traced(job, None).await
    }

    /// Submits `job`, with a `traceparent` header when given one.
    async fn submit_traced(&self, job: &Value, traceparent: Option<&str>) -> reqwest::Response {
        let mut request = self
            .app
            .http
            .post(format!("{}/v1/tts/jobs", self.api_url))
            .bearer_auth(&self.app.api_key)
            .header("accept", "application/json")
            .json(job);
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        request.send().await.expect("submit sent")
    }

    async fn wait_for(&self, task_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let task: Value = self
                .app
                .http
                .get(format!("{}/v1/tts/jobs/{task_id}?wait=5", self.api_url))
                .bearer_auth(&self.app.api_key)
                .send()
                .await
                .expect("poll sent")
                .json()
                .await
                .expect("task JSON");
            if matches!(task["status"].as_str(), Some("succeeded" | "failed")) {
                return task;
            }
            assert!(Instant::now() < deadline, "task never finished: {task}");
        }
    }

    /// Stops both processes (flushing their spans) and returns their logs.
    async fn stop(mut self) -> (String, String) {
        signal_and_wait(&mut self.api, "-TERM");
        signal_and_wait(&mut self.worker, "-TERM");
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).expect("log readable");
        (read("api.log"), read("worker.log"))
    }
}

// Multi-threaded: the receiver must answer the final flush while the test
// thread blocks waiting for the processes to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_is_one_trace_from_the_api_submit_through_the_queue_to_the_worker_commit() {
    let stack = Stack::start().await;
    let accepted: Value = stack
        .submit(&json!({"text": "Trace me across the queue.", "dialect": "en-gb", "voice": "rachel", "format": "wav"}))
        .await
        .json()
        .await
        .expect("accepted JSON");
    let task_id = accepted["task_id"].as_str().expect("task_id").to_owned();
    assert_eq!(stack.wait_for(&task_id).await["status"], "succeeded");

    // The worker's steps, all in the trace the API started.
    let wanted = [
        "queue.wait",
        "job",
        "provider.call",
        "s3.put",
        "postgres.commit",
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    let (submit, worker_spans) = loop {
        let spans = stack.receiver.spans();
        let job = spans.iter().find(|s| {
            s.service == "ttsq-worker" && s.name == "job" && s.raw.to_string().contains(&task_id)
        });
        if let Some(job) = job {
            let submit = spans.iter().find(|s| {
                s.service == "ttsq-api" && s.name == "submit" && s.trace_id == job.trace_id
            });
            let in_trace: Vec<SpanRecord> = spans
                .iter()
                .filter(|s| s.service == "ttsq-worker" && s.trace_id == job.trace_id)
                .cloned()
                .collect();
            if let Some(submit) = submit
                && wanted.iter().all(|w| in_trace.iter().any(|s| s.name == *w))
            {
                break (submit.clone(), in_trace);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no complete trace for {task_id}; received: {:?}",
            spans
                .iter()
                .map(|s| (&s.service, &s.name, &s.trace_id))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(submit.trace_id.len(), 32, "{submit:?}");
    for name in ["queue.wait", "job"] {
        let span = worker_spans
            .iter()
            .find(|s| s.name == name)
            .expect("span present");
        assert_eq!(
            span.parent_span_id, submit.span_id,
            "{name} continues the submit span"
        );
    }
    let job = worker_spans.iter().find(|s| s.name == "job").expect("job");
    for child in ["provider.call", "s3.put", "postgres.commit"] {
        let span = worker_spans
            .iter()
            .find(|s| s.name == child)
            .expect("span present");
        assert_eq!(
            span.parent_span_id, job.span_id,
            "{child} is part of the job"
        );
    }

    // The worker's own listener: metrics of the job it just did, readiness.
    let metrics = stack
        .app
        .http
        .get(format!("{}/metrics", stack.worker_url))
        .send()
        .await
        .expect("worker scrape")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics
            .contains(r#"tts_requests_total{dialect="en-gb",status="succeeded",voice="rachel"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("tts_batch_size_count 1"), "{metrics}");
    assert!(
        metrics.contains(r#"tts_provider_requests_total{outcome="ok",provider="fake"} 1"#),
        "{metrics}"
    );
    let ready = stack
        .app
        .http
        .get(format!("{}/ready", stack.worker_url))
        .send()
        .await
        .expect("worker readiness");
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.expect("readiness JSON");
    for dependency in ["postgres", "rabbitmq", "s3"] {
        assert_eq!(ready["checks"][dependency]["ok"], true, "{ready}");
        assert!(
            ready["checks"][dependency]["latency_ms"].is_u64(),
            "{ready}"
        );
    }
    stack.stop().await;
}

// Multi-threaded: the receiver must answer the final flush while the test
// thread blocks waiting for the processes to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_lines_with_task_fields_and_never_a_secret() {
    let stack = Stack::start().await;
    let api_key = stack.app.api_key.clone();
    let accepted: Value = stack
        .submit(&json!({"text": "Log me, but not my keys.", "dialect": "en-gb", "voice": "rachel", "format": "wav"}))
        .await
        .json()
        .await
        .expect("accepted JSON");
    let task_id = accepted["task_id"].as_str().expect("task_id").to_owned();
    assert_eq!(stack.wait_for(&task_id).await["status"], "succeeded");
    let high = stack
        .submit(&json!({"text": "Log me inline.", "dialect": "en-gb", "voice": "rachel", "format": "wav", "priority": "high"}))
        .await;
    assert_eq!(high.status(), 200);
    // A wrong key is refused: its value must not be logged either.
    let refused = stack
        .app
        .http
        .get(format!("{}/v1/tts/jobs/{task_id}", stack.api_url))
        .bearer_auth("ttsq_0000000000000000000000000000000000000000deadbeef")
        .send()
        .await
        .expect("request sent");
    assert_eq!(refused.status(), 401);

    let (api_log, worker_log) = stack.stop().await;
    assert!(api_log.lines().count() > 5, "{api_log}");
    assert!(worker_log.lines().count() > 5, "{worker_log}");
    for (name, log) in [("api", &api_log), ("worker", &worker_log)] {
        for secret in [
            PROVIDER_KEY,
            api_key.as_str(),
            S3_SECRET,
            "0000000000000000000000000000000000000000deadbeef",
        ] {
            assert!(!log.contains(secret), "the {name} log holds a secret");
        }
        for line in log.lines().filter(|l| !l.trim().is_empty()) {
            let parsed: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{name} log line is not JSON ({e}): {line}"));
            assert!(
                parsed["timestamp"].is_string() && parsed["level"].is_string(),
                "{line}"
            );
        }
    }

    let lines = |log: &str| -> Vec<Value> {
        log.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let finished = lines(&worker_log)
        .into_iter()
        .find(|l| l["task_id"] == task_id.as_str() && l["message"] == "task succeeded")
        .unwrap_or_else(|| panic!("no `task succeeded` line for {task_id}:\n{worker_log}"));
    assert_eq!(finished["dialect"], "en-gb", "{finished}");
    assert_eq!(finished["provider"], "fake", "{finished}");
    assert!(finished["tenant"].is_string(), "{finished}");
    assert!(finished["latency_ms"].is_u64(), "{finished}");

    let inline = lines(&api_log)
        .into_iter()
        .find(|l| l["message"] == "task succeeded at submission")
        .unwrap_or_else(|| panic!("no inline task line:\n{api_log}"));
    for field in ["task_id", "tenant", "dialect", "voice", "provider"] {
        assert!(inline[field].is_string(), "{field} missing in {inline}");
    }
    assert!(
        lines(&api_log)
            .iter()
            .any(|l| l["task_id"] == task_id.as_str() && l["message"] == "task queued"),
        "no `task queued` line for {task_id}"
    );
}

/// The JSON objects of a log.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

// Multi-threaded: the receivers answer while the test thread blocks waiting
// for the processes to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_traceparent_reaches_the_message_provider_webhook_and_logs_without_an_exporter() {
    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CALLER_SPAN: &str = "00f067aa0ba902b7";
    const INLINE_TRACE_ID: &str = "5c0ffee5c0ffee5c0ffee5c0ffee5c0f";
    let hooks = HookReceiver::start().await;
    let stack = Stack::start_with(StackOptions {
        export_traces: false,
        env: webhook_env(),
    })
    .await;

    let accepted = stack
        .submit_traced(
            &json!({"text": "Follow my trace.", "dialect": "en-gb", "voice": "rachel", "format": "wav", "callback_url": hooks.url}),
            Some(&format!("00-{TRACE_ID}-{CALLER_SPAN}-01")),
        )
        .await;
    assert_eq!(accepted.status(), 202);
    let accepted: Value = accepted.json().await.expect("accepted JSON");
    let task_id = accepted["task_id"].as_str().expect("task_id").to_owned();
    assert_eq!(stack.wait_for(&task_id).await["status"], "succeeded");

    // What the dispatcher publishes as the message's `traceparent`: a span
    // of the API's, in the caller's trace.
    let stored = format!(
        "SELECT count(*) FROM tasks WHERE id = '{task_id}'
            AND traceparent ~ '^00-{TRACE_ID}-[0-9a-f]{{16}}-01$'
            AND traceparent NOT LIKE '%-{CALLER_SPAN}-%'"
    );
    assert_eq!(
        stack.app.scalar(&stored).await,
        1,
        "the task's traceparent names an API span in the caller's trace"
    );

    // The worker's provider call and the webhook delivery, in the same trace.
    let calls = stack.fake.stats().recent;
    let call = calls
        .iter()
        .find(|r| {
            r.traceparent
                .as_deref()
                .is_some_and(|t| t.contains(TRACE_ID))
        })
        .unwrap_or_else(|| panic!("no provider call in trace {TRACE_ID}: {calls:#?}"));
    let (_, call_parent) = trace_parts(call.traceparent.as_deref().expect("traceparent"));
    assert_ne!(call_parent, CALLER_SPAN, "the worker's provider.call span");
    let hook = hooks
        .first()
        .await
        .expect("the webhook carries a traceparent");
    assert_eq!(trace_parts(&hook).0, TRACE_ID, "{hook}");

    // Inline (high priority): the API's own provider call.
    let inline = stack
        .submit_traced(
            &json!({"text": "Follow my trace inline.", "dialect": "en-gb", "voice": "rachel", "format": "wav", "priority": "high"}),
            Some(&format!("00-{INLINE_TRACE_ID}-{CALLER_SPAN}-01")),
        )
        .await;
    assert_eq!(inline.status(), 200);
    let calls = stack.fake.stats().recent;
    assert!(
        calls.iter().any(|r| r
            .traceparent
            .as_deref()
            .is_some_and(|t| t.contains(INLINE_TRACE_ID))),
        "no inline provider call in trace {INLINE_TRACE_ID}: {calls:#?}"
    );

    // The log lines about the task, in both processes, name the trace.
    let (api_log, worker_log) = stack.stop().await;
    let queued = json_lines(&api_log)
        .into_iter()
        .find(|l| l["task_id"] == task_id.as_str() && l["message"] == "task queued")
        .unwrap_or_else(|| panic!("no `task queued` line for {task_id}:\n{api_log}"));
    assert_eq!(queued["trace_id"], TRACE_ID, "{queued}");
    assert_eq!(
        queued["span_id"].as_str().map(str::len),
        Some(16),
        "{queued}"
    );
    let finished = json_lines(&worker_log)
        .into_iter()
        .find(|l| l["task_id"] == task_id.as_str() && l["message"] == "task succeeded")
        .unwrap_or_else(|| panic!("no `task succeeded` line for {task_id}:\n{worker_log}"));
    assert_eq!(finished["trace_id"], TRACE_ID, "{finished}");
    assert!(
        json_lines(&api_log)
            .iter()
            .any(|l| l["trace_id"] == INLINE_TRACE_ID
                && l["message"] == "task succeeded at submission"),
        "no inline line in trace {INLINE_TRACE_ID}:\n{api_log}"
    );
}

#[tokio::test]
async fn the_human_readable_log_in_a_file_has_no_colour_codes() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..TestOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("api.log");
    let port = free_port();
    let mut api = ttsq(&app, "api", &log)
        .env("TTSQ_LOG_FORMAT", "pretty")
        .env("RUST_LOG", "info")
        .env("TTSQ_SERVER_LISTEN", format!("127.0.0.1:{port}"))
        .spawn()
        .expect("ttsq api starts");
    let base = format!("http://127.0.0.1:{port}");
    wait_until_healthy(&app.http, &base).await;
    let missing = app
        .http
        .get(format!("{base}/v1/tts/jobs/{}", uuid::Uuid::nil()))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .expect("request sent");
    assert_eq!(missing.status(), 404);
    signal_and_wait(&mut api, "-TERM");

    let text = std::fs::read_to_string(&log).expect("log readable");
    assert!(text.contains("API listening"), "{text}");
    assert!(
        !text.contains('\x1b'),
        "escape codes in a log file:\n{}",
        text.escape_debug()
    );
}
