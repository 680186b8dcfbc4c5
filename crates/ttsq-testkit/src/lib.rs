#![doc = include_str!("../README.md")]

mod fake_routes;
pub mod link;
pub mod restart;

pub use fake_routes::FakeRoutes;

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use futures::FutureExt;
use reqwest::Response;
use serde_json::Value;
use sqlx::{Connection, PgConnection};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use ttsq::Services;
use ttsq_config::Settings;
use ttsq_providers::quota::ReplicaRole;
use ttsq_test_db::{TestDatabase, run_cleanup};
use uuid::Uuid;

/// Bucket shared by all tests: objects are content-addressed, and the cache
/// index that decides hits lives in each test's own database.
/// Prefix of the test buckets: each test has its own, as it has its own
/// database, so that audio one test stored is never found by another (a
/// holder of a hash's lease adopts an object it finds under its key).
const TEST_BUCKET_PREFIX: &str = "ttsq-test-";

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// A worker running in the test process.
struct WorkerHandle {
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

/// A running ttsq stack for one test.
pub struct TestApp {
    /// Everything connected, as the binary would have it.
    pub services: Services,
    /// Where the API listens.
    pub address: SocketAddr,
    /// `http://{address}`.
    pub base_url: String,
    /// `http://…` of the API's operations listener: `/metrics`, `/health`
    /// and the detailed `/ready`.
    pub ops_url: String,
    /// A key of the test's default tenant.
    pub api_key: String,
    /// An HTTP client that does not follow redirects.
    pub http: reqwest::Client,
    /// The links to the services, when started with `faulty_links`.
    pub links: Option<link::Links>,
    env: Vec<(String, String)>,
    config_file: Option<std::path::PathBuf>,
    /// RabbitMQ and S3 as reached directly, not through [`TestApp::links`]
    /// (which stop with the test's runtime): where the queues and the
    /// bucket are removed from.
    direct_queue_url: String,
    direct_s3_endpoint: String,
    /// The test's database, dropped with the service role after everything
    /// else of the test.
    database: TestDatabase,
    /// The role the stack connects as, created for this test.
    service_role: String,
    /// The test database as its owner (the role that migrates) reaches it.
    owner: ttsq_config::DatabaseSettings,
    api_shutdown: CancellationToken,
    api_task: JoinHandle<anyhow::Result<()>>,
    heartbeat: JoinHandle<()>,
    relay: JoinHandle<()>,
    workers: Vec<WorkerHandle>,
}

/// Options of [`TestApp::spawn_with`].
#[derive(Debug, Clone)]
pub struct TestOptions {
    /// Start one in-process worker.
    pub worker: bool,
    /// Extra `TTSQ_*` settings.
    pub env: Vec<(String, String)>,
    /// A config file's contents (providers, routes), layered under `env`.
    pub config_toml: Option<String>,
    /// Reach Postgres, RabbitMQ and S3 through links the test can cut
    /// ([`TestApp::links`]); the API, in-process workers and worker child
    /// processes all go through them.
    pub faulty_links: bool,
}

impl Default for TestOptions {
    fn default() -> Self {
        Self {
            worker: true,
            env: Vec::new(),
            config_toml: None,
            faulty_links: false,
        }
    }
}

fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(env_or(
                "RUST_LOG", "info",
            )))
            .with_test_writer()
            .try_init();
    }
}

impl TestApp {
    /// API and one worker, default settings.
    pub async fn spawn() -> Self {
        Self::spawn_with(TestOptions::default()).await
    }

    /// API, optionally a worker, with extra settings. Panics (failing the
    /// test) with the reason when a service is unreachable.
    pub async fn spawn_with(options: TestOptions) -> Self {
        Self::try_spawn(options)
            .await
            .expect("test stack failed to start")
    }

