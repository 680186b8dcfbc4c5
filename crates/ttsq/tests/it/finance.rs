//! Finance access end to end on real Postgres: a read-only finance role
//! made by `ttsq migrate --finance-role`, `ttsq usage` run as it (never
//! migrating), `GET /v1/admin/usage` as JSON and CSV a page at a time, and
//! the "ttsq usage" Grafana dashboard's queries run as the finance role.

use std::{collections::BTreeSet, time::Duration};

use secrecy::ExposeSecret;
use serde_json::{Value, json};
use ttsq_store::sqlx::{self, Connection, PgConnection};
use ttsq_testkit::{TestApp, TestOptions};

const TTSQ: &str = env!("CARGO_BIN_EXE_ttsq");
const ADMIN_TOKEN: &str = "admin-token-for-finance-tests-0123456789";
/// A tenant whose name needs CSV quoting.
const ACME: &str = "Acme, \"Inc\"";
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/grafana/dashboards/ttsq-usage.json"
);

fn admin_options(worker: bool) -> TestOptions {
    TestOptions {
        worker,
        env: vec![("TTSQ_ADMIN_TOKEN".to_owned(), ADMIN_TOKEN.to_owned())],
        ..TestOptions::default()
    }
}

fn owner_url(app: &TestApp) -> String {
    app.owner().url.expose_secret().to_owned()
}

/// Runs `ttsq args…` connecting with `database_url`; returns whether it
/// succeeded, its stdout and its stderr.
fn ttsq_as(app: &TestApp, database_url: &str, args: &[&str]) -> (bool, String, String) {
    let output = app
        .cli_command(TTSQ)
        .env("TTSQ_DATABASE_URL", database_url)
        .args(args)
        .output()
        .expect("ttsq runs");
    (
        output.status.success(),
        String::from_utf8(output.stdout).expect("UTF-8 stdout"),
        String::from_utf8(output.stderr).expect("UTF-8 stderr"),
    )
}

/// What an operator does: `ttsq migrate --finance-role GROUP` as the owner
/// (which creates the group role), then `GRANT GROUP TO login`. Returns the
/// group and a URL logging in as the member.
async fn finance_login(app: &mut TestApp) -> (String, String) {
    let group = app.unused_role();
    let (ok, _, stderr) = ttsq_as(app, &owner_url(app), &["migrate", "--finance-role", &group]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains(&format!("role {group} (created NOLOGIN) may read")),
        "{stderr}"
    );
    let (login, url) = app.login_role().await;
    owner_sql(app, &format!("GRANT {group} TO {login}")).await;
    (group, url)
}

async fn owner_sql(app: &TestApp, sql: &str) {
    let mut owner = app.owner_connection().await;
    sqlx::query(sql)
        .execute(&mut owner)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    owner.close().await.ok();
}

/// Parses RFC 4180 CSV strictly: every record ends with CRLF, quotes only
/// around whole fields, doubled inside.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut records, mut record, mut field) = (Vec::new(), Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    quoted = false;
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            '"' => {
                assert!(field.is_empty(), "a quote inside an unquoted field: {text}");
                quoted = true;
            }
            ',' => record.push(std::mem::take(&mut field)),
            '\r' => {
                assert_eq!(chars.next(), Some('\n'), "CR without LF: {text}");
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            '\n' => panic!("LF without CR: {text}"),
            c => field.push(c),
        }
    }
    assert!(
        !quoted && field.is_empty() && record.is_empty(),
        "unterminated: {text}"
    );
    records
}

/// Sums a CSV column of whole numbers, by its header.
fn csv_sum(records: &[Vec<String>], column: &str) -> i64 {
    let at = records[0]
        .iter()
        .position(|h| h == column)
        .unwrap_or_else(|| panic!("no column {column}"));
    records[1..]
        .iter()
        .map(|r| r[at].parse::<i64>().expect("a whole number"))
        .sum()
}

fn job(text: &str, dialect: &str) -> Value {
    json!({"text": text, "dialect": dialect, "format": "wav"})
}

