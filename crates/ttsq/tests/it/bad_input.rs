//! Every kind of bad input gets a clear 4xx problem naming the field, and
//! none of them writes a task row or a queue message.

use serde_json::{Value, json};
use ttsq_testkit::{TestApp, TestOptions};

const ADMIN_TOKEN: &str = "admin-token-for-bad-input-tests-0123";

struct Case {
    name: &'static str,
    content_type: Option<&'static str>,
    auth: Auth,
    body: Vec<u8>,
    status: u16,
    field: Option<&'static str>,
}

enum Auth {
    Valid,
    Missing,
    Invalid,
}

fn json_case(name: &'static str, body: Value, field: &'static str) -> Case {
    Case {
        name,
        content_type: Some("application/json"),
        auth: Auth::Valid,
        body: body.to_string().into_bytes(),
        status: 400,
        field: Some(field),
    }
}

#[tokio::test]
async fn each_bad_input_is_a_problem_naming_the_field_and_writes_nothing() {
    let app = TestApp::spawn_with(TestOptions {
        // A worker would consume a stray message; without one the queue depth proves none was sent.
        worker: false,
        env: vec![
            ("TTSQ_SERVER_MAX_BODY_BYTES".into(), "65536".into()),
            // A text of 10,001 characters is over every limit then.
            ("TTSQ_LIMITS_MAX_LONG_TEXT_CHARS".into(), "10000".into()),
        ],
        ..Default::default()
    })
    .await;
    let good = json!({"text": "hello", "dialect": "en-gb"});
    let cases = vec![
        Case {
            name: "malformed JSON",
            content_type: Some("application/json"),
            auth: Auth::Valid,
            body: b"{\"text\": \"hello\", ".to_vec(),
            status: 400,
            field: Some(""),
        },
        Case {
            name: "wrong content type",
            content_type: Some("text/plain"),
            auth: Auth::Valid,
            body: good.to_string().into_bytes(),
            status: 415,
            field: None,
        },
        Case {
            name: "no content type",
            content_type: None,
            auth: Auth::Valid,
            body: good.to_string().into_bytes(),
            status: 415,
            field: None,
        },
        Case {
            name: "body over the limit",
            content_type: Some("application/json"),
            auth: Auth::Valid,
            body: json!({"text": "a ".repeat(40_000), "dialect": "en-gb"})
                .to_string()
                .into_bytes(),
            status: 413,
            field: None,
        },
        json_case(
            "empty text",
            json!({"text": "", "dialect": "en-gb"}),
            "text",
        ),
        json_case(
            "whitespace-only text",
            json!({"text": " \n\t ", "dialect": "en-gb"}),
            "text",
        ),
        json_case(
            "text over the limit",
            json!({"text": "x ".repeat(5_001), "dialect": "en-gb"}),
            "text",
        ),
        json_case("missing text", json!({"dialect": "en-gb"}), "text"),
        json_case(
            "unknown dialect",
            json!({"text": "hi", "dialect": "tlh"}),
            "dialect",
        ),
        json_case(
            "unknown voice",
            json!({"text": "hi", "dialect": "en-gb", "voice": "zz9"}),
            "voice",
        ),
        json_case(
            "speed too high",
            json!({"text": "hi", "dialect": "en-gb", "speed": 3.0}),
            "speed",
        ),
        json_case(
            "speed too low",
            json!({"text": "hi", "dialect": "en-gb", "speed": 0.1}),
            "speed",
        ),
        json_case(
            "unsupported format",
            json!({"text": "hi", "dialect": "en-gb", "format": "aac"}),
            "format",
        ),
        json_case(
            "unknown priority",
            json!({"text": "hi", "dialect": "en-gb", "priority": "asap"}),
            "priority",
        ),
        json_case(
            "wrong type",
            json!({"text": ["hi"], "dialect": "en-gb"}),
            "text",
        ),
        Case {
            name: "missing API key",
            content_type: Some("application/json"),
            auth: Auth::Missing,
            body: good.to_string().into_bytes(),
            status: 401,
            field: None,
        },
        Case {
            name: "invalid API key",
            content_type: Some("application/json"),
            auth: Auth::Invalid,
            body: good.to_string().into_bytes(),
            status: 401,
            field: None,
        },
    ];

    for case in &cases {
        let mut request = app
            .http
            .post(format!("{}/v1/tts/jobs", app.base_url))
            .body(case.body.clone());
        if let Some(content_type) = case.content_type {
            request = request.header("content-type", content_type);
        }
        request = match case.auth {
            Auth::Valid => request.bearer_auth(&app.api_key),
            Auth::Missing => request,
            Auth::Invalid => {
                request.bearer_auth("ttsq_0000000000000000000000000000000000000000000000000")
            }
        };
        let response = request.send().await.expect("request sent");

        let status = response.status().as_u16();
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        let problem: Value = response.json().await.expect("a JSON problem body");
        assert_eq!(status, case.status, "{}: {problem}", case.name);
        assert_eq!(content_type, "application/problem+json", "{}", case.name);
        assert_eq!(problem["status"], case.status, "{}", case.name);
        assert!(
            problem["type"].as_str().is_some_and(|t| !t.is_empty()),
            "{}",
            case.name
        );
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{}",
            case.name
        );
        if let Some(field) = case.field {
            let errors = problem["errors"].as_array().expect("field errors");
            assert_eq!(errors[0]["field"], field, "{}: {problem}", case.name);
            assert!(
                errors[0]["reason"].as_str().is_some_and(|r| r.len() > 5),
                "{}",
                case.name
            );
        }
    }

    assert_eq!(
        app.scalar("SELECT count(*) FROM tasks").await,
        0,
        "no task row was written"
    );
    assert_eq!(
        app.services.broker.depths().await.unwrap(),
        (0, 0),
        "no message was queued"
    );

    // The same client with a good request is accepted, so the cases above
    // failed for their own reason and not for a broken setup.
    assert_eq!(app.submit(&good).await.status(), 202);
    app.wait_published(1).await;
    assert_eq!(app.services.broker.depths().await.unwrap(), (1, 0));
}

