#![doc = include_str!("../README.md")]

use std::{
    future::Future,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow};
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection, migrate::Migrator};
use tokio::sync::OnceCell;
use uuid::Uuid;

/// The store's migrations, embedded from the same directory as the store
/// embeds them: a clone of the template holds exactly the record
/// `Store::migrate` checks, so migrating a clone again changes nothing.
static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// The admin URL when `TTSQ_TEST_DATABASE_URL` is unset.
const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The advisory lock the test processes take to make the template: one
/// makes it, the others wait and find it made.
const TEMPLATE_LOCK: i64 = 0x7474_7371_7465_6d70; // "ttsqtemp"

/// How long a clone retries while the template still has a session (the
/// one that migrated it can linger a moment after closing).
const TEMPLATE_BUSY_LIMIT: Duration = Duration::from_secs(10);

/// SQLSTATE `object_in_use`: "source database … is being accessed by other
/// users".
const OBJECT_IN_USE: &str = "55006";

/// The longest a [`run_cleanup`] holds the dropping thread: a test's end
/// never hangs on a service that stopped answering.
pub const CLEANUP_LIMIT: Duration = Duration::from_secs(30);

/// The template's name, once this process made or found it.
static TEMPLATE: OnceCell<String> = OnceCell::const_new();

/// The admin URL of the test Postgres: `TTSQ_TEST_DATABASE_URL`, or the
/// local default.
pub fn admin_url() -> String {
    std::env::var("TTSQ_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

/// A migrated database of one test's own, dropped with its roles when this
/// value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    /// `ttsq_test_<id>`.
    name: String,
    /// Where the admin role creates and drops databases and roles.
    admin_url: String,
    /// The database as the admin role, its owner, reaches it.
    url: String,
    /// Roles made by [`TestDatabase::create_role`], dropped after the
    /// database, which held their privileges.
    roles: Vec<String>,
}

impl TestDatabase {
    /// A new database, a clone of the migrated template (made first when
    /// no test process has made it yet).
    pub async fn new() -> anyhow::Result<Self> {
        let admin_url = admin_url();
        let template = TEMPLATE
            .get_or_try_init(|| make_template(&admin_url))
            .await?;
        let name = format!("ttsq_test_{}", Uuid::new_v4().simple());
        let mut admin = connect_admin(&admin_url).await?;
        let busy_until = Instant::now() + TEMPLATE_BUSY_LIMIT;
        loop {
            match sqlx::query(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
                .execute(&mut admin)
                .await
            {
                Ok(_) => break,
                Err(err) if is_object_in_use(&err) && Instant::now() < busy_until => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => {
                    return Err(err).with_context(|| {
                        format!("Failed to create the test database from {template}")
                    });
                }
            }
        }
        admin.close().await.ok();
        let url = database_url(&admin_url, &name)?;
        Ok(Self {
            name,
            admin_url,
            url,
            roles: Vec::new(),
        })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The database's URL for the admin role, which owns it and everything
    /// the migrations made in it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Creates a role `ttsq_test_<id>` with `attributes` (`LOGIN PASSWORD
    /// '…'`, or none), dropped after the database; returns its name.
    pub async fn create_role(&mut self, attributes: &str) -> anyhow::Result<String> {
        let role = format!("ttsq_test_{}", Uuid::new_v4().simple());
        let mut admin = connect_admin(&self.admin_url).await?;
        sqlx::query(&format!("CREATE ROLE {role} {attributes}"))
            .execute(&mut admin)
            .await
            .context("Failed to create a test role")?;
        admin.close().await.ok();
        self.roles.push(role.clone());
        Ok(role)
    }

    /// A fresh role name `ttsq_test_<id>` that nothing has created yet, for
    /// code that creates roles itself; dropped after the database like the
    /// roles of [`TestDatabase::create_role`], if it exists by then.
    pub fn unused_role(&mut self) -> String {
        let role = format!("ttsq_test_{}", Uuid::new_v4().simple());
        self.roles.push(role.clone());
        role
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let mut statements = vec![format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )];
        statements.extend(
            self.roles
                .iter()
                .map(|role| format!("DROP ROLE IF EXISTS {role}")),
        );
        run_cleanup(&format!("dropping {}", self.name), move || async move {
            let mut admin = connect_admin(&admin_url).await?;
            for statement in &statements {
                sqlx::query(statement)
                    .execute(&mut admin)
                    .await
                    .with_context(|| format!("Failed to run {statement}"))?;
            }
            admin.close().await.ok();
            Ok(())
        });
    }
}

/// Runs `cleanup` to its end on a thread of its own, in a runtime of its
/// own, waiting at most [`CLEANUP_LIMIT`]: what a `Drop` calls, which
/// cannot await, and whose caller's runtime (a test's, single-threaded)
/// cannot run anything while it waits. A failure or a timeout is reported
/// on stderr, never panics: it may run while a test unwinds, and whatever
/// it leaves behind `deploy/local/test.sh` removes before the next run.
pub fn run_cleanup<F, Fut>(what: &str, cleanup: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let (done, finished) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("test-cleanup".to_owned())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("Failed to start the cleanup's runtime")
                .and_then(|runtime| {
                    runtime.block_on(async {
                        tokio::time::timeout(CLEANUP_LIMIT, cleanup())
                            .await
                            .unwrap_or_else(|_| Err(anyhow!("timed out")))
                    })
                });
            // The receiver is gone only when the caller stopped waiting.
            let _ = done.send(result);
        });
    if let Err(err) = spawned {
        eprintln!("{what}: cannot start the cleanup thread: {err}");
        return;
    }
    // A little over the cleanup's own limit: its runtime ends it first.
    match finished.recv_timeout(CLEANUP_LIMIT + Duration::from_secs(5)) {
        Ok(Ok(())) => {}
        Ok(Err(err)) => eprintln!("{what} failed: {err:#}"),
        Err(_) => eprintln!("{what} did not finish within {CLEANUP_LIMIT:?}"),
    }
}

