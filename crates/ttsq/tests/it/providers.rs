//! Upstream providers through the fake vendor server: shared quotas across
//! replicas, 429 storms, failover along the chain, and a wrong key.

use std::{
    process::Child,
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use serde_json::json;
use ttsq_fake_provider::{FakeConfig, FakeProvider};
use ttsq_providers::breaker::BreakerState;
use ttsq_testkit::{FakeRoutes, TestApp, TestOptions, signal_and_wait};

const KEY: &str = "sk-fake-test-key-0123456789";

/// Config routing `en-gb` to the fake (OpenAI wire format), then espeak.
fn config(fake: &FakeProvider, quota: &str) -> String {
    FakeRoutes::new(fake.base_url())
        .with(r#"model = "tts-1""#)
        .with("price_per_1k_chars = 15.0")
        .with(&format!("quota = {{ {quota} }}"))
        .espeak_fallback()
        .toml()
}

async fn fake(change: impl FnOnce(&mut FakeConfig)) -> FakeProvider {
    let mut config = FakeConfig::default();
    config.keys.openai = Some(KEY.to_owned());
    change(&mut config);
    FakeProvider::start(config)
        .await
        .expect("fake provider starts")
}

fn options(config_toml: String, worker: bool, key: &str) -> TestOptions {
    TestOptions {
        worker,
        env: vec![
            ("TTSQ_PROVIDERS_FAKE_API_KEY".into(), key.into()),
            ("TTSQ_QUOTA_HEARTBEAT_SECS".into(), "1".into()),
            ("TTSQ_BREAKER_COOLDOWN_SECS".into(), "1".into()),
            ("TTSQ_BREAKER_FAILURE_THRESHOLD".into(), "3".into()),
        ],
        config_toml: Some(config_toml),
        ..TestOptions::default()
    }
}

fn spawn_worker(app: &TestApp, log: Option<&std::path::Path>) -> Child {
    let mut command = app.worker_command(env!("CARGO_BIN_EXE_ttsq"));
    if let Some(path) = log {
        command
            .env("RUST_LOG", "debug,h2=info,hyper=info,rustls=info")
            .stderr(std::fs::File::create(path).expect("log file"));
    }
    command.spawn().expect("ttsq worker starts")
}

fn stop(mut child: Child) {
    signal_and_wait(&mut child, "-TERM");
}

async fn submit_all(app: &TestApp, count: usize, prefix: &str) {
    let jobs: Vec<_> = (0..count)
        .map(|i| json!({"text": format!("{prefix} number {i}."), "dialect": "en-gb", "voice": "rachel", "format": "wav"}))
        .collect();
    let accepted: Vec<_> = stream::iter(jobs.iter())
        .map(|job| app.submit_ok(job))
        .buffer_unordered(32)
        .collect()
        .await;
    assert_eq!(accepted.len(), count);
}

#[tokio::test]
async fn two_workers_and_the_api_share_one_quota_without_a_single_429() {
    let fake = fake(|c| {
        c.quota.requests_per_second = Some(20);
        c.quota.max_concurrent = Some(4);
        c.log_capacity = 1_000;
    })
    .await;
    let mut options = options(
        config(&fake, "requests_per_second = 20, max_concurrent = 4"),
        false,
        KEY,
    );
    // A small prefetch keeps both workers busy to the end; with a large one
    // the first to connect takes most of the backlog and works alone later.
    options
        .env
        .push(("TTSQ_QUEUE_PREFETCH".into(), "48".into()));
    options
        .env
        .push(("TTSQ_WORKER_BATCH_SIZE".into(), "8".into()));
    let app = TestApp::spawn_with(options).await;
    let workers = [spawn_worker(&app, None), spawn_worker(&app, None)];
    // Both workers must see each other before the load starts.
    wait_for_workers(&app, 2).await;

    submit_all(&app, 400, "Shared quota sentence").await;
    app.drain(Duration::from_secs(120)).await;
    for worker in workers {
        stop(worker);
    }

    let stats = fake.stats();
    assert_eq!(
        app.scalar("SELECT count(*) FROM tasks WHERE status = 'succeeded'")
            .await,
        400
    );
    let refused: Vec<_> = stats
        .recent
        .iter()
        .filter(|r| r.status == Some(429))
        .map(|r| (r.seq, r.elapsed_ms))
        .collect();
    assert_eq!(stats.rate_limited, 0, "the fake sent 429s: {refused:?}");
    assert!(
        stats.peak_concurrency <= 4,
        "peak concurrency {}",
        stats.peak_concurrency
    );
    assert_eq!(stats.audio_responses, 400);
    let times: Vec<u64> = stats
        .recent
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.elapsed_ms)
        .collect();
    let span = (times.iter().max().unwrap() - times.iter().min().unwrap()) as f64 / 1000.0;
    let rate = (times.len() - 1) as f64 / span;
    println!("achieved {rate:.2} req/s of a 20 req/s quota over {span:.1} s");
    assert!(rate >= 0.85 * 20.0, "achieved only {rate:.2} req/s");
    assert!(rate <= 20.0, "over the quota: {rate:.2} req/s");
    fake.shutdown().await;
}

/// Waits until `count` worker replicas heartbeat, then until every replica
/// (the API too) has heartbeated again: each counts the live replicas right
/// after its own heartbeat, so then every one has seen all the others.
async fn wait_for_workers(app: &TestApp, count: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while app
        .scalar("SELECT count(*) FROM workers WHERE role = 'worker'")
        .await
        < count
    {
        assert!(Instant::now() < deadline, "workers never registered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_registered = app
        .scalar("SELECT (extract(epoch FROM clock_timestamp()) * 1e6)::bigint")
        .await;
    while app
        .scalar(&format!(
            "SELECT count(*) FROM workers WHERE last_seen <= to_timestamp({all_registered} / 1e6)"
        ))
        .await
        > 0
    {
        assert!(Instant::now() < deadline, "replicas stopped heartbeating");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn workers_use_every_concurrency_slot_of_the_account_and_never_more() {
    // 4 slots of 200 ms: a static share per replica would floor 4 × 0.95 ×
    // 0.475 to 1 slot per worker, 2 in all; the coordinator hands out all 4.
    let fake = fake(|c| {
        c.latency.fixed_ms = 200;
        c.quota.max_concurrent = Some(4);
        c.log_capacity = 1_000;
    })
    .await;
    let mut options = options(config(&fake, "max_concurrent = 4"), false, KEY);
    options
        .env
        .push(("TTSQ_QUEUE_PREFETCH".into(), "48".into()));
    options
        .env
        .push(("TTSQ_WORKER_BATCH_SIZE".into(), "8".into()));
    let app = TestApp::spawn_with(options).await;
    let mut workers = vec![spawn_worker(&app, None), spawn_worker(&app, None)];
    wait_for_workers(&app, 2).await;

    submit_all(&app, 80, "Two workers sentence").await;
    app.drain(Duration::from_secs(120)).await;
    let two = fake.stats();
    assert_eq!(two.rate_limited, 0, "429s with 2 workers: {two:?}");
    assert_eq!(
        two.peak_concurrency, 4,
        "2 workers and the API together fill the 4 slots"
    );
    assert_eq!(two.audio_responses, 80);

    fake.reset_stats();
    workers.push(spawn_worker(&app, None));
    wait_for_workers(&app, 3).await;
    submit_all(&app, 80, "Three workers sentence").await;
    app.drain(Duration::from_secs(120)).await;
    for worker in workers {
        stop(worker);
    }
    let three = fake.stats();
    assert_eq!(three.rate_limited, 0, "429s with 3 workers: {three:?}");
    assert!(
        three.peak_concurrency <= 4,
        "peak concurrency {} over the 4 allowed",
        three.peak_concurrency
    );
    assert_eq!(three.audio_responses, 80);
    assert_eq!(
        app.scalar("SELECT count(*) FROM tasks WHERE status = 'succeeded' AND provider = 'fake'")
            .await,
        160
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn a_batch_makes_at_most_syntheses_per_batch_provider_calls_at_once() {
    // The account allows 32 calls at once; the worker's own cap is what binds.
    let fake = fake(|c| {
        c.latency.fixed_ms = 100;
        c.log_capacity = 1_000;
    })
    .await;
    let mut options = options(config(&fake, "max_concurrent = 32"), false, KEY);
    for (name, value) in [
        ("TTSQ_WORKER_BATCH_SIZE", "16"),
        ("TTSQ_WORKER_CONCURRENT_BATCHES", "1"),
        ("TTSQ_WORKER_SYNTHESES_PER_BATCH", "3"),
    ] {
        options.env.push((name.into(), value.into()));
    }
    let app = TestApp::spawn_with(options).await;
    let worker = spawn_worker(&app, None);
    wait_for_workers(&app, 1).await;

    submit_all(&app, 32, "Capped batch sentence").await;
    app.drain(Duration::from_secs(120)).await;
    stop(worker);
    let stats = fake.stats();
    assert_eq!(stats.audio_responses, 32);
    assert_eq!(
        stats.peak_concurrency, 3,
        "one batch of 16 keeps exactly its 3 calls in flight"
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn a_429_storm_delays_jobs_but_fails_none() {
    // The fake allows far less than ttsq believes: every burst meets 429s.
    let fake = fake(|c| c.quota.requests_per_second = Some(3)).await;
    let app = TestApp::spawn_with(options(
        config(&fake, "requests_per_second = 50"),
        true,
        KEY,
    ))
    .await;

    submit_all(&app, 24, "Storm sentence").await;
    app.drain(Duration::from_secs(90)).await;

    let stats = fake.stats();
    assert!(stats.rate_limited > 0, "the storm happened: {stats:?}");
    assert_eq!(
        app.scalar("SELECT count(*) FROM tasks WHERE status = 'succeeded'")
            .await,
        24
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM tasks WHERE status = 'succeeded' AND provider = 'fake'")
            .await,
        24,
        "429s pause and retry the same provider; they never fall back or fail"
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn a_down_primary_opens_its_breaker_and_traffic_returns_when_it_recovers() {
    let fake = fake(|c| c.down = true).await;
    let mut options = options(config(&fake, ""), true, KEY);
    options
        .env
        .push(("TTSQ_BREAKER_COOLDOWN_SECS".into(), "8".into()));
    let app = TestApp::spawn_with(options).await;

    submit_all(&app, 20, "While the primary is down").await;
    app.drain(Duration::from_secs(60)).await;
    // Every call to the primary, so every failure (re)opening its breaker,
    // came before these jobs finished.
    let last_failure = Instant::now();
    assert_eq!(
        app.scalar("SELECT count(*) FROM tasks WHERE status = 'succeeded'")
            .await,
        20
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM tasks WHERE provider = 'espeak'")
            .await,
        20,
        "every job fell back to espeak"
    );

    // The breaker is open now: more jobs go straight to the fallback.
    fake.reset_stats();
    submit_all(&app, 10, "Still down").await;
    app.drain(Duration::from_secs(60)).await;
    assert_eq!(
        fake.stats().synthesis_requests,
        0,
        "the open breaker spared the primary"
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM tasks WHERE provider = 'espeak'")
            .await,
        30
    );

    fake.update(|c| c.down = false);
    // Nothing reports the end of the cooldown (8 s) before a request is let
    // through: wait it out, from the last failure on.
    tokio::time::sleep_until((last_failure + Duration::from_millis(8_500)).into()).await;
    // After the cooldown one trial request goes to the primary (half-open)
    // while the rest still fall back; its success closes the breaker.
    submit_all(&app, 1, "The trial").await;
    app.drain(Duration::from_secs(60)).await;
    submit_all(&app, 20, "After the primary is back").await;
    app.drain(Duration::from_secs(60)).await;

    assert_eq!(
        app.scalar("SELECT count(*) FROM tasks WHERE provider = 'fake'")
            .await,
        21,
        "traffic went back to the primary"
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn a_wrong_key_fails_tasks_with_provider_auth_and_is_never_logged() {
    let fake = fake(|_| {}).await;
    let wrong = "sk-wrong-key-must-never-be-logged-4242";
    let app = TestApp::spawn_with(options(config(&fake, ""), false, wrong)).await;
    let log = std::env::temp_dir().join(format!("ttsq-wrong-key-{}.log", std::process::id()));
    let worker = spawn_worker(&app, Some(&log));

    let id = app
        .submit_ok(
            &json!({"text": "Who am I?", "dialect": "en-gb", "voice": "rachel", "format": "wav"}),
        )
        .await;
    let task = app.wait_for(id).await;
    stop(worker);

    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["error"]["code"], "provider_auth", "{task}");
    assert!(!task.to_string().contains(wrong));
    let logged = std::fs::read_to_string(&log).expect("worker log");
    assert!(
        logged.contains("provider"),
        "the worker logged at debug level"
    );
    assert!(
        !logged.contains(wrong),
        "the key leaked into the worker's log"
    );
    assert!(fake.stats().unauthorized >= 1);
    let _ = std::fs::remove_file(log);
    fake.shutdown().await;
}

/// Whether `task` (a task as JSON) was made by `provider`.
async fn made_by(app: &TestApp, task: &serde_json::Value, provider: &str) -> bool {
    let id = task["task_id"].as_str().expect("a task id");
    app.scalar(&format!(
        "SELECT count(*) FROM tasks WHERE id = '{id}' AND provider = '{provider}'"
    ))
    .await
        == 1
}

/// Submits one high-priority job as JSON; returns the task.
/// Waits out the primary's breaker cooldown (1 s, [`options`]) if its
/// failures opened the breaker: nothing reports the cooldown's end before a
/// request is let through. A closed breaker lets the next request through.
async fn until_the_primary_is_let_through(app: &TestApp) {
    if app.services.providers.breaker_states().get("fake") != Some(&BreakerState::Closed) {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    }
}

async fn submit_high(app: &TestApp, text: &str, key: Option<&str>) -> serde_json::Value {
    let mut request = app
        .http
        .post(format!("{}/v1/tts/jobs", app.base_url))
        .bearer_auth(&app.api_key)
        .header("accept", "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request
        .json(&json!({"text": text, "dialect": "en-gb", "voice": "rachel", "format": "wav", "priority": "high"}))
        .send()
        .await
        .expect("submit answers")
        .json()
        .await
        .expect("a JSON answer")
}

#[tokio::test]
async fn fallback_audio_is_not_served_for_the_text_once_the_primary_is_back() {
    let fake = fake(|c| c.down = true).await;
    let app = TestApp::spawn_with(options(config(&fake, ""), false, KEY)).await;
    let text = "Made by the fallback while the primary was down.";

    let during = submit_high(&app, text, None).await;
    fake.update(|c| c.down = false);
    fake.reset_stats();
    // The breaker of the primary closes again after its cooldown.
    until_the_primary_is_let_through(&app).await;
    let after = submit_high(&app, text, None).await;

    assert_eq!(during["status"], "succeeded", "{during}");
    assert!(made_by(&app, &during, "espeak").await, "{during}");
    assert_eq!(after["status"], "succeeded", "{after}");
    assert!(made_by(&app, &after, "fake").await, "{after}");
    assert_eq!(after["cache_hit"], false, "{after}");
    assert_eq!(fake.stats().synthesis_requests, 1);
    let again = submit_high(&app, text, None).await;
    assert_eq!(
        again["cache_hit"], true,
        "the primary's audio is cached: {again}"
    );
    assert!(made_by(&app, &again, "fake").await, "{again}");
    fake.shutdown().await;
}

#[tokio::test]
async fn with_serve_fallback_audio_the_fallback_audio_stays_the_texts_cache_entry() {
    let fake = fake(|c| c.down = true).await;
    let mut options = options(config(&fake, ""), false, KEY);
    options
        .env
        .push(("TTSQ_CACHE_SERVE_FALLBACK_AUDIO".into(), "true".into()));
    let app = TestApp::spawn_with(options).await;
    let text = "Kept from the fallback on purpose.";

    submit_high(&app, text, None).await;
    fake.update(|c| c.down = false);
    until_the_primary_is_let_through(&app).await;
    let after = submit_high(&app, text, None).await;

    assert_eq!(after["cache_hit"], true, "{after}");
    assert!(made_by(&app, &after, "espeak").await, "{after}");
    fake.shutdown().await;
}

#[tokio::test]
async fn a_passing_failure_is_not_replayed_to_a_retry_with_the_same_idempotency_key() {
    // The fake alone serves the dialect: when it is down the job fails.
    let fake = fake(|c| c.down = true).await;
    let config = FakeRoutes::new(fake.base_url()).toml();
    let app = TestApp::spawn_with(options(config, false, KEY)).await;
    let text = "Try me again later.";

    let first = app
        .http
        .post(format!("{}/v1/tts/jobs", app.base_url))
        .bearer_auth(&app.api_key)
        .header("idempotency-key", "retry-me")
        .json(&json!({"text": text, "dialect": "en-gb", "voice": "rachel", "format": "wav", "priority": "high"}))
        .send()
        .await
        .expect("submit answers");
    fake.update(|c| c.down = false);
    until_the_primary_is_let_through(&app).await;
    let retried = submit_high(&app, text, Some("retry-me")).await;
    let repeated = submit_high(&app, text, Some("retry-me")).await;

    assert!(first.status().is_server_error(), "{}", first.status());
    assert_eq!(retried["status"], "succeeded", "{retried}");
    assert_eq!(
        repeated["task_id"], retried["task_id"],
        "the key now names the task that succeeded"
    );
    fake.shutdown().await;
}

/// A stack with a worker whose fake takes `rate` requests a second (10 ms
/// each), with ttsq's quota set to the same.
async fn quota_bound_stack(rate: u32) -> (FakeProvider, TestApp) {
    let fake = fake(|c| {
        c.quota.requests_per_second = Some(rate);
        c.latency.fixed_ms = 10;
    })
    .await;
    let app = TestApp::spawn_with(options(
        config(&fake, &format!("requests_per_second = {rate}")),
        true,
        KEY,
    ))
    .await;
    (fake, app)
}

/// Submits `count` jobs as the tenant of `key` through batches of at most
/// 1,000 items.
async fn submit_backlog(app: &TestApp, key: &str, count: usize, prefix: &str) {
    let items: Vec<_> = (0..count)
        .map(|i| json!({"text": format!("{prefix} number {i}."), "dialect": "en-gb", "voice": "rachel", "format": "wav"}))
        .collect();
    for chunk in items.chunks(1_000) {
        let response = app
            .http
            .post(format!("{}/v1/tts/batches", app.base_url))
            .bearer_auth(key)
            .json(&json!({ "items": chunk }))
            .send()
            .await
            .expect("batch sent");
        assert_eq!(response.status(), 202, "batch refused");
    }
}

/// Tasks of the tenant named `tenant` in a terminal state.
async fn finished_of(app: &TestApp, tenant: &str) -> i64 {
    app.scalar(&format!(
        "SELECT count(*) FROM tasks t JOIN tenants n ON n.id = t.tenant_id
          WHERE n.name = '{tenant}' AND t.status IN ('succeeded', 'failed', 'cancelled')"
    ))
    .await
}

/// Issue 17: every normal job went into one FIFO queue, so one tenant's
/// backlog held every other tenant's jobs until it had drained. Tenant A
/// queues 1,500 jobs for a provider whose quota drains 50 a second (30 s of
/// work); tenant B's one job must then finish within a few seconds, while
/// most of A's backlog still waits.
#[tokio::test]
async fn one_tenants_backlog_does_not_hold_another_tenants_job() {
    let (fake, app) = quota_bound_stack(50).await;
    submit_backlog(&app, &app.api_key, 1_500, "Backlog of tenant A").await;
    let other = app.new_tenant("b").await;
    let response = app
        .submit_as(
            &other,
            &json!({"text": "Tenant B's only job.", "dialect": "en-gb", "voice": "rachel", "format": "wav"}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let body: serde_json::Value = response.json().await.expect("JSON");
    let task = body["task_id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("task id");
    let submitted = Instant::now();
    let done = app.wait_for_as(&other, task).await;
    let waited = submitted.elapsed();
    let a_finished = finished_of(&app, "default").await;
    fake.shutdown().await;
    assert_eq!(
        done["status"], "succeeded",
        "tenant B's job after {waited:?} behind tenant A's backlog: {done}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "tenant B's job took {waited:?} behind tenant A's backlog"
    );
    assert!(
        a_finished < 1_000,
        "tenant B's job finished only after {a_finished} of tenant A's 1,500"
    );
}

/// A tenant's single jobs take turns with its own batches (two lanes of one
/// tenant), so a bulk batch does not hold the same tenant's interactive
/// jobs: behind its own 1,500 batch items at 50 req/s, a tenant's single
/// job finishes in seconds, not after the batch.
#[tokio::test]
async fn a_tenants_single_job_does_not_wait_behind_its_own_batch() {
    let (fake, app) = quota_bound_stack(50).await;
    submit_backlog(&app, &app.api_key, 1_500, "Own backlog").await;
    let submitted = Instant::now();
    let task = app
        .submit_ok(&json!({"text": "An interactive job.", "dialect": "en-gb", "voice": "rachel", "format": "wav"}))
        .await;
    let done = app.wait_for(task).await;
    let waited = submitted.elapsed();
    let finished = finished_of(&app, "default").await;
    fake.shutdown().await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(
        finished < 1_000,
        "the single job finished only after {finished} of its tenant's 1,500 batch items ({waited:?})"
    );
}

/// Issue 17: when a provider's quota binds, its capacity is split between
/// the tenants with work for it by weight. Tenants A (weight 3) and B
/// (weight 1) both queue more than the quota drains meanwhile; of the jobs
/// finished, A's are about three times B's, and the fake never answers 429.
#[tokio::test]
async fn a_binding_quota_is_split_between_tenants_by_weight() {
    let (fake, app) = quota_bound_stack(40).await;
    app.services
        .store
        .update_tenant(
            "default",
            &ttsq_store::TenantUpdate {
                weight: Some(3),
                ..Default::default()
            },
            "test",
        )
        .await
        .expect("weight set");
    let other = app.new_tenant("b").await;
    submit_backlog(&app, &app.api_key, 600, "Weighted tenant A").await;
    submit_backlog(&app, &other, 600, "Weighted tenant B").await;
    // About 10 s of the quota: far from either backlog's end.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (a, b) = loop {
        let (a, b) = (
            finished_of(&app, "default").await,
            finished_of(&app, "b").await,
        );
        if a + b >= 400 {
            break (a, b);
        }
        assert!(Instant::now() < deadline, "only {a} + {b} jobs finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stats = fake.stats();
    fake.shutdown().await;
    let ratio = a as f64 / b.max(1) as f64;
    println!("finished: tenant A (weight 3) {a}, tenant B (weight 1) {b}: {ratio:.2}");
    assert!(
        (2.3..=4.0).contains(&ratio),
        "tenant A of weight 3 finished {a} jobs, tenant B of weight 1 {b}: {ratio:.2}, not about 3"
    );
    assert_eq!(stats.rate_limited, 0, "the fake sent 429s");
}
