//! The read-only finance role, straight against the store: it reads the
//! usage views, the ledger and the tenants' names and nothing else, writes
//! nothing, keeps its grants when a later migration replaces a view, and
//! a role that could write is refused.

use std::str::FromStr;

use sqlx::{
    Connection, PgConnection,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use ttsq_store::{
    FINANCE_RELATIONS, Regrant, Store, StoreError, TenantLimits, UsageFilter, UsagePeriod,
};
use ttsq_test_db::TestDatabase;
use uuid::Uuid;

use crate::support::{fresh_store, tenant};

/// SQLSTATE `insufficient_privilege`.
const INSUFFICIENT_PRIVILEGE: &str = "42501";

/// A login role of the test's own; returns its name and password.
async fn login(db: &mut TestDatabase) -> (String, String) {
    let password = Uuid::new_v4().simple().to_string();
    let role = db
        .create_role(&format!("LOGIN PASSWORD '{password}'"))
        .await
        .expect("role created");
    (role, password)
}

fn options_as(db: &TestDatabase, role: &str, password: &str) -> PgConnectOptions {
    PgConnectOptions::from_str(db.url())
        .expect("test URL parses")
        .username(role)
        .password(password)
}

async fn connect_as(db: &TestDatabase, role: &str, password: &str) -> PgConnection {
    PgConnection::connect_with(&options_as(db, role, password))
        .await
        .expect("the role logs in")
}

async fn store_as(db: &TestDatabase, role: &str, password: &str) -> Store {
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options_as(db, role, password))
        .await
        .expect("the role logs in");
    Store::from_pool(pool)
}

/// Runs `sql`; `Err(message)` when Postgres refused it for want of a
/// privilege, and a panic on any other failure.
async fn try_sql(connection: &mut PgConnection, sql: &str) -> Result<(), String> {
    match sqlx::query(sql).execute(&mut *connection).await {
        Ok(_) => Ok(()),
        Err(err) => match err.as_database_error() {
            Some(db) if db.code().as_deref() == Some(INSUFFICIENT_PRIVILEGE) => {
                Err(db.message().to_owned())
            }
            _ => panic!("{sql}: {err}"),
        },
    }
}

/// One ledger row of `tenant`, finished on `day`, written by the owner.
async fn bill(store: &Store, tenant: Uuid, day: &str, provider: &str, cost: &str) {
    sqlx::query(
        "INSERT INTO usage_ledger (task_id, tenant_id, provider, dialect, voice, status,
                                   characters, billable_characters, cache_hit, cost, currency,
                                   created_at, submitted_at)
         VALUES ($1, $2, $3, 'en-gb', 'v', 'succeeded', 10, 10, false, $4::numeric, 'USD',
                 ($5::date + time '12:00') AT TIME ZONE 'UTC',
                 ($5::date + time '11:59') AT TIME ZONE 'UTC')",
    )
    .bind(Uuid::new_v4())
    .bind(tenant)
    .bind(provider)
    .bind(cost)
    .bind(day)
    .execute(store.pool())
    .await
    .expect("ledger row written by the owner");
}

/// Every relation of the schema the finance role must not read.
async fn private_relations(store: &Store) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
            AND c.relname <> ALL ($1) ORDER BY 1",
    )
    .bind(&FINANCE_RELATIONS[..])
    .fetch_all(store.pool())
    .await
    .expect("relations listed")
}

