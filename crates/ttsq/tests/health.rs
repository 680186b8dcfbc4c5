//! `/health` is liveness only; `/ready` reports every dependency with its
//! latency and turns 503 while Postgres or RabbitMQ is unreachable. The
//! shared services are never stopped: the outages are a pool pointed at a
//! closed port, and this test's own RabbitMQ connection closed.

use std::time::Duration;

use serde_json::Value;
use ttsq_store::{Store, sqlx::postgres::PgPoolOptions};
use ttsq_testkit::{TestApp, TestOptions};

async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    let response = app
        .http
        .get(format!("{}{path}", app.base_url))
        .send()
        .await
        .expect("request sent");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

#[tokio::test]
async fn ready_reports_each_dependency_with_its_latency() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..TestOptions::default()
    })
    .await;
    let (status, body) = get(&app, "/ready").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ready"], true);
    for dependency in ["postgres", "rabbitmq", "s3", "provider:espeak"] {
        assert_eq!(body["checks"][dependency]["ok"], true, "{body}");
        assert!(body["checks"][dependency]["latency_ms"].is_u64(), "{body}");
    }
    app.teardown().await;
}

#[tokio::test]
async fn ready_is_503_without_postgres_and_names_it() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..TestOptions::default()
    })
    .await;
    // Nothing listens on port 1: every connection attempt is refused.
    let unreachable = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://postgres@127.0.0.1:1/ttsq")
        .expect("lazy pool");
    let mut probes = app.services.probes();
    probes.store = Store::from_pool(unreachable);

    let (status, axum::Json(body)) = probes.readiness(true).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false);
    assert_eq!(body["checks"]["postgres"]["ok"], false, "{body}");
    assert!(body["checks"]["postgres"]["error"].is_string(), "{body}");
    assert!(body["checks"]["postgres"]["latency_ms"].as_u64() < Some(2_500));
    assert_eq!(body["checks"]["rabbitmq"]["ok"], true, "{body}");
    app.teardown().await;
}

#[tokio::test]
async fn ready_is_503_without_rabbitmq_while_health_stays_200() {
    let app = TestApp::spawn_with(TestOptions {
        worker: false,
        ..TestOptions::default()
    })
    .await;
    assert_eq!(get(&app, "/ready").await.0, 200);

    // The process's one connection to RabbitMQ goes away.
    app.services.broker.close().await;

    let (status, body) = get(&app, "/ready").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["rabbitmq"]["ok"], false, "{body}");
    assert_eq!(body["checks"]["postgres"]["ok"], true, "{body}");
    let (status, body) = get(&app, "/health").await;
    assert_eq!(status, 200, "liveness ignores dependencies: {body}");
    app.teardown().await;
}
