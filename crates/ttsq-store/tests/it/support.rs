//! Helpers shared by the store's test modules: a fresh database per test,
//! jobs and tenants.

use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use ttsq_core::{AudioFormat, Catalog, DialectInfo, Job, JobLimits};
use ttsq_store::{Store, TenantLimits};
use ttsq_test_db::TestDatabase;
use uuid::Uuid;

/// A store on a fresh, migrated database of its own, which is dropped with
/// the [`TestDatabase`].
pub async fn fresh_store() -> (Store, TestDatabase) {
    let db = TestDatabase::new()
        .await
        .expect("test database created (TTSQ_TEST_DATABASE_URL)");
    let pool = PgPoolOptions::new()
        .max_connections(20)
        .connect(db.url())
        .await
        .expect("test database reachable");
    let store = Store::from_pool(pool);
    store.migrate().await.expect("migrations apply");
    (store, db)
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
        max_request_chars: 5_000,
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
