//! Tenants, keys, limits, the ledger, finance views, the audit log and the
//! content filter, end to end on real Postgres, RabbitMQ, S3 and espeak-ng.

use std::{collections::BTreeMap, time::Duration};

use futures::{StreamExt, stream};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use ttsq_store::TenantLimits;
use ttsq_testkit::{TestApp, TestOptions};

use crate::documented::assert_documented;

const TTSQ: &str = env!("CARGO_BIN_EXE_ttsq");
const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";

fn options(worker: bool, env: &[(&str, &str)]) -> TestOptions {
    TestOptions {
        worker,
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..TestOptions::default()
    }
}

/// Creates a tenant with `limits` and returns its key.
async fn limited_tenant(app: &TestApp, name: &str, limits: TenantLimits) -> String {
    use secrecy::ExposeSecret;
    let (_, key) = app
        .services
        .store
        .create_tenant_with(name, &limits, None, "test")
        .await
        .expect("tenant created");
    key.key.expose_secret().to_owned()
}

fn job(text: &str) -> Value {
    json!({"text": text, "dialect": "en-gb", "format": "wav"})
}

async fn tasks_of(app: &TestApp, tenant: &str) -> i64 {
    app.scalar(&format!(
        "SELECT count(*) FROM tasks t JOIN tenants n ON n.id = t.tenant_id WHERE n.name = '{tenant}'"
    ))
    .await
}

/// Checks a 429 names the limit and says when to retry; returns its body.
async fn assert_limited(response: reqwest::Response, limit: &str, max_retry: u64) -> Value {
    assert_eq!(response.status(), 429);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .expect("ascii Retry-After")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=max_retry).contains(&retry), "Retry-After {retry}");
    let body: Value = response.json().await.expect("problem JSON");
    assert_eq!(body["limit"], limit, "{body}");
    assert_eq!(body["code"], "limit_exceeded", "{body}");
    assert!(
        body["limit_value"].is_number() && body["usage"].is_number(),
        "{body}"
    );
    assert_eq!(body["retry_after"].as_u64(), Some(retry));
    body
}