#[tokio::test]
async fn ttsq_usage_runs_as_the_finance_role_and_never_migrates() {
    let mut app = TestApp::spawn().await;
    let other = app.new_tenant("other").await;
    app.submit_ok(&job("Finance reads this one.", "en-gb"))
        .await;
    app.submit_ok(&job("Et celui-ci aussi.", "fr-fr")).await;
    assert_eq!(
        app.submit_as(&other, &job("Another tenant speaks.", "en-gb"))
            .await
            .status(),
        202
    );
    app.drain(Duration::from_secs(60)).await;
    let (_, finance) = finance_login(&mut app).await;
    // A migration is pending now: the record of the newest is gone. Running
    // the migrations would apply it again (as the owner) or fail (as anyone
    // else, who may not even read the record).
    owner_sql(
        &app,
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)",
    )
    .await;
    let recorded = app.scalar("SELECT count(*) FROM _sqlx_migrations").await;

    let today = chrono::Utc::now().date_naive().to_string();
    let (ok, csv, stderr) = ttsq_as(
        &app,
        &finance,
        &["usage", "--from", &today, "--to", &today, "--format", "csv"],
    );
    assert!(ok, "{stderr}");
    let records = parse_csv(&csv);
    assert_eq!(records[0][0], "tenant");
    assert_eq!(csv_sum(&records, "tasks"), 3);
    assert_eq!(
        csv_sum(&records, "billable_characters"),
        app.scalar("SELECT sum(billable_characters)::bigint FROM usage_ledger")
            .await
    );
    let tenants: BTreeSet<&str> = records[1..].iter().map(|r| r[0].as_str()).collect();
    assert_eq!(tenants, BTreeSet::from(["default", "other"]));

    let (ok, json_out, stderr) = ttsq_as(
        &app,
        &finance,
        &[
            "usage", "--tenant", "other", "--by", "month", "--format", "json",
        ],
    );
    assert!(ok, "{stderr}");
    let monthly: Value = serde_json::from_str(&json_out).expect("JSON");
    assert_eq!(monthly.as_array().expect("rows").len(), 1, "{monthly}");
    assert_eq!(monthly[0]["tenant"], "other");
    assert_eq!(monthly[0]["tasks"], 1);
    let (ok, _, stderr) = ttsq_as(&app, &finance, &["usage", "--tenant", "nobody"]);
    assert!(
        !ok && stderr.contains("tenant `nobody` not found"),
        "{stderr}"
    );

    assert_eq!(
        app.scalar("SELECT count(*) FROM _sqlx_migrations").await,
        recorded,
        "nothing was migrated"
    );
    // The commands that write are not finance's: they migrate first, and
    // the finance role may not even read what is migrated.
    let (ok, _, stderr) = ttsq_as(&app, &finance, &["tenant", "list"]);
    assert!(!ok && stderr.contains("permission denied"), "{stderr}");
}

#[tokio::test]
async fn ttsq_usage_says_what_to_run_when_it_cannot_read_the_views() {
    let mut app = TestApp::spawn_with(admin_options(false)).await;
    let (nobody, url) = app.login_role().await;
    let (ok, _, stderr) = ttsq_as(&app, &url, &["usage"]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!("ttsq migrate --finance-role {nobody}")),
        "{stderr}"
    );

    owner_sql(&app, "DROP VIEW usage_daily").await;
    let service = app
        .child_env()
        .iter()
        .rev()
        .find(|(k, _)| k == "TTSQ_DATABASE_URL")
        .map(|(_, v)| v.clone())
        .expect("the service role's URL");
    let (ok, _, stderr) = ttsq_as(&app, &service, &["usage"]);
    assert!(!ok);
    assert!(
        stderr.contains("usage_daily") && stderr.contains("not migrated"),
        "{stderr}"
    );
    assert!(stderr.contains("run `ttsq migrate`"), "{stderr}");
}

