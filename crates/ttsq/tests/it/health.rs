//! `/health` is liveness only. The detailed `/ready` (every dependency with
//! its latency and error) and `/metrics` are on the operations listener
//! only; the public `/ready` says `ready` or `not_ready` and nothing else,
//! from a check shared by all its callers. The detailed `/ready` turns 503
//! while Postgres or S3 is unreachable, and a worker's also while RabbitMQ
//! is: the API keeps accepting into Postgres through a broker outage, and
//! both roles start during one. The shared services are never stopped: the
//! outages are a pool pointed at a closed port, this test's own RabbitMQ
//! connection closed, and links of this test's own cut.

use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::{Value, json};
use ttsq_api::ops::ReadinessCache;
use ttsq_store::{Store, sqlx::postgres::PgPoolOptions};
use ttsq_testkit::{TestApp, TestOptions};

async fn get(app: &TestApp, url: &str) -> (u16, Value) {
    let response = app.http.get(url).send().await.expect("request sent");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

async fn api_only() -> TestApp {
    TestApp::spawn_with(TestOptions {
        worker: false,
        ..TestOptions::default()
    })
    .await
}

/// `tts_readiness_checks_total` as the operations listener reports it.
async fn readiness_checks(app: &TestApp) -> u64 {
    let text = app
        .http
        .get(format!("{}/metrics", app.ops_url))
        .send()
        .await
        .expect("scrape sent")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|line| line.strip_prefix("tts_readiness_checks_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no tts_readiness_checks_total in\n{text}"))
}

#[tokio::test]
async fn the_operations_listener_reports_each_dependency_with_its_latency() {
    let app = api_only().await;
    let (status, body) = get(&app, &format!("{}/ready", app.ops_url)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ready"], true);
    for dependency in ["postgres", "rabbitmq", "s3", "provider:espeak"] {
        assert_eq!(body["checks"][dependency]["ok"], true, "{body}");
        assert!(body["checks"][dependency]["latency_ms"].is_u64(), "{body}");
    }
    let (status, body) = get(&app, &format!("{}/health", app.ops_url)).await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
}

#[tokio::test]
async fn the_public_port_serves_no_metrics() {
    let app = api_only().await;
    let public = app
        .http
        .get(format!("{}/metrics", app.base_url))
        .send()
        .await
        .expect("request sent");
    assert_eq!(public.status(), 404);
    let body = public.text().await.expect("body");
    assert!(!body.contains("tts_"), "{body}");

    let ops = app
        .http
        .get(format!("{}/metrics", app.ops_url))
        .send()
        .await
        .expect("request sent");
    assert_eq!(ops.status(), 200);
    assert!(ops.text().await.expect("body").contains("tts_queue_depth"));
}

#[tokio::test]
async fn the_public_ready_tells_its_status_and_nothing_else() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        faulty_links: true,
        ..TestOptions::default()
    })
    .await;
    let (status, body) = get(&app, &format!("{}/ready", app.base_url)).await;
    assert_eq!((status, body), (200, json!({"status": "ready"})));

    // Postgres and S3 become unreachable for this stack.
    let links = app.links.as_ref().expect("the stack has links");
    links.postgres.cut();
    links.s3.cut();

    // The public answer is reused for a moment: wait until it turns.
    let deadline = Instant::now() + ReadinessCache::TTL * 3 + Duration::from_secs(5);
    let (status, body) = loop {
        let (status, body) = get(&app, &format!("{}/ready", app.base_url)).await;
        if status != 200 || Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (status, body),
        (503, json!({"status": "not_ready"})),
        "no dependency, host or error on the public port"
    );
    let (status, body) = get(&app, &format!("{}/ready", app.ops_url)).await;
    assert_eq!(status, 503, "{body}");
    for dependency in ["postgres", "s3"] {
        assert_eq!(body["checks"][dependency]["ok"], false, "{body}");
        assert!(body["checks"][dependency]["error"].is_string(), "{body}");
    }
    links.postgres.restore();
    links.s3.restore();
}

#[tokio::test]
async fn many_public_ready_calls_at_once_cost_one_dependency_check() {
    let app = api_only().await;
    let before = readiness_checks(&app).await;

    let calls = (0..64).map(|_| async {
        app.http
            .get(format!("{}/ready", app.base_url))
            .send()
            .await
            .expect("request sent")
            .status()
    });
    let statuses = join_all(calls).await;

    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        readiness_checks(&app).await - before,
        1,
        "64 callers within the interval share one round of checks"
    );
}

#[tokio::test]
async fn ready_is_503_without_postgres_and_names_it() {
    let app = api_only().await;
    // Nothing listens on port 1: every connection attempt is refused.
    let unreachable = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://postgres@127.0.0.1:1/ttsq")
        .expect("lazy pool");
    let mut probes = app.services.probes();
    probes.store = Store::from_pool(unreachable);

    let (status, axum::Json(body)) = probes.readiness().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false);
    assert_eq!(body["checks"]["postgres"]["ok"], false, "{body}");
    assert!(body["checks"]["postgres"]["error"].is_string(), "{body}");
    assert!(body["checks"]["postgres"]["latency_ms"].as_u64() < Some(2_500));
    assert_eq!(body["checks"]["rabbitmq"]["ok"], true, "{body}");
}