#[tokio::test]
async fn the_finance_role_reads_the_usage_views_and_the_ledger_and_nothing_else() {
    let (store, mut db) = fresh_store().await;
    let acme = tenant(&store, "acme", TenantLimits::default()).await;
    bill(&store, acme, "2026-11-02", "espeak", "0.125000").await;
    let (role, password) = login(&mut db).await;

    let created = store.grant_finance_role(&role).await.expect("granted");
    assert!(!created, "the role existed");

    let mut finance = connect_as(&db, &role, &password).await;
    for relation in FINANCE_RELATIONS {
        try_sql(&mut finance, &format!("SELECT * FROM {relation}"))
            .await
            .unwrap_or_else(|e| panic!("{relation} unreadable: {e}"));
    }
    let (tenant_name, cost): (String, String) =
        sqlx::query_as("SELECT tenant, cost::text FROM usage_daily")
            .fetch_one(&mut finance)
            .await
            .expect("the view reads");
    assert_eq!((tenant_name.as_str(), cost.as_str()), ("acme", "0.125000"));

    // Texts, tasks, keys, limits, the audit log, sqlx's record, sequences:
    // every other relation of the schema is refused.
    let private = private_relations(&store).await;
    for must in [
        "tasks",
        "tenants",
        "api_keys",
        "audit_log",
        "_sqlx_migrations",
        "finance_roles",
    ] {
        assert!(private.contains(&must.to_owned()), "{must} in {private:?}");
    }
    for relation in &private {
        let refused = try_sql(
            &mut finance,
            &format!("SELECT * FROM \"{relation}\" LIMIT 1"),
        )
        .await;
        assert!(refused.is_err(), "{relation} was readable");
    }
    // Not even a column of the tenants' rows beyond the name.
    assert!(
        try_sql(&mut finance, "SELECT name FROM tenants")
            .await
            .is_err()
    );

    // No write anywhere: the grant refuses before the ledger's triggers are reached.
    let ledger_writes = [
        format!(
            "INSERT INTO usage_ledger (task_id, tenant_id, dialect, voice, status, characters,
                                       billable_characters, cache_hit)
             VALUES (gen_random_uuid(), '{acme}', 'en-gb', 'v', 'succeeded', 1, 1, false)"
        ),
        "UPDATE usage_ledger SET cost = 0".to_owned(),
        "DELETE FROM usage_ledger".to_owned(),
        "TRUNCATE usage_ledger".to_owned(),
        "UPDATE usage_tenants SET tenant = 'renamed'".to_owned(),
        "DELETE FROM usage_tenants".to_owned(),
        "ALTER TABLE usage_ledger DISABLE TRIGGER usage_ledger_append_only".to_owned(),
        "CREATE TABLE finance_scratch (id int)".to_owned(),
    ];
    for sql in &ledger_writes {
        let refused = try_sql(&mut finance, sql).await;
        let message = refused.expect_err(sql);
        assert!(
            message.contains("permission denied") || message.contains("must be owner"),
            "{sql}: {message}"
        );
    }
    assert_eq!(
        sqlx::query_scalar::<_, String>("SELECT cost::text FROM usage_ledger")
            .fetch_one(store.pool())
            .await
            .expect("ledger readable"),
        "0.125000"
    );

    // The store's reads work as this role, without migrating.
    let reader = store_as(&db, &role, &password).await;
    reader
        .check_finance_access()
        .await
        .expect("access checks out");
    assert_eq!(reader.usage_tenant("acme").await.expect("named"), acme);
    let page = reader
        .usage_page(
            &UsageFilter::default(),
            "2026-11-01".parse().expect("a day"),
            "2026-11-30".parse().expect("a day"),
            UsagePeriod::Month,
            None,
            10,
        )
        .await
        .expect("usage reads");
    assert_eq!(page.rows.len(), 1);
    assert_eq!(page.rows[0].cost, "0.125000");
    let migrating = reader.migrate().await;
    assert!(
        migrating.is_err(),
        "it may not even read what is migrated: {migrating:?}"
    );
}

