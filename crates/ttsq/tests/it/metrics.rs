//! `/metrics` after real jobs: the series the issue names exist, with values
//! that match what happened (and what the ledger says), and no label that
//! could explode (task ids, tenants).

use std::time::{Duration, Instant};

use futures::{StreamExt, future::join_all};
use serde_json::json;
use ttsq_fake_provider::{FakeConfig, FakeProvider};
use ttsq_testkit::{FakeRoutes, TestApp, TestOptions};

/// Scraped series: (`name{labels}`, value).
pub(crate) struct Scrape(Vec<(String, f64)>);

impl Scrape {
    pub(crate) async fn of(app: &TestApp) -> Self {
        let response = app
            .http
            .get(format!("{}/metrics", app.ops_url))
            .send()
            .await
            .expect("scrape sent");
        assert_eq!(response.status(), 200);
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        Self::parse(&response.text().await.expect("metrics text"))
    }

    fn parse(text: &str) -> Self {
        Self(
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .filter_map(|l| {
                    let (series, value) = l.rsplit_once(' ')?;
                    Some((series.to_owned(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    /// Sum over the series of `name` carrying every label of `labels`;
    /// `None` when there is no such series.
    pub(crate) fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .0
            .iter()
            .filter(|(series, _)| {
                let (family, rest) = series.split_once('{').unwrap_or((series, ""));
                family == name
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, v)| *v)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no series {name} {labels:?}"))
    }
}

#[tokio::test]
async fn metrics_after_a_few_jobs_show_requests_providers_batches_usage_and_queues() {
    let app = TestApp::spawn().await;
    let texts = [
        "Metrics one.",
        "Metrics two.",
        "Metrics three.",
        "Metrics one.",
    ];
    let mut ids = Vec::new();
    for text in texts {
        ids.push(
            app.submit_ok(&json!({"text": text, "dialect": "en-gb", "format": "wav"}))
                .await,
        );
    }
    for id in &ids {
        assert_eq!(app.wait_for(*id).await["status"], "succeeded");
    }
    // Once the first copy is stored, the same text is a hit at submission.
    let again = app
        .submit_ok(&json!({"text": "Metrics two.", "dialect": "en-gb", "format": "wav"}))
        .await;
    assert_eq!(app.wait_for(again).await["cache_hit"], true);
    let high = app
        .submit(&json!({"text": "Metrics high.", "dialect": "en-gb", "format": "wav", "priority": "high"}))
        .await;
    assert_eq!(high.status(), 200);

    let m = Scrape::of(&app).await;

    let succeeded = m.value(
        "tts_requests_total",
        &[("dialect", "en-gb"), ("status", "succeeded")],
    );
    assert_eq!(succeeded, 6.0, "four queued, one hit at submit, one high");
    assert_eq!(
        m.value(
            "tts_request_duration_seconds_count",
            &[("dialect", "en-gb")]
        ),
        6.0
    );
    let cache_hits = app
        .scalar("SELECT count(*) FROM tasks WHERE cache_hit")
        .await;
    assert!(cache_hits >= 1);
    assert_eq!(m.value("tts_cache_hits_total", &[]), cache_hits as f64);

    // Four distinct texts reached espeak (the repeated one twice at most,
    // when its copies landed in two batches running at once).
    let calls = app.provider_calls("espeak") as f64;
    assert!((4.0..=5.0).contains(&calls), "{calls}");
    assert_eq!(
        m.value(
            "tts_provider_requests_total",
            &[("provider", "espeak"), ("outcome", "ok")]
        ),
        calls
    );
    assert_eq!(
        m.value(
            "tts_provider_request_duration_seconds_count",
            &[("provider", "espeak")]
        ),
        calls
    );
    assert!(
        m.value(
            "tts_provider_request_duration_seconds_sum",
            &[("provider", "espeak")]
        ) > 0.0
    );
    assert_eq!(
        m.value("tts_quota_wait_seconds_count", &[("provider", "espeak")]),
        calls
    );
    assert_eq!(
        m.get("tts_provider_errors_total", &[("provider", "espeak")]),
        None
    );
    assert_eq!(
        m.value("tts_provider_circuit_state", &[("provider", "espeak")]),
        0.0
    );

    let batches = m.value("tts_batch_size_count", &[]);
    assert!(batches >= 1.0, "{batches}");
    let batched = app
        // A high-priority task carries its request's claim token there too.
        .scalar(
            "SELECT count(*) FROM tasks WHERE worker_batch_id IS NOT NULL AND priority = 'normal'",
        )
        .await;
    assert!(batched >= 3, "{batched}");
    assert_eq!(m.value("tts_batch_size_sum", &[]), batched as f64);
    assert_eq!(m.value("tts_batch_duration_seconds_count", &[]), batches);
    assert_eq!(m.value("tts_tasks_in_flight", &[]), 0.0);
    assert_eq!(m.value("tts_queue_depth", &[]), 0.0);
    assert_eq!(m.value("tts_dlq_depth", &[]), 0.0);
    assert_eq!(m.value("tts_tasks_queued", &[]), 0.0);
    // Every normal task the worker took was published by the dispatcher,
    // within the espeak provider's window.
    assert!(m.value("tts_dispatched_total", &[]) >= batched as f64);
    assert!(m.value("tts_dispatch_window", &[("provider", "espeak")]) >= 16.0);

    let billable = app
        .scalar("SELECT coalesce(sum(billable_characters), 0)::bigint FROM usage_ledger")
        .await;
    assert!(billable > 0);
    assert_eq!(m.value("tts_daily_usage", &[]), billable as f64);
    let ledger_rows = app.scalar("SELECT count(*) FROM usage_ledger").await;
    let ratio = m.value("tts_cache_hit_ratio", &[]);
    assert!(
        (ratio - cache_hits as f64 / ledger_rows as f64).abs() < 1e-9,
        "{ratio}"
    );

    for (series, _) in &m.0 {
        assert!(
            !series.contains("task_id=") && !series.contains("tenant"),
            "unbounded label in {series}"
        );
    }
}

#[tokio::test]
async fn http_requests_are_counted_per_route_template_beside_build_info_and_process_series() {
    let app = TestApp::spawn().await;
    let task = app
        .submit_ok(&json!({"text": "Count my requests.", "dialect": "en-gb", "format": "wav"}))
        .await;
    app.wait_for(task).await;
    let missing = uuid::Uuid::new_v4();
    for _ in 0..3 {
        let response = app
            .get_as(&app.api_key, &format!("/v1/tts/jobs/{missing}"))
            .await;
        assert_eq!(response.status(), 404);
    }
    let unmatched = app
        .http
        .get(format!("{}/no/such/route/{missing}", app.base_url))
        .send()
        .await
        .expect("request sent");
    assert_eq!(unmatched.status(), 404);

    let m = Scrape::of(&app).await;
    let jobs = [
        ("route", "/v1/tts/jobs"),
        ("method", "POST"),
        ("status", "2xx"),
    ];
    assert_eq!(m.value("ttsq_http_requests_total", &jobs), 1.0);
    let by_id = [("route", "/v1/tts/jobs/{id}"), ("method", "GET")];
    // `wait_for` polled the task too (2xx); the three misses are 4xx.
    assert_eq!(
        m.value(
            "ttsq_http_requests_total",
            &[by_id[0], by_id[1], ("status", "4xx")]
        ),
        3.0
    );
    let by_id_count = m.value("ttsq_http_request_duration_seconds_count", &by_id);
    assert!(by_id_count >= 4.0, "{by_id_count}");
    assert_eq!(
        m.value(
            "ttsq_http_request_duration_seconds_bucket",
            &[by_id[0], by_id[1], ("le", "+Inf")]
        ),
        by_id_count
    );
    assert_eq!(
        m.value(
            "ttsq_http_requests_total",
            &[("route", "unmatched"), ("method", "GET"), ("status", "4xx")]
        ),
        1.0
    );
    for (series, _) in &m.0 {
        assert!(
            !series.contains(&missing.to_string()) && !series.contains(&task.to_string()),
            "an id in a label: {series}"
        );
    }

    let build =
        m.0.iter()
            .find(|(series, _)| series.starts_with("ttsq_build_info{"))
            .expect("ttsq_build_info");
    assert_eq!(build.1, 1.0);
    assert!(
        build
            .0
            .contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{}",
        build.0
    );
    assert!(m.value("process_cpu_seconds_total", &[]) > 0.0);
    assert!(m.value("process_resident_memory_bytes", &[]) > 1e6);
    assert!(m.value("process_open_fds", &[]) >= 3.0);
    assert!(m.value("process_max_fds", &[]) >= m.value("process_open_fds", &[]));
    let started = m.value("process_start_time_seconds", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs_f64();
    assert!(started <= now && started > now - 3600.0, "{started}");
}

#[tokio::test]
async fn a_poison_message_shows_in_the_dlq_depth() {
    let app = TestApp::spawn().await;
    app.services
        .broker
        .publish_raw(b"not a job")
        .await
        .expect("raw publish");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = Scrape::of(&app).await;
        if m.value("tts_dlq_depth", &[]) == 1.0 {
            assert_eq!(m.value("tts_queue_depth", &[]), 0.0);
            break;
        }
        assert!(Instant::now() < deadline, "the DLQ depth never showed 1");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const KEY: &str = "sk-metrics-test-key-42";

fn fake_config(fake: &FakeProvider, quota: &str) -> String {
    FakeRoutes::new(fake.base_url())
        .with(&format!("quota = {{ {quota} }}"))
        .espeak_fallback()
        .toml()
}

async fn spawn_with_fake(change: impl FnOnce(&mut FakeConfig)) -> (FakeProvider, TestApp) {
    let mut config = FakeConfig::default();
    config.keys.openai = Some(KEY.to_owned());
    change(&mut config);
    let fake = FakeProvider::start(config)
        .await
        .expect("fake provider starts");
    let app = TestApp::spawn_with(TestOptions {
        worker: true,
        env: vec![
            ("TTSQ_PROVIDERS_FAKE_API_KEY".into(), KEY.into()),
            ("TTSQ_BREAKER_FAILURE_THRESHOLD".into(), "2".into()),
            ("TTSQ_BREAKER_COOLDOWN_SECS".into(), "600".into()),
        ],
        config_toml: Some(fake_config(&fake, "max_concurrent = 8")),
        ..TestOptions::default()
    })
    .await;
    (fake, app)
}

async fn submit_and_finish(app: &TestApp, texts: &[String]) {
    let jobs: Vec<_> = texts
        .iter()
        .map(|text| json!({"text": text, "dialect": "en-gb", "voice": "rachel", "format": "wav"}))
        .collect();
    let ids = join_all(jobs.iter().map(|job| app.submit_ok(job))).await;
    for id in ids {
        assert_eq!(app.wait_for(id).await["status"], "succeeded");
    }
}

#[tokio::test]
async fn a_failing_provider_counts_errors_by_code_and_shows_its_circuit_open() {
    let (_fake, app) = spawn_with_fake(|c| c.faults.server_error_rate = 1.0).await;
    let texts: Vec<String> = (0..3).map(|i| format!("Failing provider {i}.")).collect();
    submit_and_finish(&app, &texts).await;

    let m = Scrape::of(&app).await;
    let errors = m.value(
        "tts_provider_errors_total",
        &[("provider", "fake"), ("code", "provider_unavailable")],
    );
    assert!(errors >= 2.0, "{errors}");
    assert_eq!(
        m.value(
            "tts_provider_requests_total",
            &[("provider", "fake"), ("outcome", "error")]
        ),
        errors
    );
    assert_eq!(
        m.value("tts_provider_circuit_state", &[("provider", "fake")]),
        2.0,
        "open"
    );
    assert_eq!(
        m.value(
            "tts_provider_requests_total",
            &[("provider", "espeak"), ("outcome", "ok")]
        ),
        3.0,
        "every job fell back to espeak"
    );
}

#[tokio::test]
async fn a_provider_429_is_counted_and_the_job_still_succeeds() {
    let (fake, app) = spawn_with_fake(|c| c.quota.requests_per_second = Some(1)).await;
    let texts: Vec<String> = (0..3).map(|i| format!("Rate limited {i}.")).collect();
    submit_and_finish(&app, &texts).await;

    let m = Scrape::of(&app).await;
    let limited = m.value("tts_provider_rate_limited_total", &[("provider", "fake")]);
    assert!(limited >= 1.0, "{limited}");
    assert_eq!(
        m.value(
            "tts_provider_errors_total",
            &[("provider", "fake"), ("code", "provider_rate_limited")]
        ),
        limited
    );
    assert!(fake.stats().rate_limited >= limited as u64);
    // The pause after a 429 is spent waiting for quota.
    assert!(m.value("tts_quota_wait_seconds_sum", &[("provider", "fake")]) >= 0.5);
}

#[tokio::test]
async fn concurrent_single_submits_are_written_many_to_a_transaction() {
    let (_fake, app) = spawn_with_fake(|_| {}).await;
    let jobs: Vec<_> = (0..500)
        .map(|i| json!({"text": format!("Grouped submit {i}."), "dialect": "en-gb", "voice": "rachel", "format": "wav"}))
        .collect();

    // 64 clients, each sending its next job as soon as it has an answer.
    let ids: Vec<_> = futures::stream::iter(jobs.iter())
        .map(|job| app.submit_ok(job))
        .buffer_unordered(64)
        .collect()
        .await;
    app.drain(Duration::from_secs(120)).await;

    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), 500, "every submit got a task of its own");
    assert_eq!(
        app.scalar("SELECT count(*) FROM tasks WHERE status = 'succeeded'")
            .await,
        500
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM audit_log WHERE action = 'task.submit'")
            .await,
        500
    );
    let m = Scrape::of(&app).await;
    let groups = m.value("tts_submit_group_size_count", &[]);
    assert_eq!(m.value("tts_submit_group_size_sum", &[]), 500.0);
    assert!(
        groups < 500.0,
        "{groups} transactions for 500 submits: none were grouped"
    );
}