#[tokio::test]
async fn every_ttsq_migrate_grants_the_finance_roles_again() {
    let mut app = TestApp::spawn_with(admin_options(false)).await;
    let (group, finance) = finance_login(&mut app).await;
    let (ok, _, stderr) = ttsq_as(&app, &finance, &["usage"]);
    assert!(ok, "{stderr}");

    // A later migration that replaces a view drops the view's grants.
    let mut owner = app.owner_connection().await;
    let definition: String = sqlx::query_scalar("SELECT pg_get_viewdef('usage_daily'::regclass)")
        .fetch_one(&mut owner)
        .await
        .expect("view definition");
    sqlx::query("DROP VIEW usage_daily")
        .execute(&mut owner)
        .await
        .expect("dropped");
    sqlx::query(&format!("CREATE VIEW usage_daily AS {definition}"))
        .execute(&mut owner)
        .await
        .expect("created again");
    owner.close().await.ok();
    let (ok, _, stderr) = ttsq_as(&app, &finance, &["usage"]);
    assert!(
        !ok && stderr.contains("may not read usage_daily"),
        "{stderr}"
    );

    let (ok, _, stderr) = ttsq_as(&app, &owner_url(&app), &["migrate"]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains(&format!("finance role {group} granted again")),
        "{stderr}"
    );
    let (ok, _, stderr) = ttsq_as(&app, &finance, &["usage"]);
    assert!(ok, "{stderr}");
}

/// The owner bills: one ledger row per entry of (tenant, day, provider,
/// dialect, currency, status, characters, billable, cache hit, cost).
type Bill<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    &'a str,
    Option<&'a str>,
    &'a str,
    i32,
    i32,
    bool,
    &'a str,
);

async fn bill(app: &TestApp, rows: &[Bill<'_>]) {
    let mut owner = app.owner_connection().await;
    for (tenant, day, provider, dialect, currency, status, chars, billable, hit, cost) in rows {
        sqlx::query(
            "INSERT INTO usage_ledger (task_id, tenant_id, provider, dialect, voice, status,
                                       characters, billable_characters, cache_hit, cost,
                                       currency, created_at, submitted_at)
             SELECT gen_random_uuid(), id, $2, $3, 'v', $4, $5, $6, $7, $8::numeric, $9,
                    ($10::date + time '23:59:59') AT TIME ZONE 'UTC',
                    ($10::date + time '00:00') AT TIME ZONE 'UTC'
               FROM tenants WHERE name = $1",
        )
        .bind(tenant)
        .bind(provider)
        .bind(dialect)
        .bind(status)
        .bind(chars)
        .bind(billable)
        .bind(hit)
        .bind(cost)
        .bind(currency)
        .bind(day)
        .execute(&mut owner)
        .await
        .expect("billed");
    }
    owner.close().await.ok();
}

/// Two tenants over a month's end; one row outside the days asked for, but
/// inside their month.
async fn two_tenants_billed(app: &TestApp) {
    app.new_tenant(ACME).await;
    #[rustfmt::skip]
    let rows: &[Bill<'_>] = &[
        ("default", "2025-11-30", Some("espeak"), "en-gb", Some("USD"), "succeeded", 100, 100, false, "0.037000"),
        ("default", "2025-11-30", Some("espeak"), "en-gb", Some("USD"), "succeeded", 100, 0, true, "0"),
        ("default", "2025-12-01", Some("openai"), "en-us", Some("USD"), "succeeded", 50, 50, false, "0.750000"),
        (ACME, "2025-11-30", Some("espeak"), "fr-fr", Some("EUR"), "succeeded", 40, 40, false, "0.014800"),
        (ACME, "2025-12-01", None, "fr-fr", None, "failed", 30, 0, false, "0"),
        ("default", "2025-11-03", Some("espeak"), "en-gb", Some("USD"), "succeeded", 10, 10, false, "0.001000"),
    ];
    bill(app, rows).await;
}