#[tokio::test]
async fn a_view_replaced_by_a_later_migration_is_granted_again() {
    let (store, mut db) = fresh_store().await;
    let acme = tenant(&store, "acme", TenantLimits::default()).await;
    bill(&store, acme, "2026-11-02", "espeak", "1.000000").await;
    let (role, password) = login(&mut db).await;
    store.grant_finance_role(&role).await.expect("granted");

    // What a migration that redefines a view does: its grants go with it.
    let definition: String = sqlx::query_scalar("SELECT pg_get_viewdef('usage_monthly'::regclass)")
        .fetch_one(store.pool())
        .await
        .expect("view definition");
    for sql in [
        "DROP VIEW usage_monthly".to_owned(),
        format!("CREATE VIEW usage_monthly AS {definition}"),
        "CREATE TABLE added_later (secret text)".to_owned(),
        format!("GRANT SELECT ON tasks TO {role}"),
    ] {
        sqlx::query(&sql)
            .execute(store.pool())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let mut finance = connect_as(&db, &role, &password).await;
    assert!(
        try_sql(&mut finance, "SELECT * FROM usage_monthly")
            .await
            .is_err()
    );

    let done = store.regrant_finance_roles().await.expect("granted again");
    assert_eq!(done, [Regrant::Granted(role.clone())]);
    try_sql(&mut finance, "SELECT * FROM usage_monthly")
        .await
        .expect("the replaced view is readable again");
    assert!(
        try_sql(&mut finance, "SELECT * FROM added_later")
            .await
            .is_err()
    );
    assert!(
        try_sql(&mut finance, "SELECT * FROM tasks").await.is_err(),
        "a grant beyond finance's is taken back"
    );
}

#[tokio::test]
async fn a_role_that_writes_or_reads_more_or_the_owner_is_refused_and_nothing_changes() {
    let (store, mut db) = fresh_store().await;
    let (service, service_password) = login(&mut db).await;
    store
        .grant_service_role(&service)
        .await
        .expect("service granted");
    // The service role may not even read which roles are finance's: its
    // `ttsq migrate` on a migrated database has nothing to grant, and fails not.
    let as_service = store_as(&db, &service, &service_password).await;
    assert_eq!(
        as_service
            .regrant_finance_roles()
            .await
            .expect("nothing to grant"),
        []
    );

    let refused = store.grant_finance_role(&service).await;
    assert!(
        matches!(&refused, Err(StoreError::Invalid(why)) if why.contains("may write")),
        "{refused:?}"
    );
    let still_writes: bool =
        sqlx::query_scalar("SELECT has_table_privilege($1, 'usage_ledger', 'INSERT')")
            .bind(&service)
            .fetch_one(store.pool())
            .await
            .expect("privilege readable");
    assert!(still_writes, "the service role's grants are untouched");

    let current: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(store.pool())
        .await
        .expect("current user");
    let owner = store.grant_finance_role(&current).await;
    assert!(matches!(owner, Err(StoreError::Invalid(_))), "{owner:?}");

    // What PUBLIC may read, every role may: finance access cannot be promised.
    sqlx::query("GRANT SELECT ON tasks TO PUBLIC")
        .execute(store.pool())
        .await
        .expect("granted to PUBLIC");
    let new_role = db.unused_role();
    let public = store.grant_finance_role(&new_role).await;
    assert!(
        matches!(&public, Err(StoreError::Invalid(why)) if why.contains("tasks")),
        "{public:?}"
    );
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)")
            .bind(&new_role)
            .fetch_one(store.pool())
            .await
            .expect("roles readable");
    assert!(!exists, "its creation was rolled back");
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM finance_roles")
        .fetch_one(store.pool())
        .await
        .expect("finance roles readable");
    assert_eq!(recorded, 0);
}

#[tokio::test]
async fn a_missing_role_is_created_nologin_and_its_members_read_through_it() {
    let (store, mut db) = fresh_store().await;
    let acme = tenant(&store, "acme", TenantLimits::default()).await;
    bill(&store, acme, "2026-11-02", "espeak", "0.500000").await;
    let group = db.unused_role();

    assert!(store.grant_finance_role(&group).await.expect("created"));
    assert!(
        !store.grant_finance_role(&group).await.expect("again"),
        "a second run finds it"
    );
    let can_login: bool = sqlx::query_scalar("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1")
        .bind(&group)
        .fetch_one(store.pool())
        .await
        .expect("role readable");
    assert!(!can_login, "a group role, for logins to be members of");

    // GRANT ttsq_finance TO alice: alice reads what the group may.
    let (alice, password) = login(&mut db).await;
    sqlx::query(&format!("GRANT {group} TO {alice}"))
        .execute(store.pool())
        .await
        .expect("membership granted");
    let reader = store_as(&db, &alice, &password).await;
    reader
        .check_finance_access()
        .await
        .expect("access through the group");
    let rows = reader
        .usage(
            None,
            "2026-11-02".parse().expect("a day"),
            "2026-11-02".parse().expect("a day"),
            UsagePeriod::Day,
        )
        .await
        .expect("usage reads");
    assert_eq!(rows.len(), 1);
}

#[tokio::test]
async fn a_reader_is_told_to_migrate_or_to_ask_for_access() {
    let (store, mut db) = fresh_store().await;
    let (nobody, password) = login(&mut db).await;
    let reader = store_as(&db, &nobody, &password).await;
    let unreadable = reader.check_finance_access().await;
    assert!(
        matches!(&unreadable, Err(StoreError::Schema(why))
            if why.contains(&format!("--finance-role {nobody}"))),
        "{unreadable:?}"
    );

    sqlx::query("DROP VIEW usage_tenants")
        .execute(store.pool())
        .await
        .expect("view dropped");
    let unmigrated = store.check_finance_access().await;
    assert!(
        matches!(&unmigrated, Err(StoreError::Schema(why))
            if why.contains("usage_tenants") && why.contains("not migrated")),
        "{unmigrated:?}"
    );
}