    async fn try_spawn(options: TestOptions) -> anyhow::Result<Self> {
        init_logs();
        let id = Uuid::new_v4().simple().to_string();
        let mut database = TestDatabase::new().await?;
        // The stack connects as a service role of its own, as production's
        // api and workers do; the admin role owns and migrated the database.
        let password = Uuid::new_v4().simple().to_string();
        let service_role = database
            .create_role(&format!("LOGIN PASSWORD '{password}'"))
            .await?;
        let owner_url = database.url().to_owned();
        let owner = Settings::load(
            None,
            [
                ("TTSQ_DATABASE_URL".to_owned(), owner_url.clone()),
                ("TTSQ_DATABASE_MAX_CONNECTIONS".to_owned(), "2".to_owned()),
            ],
        )?
        .database;
        // The clone is migrated already: this only grants, as `ttsq migrate
        // --grant-to` does.
        ttsq::migrate(&owner, Some(&service_role))
            .await?
            .pool()
            .close()
            .await;
        let service_url = as_role(&owner_url, &service_role, &password)?;

        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let base_url = format!("http://{address}");
        let ops_listener = TcpListener::bind("127.0.0.1:0").await?;
        let ops_url = format!("http://{}", ops_listener.local_addr()?);
        let mut env = vec![
            ("TTSQ_DATABASE_URL".to_owned(), service_url),
            ("TTSQ_DATABASE_MAX_CONNECTIONS".to_owned(), "8".to_owned()),
            (
                "TTSQ_QUEUE_URL".to_owned(),
                env_or(
                    "TTSQ_TEST_AMQP_URL",
                    "amqp://guest:guest@127.0.0.1:5672/%2f",
                ),
            ),
            ("TTSQ_QUEUE_PREFIX".to_owned(), format!("ttsq-test-{id}.")),
            (
                "TTSQ_S3_ENDPOINT".to_owned(),
                env_or("TTSQ_S3_ENDPOINT", "http://127.0.0.1:8014"),
            ),
            (
                "TTSQ_S3_ACCESS_KEY_ID".to_owned(),
                env_or("TTSQ_S3_ACCESS_KEY_ID", "ttsq"),
            ),
            (
                "TTSQ_S3_SECRET_ACCESS_KEY".to_owned(),
                env_or("TTSQ_S3_SECRET_ACCESS_KEY", "ttsq-local-secret"),
            ),
            (
                "TTSQ_S3_BUCKET".to_owned(),
                format!("{TEST_BUCKET_PREFIX}{id}"),
            ),
            ("TTSQ_SERVER_PUBLIC_URL".to_owned(), base_url.clone()),
            ("TTSQ_WORKER_BATCH_WINDOW_MS".to_owned(), "20".to_owned()),
            // Child processes must not compete for one operations port.
            (
                "TTSQ_WORKER_METRICS_LISTEN".to_owned(),
                "127.0.0.1:0".to_owned(),
            ),
            (
                "TTSQ_SERVER_OPS_LISTEN".to_owned(),
                "127.0.0.1:0".to_owned(),
            ),
            (
                "TTSQ_WORKER_SHUTDOWN_GRACE_SECS".to_owned(),
                "20".to_owned(),
            ),
        ];
        env.extend(options.env);
        let direct_queue_url = last_value(&env, "TTSQ_QUEUE_URL");
        let direct_s3_endpoint = last_value(&env, "TTSQ_S3_ENDPOINT");
        let links = if options.faulty_links {
            Some(link::Links::interpose(&mut env).await?)
        } else {
            None
        };
        let config_file = match &options.config_toml {
            Some(toml) => {
                let path = std::env::temp_dir().join(format!("ttsq-test-{id}.toml"));
                std::fs::write(&path, toml).context("Failed to write the test config file")?;
                env.push(("TTSQ_CONFIG".to_owned(), path.display().to_string()));
                Some(path)
            }
            None => None,
        };
        let settings = Settings::load(config_file.as_deref(), env.clone())?;
        let services = Services::connect(settings, "test").await?;
        let (_, key) = services.store.create_tenant("default").await?;
        let role = if options.worker {
            ReplicaRole::All
        } else {
            ReplicaRole::Api
        };
        let api_shutdown = CancellationToken::new();
        let heartbeat = services.start_heartbeat(role, api_shutdown.clone()).await;
        let relay = services.start_dispatch(api_shutdown.clone());
        let api_task = {
            let services = services.clone();
            let shutdown = api_shutdown.clone();
            tokio::spawn(async move { services.run_api(listener, ops_listener, shutdown).await })
        };
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()?;
        let mut app = Self {
            services,
            address,
            base_url,
            ops_url,
            api_key: expose(&key.key),
            http,
            links,
            env,
            config_file,
            direct_queue_url,
            direct_s3_endpoint,
            database,
            service_role,
            owner,
            api_shutdown,
            api_task,
            heartbeat,
            relay,
            workers: Vec::new(),
        };
        if options.worker {
            app.start_worker();
        }
        Ok(app)
    }