fn row(
    tenant: &str,
    period: &str,
    provider: Option<&str>,
    dialect: &str,
    currency: Option<&str>,
    figures: [i64; 6],
    cost: &str,
) -> Value {
    let [
        tasks,
        succeeded,
        failed,
        cache_hits,
        characters,
        billable_characters,
    ] = figures;
    json!({"tenant": tenant, "period": period, "provider": provider, "dialect": dialect,
           "currency": currency, "tasks": tasks, "succeeded": succeeded, "failed": failed,
           "cache_hits": cache_hits, "characters": characters,
           "billable_characters": billable_characters, "cost": cost})
}

async fn admin_get(app: &TestApp, query: &[(&str, &str)]) -> reqwest::Response {
    app.http
        .get(format!("{}/v1/admin/usage", app.base_url))
        .query(query)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("sent")
}

async fn admin_json(app: &TestApp, query: &[(&str, &str)]) -> Value {
    let response = admin_get(app, query).await;
    assert_eq!(response.status(), 200);
    response.json().await.expect("JSON")
}

const RANGE: [(&str, &str); 2] = [("from", "2025-11-30"), ("to", "2025-12-01")];

#[tokio::test]
async fn admin_usage_answers_every_tenant_as_json_and_csv_a_page_at_a_time() {
    let app = TestApp::spawn_with(admin_options(false)).await;
    two_tenants_billed(&app).await;

    let daily = admin_json(&app, &RANGE).await;
    let expected = json!([
        row(
            ACME,
            "2025-11-30",
            Some("espeak"),
            "fr-fr",
            Some("EUR"),
            [1, 1, 0, 0, 40, 40],
            "0.014800"
        ),
        row(
            "default",
            "2025-11-30",
            Some("espeak"),
            "en-gb",
            Some("USD"),
            [2, 2, 0, 1, 200, 100],
            "0.037000"
        ),
        row(
            ACME,
            "2025-12-01",
            None,
            "fr-fr",
            None,
            [1, 0, 1, 0, 30, 0],
            "0.000000"
        ),
        row(
            "default",
            "2025-12-01",
            Some("openai"),
            "en-us",
            Some("USD"),
            [1, 1, 0, 0, 50, 50],
            "0.750000"
        ),
    ]);
    assert_eq!(daily["rows"], expected, "{daily}");
    assert_eq!(
        (daily["from"].as_str(), daily["to"].as_str()),
        (Some("2025-11-30"), Some("2025-12-01"))
    );
    assert_eq!(daily["by"], "day");
    assert!(daily.get("next_cursor").is_none(), "one page: {daily}");

    // By month: the whole months the days fall in.
    let monthly = admin_json(&app, &[RANGE[0], RANGE[1], ("by", "month")]).await;
    assert_eq!(
        monthly["rows"],
        json!([
            row(
                ACME,
                "2025-11-01",
                Some("espeak"),
                "fr-fr",
                Some("EUR"),
                [1, 1, 0, 0, 40, 40],
                "0.014800"
            ),
            row(
                "default",
                "2025-11-01",
                Some("espeak"),
                "en-gb",
                Some("USD"),
                [3, 3, 0, 1, 210, 110],
                "0.038000"
            ),
            row(
                ACME,
                "2025-12-01",
                None,
                "fr-fr",
                None,
                [1, 0, 1, 0, 30, 0],
                "0.000000"
            ),
            row(
                "default",
                "2025-12-01",
                Some("openai"),
                "en-us",
                Some("USD"),
                [1, 1, 0, 0, 50, 50],
                "0.750000"
            ),
        ]),
        "{monthly}"
    );

    // Filters.
    let tenant = admin_json(&app, &[RANGE[0], RANGE[1], ("tenant", ACME)]).await;
    assert_eq!(tenant["rows"], json!([expected[0], expected[2]]));
    let provider = admin_json(&app, &[RANGE[0], RANGE[1], ("provider", "espeak")]).await;
    assert_eq!(provider["rows"], json!([expected[0], expected[1]]));
    let dialect = admin_json(&app, &[RANGE[0], RANGE[1], ("dialect", "en-us")]).await;
    assert_eq!(dialect["rows"], json!([expected[3]]));
    assert_eq!(admin_get(&app, &[("tenant", "nobody")]).await.status(), 404);

    // A page at a time: the pages together are the whole, in order.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let mut query = vec![RANGE[0], RANGE[1], ("limit", "1")];
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor));
        }
        let page = admin_json(&app, &query).await;
        assert_eq!(page["rows"].as_array().expect("rows").len(), 1, "{page}");
        paged.push(page["rows"][0].clone());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(Value::Array(paged), expected);

    // CSV by Accept: a header row, RFC 4180 quoting, the same figures.
    let response = app
        .http
        .get(format!("{}/v1/admin/usage", app.base_url))
        .query(&RANGE)
        .header("accept", "text/csv")
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/csv"),
        "{:?}",
        response.headers()
    );
    let csv = response.text().await.expect("CSV");
    assert!(
        csv.contains("\"Acme, \"\"Inc\"\"\",2025-11-30,espeak,"),
        "{csv}"
    );
    let records = parse_csv(&csv);
    assert_eq!(
        records[0],
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
    assert_eq!(records.len(), 5, "{csv}");
    assert_eq!(
        records[3],
        [
            ACME,
            "2025-12-01",
            "",
            "fr-fr",
            "",
            "1",
            "0",
            "1",
            "0",
            "30",
            "0",
            "0.000000"
        ]
    );
    for (record, json_row) in records[1..].iter().zip(expected.as_array().expect("rows")) {
        assert_eq!(record[0], json_row["tenant"].as_str().expect("tenant"));
        assert_eq!(record[11], json_row["cost"].as_str().expect("cost"));
        assert_eq!(record[5], json_row["tasks"].to_string());
    }

    // CSV by `format`, paged by the Link header.
    let mut url = format!(
        "{}/v1/admin/usage?from=2025-11-30&to=2025-12-01&by=month&format=csv&limit=3",
        app.base_url
    );
    let mut pages = Vec::new();
    loop {
        let response = app
            .http
            .get(&url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 200);
        let link = response
            .headers()
            .get("link")
            .map(|l| l.to_str().expect("ascii").to_owned());
        let records = parse_csv(&response.text().await.expect("CSV"));
        assert_eq!(records[0][1], "month");
        pages.push(records.len() - 1);
        let Some(link) = link else { break };
        let target = link
            .strip_prefix('<')
            .and_then(|l| l.strip_suffix(">; rel=\"next\""))
            .unwrap_or_else(|| panic!("a next link: {link}"));
        url = format!("{}{target}", app.base_url);
    }
    assert_eq!(pages, [3, 1]);
}

