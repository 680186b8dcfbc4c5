//! The service role's grants, straight against the store: every run
//! replaces them with what the schema holds then (a table added since gets
//! its privileges), and a role they could not bind is refused.

use ttsq_store::{Store, StoreError};

use crate::support::fresh_store;

async fn has(store: &Store, role: &str, table: &str, privilege: &str) -> bool {
    sqlx::query_scalar("SELECT has_table_privilege($1, $2, $3)")
        .bind(role)
        .bind(table)
        .bind(privilege)
        .fetch_one(store.pool())
        .await
        .expect("privilege readable")
}

#[tokio::test]
async fn a_second_run_grants_what_was_added_since_and_keeps_the_ledger_append_only() {
    let (store, mut db) = fresh_store().await;
    let role = db.create_role("").await.expect("role created");

    store.grant_service_role(&role).await.expect("granted");
    assert!(has(&store, &role, "tasks", "DELETE").await);
    assert!(has(&store, &role, "usage_ledger", "INSERT").await);
    assert!(!has(&store, &role, "usage_ledger", "UPDATE").await);

    sqlx::query("CREATE TABLE added_later (id int)")
        .execute(store.pool())
        .await
        .expect("table created");
    assert!(!has(&store, &role, "added_later", "INSERT").await);
    // An earlier grant beyond the service's is taken back too.
    sqlx::query(&format!("GRANT UPDATE, TRUNCATE ON usage_ledger TO {role}"))
        .execute(store.pool())
        .await
        .expect("granted by hand");

    store
        .grant_service_role(&role)
        .await
        .expect("granted again");
    assert!(has(&store, &role, "added_later", "INSERT").await);
    assert!(!has(&store, &role, "usage_ledger", "UPDATE").await);
    assert!(!has(&store, &role, "usage_ledger", "TRUNCATE").await);
}

#[tokio::test]
async fn a_missing_or_superuser_role_or_the_owner_itself_is_refused() {
    let (store, _db) = fresh_store().await;
    let current: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(store.pool())
        .await
        .expect("current user");
    let missing = store.grant_service_role("ttsq_no_such_role").await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
    // The test suite connects as a superuser, which is also the owner here.
    let owner = store.grant_service_role(&current).await;
    assert!(matches!(owner, Err(StoreError::Invalid(_))), "{owner:?}");
}
