//! Signed webhooks end to end: a local receiver (axum on port 0) gets each
//! terminal task once with a valid Standard Webhooks signature (checked by
//! the Rust SDK's verifier and by the reference Python library,
//! `standardwebhooks` from PyPI), retries with back-off after 500s, the
//! delivery log, batch events, replay, SSRF refusals and secret rotation.
//! Each delivered body is validated against the schema the served OpenAPI
//! document gives its event (its `webhooks` section), so the document
//! cannot drift from what is sent.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post};
use serde_json::{Value, json};
use ttsq_client::{WebhookError, WebhookVerifier};
use ttsq_testkit::{TestApp, TestOptions};

use crate::documented::{schema_errors, served_document};

const SIGNING_KEY: &str = "webhook-signing-key-for-tests";
const ADMIN_TOKEN: &str = "admin-token-for-webhook-tests-0123";
/// A well-formed secret that is no tenant's.
const OTHER_SECRET: &str = "whsec_c2VjcmV0LW9mLWFub3RoZXItdGVuYW50";

/// One request the receiver got.
#[derive(Clone)]
struct Received {
    at: Instant,
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn webhook_id(&self) -> &str {
        self.header("webhook-id")
    }

    /// The entries of `webhook-signature`, one per signing secret.
    fn signatures(&self) -> Vec<&str> {
        self.header("webhook-signature").split(' ').collect()
    }
}

/// A webhook receiver answering the scripted statuses in turn (then 200).
#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<Vec<u16>>>,
}