#[tokio::test]
async fn without_rabbitmq_the_api_stays_ready_and_a_worker_does_not() {
    let app = api_only().await;
    assert_eq!(get(&app, &format!("{}/ready", app.ops_url)).await.0, 200);

    // The process's one connection to RabbitMQ goes away.
    app.services.broker.close().await;

    // The API accepts into Postgres meanwhile, so it stays in its Service.
    let (status, body) = get(&app, &format!("{}/ready", app.ops_url)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["rabbitmq"]["ok"], false, "{body}");
    assert_eq!(body["checks"]["postgres"]["ok"], true, "{body}");
    // A worker cannot work without it.
    let (status, axum::Json(body)) = app.services.probes().readiness().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["rabbitmq"]["ok"], false, "{body}");
    for base in [&app.base_url, &app.ops_url] {
        let (status, body) = get(&app, &format!("{base}/health")).await;
        assert_eq!(status, 200, "liveness ignores dependencies: {body}");
    }
}

/// Waits until `url` answers `status`, or fails after `within`.
async fn until_status(app: &TestApp, url: &str, status: u16, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(response) = app.http.get(url).send().await
            && response.status().as_u16() == status
        {
            return response.json().await.unwrap_or(Value::Null);
        }
        assert!(Instant::now() < deadline, "{url} never answered {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A pod restarted during a broker outage: `ttsq api` and `ttsq worker` start
/// while RabbitMQ refuses every connection, the API is ready and accepts a
/// job, the worker is alive but not ready; once RabbitMQ is back both
/// connect on their own and the job is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_and_worker_start_during_a_rabbitmq_outage_and_catch_up_after_it() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        faulty_links: true,
        ..TestOptions::default()
    })
    .await;
    let links = app.links.as_ref().expect("the stack has links");
    links.rabbitmq.cut();

    let binary = env!("CARGO_BIN_EXE_ttsq");
    let (api_port, api_ops_port, worker_port) = (free_port(), free_port(), free_port());
    let api_url = format!("http://127.0.0.1:{api_port}");
    let api_ops = format!("http://127.0.0.1:{api_ops_port}");
    let worker_ops = format!("http://127.0.0.1:{worker_port}");
    let mut api = app
        .cli_command(binary)
        .arg("api")
        .env("TTSQ_SERVER_LISTEN", format!("127.0.0.1:{api_port}"))
        .env(
            "TTSQ_SERVER_OPS_LISTEN",
            format!("127.0.0.1:{api_ops_port}"),
        )
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("ttsq api spawned");
    let mut worker = app
        .cli_command(binary)
        .arg("worker")
        .env(
            "TTSQ_WORKER_METRICS_LISTEN",
            format!("127.0.0.1:{worker_port}"),
        )
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("ttsq worker spawned");

    let startup = Duration::from_secs(30);
    until_status(&app, &format!("{api_url}/health"), 200, startup).await;
    until_status(&app, &format!("{worker_ops}/health"), 200, startup).await;
    assert_eq!(
        until_status(&app, &format!("{api_url}/ready"), 200, startup).await,
        json!({"status": "ready"})
    );
    let detail = until_status(&app, &format!("{api_ops}/ready"), 200, startup).await;
    assert_eq!(detail["checks"]["rabbitmq"]["ok"], false, "{detail}");
    let detail = until_status(&app, &format!("{worker_ops}/ready"), 503, startup).await;
    assert_eq!(detail["checks"]["rabbitmq"]["ok"], false, "{detail}");
    assert_eq!(detail["checks"]["postgres"]["ok"], true, "{detail}");

    let accepted = app
        .http
        .post(format!("{api_url}/v1/tts/jobs"))
        .bearer_auth(&app.api_key)
        .json(&json!({"text": "accepted while the broker is away", "dialect": "en-us"}))
        .send()
        .await
        .expect("submit sent");
    assert_eq!(accepted.status(), 202, "the API accepts during the outage");
    let task: Value = accepted.json().await.expect("accepted JSON");
    let task_id = task["task_id"].as_str().expect("task id").to_owned();
    for child in [&mut api, &mut worker] {
        assert!(
            child.try_wait().expect("child status").is_none(),
            "neither process exits while RabbitMQ is down"
        );
    }

    links.rabbitmq.restore();
    until_status(&app, &format!("{worker_ops}/ready"), 200, startup).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let task: Value = app
            .http
            .get(format!("{api_url}/v1/tts/jobs/{task_id}?wait=5"))
            .bearer_auth(&app.api_key)
            .send()
            .await
            .expect("poll sent")
            .json()
            .await
            .expect("task JSON");
        if task["status"] != "queued" && task["status"] != "running" {
            break task;
        }
        assert!(Instant::now() < deadline, "the job never ran: {task}");
    };
    assert_eq!(done["status"], "succeeded", "{done}");

    ttsq_testkit::signal_and_wait(&mut api, "-TERM");
    ttsq_testkit::signal_and_wait(&mut worker, "-TERM");
}
