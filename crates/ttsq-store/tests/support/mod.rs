//! Helpers shared by the store's test files: a fresh database per test,
//! jobs and tenants.

use serde_json::json;
use sqlx::{Connection, PgConnection, postgres::PgPoolOptions};
use ttsq_core::{AudioFormat, Catalog, DialectInfo, Job, JobLimits};
use ttsq_store::{Store, TenantLimits};
use uuid::Uuid;

/// A store on a fresh, migrated database of its own; drop it with [`drop_db`].
pub async fn fresh_store() -> (Store, String) {
    let admin_url = std::env::var("TTSQ_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let name = format!("ttsq_test_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .expect("Postgres reachable (TTSQ_TEST_DATABASE_URL)");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("test database created");
    let (base, _) = admin_url.rsplit_once('/').expect("URL has a database");
    let pool = PgPoolOptions::new()
        .max_connections(20)
        .connect(&format!("{base}/{name}"))
        .await
        .expect("test database reachable");
    let store = Store::from_pool(pool);
    store.migrate().await.expect("migrations apply");
    (store, name)
}

pub async fn drop_db(store: Store, name: &str) {
    store.pool().close().await;
    let admin_url = std::env::var("TTSQ_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
    }
}

pub fn catalog() -> Catalog {
    Catalog::new([DialectInfo {
        id: "en-gb".into(),
        name: "English (UK)".into(),
        voices: vec!["v".into()],
        formats: vec![AudioFormat::Wav],
        emotions: vec![],
        provider_chain: vec!["fake".into()],
        model: "m".into(),
        sample_rate_hz: 22_050,
        marks: Vec::new(),
    }])
}

/// A job of exactly `text`, which the caller sizes.
pub fn job(text: &str) -> Job {
    let body = json!({"text": text, "dialect": "en-gb", "format": "wav"}).to_string();
    Job::parse(
        body.as_bytes(),
        &catalog(),
        &JobLimits {
            max_text_chars: 5000,
            max_metadata_bytes: 4096,
            ..JobLimits::default()
        },
    )
    .expect("a valid job")
}

pub async fn tenant(store: &Store, name: &str, limits: TenantLimits) -> Uuid {
    let (info, _) = store
        .create_tenant_with(name, &limits, None, "test")
        .await
        .expect("tenant created");
    info.id
}

pub async fn count(store: &Store, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(store.pool())
        .await
        .expect("count query")
}