#[tokio::test]
async fn admin_usage_refuses_without_the_token_and_names_the_bad_field() {
    let app = TestApp::spawn_with(admin_options(false)).await;
    let url = format!("{}/v1/admin/usage", app.base_url);
    assert_eq!(app.http.get(&url).send().await.expect("sent").status(), 401);
    let wrong = app
        .http
        .get(&url)
        .bearer_auth("not-the-admin-token")
        .send()
        .await
        .expect("sent");
    assert_eq!(wrong.status(), 401);
    // A tenant's own key is no admin token either.
    assert_eq!(
        app.get_as(&app.api_key, "/v1/admin/usage").await.status(),
        401
    );

    for (query, field) in [
        (vec![("from", "2025-02-30")], "from"),
        (vec![("to", "2025-13-01")], "to"),
        (vec![("from", "2025-12-02"), ("to", "2025-12-01")], "from"),
        (vec![("from", "2024-01-01"), ("to", "2025-12-01")], "from"),
        (vec![("by", "week")], "by"),
        (vec![("format", "xml")], "format"),
        (vec![("limit", "0")], "limit"),
        (vec![("limit", "10001")], "limit"),
        (vec![("cursor", "zz")], "cursor"),
        (vec![("provider", "a\0b")], "provider"),
    ] {
        let response = admin_get(&app, &query).await;
        assert_eq!(response.status(), 400, "{query:?}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{query:?}"
        );
        let problem: Value = response.json().await.expect("problem JSON");
        assert_eq!(problem["errors"][0]["field"], field, "{query:?}: {problem}");
    }
}