    /// Starts one more in-process worker.
    pub fn start_worker(&mut self) {
        let services = self.services.clone();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move { services.run_worker(token).await });
        self.workers.push(WorkerHandle { shutdown, task });
    }

    /// Stops every in-process worker gracefully and waits for them.
    pub async fn stop_workers(&mut self) {
        for worker in self.workers.drain(..) {
            worker.shutdown.cancel();
            worker
                .task
                .await
                .expect("worker task panicked")
                .expect("worker failed");
        }
    }

    /// The `TTSQ_*` variables (and `TTSQ_CONFIG`) that point a `ttsq` child
    /// process at this stack.
    pub fn child_env(&self) -> &[(String, String)] {
        &self.env
    }

    /// A `ttsq worker` command for `binary` (a test's
    /// `env!("CARGO_BIN_EXE_ttsq")`) pointed at this stack, with nothing of
    /// the test's own environment but `PATH`, logging at `warn` to stderr.
    pub fn worker_command(&self, binary: &str) -> std::process::Command {
        let mut command = std::process::Command::new(binary);
        command
            .arg("worker")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        command
    }

    /// A `ttsq` command (`binary` is a test's `env!("CARGO_BIN_EXE_ttsq")`)
    /// pointed at this stack, with nothing of the test's own environment but
    /// `PATH`; add the subcommand's arguments and run it.
    pub fn cli_command(&self, binary: &str) -> std::process::Command {
        let mut command = std::process::Command::new(binary);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .env("USER", "testkit")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null());
        command
    }

    /// Starts a second API replica on the same database, broker and bucket,
    /// with its own connections: what another pod of the deployment is.
    pub async fn spawn_api_replica(&self) -> ApiReplica {
        let settings = Settings::load(self.config_file.as_deref(), self.env.clone())
            .expect("the test's settings load again");
        let services = Services::connect(settings, "test-replica")
            .await
            .expect("replica services connect");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("replica listener binds");
        let address = listener.local_addr().expect("replica address");
        let ops = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("replica operations listener binds");
        let ops_url = format!("http://{}", ops.local_addr().expect("replica ops address"));
        let shutdown = CancellationToken::new();
        let task = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move { services.run_api(listener, ops, shutdown).await })
        };
        ApiReplica {
            base_url: format!("http://{address}"),
            ops_url,
            shutdown,
            task,
        }
    }

    /// The database role the stack connects as: created for this test and
    /// granted by [`ttsq::migrate`], as `ttsq migrate --grant-to` grants
    /// production's service role.
    pub fn service_role(&self) -> &str {
        &self.service_role
    }

    /// A connection to the test database as its owner, the role that
    /// migrates: for what the service role may not do (test scaffolding in
    /// the schema, the owner's own limits).
    pub async fn owner_connection(&self) -> PgConnection {
        PgConnection::connect(secrecy::ExposeSecret::expose_secret(&self.owner.url))
            .await
            .expect("the owner reaches the test database")
    }

    /// Grants the service role again, as every `ttsq migrate --grant-to`
    /// run does: after a test added tables as the owner, they get the
    /// service's privileges too.
    pub async fn grant_service_role(&self) {
        ttsq::migrate(&self.owner, Some(&self.service_role))
            .await
            .expect("the service role is granted")
            .pool()
            .close()
            .await;
    }

    /// The test database's settings for its owner, the role that migrates:
    /// what `ttsq migrate` connects with in production.
    pub fn owner(&self) -> &ttsq_config::DatabaseSettings {
        &self.owner
    }

    /// Creates a login role of this test's own with no privileges, dropped
    /// after the test; returns its name and a database URL logging in as it.
    pub async fn login_role(&mut self) -> (String, String) {
        let password = Uuid::new_v4().simple().to_string();
        let role = self
            .database
            .create_role(&format!("LOGIN PASSWORD '{password}'"))
            .await
            .expect("a login role is created");
        let url = as_role(self.database.url(), &role, &password).expect("a URL for the role");
        (role, url)
    }

    /// A fresh role name that nothing has created yet, dropped after the
    /// test if something creates it (`ttsq migrate --finance-role` does).
    pub fn unused_role(&mut self) -> String {
        self.database.unused_role()
    }

    /// Creates another tenant and returns its API key.
    pub async fn new_tenant(&self, name: &str) -> String {
        let (_, key) = self
            .services
            .store
            .create_tenant(name)
            .await
            .expect("tenant created");
        expose(&key.key)
    }

    /// Puts the tenants named `tenants` into the cache pool `pool`: they
    /// share each other's audio from then on.
    pub async fn join_cache_pool(&self, tenants: &[&str], pool: &str) {
        for name in tenants {
            self.services
                .store
                .update_tenant(
                    name,
                    &ttsq_store::TenantUpdate {
                        cache_pool: Some(Some(pool.to_owned())),
                        ..Default::default()
                    },
                    "test",
                )
                .await
                .expect("pool joined");
        }
    }

    /// `POST /v1/tts/jobs` with the default key.
    pub async fn submit(&self, body: &Value) -> Response {
        self.submit_as(&self.api_key, body).await
    }

    /// `POST /v1/tts/jobs` with `key`.
    pub async fn submit_as(&self, key: &str, body: &Value) -> Response {
        self.http
            .post(format!("{}/v1/tts/jobs", self.base_url))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("submit request sent")
    }

    /// `GET {path}` with `key`.
    pub async fn get_as(&self, key: &str, path: &str) -> Response {
        self.http
            .get(format!("{}{path}", self.base_url))
            .bearer_auth(key)
            .send()
            .await
            .expect("GET request sent")
    }

    /// Submits a normal job and returns its task id, asserting a 202.
    pub async fn submit_ok(&self, body: &Value) -> Uuid {
        let response = self.submit(body).await;
        let status = response.status();
        let json: Value = response.json().await.expect("JSON body");
        assert_eq!(status, 202, "submit answered {status}: {json}");
        json["task_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("task_id")
    }

    /// Long-polls a task of the default tenant until it is terminal.
    pub async fn wait_for(&self, task_id: Uuid) -> Value {
        self.wait_for_as(&self.api_key, task_id).await
    }

    /// Long-polls a task of the tenant of `key` until it is terminal (or
    /// panics after 60 s).
    pub async fn wait_for_as(&self, key: &str, task_id: Uuid) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let task: Value = self
                .get_as(key, &format!("/v1/tts/jobs/{task_id}?wait=10"))
                .await
                .json()
                .await
                .expect("task JSON");
            if matches!(
                task["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            ) {
                return task;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task never finished: {task}"
            );
        }
    }

    /// Waits until no task is queued or processing (or panics after `limit`).
    pub async fn drain(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let open = self
                .scalar("SELECT count(*) FROM tasks WHERE status IN ('queued', 'processing')")
                .await;
            if open == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{open} tasks still open after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `count` tasks have been published by the dispatcher
    /// (which runs beside the API, a moment after the submission's commit),
    /// or panics after 10 s.
    pub async fn wait_published(&self, count: i64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let published = self
                .scalar("SELECT count(*) FROM tasks WHERE published_at IS NOT NULL")
                .await;
            if published >= count {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {published} of {count} tasks published"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs a query returning one bigint.
    pub async fn scalar(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(self.services.store.pool())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Runs a statement; returns the rows it touched.
    pub async fn execute(&self, sql: &str) -> u64 {
        sqlx::query(sql)
            .execute(self.services.store.pool())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .rows_affected()
    }

    /// Synthesis calls the in-process router made to `provider`.
    pub fn provider_calls(&self, provider: &str) -> u64 {
        self.services.providers.calls(provider)
    }

    /// The error of an in-process worker that has already stopped by
    /// itself: a worker only stops when told to, and then without error
    /// ([`TestApp::stop_workers`]).
    fn failed_worker(&mut self) -> Option<String> {
        self.workers.iter_mut().find_map(|worker| {
            let finished = (&mut worker.task).now_or_never()?;
            Some(match finished {
                Ok(Ok(())) => "stopped without being told to".to_owned(),
                Ok(Err(err)) => format!("{err:#}"),
                Err(err) => format!("panicked: {err}"),
            })
        })
    }
}

/// Stops the stack and removes its queues, bucket and config file, also
/// when the test panicked; the database and the service role go last, with
/// the [`TestDatabase`]. A worker that failed during the test fails it
/// here, as [`TestApp::stop_workers`] would have.
impl Drop for TestApp {
    fn drop(&mut self) {
        let failed_worker = self.failed_worker();
        // The tasks run on the test's runtime, which cannot run them while
        // this waits for the cleanup: they end where they stand, the
        // database's forced drop closing their connections.
        self.api_shutdown.cancel();
        self.api_task.abort();
        self.heartbeat.abort();
        self.relay.abort();
        for worker in &self.workers {
            worker.shutdown.cancel();
            worker.task.abort();
        }
        let queue_url = self.direct_queue_url.clone();
        let queues: Vec<String> = self
            .services
            .broker
            .names()
            .all()
            .map(str::to_owned)
            .collect();
        let s3 = ttsq_config::S3Settings {
            endpoint: self.direct_s3_endpoint.clone(),
            create_bucket: false,
            ..self.services.settings.s3.clone()
        };
        let config_file = self.config_file.take();
        run_cleanup(
            &format!("removing the queues and bucket of {}", self.database.name()),
            move || async move {
                if let Some(path) = config_file {
                    std::fs::remove_file(path).ok();
                }
                delete_queues(&queue_url, &queues).await?;
                ttsq_audio::AudioStore::connect(&s3)
                    .await?
                    .delete_bucket()
                    .await?;
                Ok(())
            },
        );
        if let Some(failure) = failed_worker
            && !std::thread::panicking()
        {
            panic!("worker failed: {failure}");
        }
    }
}

/// Deletes `queues` over a connection of its own (the stack's is tied to
/// the test's runtime).
async fn delete_queues(url: &str, queues: &[String]) -> anyhow::Result<()> {
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .context("Failed to connect to RabbitMQ")?;
    let channel = connection.create_channel().await?;
    for queue in queues {
        channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await
            .with_context(|| format!("Failed to delete the queue {queue}"))?;
    }
    connection.close(200, "test over".into()).await.ok();
    Ok(())
}

/// The value `env` ends up giving `var` (later entries win), or "".
fn last_value(env: &[(String, String)], var: &str) -> String {
    env.iter()
        .rev()
        .find(|(key, _)| key == var)
        .map(|(_, value)| value.clone())
        .unwrap_or_default()
}

/// A second API replica of a [`TestApp`].
pub struct ApiReplica {
    /// `http://{address}` of the replica.
    pub base_url: String,
    /// `http://…` of the replica's operations listener.
    pub ops_url: String,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl ApiReplica {
    /// Stops the replica and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Sends `signal` (`-TERM`, `-KILL`, …) to `child` and waits up to 30 s
/// for it to exit; panics (failing the test) when it does not.
pub fn signal_and_wait(child: &mut std::process::Child, signal: &str) -> std::process::ExitStatus {
    let sent = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "kill {signal} failed");
    for _ in 0..300 {
        if let Some(exit) = child.try_wait().expect("wait on child") {
            return exit;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("the process did not exit within 30 s of {signal}");
}

/// `url` logging in as `role` with `password` instead.
fn as_role(url: &str, role: &str, password: &str) -> anyhow::Result<String> {
    let mut parsed = reqwest::Url::parse(url).with_context(|| format!("cannot parse {url}"))?;
    parsed
        .set_username(role)
        .and_then(|()| parsed.set_password(Some(password)))
        .map_err(|()| anyhow::anyhow!("cannot set the user of {url}"))?;
    Ok(parsed.to_string())
}

fn expose(secret: &secrecy::SecretString) -> String {
    use secrecy::ExposeSecret;
    secret.expose_secret().to_owned()
}