/// Makes the template unless a finished one is there already; returns its
/// name.
async fn make_template(admin_url: &str) -> anyhow::Result<String> {
    let name = format!("ttsq_template_{}", migrations_hash());
    let mut admin = connect_admin(admin_url).await?;
    if !template_ready(&mut admin, &name).await? {
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(TEMPLATE_LOCK)
            .execute(&mut admin)
            .await
            .context("Failed to take the template lock")?;
        let made: anyhow::Result<()> = async {
            // Another process made it while this one waited for the lock.
            if template_ready(&mut admin, &name).await? {
                return Ok(());
            }
            // Left half-made by a process killed while migrating it.
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut admin)
                .await
                .context("Failed to drop an unfinished template")?;
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut admin)
                .await
                .context("Failed to create the template database")?;
            let mut template = PgConnection::connect(&database_url(admin_url, &name)?)
                .await
                .context("Failed to connect to the template database")?;
            MIGRATOR
                .run(&mut template)
                .await
                .context("Failed to migrate the template database")?;
            template.close().await.ok();
            // Finished: a template from now on, and no session can open on
            // it, so none keeps a clone from being made.
            sqlx::query(&format!(
                "ALTER DATABASE {name} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"
            ))
            .execute(&mut admin)
            .await
            .context("Failed to mark the template finished")?;
            Ok(())
        }
        .await;
        // Closing the session would release the lock too; unlocking at once
        // lets the waiting processes go before this one's close completes.
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(TEMPLATE_LOCK)
            .execute(&mut admin)
            .await
            .ok();
        made?;
    }
    admin.close().await.ok();
    Ok(name)
}

/// Whether the template `name` is there and finished.
async fn template_ready(admin: &mut PgConnection, name: &str) -> anyhow::Result<bool> {
    let finished: Option<bool> = sqlx::query_scalar(
        "SELECT datistemplate AND NOT datallowconn FROM pg_database WHERE datname = $1",
    )
    .bind(name)
    .fetch_optional(admin)
    .await
    .context("Failed to look for the template database")?;
    Ok(finished == Some(true))
}

/// 16 hex digits naming this build's migrations: their versions and
/// checksums, so that any change to one makes another template.
fn migrations_hash() -> String {
    let mut hasher = Sha256::new();
    for migration in MIGRATOR.iter() {
        hasher.update(migration.version.to_le_bytes());
        hasher.update(&migration.checksum);
    }
    hex::encode(&hasher.finalize()[..8])
}

async fn connect_admin(admin_url: &str) -> anyhow::Result<PgConnection> {
    PgConnection::connect(admin_url)
        .await
        .context("Failed to connect to Postgres (TTSQ_TEST_DATABASE_URL)")
}

/// `admin_url` with its database replaced by `name`.
fn database_url(admin_url: &str, name: &str) -> anyhow::Result<String> {
    let (base, _) = admin_url
        .rsplit_once('/')
        .context("TTSQ_TEST_DATABASE_URL has no database part")?;
    Ok(format!("{base}/{name}"))
}

fn is_object_in_use(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == OBJECT_IN_USE)
}