#[tokio::test]
async fn a_bad_long_poll_and_audio_of_an_unfinished_task_are_clear_errors() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    let id = app
        .submit_ok(&json!({"text": "not yet", "dialect": "en-gb"}))
        .await;

    let too_long = app
        .get_as(&app.api_key, &format!("/v1/tts/jobs/{id}?wait=3600"))
        .await;
    assert_eq!(too_long.status(), 400);
    let problem: Value = too_long.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "wait");

    let garbage = app
        .get_as(&app.api_key, &format!("/v1/tts/jobs/{id}?wait=soon"))
        .await;
    assert_eq!(garbage.status(), 400);

    let started = std::time::Instant::now();
    let queued: Value = app
        .get_as(&app.api_key, &format!("/v1/tts/jobs/{id}?wait=1"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(queued["status"], "queued");
    assert!(started.elapsed().as_millis() >= 900, "wait=1 long-polled");

    let audio = app
        .get_as(&app.api_key, &format!("/v1/tts/jobs/{id}/audio"))
        .await;
    assert_eq!(audio.status(), 409);
}

#[tokio::test]
async fn an_undecodable_message_goes_to_the_dead_letter_queue_and_the_worker_keeps_going() {
    let app = TestApp::spawn().await;
    app.services
        .broker
        .publish_raw(b"{\"not\": \"a job\"}")
        .await
        .unwrap();
    let id = app
        .submit_ok(&json!({"text": "still working", "dialect": "en-gb", "format": "wav"}))
        .await;

    assert_eq!(app.wait_for(id).await["status"], "succeeded");
    let (body, reason) = app
        .services
        .broker
        .take_dead_letter()
        .await
        .unwrap()
        .expect("the poison message is in the DLQ");
    assert_eq!(body, b"{\"not\": \"a job\"}");
    assert_eq!(reason.as_deref(), Some("malformed"));
}

#[tokio::test]
async fn an_idempotency_key_returns_the_first_task() {
    let app = TestApp::spawn().await;
    let send = || {
        app.http
            .post(format!("{}/v1/tts/jobs", app.base_url))
            .bearer_auth(&app.api_key)
            .header("idempotency-key", "order-42")
            .json(&json!({"text": "once only", "dialect": "en-gb", "format": "wav"}))
            .send()
    };
    let first: Value = send().await.unwrap().json().await.unwrap();
    let second: Value = send().await.unwrap().json().await.unwrap();
    assert_eq!(first["task_id"], second["task_id"]);
    assert_eq!(app.scalar("SELECT count(*) FROM tasks").await, 1);
}

#[tokio::test]
async fn concurrent_duplicates_of_an_idempotency_key_create_one_task() {
    let app = TestApp::spawn().await;
    let send = || {
        app.http
            .post(format!("{}/v1/tts/jobs", app.base_url))
            .bearer_auth(&app.api_key)
            .header("idempotency-key", "burst-7")
            .json(&json!({"text": "exactly once", "dialect": "en-gb", "format": "wav"}))
            .send()
    };
    let answers = futures::future::join_all((0..20).map(|_| send())).await;
    let mut ids = std::collections::HashSet::new();
    for answer in answers {
        let answer = answer.unwrap();
        assert_eq!(answer.status(), 202);
        let body: Value = answer.json().await.unwrap();
        ids.insert(body["task_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "every duplicate got the first task");
    assert_eq!(app.scalar("SELECT count(*) FROM tasks").await, 1);
    app.drain(std::time::Duration::from_secs(30)).await;
    assert_eq!(app.scalar("SELECT count(*) FROM usage_ledger").await, 1);
}

/// What a hostile request got: the status, or the transport error when the
/// server dropped the connection (a panicking handler), and the fields its
/// problem names.
async fn answer(request: reqwest::RequestBuilder) -> Result<(u16, Vec<String>, Value), String> {
    let response = request
        .send()
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status == 400 {
        assert_eq!(content_type, "application/problem+json", "{body}");
    }
    let fields = body["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["field"].as_str().map(str::to_owned))
        .collect();
    Ok((status, fields, body))
}

/// The hex cursor of `GET /v1/tts/jobs` for a `created_at` of `micros`.
fn cursor_at(micros: i64) -> String {
    format!("{:016x}{}", micros, "00".repeat(16))
}

#[tokio::test]
async fn hostile_batch_usage_and_listing_inputs_are_problems_naming_the_field() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        // Batch callbacks are only checked (and stored) with webhooks on.
        env: vec![
            (
                "TTSQ_WEBHOOKS_SIGNING_KEY".into(),
                "webhook-signing-key-for-tests".into(),
            ),
            ("TTSQ_ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
        ],
        ..Default::default()
    })
    .await;
    // Year -5000: chrono holds it, Postgres (from 4713 BC) does not.
    let year_minus_5000 = -(7_000 * 365 * 86_400 * 1_000_000_i64 + 62_000_000_000_000);
    let gets = [
        ("/v1/usage?to=-262143-01-01".to_owned(), "to"),
        ("/v1/usage?from=-262143-01-01".to_owned(), "from"),
        ("/v1/usage?from=-5000-01-01&to=-5000-01-02".to_owned(), "to"),
        ("/v1/usage?from=0000-12-01&to=0000-12-31".to_owned(), "to"),
        ("/v1/usage?to=%2B262143-12-31".to_owned(), "to"),
        (
            format!("/v1/tts/jobs?cursor={}", cursor_at(year_minus_5000)),
            "cursor",
        ),
    ];
    let item = |extra: Value| {
        let mut item = json!({"text": "hello", "dialect": "en-gb"});
        item.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        item
    };
    let batches = [
        (
            json!({"items": [item(json!({"custom_id": "a\u{0}"}))]}),
            "items[0].custom_id",
        ),
        (
            json!({"items": [item(json!({"custom_id": "line\nbreak"}))]}),
            "items[0].custom_id",
        ),
        (
            json!({"items": [item(json!({"metadata": {"k": "\u{0}"}}))]}),
            "items[0].metadata",
        ),
        (
            json!({"items": [item(json!({}))], "metadata": {"k": "a\u{0}b"}}),
            "metadata",
        ),
        (
            json!({"items": [item(json!({}))], "metadata": {"k\u{0}": 1}}),
            "metadata",
        ),
        (
            json!({"items": [item(json!({}))], "callback_url": "http://93.184.216.34/a\u{0}"}),
            "callback_url",
        ),
    ];

    let mut wrong = Vec::new();
    for (path, field) in &gets {
        let request = app
            .http
            .get(format!("{}{path}", app.base_url))
            .bearer_auth(&app.api_key);
        match answer(request).await {
            Ok((400, fields, _)) if fields.iter().any(|f| f == field) => {}
            other => wrong.push(format!("GET {path}: {other:?}")),
        }
    }
    for (body, field) in &batches {
        let request = app
            .http
            .post(format!("{}/v1/tts/batches", app.base_url))
            .bearer_auth(&app.api_key)
            .json(body);
        match answer(request).await {
            Ok((400, fields, _)) if fields.iter().any(|f| f == field) => {}
            other => wrong.push(format!("POST /v1/tts/batches {body}: {other:?}")),
        }
    }
    // The admin API takes tenant names and key prefixes in paths and bodies.
    let admin = [
        ("GET", "/v1/admin/tenants/a%00b", Value::Null),
        (
            "PATCH",
            "/v1/admin/tenants/a%00b",
            json!({"daily_characters": 5}),
        ),
        ("POST", "/v1/admin/tenants/a%00b/keys", Value::Null),
        ("GET", "/v1/admin/tenants/a%00b/keys", Value::Null),
        ("GET", "/v1/admin/usage?tenant=a%00b", Value::Null),
        ("DELETE", "/v1/admin/keys/ttsq_%00", Value::Null),
        (
            "PUT",
            "/v1/admin/tenants/a%00b/webhook",
            json!({"url": "http://93.184.216.34/h"}),
        ),
        (
            "POST",
            "/v1/admin/tenants/a%00b/webhook-secret",
            Value::Null,
        ),
        ("POST", "/v1/admin/tenants", json!({"name": "a\u{0}b"})),
    ];
    for (method, path, body) in &admin {
        let mut request = app
            .http
            .request(method.parse().unwrap(), format!("{}{path}", app.base_url))
            .bearer_auth(ADMIN_TOKEN);
        if !body.is_null() {
            request = request.json(body);
        }
        match answer(request).await {
            Ok((400 | 404, _, _)) => {}
            other => wrong.push(format!("{method} {path} {body}: {other:?}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "not a 400 naming the field (404 for an admin path):\n{}",
        wrong.join("\n")
    );
    assert_eq!(app.scalar("SELECT count(*) FROM tasks").await, 0);

    // The limits of the accepted ranges are served, so the refusals above are
    // the inputs' own.
    for path in [
        "/v1/usage?from=0001-01-01&to=0001-01-31",
        "/v1/usage?from=9999-12-01&to=9999-12-31",
    ] {
        let response = app.get_as(&app.api_key, path).await;
        assert_eq!(response.status(), 200, "{path}");
    }
}

/// Peak resident memory of process `pid`, in bytes (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in kB");
    kib * 1024
}

/// Finding 5 of the hostile-tenant review: a batch body of millions of tiny
/// items (`[0,0,…]`, 32 MiB, the body limit) was parsed whole into a
/// `Vec<Value>` of ~1 GB before its size was checked. Eight such requests at
/// once must leave an API process (the real binary, alone in its process)
/// within what their bodies take, and each is refused naming `items`.
#[tokio::test]
async fn batch_bodies_of_millions_of_items_are_refused_while_parsing_and_memory_stays_bounded() {
    const PARALLEL: usize = 8;
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let mut api = app
        .cli_command(env!("CARGO_BIN_EXE_ttsq"))
        .arg("api")
        .env("TTSQ_SERVER_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("ttsq api starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while app.http.get(format!("{base}/health")).send().await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "ttsq api did not come up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let baseline = peak_rss(api.id());

    // 32,000,014 bytes: under the batch body limit (32 × 1 MiB).
    let mut body = Vec::with_capacity(32_000_016);
    body.extend_from_slice(b"{\"items\":[");
    for _ in 0..15_999_999 {
        body.extend_from_slice(b"0,");
    }
    body.extend_from_slice(b"0]}");
    let requests = (0..PARALLEL).map(|_| {
        app.http
            .post(format!("{base}/v1/tts/batches"))
            .bearer_auth(&app.api_key)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    });
    let answers = futures::future::join_all(requests).await;
    let peak = peak_rss(api.id());
    let _ = api.kill();
    let _ = api.wait();

    let mut wrong = Vec::new();
    for answer in answers {
        match answer {
            Ok(response) => {
                let status = response.status().as_u16();
                let problem: Value = response.json().await.unwrap_or_default();
                let fields: Vec<&str> = problem["errors"]
                    .as_array()
                    .map(|e| e.iter().filter_map(|e| e["field"].as_str()).collect())
                    .unwrap_or_default();
                if status != 400 || fields != ["items"] {
                    wrong.push(format!("{status} {problem}"));
                }
            }
            Err(err) => wrong.push(format!("no answer: {err}")),
        }
    }
    // Each request may hold its body twice while reading it (the chunks,
    // then one buffer); nothing may grow with the number of items.
    let allowed = PARALLEL as u64 * 2 * body.len() as u64;
    let grew = peak.saturating_sub(baseline);
    println!(
        "API peak RSS {} MiB, {} MiB over its idle peak; allowed {} MiB",
        peak >> 20,
        grew >> 20,
        allowed >> 20
    );
    assert!(
        wrong.is_empty(),
        "answers that are not a 400 naming `items`: {wrong:?}"
    );
    assert!(
        grew <= allowed,
        "the API grew by {} MiB for {PARALLEL} batch bodies of {} MiB (allowed {} MiB)",
        grew >> 20,
        body.len() >> 20,
        allowed >> 20
    );
}