#[tokio::test]
async fn ledger_totals_reconcile_exactly_with_tasks_per_tenant_and_day() {
    let app = TestApp::spawn().await;
    let other = app.new_tenant("other").await;
    let mut submitted = Vec::new();
    for i in 0..6 {
        // Repeats of the same text are cache hits once the first is stored.
        submitted.push(app.submit_ok(&job(&format!("Ledger line {}", i % 4))).await);
    }
    for i in 0..3 {
        let response = app
            .submit_as(&other, &job(&format!("Other tenant speaks {i}")))
            .await;
        assert_eq!(response.status(), 202);
    }
    let high = app
        .submit(&json!({"text": "Inline and billed", "dialect": "en-gb", "format": "wav", "priority": "high"}))
        .await;
    assert_eq!(high.status(), 200);
    app.drain(Duration::from_secs(60)).await;
    // Once stored, the same text again is a cache hit at submit time.
    app.submit_ok(&job("Ledger line 0")).await;
    app.drain(Duration::from_secs(60)).await;

    // Every terminal task has exactly one ledger row.
    assert_eq!(
        app.scalar("SELECT count(*) FROM usage_ledger").await,
        app.scalar("SELECT count(*) FROM tasks").await
    );
    assert!(
        app.scalar("SELECT count(*) FROM usage_ledger WHERE cache_hit")
            .await
            >= 1
    );
    // Per tenant and day, billable characters are the succeeded, synthesized tasks' characters.
    let mismatches = app
        .scalar(
            "WITH from_tasks AS (
                SELECT tenant_id, (finished_at AT TIME ZONE 'UTC')::date AS day,
                       sum(characters) FILTER (WHERE status = 'succeeded' AND NOT cache_hit)::bigint AS billable
                  FROM tasks GROUP BY 1, 2),
             from_ledger AS (
                SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date AS day,
                       sum(billable_characters)::bigint AS billable
                  FROM usage_ledger GROUP BY 1, 2),
             from_view AS (
                SELECT tenant_id, day, sum(billable_characters)::bigint AS billable
                  FROM usage_daily GROUP BY 1, 2)
             SELECT count(*) FROM from_tasks t
               FULL JOIN from_ledger l USING (tenant_id, day)
               FULL JOIN from_view v USING (tenant_id, day)
              WHERE coalesce(t.billable, 0) IS DISTINCT FROM l.billable
                 OR l.billable IS DISTINCT FROM v.billable",
        )
        .await;
    assert_eq!(mismatches, 0);
    assert!(
        app.scalar("SELECT sum(billable_characters)::bigint FROM usage_ledger")
            .await
            > 0
    );
    // Each row carries the submitting key's prefix, the currency and timestamps.
    let prefix = &app.api_key[..13];
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM usage_ledger l JOIN tenants t ON t.id = l.tenant_id
              WHERE t.name = 'default' AND l.key_prefix = '{prefix}'"
        ))
        .await,
        8
    );
    assert_eq!(
        app.scalar(
            "SELECT count(*) FROM usage_ledger l JOIN tasks t ON t.id = l.task_id
              WHERE l.key_prefix IS DISTINCT FROM t.key_prefix
                 OR l.submitted_at IS DISTINCT FROM t.created_at
                 OR l.created_at IS DISTINCT FROM t.finished_at
                 OR l.voice <> t.voice OR l.dialect <> t.dialect
                 OR (l.status = 'succeeded') <> (l.currency = 'USD')"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn a_daily_character_limit_holds_under_concurrent_submission() {
    let app = TestApp::spawn_with(options(false, &[])).await;
    // 10 jobs of 20 characters fit; 50 are sent at once.
    let key = limited_tenant(
        &app,
        "small",
        TenantLimits {
            daily_characters: Some(200),
            ..TenantLimits::default()
        },
    )
    .await;
    let responses: Vec<reqwest::Response> = stream::iter(0..50)
        .map(|i| {
            let app = &app;
            let key = key.clone();
            async move {
                app.submit_as(&key, &job(&format!("Concurrent txt {i:05}")))
                    .await
            }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    let mut accepted = 0;
    let mut limited = 0;
    for response in responses {
        match response.status().as_u16() {
            202 => accepted += 1,
            429 => {
                let body = assert_limited(response, "daily_characters", 86_400).await;
                assert_eq!(body["limit_value"], 200);
                assert_eq!(body["requested"], 20);
                limited += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(accepted, 10, "exactly the limit's worth is accepted");
    assert_eq!(limited, 40);
    // Refused submissions left no task (and no audit row).
    assert_eq!(tasks_of(&app, "small").await, 10);
    assert_eq!(
        app.scalar("SELECT sum(characters)::bigint FROM tasks t JOIN tenants n ON n.id = t.tenant_id WHERE n.name = 'small'")
            .await,
        200
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM audit_log WHERE action = 'task.submit' AND tenant_id = (SELECT id FROM tenants WHERE name = 'small')")
            .await,
        10
    );
    // Refusals are audited too, by length and hash of the text.
    assert_eq!(
        app.scalar("SELECT count(*) FROM audit_log WHERE action = 'task.refuse' AND detail->>'limit' = 'daily_characters' AND text_chars = 20")
            .await,
        40
    );
    // High priority is held to the same limit, before any synthesis.
    let high = app
        .submit_as(
            &key,
            &json!({"text": "One more, inline", "dialect": "en-gb", "priority": "high"}),
        )
        .await;
    assert_limited(high, "daily_characters", 86_400).await;
    assert_eq!(tasks_of(&app, "small").await, 10);
    assert_eq!(app.provider_calls("espeak"), 0);
    // The warning at 80 % was recorded once for the day.
    assert_eq!(
        app.scalar(
            "SELECT count(*) FROM tenant_limit_warnings WHERE limit_name = 'daily_characters'"
        )
        .await,
        1
    );
    // … and shows in the metrics, without naming the tenant.
    let metrics = app
        .http
        .get(format!("{}/metrics", app.ops_url))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains("tts_tenants_near_limit{limit=\"daily_characters\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tts_tenant_limit_usage_max{limit=\"daily_characters\"} 1"),
        "{metrics}"
    );
    // Other tenants are not held back.
    app.submit_ok(&job("The default tenant has no limit")).await;
}

#[tokio::test]
async fn a_tenant_may_hold_only_max_queued_jobs_open() {
    let app = TestApp::spawn_with(options(false, &[])).await;
    let key = limited_tenant(
        &app,
        "queue",
        TenantLimits {
            max_queued_jobs: Some(3),
            ..TenantLimits::default()
        },
    )
    .await;
    for i in 0..3 {
        let response = app.submit_as(&key, &job(&format!("Queued job {i}"))).await;
        assert_eq!(response.status(), 202);
    }
    let body = assert_limited(
        app.submit_as(&key, &job("One too many")).await,
        "max_queued_jobs",
        10,
    )
    .await;
    assert_eq!(
        (body["limit_value"].as_i64(), body["usage"].as_i64()),
        (Some(3), Some(3))
    );
    assert_eq!(tasks_of(&app, "queue").await, 3);

    // Once the worker works the queue off, the tenant may submit again.
    let mut app = app;
    app.start_worker();
    app.drain(Duration::from_secs(60)).await;
    let response = app.submit_as(&key, &job("Room again")).await;
    assert_eq!(response.status(), 202);
}

#[tokio::test]
async fn a_monthly_budget_refuses_billable_jobs_once_spent() {
    // One currency unit per character, so costs are easy to follow.
    let app = TestApp::spawn_with(options(
        true,
        &[("TTSQ_PROVIDERS_ESPEAK_PRICE_PER_1K_CHARS", "1000")],
    ))
    .await;
    let key = limited_tenant(
        &app,
        "budget",
        TenantLimits {
            monthly_budget: Some(30.0),
            ..TenantLimits::default()
        },
    )
    .await;
    let high =
        |text: &str| json!({"text": text, "dialect": "en-gb", "format": "wav", "priority": "high"});
    // 20 characters inline: cost 20 of 30.
    let first = app.submit_as(&key, &high("Twenty characters ok")).await;
    assert_eq!(first.status(), 200);
    // Another 20 inline would make 40: refused, and not kept.
    let body = assert_limited(
        app.submit_as(&key, &high("Twenty more, refused")).await,
        "monthly_budget",
        31 * 86_400,
    )
    .await;
    assert_eq!(body["currency"], "USD");
    assert_eq!(body["usage"].as_f64(), Some(20.0));
    assert_eq!(tasks_of(&app, "budget").await, 1);
    // Refused on its estimated cost, before espeak was asked.
    assert_eq!(app.provider_calls("espeak"), 1);
    // A queued job reserves its estimated cost: 10 more make 30 of 30.
    let response = app.submit_as(&key, &job("Ten chars!")).await;
    assert_eq!(response.status(), 202);
    // Nothing more fits, neither before that job is billed nor after.
    assert_limited(
        app.submit_as(&key, &job("Nothing more this month")).await,
        "monthly_budget",
        31 * 86_400,
    )
    .await;
    app.drain(Duration::from_secs(60)).await;
    let body = assert_limited(
        app.submit_as(&key, &job("Nothing more this month")).await,
        "monthly_budget",
        31 * 86_400,
    )
    .await;
    assert_eq!(body["usage"].as_f64(), Some(30.0), "{body}");
    // A cache hit bills nothing and is still served.
    let again = app.submit_as(&key, &high("Twenty characters ok")).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["x-cache"], "hit");
}

/// Finding 6 of the hostile-tenant review: queued work was admitted at no
/// cost and the budget checked against the ledger alone, so batch after
/// batch passed a budget that the first one already used up. Queued jobs
/// now reserve their estimated cost (characters at the route's first
/// provider's price) until they end.
#[tokio::test]
async fn queued_work_reserves_its_estimate_so_batches_cannot_overshoot_a_budget() {
    // One currency unit per character, so costs are easy to follow.
    let mut app = TestApp::spawn_with(options(
        false,
        &[("TTSQ_PROVIDERS_ESPEAK_PRICE_PER_1K_CHARS", "1000")],
    ))
    .await;
    let key = limited_tenant(
        &app,
        "reserve",
        TenantLimits {
            monthly_budget: Some(100.0),
            ..TenantLimits::default()
        },
    )
    .await;
    let batch = |tag: &str| {
        let items: Vec<Value> = (0..10)
            .map(|i| json!({"text": format!("{tag} {i:03}"), "dialect": "en-gb", "format": "wav"}))
            .collect();
        json!({ "items": items })
    };
    let post_batch = |body: Value| {
        app.http
            .post(format!("{}/v1/tts/batches", app.base_url))
            .bearer_auth(&key)
            .json(&body)
            .send()
    };
    // Ten items of 8 characters: 80 of 100 reserved, nothing billed yet.
    let first = post_batch(batch("Item")).await.expect("sent");
    assert_eq!(first.status(), 202);
    // Ten more would make 160: refused whole, nothing written.
    let body = assert_limited(
        post_batch(batch("Next")).await.expect("sent"),
        "monthly_budget",
        31 * 86_400,
    )
    .await;
    assert_eq!(body["usage"].as_f64(), Some(80.0), "{body}");
    assert_eq!(tasks_of(&app, "reserve").await, 10);
    // 20 characters fit exactly; one more does not.
    let fits = app.submit_as(&key, &job("Twenty characters ok")).await;
    assert_eq!(fits.status(), 202);
    let fits: Value = fits.json().await.expect("JSON");
    assert_limited(
        app.submit_as(&key, &job("x")).await,
        "monthly_budget",
        31 * 86_400,
    )
    .await;
    // Cancelling releases what the job reserved.
    let cancelled = app
        .http
        .delete(format!(
            "{}/v1/tts/jobs/{}",
            app.base_url,
            fits["task_id"].as_str().expect("task id")
        ))
        .bearer_auth(&key)
        .send()
        .await
        .expect("DELETE sent");
    assert_eq!(cancelled.status(), 200);
    let response = app.submit_as(&key, &job("Twenty again, fits!!")).await;
    assert_eq!(response.status(), 202);
    // The work done is billed within the budget.
    app.start_worker();
    app.drain(Duration::from_secs(120)).await;
    let billed: f64 = ttsq_store::sqlx::query_scalar(
        "SELECT coalesce(sum(l.cost), 0)::float8 FROM usage_ledger l
           JOIN tenants n ON n.id = l.tenant_id WHERE n.name = 'reserve'",
    )
    .fetch_one(app.services.store.pool())
    .await
    .expect("ledger total");
    assert_eq!(billed, 100.0, "80 for the batch and 20 for the last job");
}

/// A tenant's dispatch weight is set through the admin API, within 1 to
/// 1000; out of range is a `400` naming the field, and nothing changes.
#[tokio::test]
async fn the_admin_api_sets_a_tenants_weight_within_its_bounds() {
    let app = TestApp::spawn_with(options(false, &[("TTSQ_ADMIN_TOKEN", ADMIN_TOKEN)])).await;
    let patch = |body: Value| {
        app.http
            .patch(format!("{}/v1/admin/tenants/default", app.base_url))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };
    let set: Value = patch(json!({"weight": 5}))
        .await
        .expect("PATCH sent")
        .json()
        .await
        .expect("JSON");
    assert_eq!(set["weight"], 5, "{set}");
    for bad in [0, 1001, -1] {
        let refused = patch(json!({"weight": bad})).await.expect("PATCH sent");
        assert_eq!(refused.status(), 400);
        let problem: Value = refused.json().await.expect("JSON");
        assert!(problem.to_string().contains("weight"), "{problem}");
    }
    assert_eq!(
        app.scalar("SELECT weight::bigint FROM tenants WHERE name = 'default'")
            .await,
        5
    );
}

/// Finding 7 of the hostile-tenant review: cache hits skipped every limit,
/// so a tenant could create tasks without end (each writes a task, a ledger
/// row, an audit row, maybe a webhook) for nothing. `daily_requests` counts
/// every task accepted this UTC day, cache hits included, single or batched.
#[tokio::test]
async fn a_daily_request_limit_counts_cache_hits_too() {
    let app = TestApp::spawn_with(options(true, &[("TTSQ_ADMIN_TOKEN", ADMIN_TOKEN)])).await;
    let key = limited_tenant(&app, "requests", TenantLimits::default()).await;
    let patched = app
        .http
        .patch(format!("{}/v1/admin/tenants/requests", app.base_url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"daily_requests": 4}))
        .send()
        .await
        .expect("PATCH sent");
    assert_eq!(patched.status(), 200);
    let patched: Value = patched.json().await.expect("JSON");
    assert_eq!(patched["daily_requests"], 4, "{patched}");

    let high = json!({"text": "Said once, heard often.", "dialect": "en-gb", "format": "wav", "priority": "high"});
    let first = app.submit_as(&key, &high).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-cache"], "miss");
    for _ in 0..2 {
        let again = app.submit_as(&key, &high).await;
        assert_eq!(again.status(), 200);
        assert_eq!(again.headers()["x-cache"], "hit");
    }
    // A batch of two cache hits would make 5 of 4: refused whole.
    let item = json!({"text": "Said once, heard often.", "dialect": "en-gb", "format": "wav"});
    let batch = app
        .http
        .post(format!("{}/v1/tts/batches", app.base_url))
        .bearer_auth(&key)
        .json(&json!({"items": [item, item]}))
        .send()
        .await
        .expect("batch sent");
    let body = assert_limited(batch, "daily_requests", 86_400).await;
    assert_eq!(
        (
            body["limit_value"].as_i64(),
            body["usage"].as_i64(),
            body["requested"].as_i64()
        ),
        (Some(4), Some(3), Some(2)),
        "{body}"
    );
    // The fourth, a queued-priority cache hit, fits; the fifth does not.
    let fourth = app.submit_as(&key, &item).await;
    assert_eq!(fourth.status(), 202);
    let fourth: Value = fourth.json().await.expect("JSON");
    assert_eq!(fourth["status"], "succeeded", "{fourth}");
    assert_limited(app.submit_as(&key, &high).await, "daily_requests", 86_400).await;
    assert_eq!(tasks_of(&app, "requests").await, 4);
    // Operators see the limit and its use.
    let admin: Value = app
        .http
        .get(format!("{}/v1/admin/tenants/requests", app.base_url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("GET sent")
        .json()
        .await
        .expect("JSON");
    assert!(admin.to_string().contains("daily_requests"), "{admin}");
    assert_documented(&app, "get", "/v1/admin/tenants/{name}", 200, &admin).await;
}

#[tokio::test]
async fn a_revoked_key_is_refused_at_once_on_every_replica() {
    let app = TestApp::spawn_with(options(false, &[])).await;
    let replica = app.spawn_api_replica().await;
    let key = app
        .services
        .store
        .create_key("default")
        .await
        .expect("key created");
    let key = {
        use secrecy::ExposeSecret;
        key.key.expose_secret().to_owned()
    };
    let usage_on = |base: &str| {
        app.http
            .get(format!("{base}/v1/usage"))
            .bearer_auth(&key)
            .send()
    };
    assert_eq!(usage_on(&app.base_url).await.expect("sent").status(), 200);
    assert_eq!(
        usage_on(&replica.base_url).await.expect("sent").status(),
        200
    );

    let revoked = app
        .services
        .store
        .revoke_key(&key[..13], "test")
        .await
        .expect("key revoked");
    assert!(revoked.revoked_at.is_some());
    for base in [&app.base_url, &replica.base_url] {
        let response = usage_on(base).await.expect("sent");
        assert_eq!(response.status(), 401, "{base}");
        let submit = app
            .http
            .post(format!("{base}/v1/tts/jobs"))
            .bearer_auth(&key)
            .json(&job("After the revoke"))
            .send()
            .await
            .expect("sent");
        assert_eq!(submit.status(), 401, "{base}");
    }
    // The tenant's other key still works.
    assert_eq!(app.get_as(&app.api_key, "/v1/usage").await.status(), 200);
    replica.stop().await;
}

/// Tasks, characters and rows of a key's own `GET /v1/usage`.
async fn own_usage(app: &TestApp, key: &str) -> (i64, i64, Vec<Value>) {
    let response = app.get_as(key, "/v1/usage").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("usage JSON");
    assert_documented(app, "get", "/v1/usage", 200, &body).await;
    let days = body["days"].as_array().expect("days").clone();
    let tasks: i64 = days
        .iter()
        .map(|d| d["tasks"].as_i64().expect("tasks"))
        .sum();
    let characters: i64 = days
        .iter()
        .map(|d| d["characters"].as_i64().expect("characters"))
        .sum();
    (tasks, characters, days)
}

#[tokio::test]
async fn one_tenants_usage_never_appears_in_anothers() {
    let app = TestApp::spawn().await;
    let second = app.new_tenant("second").await;
    let quiet = app.new_tenant("quiet").await;
    for i in 0..3 {
        app.submit_ok(&job(&format!("Default tenant text {i}")))
            .await;
    }
    for i in 0..2 {
        let response = app
            .submit_as(&second, &job(&format!("Second tenant words {i}")))
            .await;
        assert_eq!(response.status(), 202);
    }
    app.drain(Duration::from_secs(60)).await;

    let (tasks, characters, _) = own_usage(&app, &app.api_key).await;
    assert_eq!(tasks, 3);
    assert_eq!(
        characters,
        app.scalar("SELECT sum(characters)::bigint FROM tasks WHERE tenant_id = (SELECT id FROM tenants WHERE name = 'default')")
            .await
    );
    let (tasks, characters, _) = own_usage(&app, &second).await;
    assert_eq!(tasks, 2);
    assert_eq!(
        characters,
        app.scalar("SELECT sum(characters)::bigint FROM tasks WHERE tenant_id = (SELECT id FROM tenants WHERE name = 'second')")
            .await
    );
    let (tasks, _, days) = own_usage(&app, &quiet).await;
    assert_eq!((tasks, days.len()), (0, 0));

    // Bad ranges are a 400 naming the field.
    let response = app
        .get_as(&quiet, "/v1/usage?from=2026-02-30&to=2026-03-01")
        .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("problem");
    assert_eq!(body["errors"][0]["field"], "from");
}

#[tokio::test]
async fn the_usage_csv_export_parses_and_sums_to_the_sql_view() {
    let app = TestApp::spawn_with(options(
        true,
        &[("TTSQ_PROVIDERS_ESPEAK_PRICE_PER_1K_CHARS", "0.37")],
    ))
    .await;
    for i in 0..5 {
        app.submit_ok(&json!({"text": format!("Export row number {i}"), "dialect": if i % 2 == 0 { "en-gb" } else { "fr-fr" }}))
            .await;
    }
    app.drain(Duration::from_secs(60)).await;
    // The same job again: served from storage, billed nothing.
    app.submit_ok(&json!({"text": "Export row number 0", "dialect": "en-gb"}))
        .await;
    app.drain(Duration::from_secs(60)).await;

    let today = chrono::Utc::now().date_naive().to_string();
    let output = app
        .cli_command(TTSQ)
        .args([
            "usage", "--tenant", "default", "--from", &today, "--to", &today,
        ])
        .args(["--format", "csv"])
        .output()
        .expect("ttsq usage runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let csv = String::from_utf8(output.stdout).expect("UTF-8 CSV");
    let mut lines = csv.split("\r\n").filter(|l| !l.is_empty());
    let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
    assert_eq!(
        header,
        [
            "tenant",
            "day",
            "provider",
            "dialect",
            "currency",
            "tasks",
            "succeeded",
            "failed",
            "cache_hits",
            "characters",
            "billable_characters",
            "cost"
        ]
    );
    let rows: Vec<BTreeMap<&str, &str>> = lines
        .map(|l| header.iter().copied().zip(l.split(',')).collect())
        .collect();
    assert_eq!(rows.len(), 2, "one row per dialect: {csv}");
    let sum = |column: &str| -> i64 {
        rows.iter()
            .map(|r| r[column].parse::<i64>().expect("a whole number"))
            .sum()
    };
    // Costs are exact six-place decimals: sum them in millionths.
    let micros: i64 = rows
        .iter()
        .map(|r| {
            let (units, fraction) = r["cost"].split_once('.').expect("a decimal cost");
            assert_eq!(fraction.len(), 6);
            units.parse::<i64>().expect("units") * 1_000_000
                + fraction.parse::<i64>().expect("fraction")
        })
        .sum();
    let view = |column: &str| {
        format!(
            "SELECT coalesce(sum({column}), 0)::bigint FROM usage_daily WHERE tenant = 'default' AND day = '{today}'"
        )
    };
    assert_eq!(sum("tasks"), app.scalar(&view("tasks")).await);
    assert_eq!(sum("tasks"), 6);
    assert_eq!(sum("cache_hits"), 1);
    assert_eq!(
        sum("billable_characters"),
        app.scalar(&view("billable_characters")).await
    );
    assert_eq!(sum("characters"), app.scalar(&view("characters")).await);
    assert_eq!(micros, app.scalar(&view("cost * 1000000")).await);
    assert!(micros > 0);

    // JSON and the table carry the same rows.
    let json_out = app
        .cli_command(TTSQ)
        .args([
            "usage", "--tenant", "default", "--format", "json", "--by", "month",
        ])
        .output()
        .expect("ttsq usage runs");
    assert!(json_out.status.success());
    let monthly: Value = serde_json::from_slice(&json_out.stdout).expect("JSON");
    let tasks: i64 = monthly
        .as_array()
        .expect("an array")
        .iter()
        .map(|r| r["tasks"].as_i64().expect("tasks"))
        .sum();
    assert_eq!(tasks, 6);
}

/// The role the service connects as (the stack's own pool) adds and reads
/// ledger and audit rows, and nothing more: it cannot change or remove them,
/// truncate the tables, nor disable, drop or replace their triggers. The
/// whole suite runs as such a role, so what the service needs it has.
#[tokio::test]
async fn the_service_role_cannot_change_the_ledger_or_the_audit_log_nor_disable_their_triggers() {
    let app = TestApp::spawn().await;
    let id = app.submit_ok(&job("Append only")).await;
    assert_eq!(app.wait_for(id).await["status"], "succeeded");
    let pool = app.services.store.pool();
    let (role, superuser): (String, bool) = ttsq_store::sqlx::query_as(
        "SELECT rolname::text, rolsuper FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(pool)
    .await
    .expect("the role reads itself");
    assert_eq!(role, app.service_role());
    assert!(!superuser, "a superuser ignores every grant");
    let ledger = app.scalar("SELECT count(*) FROM usage_ledger").await;
    let audit = app.scalar("SELECT count(*) FROM audit_log").await;
    assert_eq!(ledger, 1);
    assert!(audit >= 1);

    for sql in [
        "UPDATE usage_ledger SET billable_characters = 0",
        "DELETE FROM usage_ledger",
        "TRUNCATE usage_ledger CASCADE",
        "UPDATE audit_log SET actor = 'someone else'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
        "ALTER TABLE usage_ledger DISABLE TRIGGER usage_ledger_append_only",
        "ALTER TABLE usage_ledger DISABLE TRIGGER ALL",
        "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only",
        "DROP TRIGGER usage_ledger_append_only ON usage_ledger",
        "ALTER TABLE usage_ledger OWNER TO CURRENT_USER",
        "CREATE OR REPLACE FUNCTION ttsq_refuse_change() RETURNS trigger
             LANGUAGE plpgsql AS $$ BEGIN RETURN OLD; END $$",
        // Replica mode skips ordinary triggers.
        "SET session_replication_role = replica",
    ] {
        let err = ttsq_store::sqlx::query(sql)
            .execute(pool)
            .await
            .expect_err("the service role may not do this");
        let message = err.to_string();
        assert_eq!(
            err.as_database_error().and_then(|e| e.code()).as_deref(),
            Some("42501"),
            "{sql}: {message}"
        );
        assert!(
            !message.contains("append-only"),
            "{sql}: refused by its privileges, before any trigger: {message}"
        );
    }
    for (table, privilege, held) in [
        ("usage_ledger", "INSERT", true),
        ("usage_ledger", "SELECT", true),
        ("usage_ledger", "UPDATE", false),
        ("usage_ledger", "DELETE", false),
        ("usage_ledger", "TRUNCATE", false),
        ("usage_ledger", "TRIGGER", false),
        ("audit_log", "INSERT", true),
        ("audit_log", "SELECT", true),
        ("audit_log", "UPDATE", false),
        ("audit_log", "DELETE", false),
        ("audit_log", "TRUNCATE", false),
        ("audit_log", "TRIGGER", false),
        ("tasks", "UPDATE", true),
        ("tasks", "TRUNCATE", false),
        ("_sqlx_migrations", "SELECT", true),
        ("_sqlx_migrations", "INSERT", false),
    ] {
        let has: bool =
            ttsq_store::sqlx::query_scalar("SELECT has_table_privilege(current_user, $1, $2)")
                .bind(table)
                .bind(privilege)
                .fetch_one(pool)
                .await
                .expect("privilege readable");
        assert_eq!(has, held, "{privilege} on {table}");
    }
    assert_eq!(
        app.scalar("SELECT count(*) FROM usage_ledger").await,
        ledger
    );
    assert_eq!(app.scalar("SELECT count(*) FROM audit_log").await, audit);
}

/// The owner, which may do anything else to them, is still refused changes
/// to ledger and audit rows by their triggers.
#[tokio::test]
async fn the_ledger_and_the_audit_log_refuse_update_and_delete_even_to_their_owner() {
    let app = TestApp::spawn().await;
    let id = app.submit_ok(&job("Append only")).await;
    app.wait_for(id).await;
    let mut owner = app.owner_connection().await;
    for sql in [
        "UPDATE usage_ledger SET billable_characters = 0",
        "DELETE FROM usage_ledger",
        "TRUNCATE usage_ledger CASCADE",
        "UPDATE audit_log SET actor = 'someone else'",
        "DELETE FROM audit_log",
    ] {
        let err = ttsq_store::sqlx::query(sql)
            .execute(&mut owner)
            .await
            .expect_err("an append-only table refuses changes");
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(app.scalar("SELECT count(*) FROM usage_ledger").await, 1);
}

#[tokio::test]
async fn the_admin_api_needs_the_token_and_manages_tenants_and_keys() {
    let app = TestApp::spawn_with(options(false, &[("TTSQ_ADMIN_TOKEN", ADMIN_TOKEN)])).await;
    let admin = |method: reqwest::Method, path: &str, token: Option<&str>| {
        let request = app.http.request(method, format!("{}{path}", app.base_url));
        match token {
            Some(t) => request.bearer_auth(t),
            None => request,
        }
    };
    // Without, with a wrong token or a tenant's key: 401.
    for token in [None, Some("wrong"), Some(app.api_key.as_str())] {
        let response = admin(reqwest::Method::GET, "/v1/admin/tenants", token)
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 401, "{token:?}");
    }
    let created = admin(
        reqwest::Method::POST,
        "/v1/admin/tenants",
        Some(ADMIN_TOKEN),
    )
    .json(&json!({"name": "acme", "daily_characters": 1000, "max_queued_jobs": 5}))
    .send()
    .await
    .expect("sent");
    assert_eq!(created.status(), 201);
    assert_eq!(created.headers()["cache-control"], "no-store");
    let created: Value = created.json().await.expect("JSON");
    let key = created["api_key"].as_str().expect("a key").to_owned();
    assert_eq!(created["tenant"]["daily_characters"], 1000);
    assert!(key.starts_with(created["key_prefix"].as_str().expect("prefix")));
    // The new key works, and its submissions count against the limits.
    let response = app.submit_as(&key, &job("Acme's first words")).await;
    assert_eq!(response.status(), 202);
    let tenant: Value = admin(
        reqwest::Method::GET,
        "/v1/admin/tenants/acme",
        Some(ADMIN_TOKEN),
    )
    .send()
    .await
    .expect("sent")
    .json()
    .await
    .expect("JSON");
    let daily = tenant["usage"]
        .as_array()
        .expect("usage")
        .iter()
        .find(|u| u["limit"] == "daily_characters")
        .expect("daily usage")
        .clone();
    assert_eq!(daily["used"].as_f64(), Some(18.0));
    assert_eq!(daily["fraction"].as_f64(), Some(0.018));

    // PATCH: null lifts a limit, left-out fields stay.
    let patched: Value = admin(
        reqwest::Method::PATCH,
        "/v1/admin/tenants/acme",
        Some(ADMIN_TOKEN),
    )
    .json(&json!({"daily_characters": null, "monthly_budget": 12.5}))
    .send()
    .await
    .expect("sent")
    .json()
    .await
    .expect("JSON");
    assert_eq!(patched["daily_characters"], Value::Null);
    assert_eq!(patched["max_queued_jobs"], 5);
    assert_eq!(patched["monthly_budget"], 12.5);
    let bad = admin(
        reqwest::Method::PATCH,
        "/v1/admin/tenants/acme",
        Some(ADMIN_TOKEN),
    )
    .json(&json!({"max_queued_jobs": 0}))
    .send()
    .await
    .expect("sent");
    assert_eq!(bad.status(), 400);
    let missing = admin(
        reqwest::Method::PATCH,
        "/v1/admin/tenants/nobody",
        Some(ADMIN_TOKEN),
    )
    .json(&json!({"max_queued_jobs": 1}))
    .send()
    .await
    .expect("sent");
    assert_eq!(missing.status(), 404);

    // A second key, listed by prefix, then revoked: refused at once.
    let second: Value = admin(
        reqwest::Method::POST,
        "/v1/admin/tenants/acme/keys",
        Some(ADMIN_TOKEN),
    )
    .send()
    .await
    .expect("sent")
    .json()
    .await
    .expect("JSON");
    let second_key = second["api_key"].as_str().expect("key").to_owned();
    let keys: Value = admin(
        reqwest::Method::GET,
        "/v1/admin/tenants/acme/keys",
        Some(ADMIN_TOKEN),
    )
    .send()
    .await
    .expect("sent")
    .json()
    .await
    .expect("JSON");
    assert_eq!(keys["keys"].as_array().expect("keys").len(), 2);
    assert!(
        !keys.to_string().contains(&second_key),
        "keys are never listed"
    );
    let revoked = admin(
        reqwest::Method::DELETE,
        &format!(
            "/v1/admin/keys/{}",
            second["key_prefix"].as_str().expect("prefix")
        ),
        Some(ADMIN_TOKEN),
    )
    .send()
    .await
    .expect("sent");
    assert_eq!(revoked.status(), 200);
    assert_eq!(app.get_as(&second_key, "/v1/usage").await.status(), 401);
    assert_eq!(app.get_as(&key, "/v1/usage").await.status(), 200);

    // Finance figures over HTTP: the job is still queued, so nothing is billed yet.
    let usage = admin(
        reqwest::Method::GET,
        "/v1/admin/usage?tenant=acme&by=month",
        Some(ADMIN_TOKEN),
    )
    .send()
    .await
    .expect("sent");
    assert_eq!(usage.status(), 200);
    let usage: Value = usage.json().await.expect("JSON");
    assert_eq!(usage["rows"], json!([]));
    let bad = admin(
        reqwest::Method::GET,
        "/v1/admin/usage?by=year",
        Some(ADMIN_TOKEN),
    )
    .send()
    .await
    .expect("sent");
    assert_eq!(bad.status(), 400);

    // Every change is in the audit log as the admin API.
    assert_eq!(
        app.scalar("SELECT count(*) FROM audit_log WHERE actor = 'admin-api' AND action IN ('tenant.create', 'tenant.update', 'key.create', 'key.revoke')")
            .await,
        4
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM audit_log a WHERE a::text LIKE '%{ADMIN_TOKEN}%'"
        ))
        .await,
        0
    );
}

#[tokio::test]
async fn without_a_token_the_admin_api_does_not_exist() {
    let app = TestApp::spawn_with(options(false, &[])).await;
    let response = app
        .http
        .get(format!("{}/v1/admin/tenants", app.base_url))
        .bearer_auth("anything")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn blocked_content_is_refused_with_422_without_echoing_it() {
    let app = TestApp::spawn_with(options(
        false,
        &[
            ("TTSQ_LIMITS_BLOCKED_PATTERNS", "(?i)forbidden\\s+phrase"),
            ("TTSQ_AUDIT_TEXT_KEY", AUDIT_KEY),
        ],
    ))
    .await;
    let response = app.submit(&job("Say the Forbidden   Phrase aloud")).await;
    assert_eq!(response.status(), 422);
    let body = response.text().await.expect("body");
    let problem: Value = serde_json::from_str(&body).expect("problem JSON");
    assert_eq!(problem["code"], "content_rejected");
    assert!(!body.to_lowercase().contains("forbidden"), "{body}");
    assert_eq!(app.scalar("SELECT count(*) FROM tasks").await, 0);
    assert_eq!(
        app.scalar("SELECT count(*) FROM audit_log WHERE action = 'task.refuse' AND detail->>'reason' = 'content_rejected' AND text_sha256 IS NOT NULL")
            .await,
        1
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM audit_log a WHERE a::text ILIKE '%forbidden%'")
            .await,
        0
    );
    app.submit_ok(&job("A perfectly fine phrase")).await;
}

#[tokio::test]
async fn blocked_content_hidden_by_invisible_characters_is_refused_too() {
    let app = TestApp::spawn_with(options(
        false,
        &[("TTSQ_LIMITS_BLOCKED_PATTERNS", "(?i)forbidden\\s+phrase")],
    ))
    .await;
    // A soft hyphen, a zero-width space and a tag character render as
    // nothing; the synthesizer reads the phrase all the same.
    for text in [
        "Say the forb\u{ad}idden phrase aloud",
        "Say the forbid\u{200b}den phrase aloud",
        "Say the forbidden\u{e0020} phrase aloud",
    ] {
        let response = app.submit(&job(text)).await;
        assert_eq!(response.status(), 422, "{}", text.escape_unicode());
        let problem: Value = response.json().await.expect("problem JSON");
        assert_eq!(problem["code"], "content_rejected");
    }
    let batch = app
        .http
        .post(format!("{}/v1/tts/batches", app.base_url))
        .bearer_auth(&app.api_key)
        .json(&json!({"items": [job("fine"), job("the FORB\u{2060}IDDEN phrase")]}))
        .send()
        .await
        .expect("sent");
    assert_eq!(batch.status(), 422);
    assert_eq!(app.scalar("SELECT count(*) FROM tasks").await, 0);
}

/// Key of the audit log's text fingerprints in the tests that set one.
const AUDIT_KEY: &str = "audit-text-key-for-tests-0123456789";

/// Hex HMAC-SHA256 of `text` under `key`: what an operator holding the key
/// computes to find a text in the audit log.
fn fingerprint(key: &str, text: &str) -> String {
    use hmac::{Hmac, Mac};
    let key = Sha256::digest(key.as_bytes());
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(text.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn a_short_text_cannot_be_found_in_the_audit_log_by_hashing_guesses() {
    let app = TestApp::spawn_with(options(false, &[])).await;
    // A voice one-time code: a million guesses, each one SHA-256 away.
    let code = "Your code is 4 8 2 9 1 3";
    app.submit_ok(&job(code)).await;
    let guessed = hex::encode(Sha256::digest(code.as_bytes()));
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM audit_log WHERE text_sha256 = '{guessed}'"
        ))
        .await,
        0,
        "the audit log holds the plain SHA-256 of the text"
    );
}

#[tokio::test]
async fn submissions_are_audited_with_length_and_hash_never_the_text() {
    let app = TestApp::spawn_with(options(false, &[("TTSQ_AUDIT_TEXT_KEY", AUDIT_KEY)])).await;
    let text = "Confidential sentence for the audit test";
    let id = app.submit_ok(&job(text)).await;
    let prefix = &app.api_key[..13];
    let row: (String, String, Option<String>, i32, Option<String>) = ttsq_store::sqlx::query_as(
        "SELECT actor, action, key_prefix, text_chars, text_sha256 FROM audit_log WHERE target = $1",
    )
    .bind(id.to_string())
    .fetch_one(app.services.store.pool())
    .await
    .expect("an audit row for the submission");
    assert_eq!(row.0, format!("key:{prefix}"));
    assert_eq!(row.1, "task.submit");
    assert_eq!(row.2.as_deref(), Some(prefix));
    assert_eq!(row.3, 40);
    // Keyed: whoever holds the key can match a text; no one else can.
    assert_eq!(row.4, Some(fingerprint(AUDIT_KEY, text)));
    assert_eq!(
        app.scalar("SELECT count(*) FROM audit_log a WHERE a::text ILIKE '%confidential%'")
            .await,
        0
    );
    // The task remembers the submitting key too.
    let key_prefix: Option<String> =
        ttsq_store::sqlx::query_scalar("SELECT key_prefix FROM tasks WHERE id = $1")
            .bind(id)
            .fetch_one(app.services.store.pool())
            .await
            .expect("task");
    assert_eq!(key_prefix.as_deref(), Some(prefix));
}

#[tokio::test]
async fn the_cli_manages_tenants_and_keys() {
    let app = TestApp::spawn_with(options(false, &[])).await;
    let run = |args: &[&str]| {
        let output = app
            .cli_command(TTSQ)
            .args(args)
            .output()
            .expect("ttsq runs");
        assert!(
            output.status.success(),
            "ttsq {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("UTF-8")
    };
    let key = run(&[
        "tenant",
        "create",
        "cli-co",
        "--daily-characters",
        "500",
        "--monthly-budget",
        "9.5",
        "--currency",
        "EUR",
    ])
    .trim()
    .to_owned();
    assert!(key.starts_with("ttsq_"));
    let tenants: Value =
        serde_json::from_str(&run(&["tenant", "list", "--format", "json"])).expect("JSON");
    let cli_co = tenants
        .as_array()
        .expect("array")
        .iter()
        .find(|t| t["name"] == "cli-co")
        .expect("listed")
        .clone();
    assert_eq!(
        (
            cli_co["daily_characters"].as_i64(),
            cli_co["currency"].as_str()
        ),
        (Some(500), Some("EUR"))
    );
    run(&[
        "tenant",
        "update",
        "cli-co",
        "--daily-characters",
        "none",
        "--max-queued-jobs",
        "7",
        "--daily-requests",
        "12345",
        "--weight",
        "3",
    ]);
    assert_eq!(
        app.scalar("SELECT weight::bigint FROM tenants WHERE name = 'cli-co'")
            .await,
        3
    );
    // A weight out of range is refused by the argument parser, naming it.
    let output = app
        .cli_command(TTSQ)
        .args(["tenant", "update", "cli-co", "--weight", "0"])
        .output()
        .expect("ttsq runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--weight"));
    let table = run(&["tenant", "list"]);
    let line = table
        .lines()
        .find(|l| l.starts_with("cli-co"))
        .expect("a row");
    assert!(
        line.contains(" 7 ") && line.contains(" 9.5 ") && line.contains(" 12345 "),
        "{line}"
    );

    let second = run(&["key", "create", "cli-co"]).trim().to_owned();
    let keys = run(&["key", "list", "cli-co", "--format", "csv"]);
    assert_eq!(keys.lines().count(), 3, "header and two keys: {keys}");
    assert!(!keys.contains(&second));
    assert_eq!(app.get_as(&second, "/v1/usage").await.status(), 200);
    run(&["key", "revoke", &second[..13]]);
    assert_eq!(app.get_as(&second, "/v1/usage").await.status(), 401);
    assert_eq!(app.get_as(&key, "/v1/usage").await.status(), 200);
    // Mistakes are explained, not panicked over.
    let output = app
        .cli_command(TTSQ)
        .args(["key", "revoke", "ttsq_nothere"])
        .output()
        .expect("ttsq runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not found"));
    assert_eq!(
        app.scalar("SELECT count(*) FROM audit_log WHERE actor = 'cli:testkit'")
            .await,
        4
    );
}

/// The `X-Cache` header of a high-priority answer.
fn x_cache(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn another_tenants_audio_is_neither_served_nor_revealed_unless_both_joined_one_pool() {
    let app = TestApp::spawn().await;
    let alice = app.new_tenant("alice").await;
    let mallory = app.new_tenant("mallory").await;
    let carol = app.new_tenant("carol").await;
    let secret = "Your code is 4 8 2 9 1 3";
    let high = json!({"text": secret, "dialect": "en-us", "format": "wav", "priority": "high"});
    let normal = json!({"text": secret, "dialect": "en-us", "format": "wav"});

    let first = app.submit_as(&alice, &high).await;
    assert_eq!(x_cache(&first), "miss");
    // Mallory guesses Alice's text: queued like any new text, and made anew.
    let guessed: Value = app.submit_as(&mallory, &normal).await.json().await.unwrap();
    let inline = app.submit_as(&carol, &high).await;

    assert_eq!(guessed["status"], "queued", "{guessed}");
    assert_eq!(x_cache(&inline), "miss");
    app.drain(Duration::from_secs(60)).await;
    assert_eq!(
        app.provider_calls("espeak"),
        3,
        "each tenant's audio is its own"
    );

    // Tenants that opt into one pool share their hits, and only they.
    app.join_cache_pool(&["alice", "carol"], "shared").await;
    let seeded = app.submit_as(&alice, &high).await;
    let shared = app.submit_as(&carol, &high).await;
    let still_apart: Value = app
        .submit_as(
            &mallory,
            &json!({"text": secret, "dialect": "en-gb", "format": "wav"}),
        )
        .await
        .json()
        .await
        .unwrap();

    assert_eq!(x_cache(&seeded), "miss", "the pool's cache starts empty");
    assert_eq!(x_cache(&shared), "hit");
    assert_eq!(still_apart["status"], "queued", "{still_apart}");
}