/// Every query of the "ttsq usage" dashboard, its time range and variables
/// filled in as Grafana would, runs as a member of the finance role: it
/// reads only what finance may, and answers the figures billed.
#[tokio::test]
async fn the_usage_dashboard_queries_run_as_the_finance_role() {
    let mut app = TestApp::spawn_with(admin_options(false)).await;
    two_tenants_billed(&app).await;
    let (_, finance) = finance_login(&mut app).await;
    let mut connection = PgConnection::connect(&finance)
        .await
        .expect("the finance login connects");

    let board: Value = serde_json::from_str(
        &std::fs::read_to_string(DASHBOARD).expect("the dashboard is in deploy/grafana"),
    )
    .expect("dashboard JSON");
    assert_eq!(board["title"], "ttsq usage");
    let fill = |sql: &str, tenant: &str| {
        sql.replace("$__timeFrom()", "'2025-11-01T00:00:00Z'")
            .replace("$__timeTo()", "'2025-12-31T23:59:59Z'")
            .replace("$__searchFilter", "'%'")
            .replace("$tenant", tenant)
    };
    // "All" is the variable's allValue, inserted as it is; a choice is
    // quoted as Grafana quotes SQL literals.
    let tenant_var = board["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .find(|v| v["name"] == "tenant")
        .expect("a tenant variable");
    let all = tenant_var["allValue"].as_str().expect("an allValue");
    let names: Vec<String> =
        sqlx::query_scalar(&fill(tenant_var["query"].as_str().expect("a query"), all))
            .fetch_all(&mut connection)
            .await
            .expect("the tenant variable's query runs");
    assert_eq!(names, [ACME, "default"]);
    let acme_only = format!("'{}'", ACME.replace('\'', "''"));

    let mut panels = 0;
    for panel in board["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("a title");
        for target in panel["targets"].as_array().expect("targets") {
            let sql = target["rawSql"].as_str().expect("SQL");
            let everyone = sqlx::query(&fill(sql, all))
                .fetch_all(&mut connection)
                .await
                .unwrap_or_else(|e| panic!("{title}: {e}"));
            assert!(!everyone.is_empty(), "{title}: no rows");
            let one = sqlx::query(&fill(sql, &acme_only))
                .fetch_all(&mut connection)
                .await
                .unwrap_or_else(|e| panic!("{title}: {e}"));
            assert!(one.len() <= everyone.len(), "{title}");
            panels += 1;
        }
    }
    assert!(panels >= 6, "{panels} queries");

    // Per tenant: the figures billed, also for one tenant chosen.
    let per_tenant = board["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .find(|p| p["title"] == "Cost per tenant")
        .expect("a per-tenant panel");
    let sql = per_tenant["targets"][0]["rawSql"].as_str().expect("SQL");
    let rows: Vec<(String, Option<String>, String)> = sqlx::query_as(&format!(
        "SELECT tenant, currency, cost::text FROM ({}) t ORDER BY tenant, currency",
        fill(sql, all)
    ))
    .fetch_all(&mut connection)
    .await
    .expect("per tenant");
    assert_eq!(
        rows,
        [
            (
                ACME.to_owned(),
                Some("EUR".to_owned()),
                "0.014800".to_owned()
            ),
            (ACME.to_owned(), None, "0.000000".to_owned()),
            (
                "default".to_owned(),
                Some("USD".to_owned()),
                "0.788000".to_owned()
            ),
        ]
    );
    let one: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM ({}) t",
        fill(sql, &acme_only)
    ))
    .fetch_one(&mut connection)
    .await
    .expect("per tenant, one chosen");
    assert_eq!(one, 2);
    connection.close().await.ok();
}