impl Receiver {
    async fn start(script: Vec<u16>) -> (Self, String) {
        let receiver = Self {
            received: Arc::default(),
            script: Arc::new(Mutex::new(script)),
        };
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("receiver bound");
        let url = format!("http://{}/hook", listener.local_addr().expect("address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().expect("receiver lock").clone()
    }

    async fn wait_for(&self, count: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.received();
            if got.len() >= count {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "only {} webhooks arrived",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    receiver
        .received
        .lock()
        .expect("receiver lock")
        .push(Received {
            at: Instant::now(),
            headers,
            body,
        });
    let mut script = receiver.script.lock().expect("script lock");
    let code = if script.is_empty() {
        200
    } else {
        script.remove(0)
    };
    StatusCode::from_u16(code).expect("status code")
}

/// What a receiver does with the Rust SDK: verify the delivery with `secret`.
fn verify(secret: &str, received: &Received) -> Result<(), WebhookError> {
    WebhookVerifier::new(secret)
        .expect("a whsec_ secret")
        .verify(&received.headers, &received.body)
}

async fn spawn(allow_loopback: bool) -> TestApp {
    let mut env = vec![
        (
            "TTSQ_WEBHOOKS_SIGNING_KEY".to_owned(),
            SIGNING_KEY.to_owned(),
        ),
        (
            "TTSQ_QUEUE_WEBHOOK_RETRY_DELAYS_MS".to_owned(),
            "300,600".to_owned(),
        ),
        ("TTSQ_ADMIN_TOKEN".to_owned(), ADMIN_TOKEN.to_owned()),
    ];
    if allow_loopback {
        env.push((
            "TTSQ_WEBHOOKS_ALLOW_PRIVATE".to_owned(),
            "127.0.0.1/32,::1/128".to_owned(),
        ));
    }
    TestApp::spawn_with(TestOptions {
        env,
        ..TestOptions::default()
    })
    .await
}

/// The default tenant's current secret, through the admin API.
async fn secret(app: &TestApp, rotate: bool) -> String {
    let url = format!("{}/v1/admin/tenants/default/webhook-secret", app.base_url);
    let request = if rotate {
        app.http.post(url)
    } else {
        app.http.get(url)
    };
    let response = request.bearer_auth(ADMIN_TOKEN).send().await.expect("sent");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON");
    body["webhook_secret"].as_str().expect("secret").to_owned()
}

#[tokio::test]
async fn a_terminal_task_is_posted_once_with_a_valid_signature_and_logged() {
    let app = spawn(true).await;
    let (receiver, url) = Receiver::start(Vec::new()).await;
    let secret = secret(&app, false).await;

    let task = app
        .submit_ok(&json!({"text": "Tell me when done.", "dialect": "en-us", "callback_url": url}))
        .await;
    app.wait_for(task).await;
    let got = receiver.wait_for(1).await;
    // Nothing more arrives for the same task.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.received().len(), 1);

    assert_eq!(
        verify(&secret, &got[0]),
        Ok(()),
        "signature does not verify"
    );
    assert_eq!(
        verify(OTHER_SECRET, &got[0]),
        Err(WebhookError::NoMatchingSignature)
    );
    let sent = got[0]
        .header("webhook-timestamp")
        .parse::<i64>()
        .expect("unix seconds");
    assert!((chrono::Utc::now().timestamp() - sent).abs() < 60);
    assert!(
        got[0].headers.get("ttsq-signature").is_none(),
        "the pre-standard header is gone"
    );
    let body: Value = serde_json::from_slice(&got[0].body).expect("JSON body");
    assert_eq!(body["type"], "task.completed");
    assert_eq!(body["data"]["task_id"], task.to_string());
    assert_eq!(body["data"]["status"], "succeeded");
    assert!(body["data"]["audio_url"].as_str().is_some());
    assert_eq!(body["id"].as_str(), Some(got[0].webhook_id()));
    let document = served_document(&app).await;
    let schema = webhook_schema(&document, "task.completed");
    assert_eq!(
        schema_errors(&document, &schema, &body),
        Vec::<String>::new()
    );
    // The check has teeth: a body that strays from the document fails it.
    let mut strayed = body.clone();
    strayed["data"]["status"] = json!("finished");
    strayed["data"]["unknown"] = json!(1);
    assert_eq!(schema_errors(&document, &schema, &strayed).len(), 2);

    let sql = format!(
        "SELECT count(*) FROM webhook_deliveries
          WHERE task_id = '{task}' AND status = 'delivered' AND attempts = 1 AND last_status_code = 200"
    );
    assert_eq!(app.scalar(&sql).await, 1);
    assert_eq!(
        app.scalar("SELECT count(*) FROM webhook_attempts WHERE status_code = 200 AND attempt = 1")
            .await,
        1
    );

    // Replay by id: delivered again, logged as a new first attempt.
    let id: uuid::Uuid = got[0].webhook_id().parse().expect("uuid");
    let replayed = app
        .services
        .store
        .replay_webhooks(Some(id), None)
        .await
        .expect("replayed");
    assert_eq!(replayed, 1);
    let again = receiver.wait_for(2).await;
    assert_eq!(again[1].webhook_id(), got[0].webhook_id());
    assert_eq!(verify(&secret, &again[1]), Ok(()));
    // The receiver has the POST before the worker logs its answer.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut attempts = app.scalar("SELECT count(*) FROM webhook_attempts").await;
    while attempts < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        attempts = app.scalar("SELECT count(*) FROM webhook_attempts").await;
    }
    assert_eq!(attempts, 2);
}

#[tokio::test]
async fn a_failing_receiver_is_retried_with_growing_back_off() {
    let app = spawn(true).await;
    let (receiver, url) = Receiver::start(vec![500, 503]).await;

    let task = app
        .submit_ok(&json!({"text": "Retry me.", "dialect": "en-us", "callback_url": url}))
        .await;
    let got = receiver.wait_for(3).await;
    let first_gap = got[1].at - got[0].at;
    let second_gap = got[2].at - got[1].at;
    assert!(first_gap >= Duration::from_millis(280), "{first_gap:?}");
    assert!(second_gap >= Duration::from_millis(580), "{second_gap:?}");
    // No attempt follows the success: the window it would come in.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 3);
    // Every attempt carries the event's one id (receivers dedupe on it),
    // each signed afresh.
    let secret = secret(&app, false).await;
    for attempt in &got {
        assert_eq!(attempt.webhook_id(), got[0].webhook_id());
        assert_eq!(verify(&secret, attempt), Ok(()));
    }

    let codes: Vec<(i32, Option<i32>)> = ttsq_store::sqlx::query_as(
        "SELECT a.attempt, a.status_code FROM webhook_attempts a
           JOIN webhook_deliveries d ON d.id = a.delivery_id
          WHERE d.task_id = $1 ORDER BY a.attempt",
    )
    .bind(task)
    .fetch_all(app.services.store.pool())
    .await
    .expect("attempts");
    assert_eq!(codes, vec![(1, Some(500)), (2, Some(503)), (3, Some(200))]);
    let sql = format!(
        "SELECT count(*) FROM webhook_deliveries WHERE task_id = '{task}' AND status = 'delivered' AND attempts = 3"
    );
    assert_eq!(app.scalar(&sql).await, 1);
}

#[tokio::test]
async fn a_receiver_failing_every_attempt_is_given_up() {
    let app = spawn(true).await;
    let (receiver, url) = Receiver::start(vec![500, 500, 500, 500]).await;
    let task = app
        .submit_ok(&json!({"text": "Never heard.", "dialect": "en-us", "callback_url": url}))
        .await;
    // Two delays: three attempts in all.
    receiver.wait_for(3).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let sql = format!(
        "SELECT count(*) FROM webhook_deliveries WHERE task_id = '{task}' AND status = 'failed' AND attempts = 3"
    );
    while app.scalar(&sql).await == 0 {
        assert!(Instant::now() < deadline, "never marked failed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing is sent after the give-up: the window it would come in.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.received().len(), 3);
}

#[tokio::test]
async fn a_batch_posts_one_event_when_every_item_is_terminal() {
    let app = spawn(true).await;
    let (receiver, url) = Receiver::start(Vec::new()).await;
    let secret = secret(&app, false).await;
    let response = app
        .http
        .post(format!("{}/v1/tts/batches", app.base_url))
        .bearer_auth(&app.api_key)
        .json(&json!({"callback_url": url, "items": [
            {"text": "One.", "dialect": "en-us"},
            {"text": "Two.", "dialect": "en-us"},
            {"text": "Three.", "dialect": "en-us"},
        ]}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.expect("JSON");
    let got = receiver.wait_for(1).await;
    // No item event follows: the window one would come in.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        receiver.received().len(),
        1,
        "items send no events of their own"
    );
    assert_eq!(verify(&secret, &got[0]), Ok(()));
    let body: Value = serde_json::from_slice(&got[0].body).expect("JSON");
    assert_eq!(body["type"], "batch.completed");
    assert_eq!(body["data"]["batch_id"], accepted["batch_id"]);
    assert_eq!(body["data"]["counts"]["succeeded"], 3);
    let document = served_document(&app).await;
    let schema = webhook_schema(&document, "batch.completed");
    assert_eq!(
        schema_errors(&document, &schema, &body),
        Vec::<String>::new()
    );
    let accepted_schema = document["paths"]["/v1/tts/batches"]["post"]["responses"]["202"]
        ["content"]["application/json"]["schema"]
        .clone();
    assert_eq!(
        schema_errors(&document, &accepted_schema, &accepted),
        Vec::<String>::new()
    );
}

/// The schema of `event`'s body in the document's `webhooks`.
fn webhook_schema(document: &Value, event: &str) -> Value {
    let schema = &document["webhooks"][event]["post"]["requestBody"]["content"]["application/json"]
        ["schema"];
    assert!(schema.is_object(), "webhook {event} is not documented");
    schema.clone()
}

#[tokio::test]
async fn internal_targets_are_refused_without_an_allowlist() {
    let app = spawn(false).await;
    for url in [
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8080/hook",
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
    ] {
        let response = app
            .submit(&json!({"text": "x", "dialect": "en-us", "callback_url": url}))
            .await;
        assert_eq!(response.status(), 400, "{url}");
        let problem: Value = response.json().await.expect("JSON");
        assert_eq!(
            problem["errors"][0]["field"], "callback_url",
            "{url}: {problem}"
        );
        let response = app
            .http
            .post(format!("{}/v1/tts/batches", app.base_url))
            .bearer_auth(&app.api_key)
            .json(&json!({"callback_url": url, "items": [{"text": "x", "dialect": "en-us"}]}))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 400, "{url}");
    }
    // The tenant default goes through the same guard.
    let response = app
        .http
        .put(format!("{}/v1/admin/tenants/default/webhook", app.base_url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"webhook_url": "http://192.168.0.10/hook"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 400);
    assert_eq!(app.scalar("SELECT count(*) FROM tasks").await, 0);
}

#[tokio::test]
async fn a_target_that_became_internal_is_refused_at_delivery() {
    let app = spawn(true).await;
    let (receiver, url) = Receiver::start(Vec::new()).await;
    let task = app
        .submit_ok(&json!({"text": "Moved away.", "dialect": "en-us", "callback_url": url}))
        .await;
    app.wait_for(task).await;
    receiver.wait_for(1).await;
    // As if DNS now pointed at the metadata service: the stored target is
    // re-checked on every attempt.
    app.execute(
        "UPDATE webhook_deliveries SET target_url = 'http://169.254.169.254/' , status = 'failed'",
    )
    .await;
    let replayed = app
        .services
        .store
        .replay_webhooks(None, Some(chrono::Utc::now() - chrono::Duration::hours(1)))
        .await
        .expect("replayed");
    assert_eq!(replayed, 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    let sql = "SELECT count(*) FROM webhook_attempts WHERE error LIKE 'target refused%' AND status_code IS NULL";
    while app.scalar(sql).await == 0 {
        assert!(Instant::now() < deadline, "never refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        app.scalar("SELECT count(*) FROM webhook_deliveries WHERE status = 'failed'")
            .await,
        1
    );
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn a_rotated_secret_signs_beside_the_old_one_and_the_tenant_default_is_used() {
    let app = spawn(true).await;
    let (receiver, url) = Receiver::start(Vec::new()).await;
    let response = app
        .http
        .put(format!("{}/v1/admin/tenants/default/webhook", app.base_url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"webhook_url": url}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let old = secret(&app, false).await;
    let new = secret(&app, true).await;
    assert_ne!(old, new);
    assert_eq!(secret(&app, false).await, new);

    // No callback_url: the tenant's default target gets the event.
    let task = app
        .submit_ok(&json!({"text": "Rotated.", "dialect": "en-us"}))
        .await;
    app.wait_for(task).await;
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].signatures().len(), 2, "{:?}", got[0].signatures());
    assert_eq!(verify(&new, &got[0]), Ok(()));
    assert_eq!(verify(&old, &got[0]), Ok(()));
    // The old secret stops signing once its grace period is over.
    app.execute("UPDATE tenants SET webhook_previous_until = now() - interval '1 second'")
        .await;
    let task = app
        .submit_ok(&json!({"text": "After the grace period.", "dialect": "en-us"}))
        .await;
    app.wait_for(task).await;
    let got = receiver.wait_for(2).await;
    assert_eq!(got[1].signatures().len(), 1);
    assert_eq!(verify(&new, &got[1]), Ok(()));
    assert_eq!(
        verify(&old, &got[1]),
        Err(WebhookError::NoMatchingSignature)
    );
}

/// A receiver that answers its first request `500` with a body of `len`
/// bytes, streamed as fast as the worker takes it, and later ones `200`.
/// Returns the bytes of that body the worker took off the socket (those
/// written before the worker hung up), and the URL.
async fn flooding_receiver(len: u64) -> (Arc<std::sync::atomic::AtomicU64>, String) {
    use std::sync::atomic::{AtomicU64, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("receiver bound");
    let url = format!("http://{}/hook", listener.local_addr().expect("address"));
    let written = Arc::new(AtomicU64::new(0));
    let counter = written.clone();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut socket, _)) = listener.accept().await {
            let flood = std::mem::take(&mut first);
            let counter = counter.clone();
            tokio::spawn(async move {
                // Read the request: headers, then its content-length of body.
                let mut request = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                if !flood {
                    let _ = socket
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                    return;
                }
                let head = format!(
                    "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
                );
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                let mut left = len;
                while left > 0 {
                    let n = usize::try_from(left.min(chunk.len() as u64)).expect("small");
                    if socket.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                    left -= n as u64;
                }
            });
        }
    });
    (written, url)
}

#[tokio::test]
async fn a_receiver_cannot_make_a_worker_read_an_endless_error_body() {
    use std::sync::atomic::Ordering;

    let app = spawn(true).await;
    // 256 MiB: held whole, it would take a worker's memory; the worker
    // should keep a few KiB for its log and hang up.
    let (written, url) = flooding_receiver(256 * 1024 * 1024).await;
    let task = app
        .submit_ok(&json!({"text": "Flood me.", "dialect": "en-us", "callback_url": url}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let sql = format!(
        "SELECT count(*) FROM webhook_deliveries WHERE task_id = '{task}' AND status = 'delivered'"
    );
    while app.scalar(&sql).await == 0 {
        assert!(Instant::now() < deadline, "never delivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        app.scalar("SELECT count(*) FROM webhook_attempts WHERE status_code = 500")
            .await,
        1,
        "the flooding answer was logged as a failed attempt"
    );
    // What the socket buffers hold is all a receiver gets out before the
    // worker hangs up: a few MiB at most on loopback.
    let taken = written.load(Ordering::Relaxed);
    assert!(
        taken < 16 * 1024 * 1024,
        "the worker read {taken} bytes of the error body"
    );
}

#[tokio::test]
async fn an_undecodable_webhook_message_is_dead_lettered_and_its_event_failed() {
    let app = spawn(true).await;
    let tenant: uuid::Uuid =
        ttsq_store::sqlx::query_scalar("SELECT id FROM tenants WHERE name = 'default'")
            .fetch_one(app.services.store.pool())
            .await
            .expect("the default tenant");
    // An event the relay already published (so only its message can settle
    // it), and a message for it that names the event but is not one.
    let event = uuid::Uuid::now_v7();
    ttsq_store::sqlx::query(
        "INSERT INTO webhook_deliveries (id, tenant_id, event, target_url, published_at)
         VALUES ($1, $2, 'task.completed', 'http://127.0.0.1:9/hook', now())",
    )
    .bind(event)
    .bind(tenant)
    .execute(app.services.store.pool())
    .await
    .expect("event inserted");
    let named = json!({"delivery_id": event, "attempt": "first"}).to_string();
    app.services
        .broker
        .publish_raw_webhook(named.as_bytes())
        .await
        .expect("published");
    app.services
        .broker
        .publish_raw_webhook(b"not even JSON")
        .await
        .expect("published");

    let deadline = Instant::now() + Duration::from_secs(20);
    let sql = format!(
        "SELECT count(*) FROM webhook_deliveries WHERE id = '{event}' AND status = 'failed'"
    );
    while app.scalar(&sql).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the event is still {:?}",
            ttsq_store::sqlx::query_scalar::<_, String>(
                "SELECT status FROM webhook_deliveries WHERE id = $1"
            )
            .bind(event)
            .fetch_one(app.services.store.pool())
            .await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut dead = Vec::new();
    while dead.len() < 2 {
        match app
            .services
            .broker
            .take_dead_letter()
            .await
            .expect("DLQ read")
        {
            Some((body, reason)) => dead.push((body, reason)),
            None => {
                assert!(Instant::now() < deadline, "dead letters: {dead:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let bodies: Vec<&[u8]> = dead.iter().map(|(b, _)| b.as_slice()).collect();
    assert!(bodies.contains(&named.as_bytes()), "{dead:?}");
    assert!(bodies.contains(&b"not even JSON".as_slice()), "{dead:?}");
    assert!(
        dead.iter()
            .all(|(_, reason)| reason.as_deref() == Some("malformed-webhook")),
        "{dead:?}"
    );
}

/// Requests a [`slow_receiver`] got, and the most it held at once.
#[derive(Default)]
struct SlowCounts {
    got: std::sync::atomic::AtomicU64,
    now: std::sync::atomic::AtomicU64,
    peak: std::sync::atomic::AtomicU64,
}

/// A receiver that holds every request `delay` before answering 200.
async fn slow_receiver(delay: Duration) -> (Arc<SlowCounts>, String) {
    use std::sync::atomic::Ordering::SeqCst;
    let counts = Arc::new(SlowCounts::default());
    let seen = Arc::clone(&counts);
    let app = Router::new().route(
        "/slow",
        post(move || {
            let seen = Arc::clone(&seen);
            async move {
                seen.got.fetch_add(1, SeqCst);
                let now = seen.now.fetch_add(1, SeqCst) + 1;
                seen.peak.fetch_max(now, SeqCst);
                tokio::time::sleep(delay).await;
                seen.now.fetch_sub(1, SeqCst);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("receiver bound");
    let url = format!("http://{}/slow", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (counts, url)
}

/// Tenant A (of `weight`) sends 8 events to an endpoint taking 10 s each,
/// with `slots` delivery slots and at most 2 in flight per unit of weight;
/// then tenant B's task finishes. Returns how long B's webhook waited after
/// its task finished, and the most deliveries A had in flight at once.
async fn slow_endpoint_beside_another_tenant(weight: i32, slots: u16) -> (Duration, u64) {
    let mut app = TestApp::spawn_with(TestOptions {
        env: vec![
            ("TTSQ_WEBHOOKS_SIGNING_KEY".into(), SIGNING_KEY.into()),
            ("TTSQ_WEBHOOKS_ALLOW_PRIVATE".into(), "127.0.0.1/32".into()),
            ("TTSQ_WEBHOOKS_CONCURRENCY".into(), slots.to_string()),
            ("TTSQ_WEBHOOKS_PER_TENANT_IN_FLIGHT".into(), "2".into()),
            ("TTSQ_ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
        ],
        ..TestOptions::default()
    })
    .await;
    app.services
        .store
        .update_tenant(
            "default",
            &ttsq_store::TenantUpdate {
                weight: Some(weight),
                ..Default::default()
            },
            "test",
        )
        .await
        .expect("weight set");
    let (slow_got, slow_url) = slow_receiver(Duration::from_secs(10)).await;
    let (fast, fast_url) = Receiver::start(Vec::new()).await;
    let other = app.new_tenant("other").await;

    let mut tasks = Vec::new();
    for i in 0..8 {
        tasks.push(
            app.submit_ok(&json!({"text": format!("Slow news {i}."), "dialect": "en-us", "callback_url": slow_url}))
                .await,
        );
    }
    for task in &tasks {
        app.wait_for(*task).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while slow_got.got.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "the slow endpoint got nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let response = app
        .submit_as(
            &other,
            &json!({"text": "Quick news.", "dialect": "en-us", "callback_url": fast_url}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("JSON");
    let task: uuid::Uuid = body["task_id"]
        .as_str()
        .expect("task id")
        .parse()
        .expect("uuid");
    let started = Instant::now();
    let done = loop {
        let status = app
            .scalar(&format!(
                "SELECT count(*) FROM tasks WHERE id = '{task}' AND status = 'succeeded'"
            ))
            .await;
        if status == 1 {
            break Instant::now();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the other tenant's task never finished"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let got = fast.wait_for(1).await;
    let waited = got[0].at.saturating_duration_since(done);
    let slow_peak = slow_got.peak.load(std::sync::atomic::Ordering::SeqCst);
    app.stop_workers().await;
    (waited, slow_peak)
}

/// One tenant's slow endpoint cannot take every delivery slot and keep the
/// other tenants' webhooks waiting behind it: with 4 slots and at most 2 per
/// tenant, tenant A's 8 events to an endpoint taking 10 s each leave room
/// for tenant B's.
#[tokio::test]
async fn a_slow_endpoint_of_one_tenant_does_not_delay_another_tenants_webhooks() {
    let (waited, slow_peak) = slow_endpoint_beside_another_tenant(1, 4).await;
    assert!(
        waited < Duration::from_secs(3),
        "tenant B's webhook waited {waited:?} behind tenant A's slow endpoint"
    );
    assert!(
        slow_peak <= 2,
        "tenant A had {slow_peak} deliveries in flight at once; at most 2 are allowed"
    );
}

/// A tenant's weight scales its share of delivery slots: at weight 2 it
/// may hold 4 at once (2 per unit), and still leaves room for others.
#[tokio::test]
async fn a_tenants_weight_scales_its_share_of_webhook_deliveries() {
    let (waited, slow_peak) = slow_endpoint_beside_another_tenant(2, 6).await;
    assert!(
        waited < Duration::from_secs(3),
        "tenant B's webhook waited {waited:?} behind tenant A's slow endpoint"
    );
    assert!(
        (3..=4).contains(&slow_peak),
        "tenant A of weight 2 had {slow_peak} deliveries in flight at once; 4 are its share"
    );
}

/// A task's webhook carries the task as `GET /v1/tts/jobs/{id}` shows it,
/// speech marks included: both are rendered by the one `TaskView`.
#[tokio::test]
async fn a_task_webhook_carries_the_same_view_as_get_marks_included() {
    let app = spawn(true).await;
    let (receiver, url) = Receiver::start(Vec::new()).await;

    let task = app
        .submit_ok(&json!({
            "text": "Marks travel with the event.",
            "dialect": "en-us",
            "marks": ["word"],
            "callback_url": url,
        }))
        .await;
    app.wait_for(task).await;
    let got = receiver.wait_for(1).await;
    let event: Value = serde_json::from_slice(&got[0].body).expect("JSON body");
    let polled: Value = app
        .get_as(&app.api_key, &format!("/v1/tts/jobs/{task}"))
        .await
        .json()
        .await
        .expect("JSON");

    let data = event["data"].as_object().expect("data is the task");
    let view = polled.as_object().expect("the task");
    let mut data_fields: Vec<&String> = data.keys().collect();
    let mut view_fields: Vec<&String> = view.keys().collect();
    data_fields.sort();
    view_fields.sort();
    assert_eq!(
        data_fields, view_fields,
        "the event and GET differ in fields"
    );
    assert_eq!(data["marks"], json!(["word"]));
    assert!(data["marks_url"].as_str().is_some(), "{event}");
    for (field, value) in view {
        // Presigned URLs are signed afresh at each rendering.
        if !field.ends_with("_url") || field == "status_url" {
            assert_eq!(&data[field], value, "field {field}");
        }
    }
}

/// What a Python receiver does with the Standard Webhooks reference library:
/// `Webhook(secret).verify(body, headers)` on the body and headers as
/// received. Exits 3 when the library refuses the delivery.
const STANDARDWEBHOOKS_SCRIPT: &str = r#"
import json
import sys

from standardwebhooks import Webhook, WebhookVerificationError

secret, headers_path, body_path = sys.argv[1:4]
with open(headers_path) as f:
    headers = json.load(f)
with open(body_path, "rb") as f:
    body = f.read()
try:
    event = Webhook(secret).verify(body, headers)
except WebhookVerificationError as err:
    print(err)
    sys.exit(3)
assert event["id"] == headers["webhook-id"], (event["id"], headers["webhook-id"])
print("verified")
"#;

/// Runs [`STANDARDWEBHOOKS_SCRIPT`] on a delivery: `Ok` when the library
/// verifies it with `secret`, else its reason.
async fn python_verifies(secret: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let python = crate::clients::test_python();
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("verify.py");
    std::fs::write(&script, STANDARDWEBHOOKS_SCRIPT).expect("script written");
    let headers: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(name, value)| {
            let value = value.to_str().expect("ASCII header");
            (name.as_str().to_owned(), Value::from(value))
        })
        .collect();
    let headers_path = dir.path().join("headers.json");
    std::fs::write(&headers_path, Value::Object(headers).to_string()).expect("headers written");
    let body_path = dir.path().join("body");
    std::fs::write(&body_path, body).expect("body written");

    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(&python)
            .arg(&script)
            .arg(secret)
            .arg(&headers_path)
            .arg(&body_path)
            .output(),
    )
    .await
    .expect("python finished within a minute")
    .expect("python ran");
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    match output.status.code() {
        Some(0) => Ok(()),
        Some(3) => Err(stdout),
        _ => panic!(
            "the script failed: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// Interoperability: the reference library of the Standard Webhooks
/// specification, `standardwebhooks` from PyPI (the version
/// `deploy/local/test.sh` pins), verifies real deliveries with the secret
/// as the admin API shows it; refuses a changed body, a changed id and
/// another secret; and during a rotation's grace period verifies with the
/// old secret and with the new one.
#[tokio::test]
async fn the_standardwebhooks_python_library_verifies_real_deliveries_and_rotations() {
    let app = spawn(true).await;
    let (receiver, url) = Receiver::start(Vec::new()).await;
    let old = secret(&app, false).await;

    let task = app
        .submit_ok(
            &json!({"text": "Verify me in Python.", "dialect": "en-us", "callback_url": url}),
        )
        .await;
    app.wait_for(task).await;
    let got = receiver.wait_for(1).await;
    let delivery = &got[0];
    assert_eq!(
        python_verifies(&old, &delivery.headers, &delivery.body).await,
        Ok(())
    );

    // Tampered with, the same delivery no longer verifies.
    let body = String::from_utf8(delivery.body.to_vec()).expect("UTF-8 JSON");
    let tampered = body.replacen(r#""status":"succeeded""#, r#""status":"failed""#, 1);
    assert_ne!(tampered, body, "the body names the status: {body}");
    let refused = python_verifies(&old, &delivery.headers, tampered.as_bytes()).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|reason| reason.contains("No matching signature")),
        "{refused:?}"
    );
    let mut other_id = delivery.headers.clone();
    other_id.insert(
        "webhook-id",
        uuid::Uuid::now_v7()
            .to_string()
            .parse()
            .expect("header value"),
    );
    assert!(
        python_verifies(&old, &other_id, &delivery.body)
            .await
            .is_err()
    );
    assert!(
        python_verifies(OTHER_SECRET, &delivery.headers, &delivery.body)
            .await
            .is_err()
    );

    // Rotated: both secrets sign until the grace period ends.
    let new = secret(&app, true).await;
    assert_ne!(new, old);
    let task = app
        .submit_ok(&json!({"text": "Verify me after the rotation.", "dialect": "en-us", "callback_url": url}))
        .await;
    app.wait_for(task).await;
    let got = receiver.wait_for(2).await;
    let rotated = &got[1];
    assert_eq!(rotated.signatures().len(), 2, "{:?}", rotated.signatures());
    assert_eq!(
        python_verifies(&new, &rotated.headers, &rotated.body).await,
        Ok(())
    );
    assert_eq!(
        python_verifies(&old, &rotated.headers, &rotated.body).await,
        Ok(())
    );
    // The delivery from before the rotation was signed with the old secret only.
    assert!(
        python_verifies(&new, &delivery.headers, &delivery.body)
            .await
            .is_err()
    );
}
