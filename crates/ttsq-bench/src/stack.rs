//! One ttsq deployment for one scenario: its own database `ttsq_bench_<id>`,
//! queue prefix `ttsq-bench-<id>.`, an API process and worker processes
//! started from the built `ttsq` binary, torn down at the end.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use sqlx::{Connection, PgConnection, PgPool, postgres::PgPoolOptions};
use uuid::Uuid;

use crate::env::Env;

/// Marks the SQL the driver itself sends to a stack's database, so that
/// `pg_stat_statements` (which keeps a statement's first text, comments
/// included) tells the driver's polling from the stack's own statements.
pub const DRIVER_SQL_TAG: &str = "/* ttsq-bench */";

/// What a stack is started with.
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// Extra `TTSQ_*` settings of every process.
    pub env: Vec<(String, String)>,
    /// Contents of the config file (providers and routes).
    pub config_toml: String,
}

/// A running deployment.
pub struct Stack {
    /// `http://127.0.0.1:<port>` of the API.
    pub base_url: String,
    /// API key of the stack's tenant.
    pub api_key: String,
    /// Pool on the stack's database, for the driver's own queries.
    pub db: PgPool,
    /// The API process.
    pub api: Child,
    /// Worker processes started so far.
    pub workers: Vec<Child>,
    binary: PathBuf,
    env: Vec<(String, String)>,
    database: String,
    prefix: String,
    admin_url: String,
    log_dir: PathBuf,
    config_path: PathBuf,
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl Stack {
    /// Creates the database, migrates, creates a tenant and starts the API;
    /// workers are started with [`Stack::start_workers`].
    pub async fn start(env: &Env, name: &str, options: StackOptions) -> anyhow::Result<Self> {
        let id = Uuid::new_v4().simple().to_string();
        let database = format!("ttsq_bench_{id}");
        let prefix = format!("ttsq-bench-{id}.");
        let mut admin = PgConnection::connect(&env.admin_url)
            .await
            .context("connecting to Postgres (TTSQ_BENCH_DATABASE_URL)")?;
        sqlx::query(&format!("CREATE DATABASE {database}"))
            .execute(&mut admin)
            .await
            .context("creating the bench database")?;
        admin.close().await.ok();
        let (base, _) = env
            .admin_url
            .rsplit_once('/')
            .context("the admin URL has no database part")?;
        let database_url = format!("{base}/{database}");
        let log_dir = env.work_dir.join(format!("{name}-{}", &id[..8]));
        std::fs::create_dir_all(&log_dir)?;
        let config_path = log_dir.join("ttsq.toml");
        std::fs::write(&config_path, &options.config_toml)?;
        let port = free_port()?;
        let base_url = format!("http://127.0.0.1:{port}");
        let mut all_env = vec![
            ("TTSQ_CONFIG".to_owned(), config_path.display().to_string()),
            ("TTSQ_DATABASE_URL".to_owned(), database_url.clone()),
            ("TTSQ_QUEUE_URL".to_owned(), env.amqp_url.clone()),
            ("TTSQ_QUEUE_PREFIX".to_owned(), prefix.clone()),
            ("TTSQ_S3_ENDPOINT".to_owned(), env.s3_endpoint.clone()),
            ("TTSQ_S3_ACCESS_KEY_ID".to_owned(), env.s3_key.clone()),
            (
                "TTSQ_S3_SECRET_ACCESS_KEY".to_owned(),
                env.s3_secret.clone(),
            ),
            ("TTSQ_S3_BUCKET".to_owned(), env.bucket.clone()),
            ("TTSQ_SERVER_LISTEN".to_owned(), format!("127.0.0.1:{port}")),
            ("TTSQ_SERVER_PUBLIC_URL".to_owned(), base_url.clone()),
            (
                "TTSQ_WORKER_METRICS_LISTEN".to_owned(),
                "127.0.0.1:0".to_owned(),
            ),
            (
                "TTSQ_SERVER_OPS_LISTEN".to_owned(),
                "127.0.0.1:0".to_owned(),
            ),
            ("TTSQ_QUOTA_HEARTBEAT_SECS".to_owned(), "1".to_owned()),
        ];
        all_env.extend(options.env);
        let api_key = create_tenant(&env.ttsq_bin, &all_env, "bench", &[])?;
        let api = spawn_logged(&env.ttsq_bin, &all_env, "api", &log_dir.join("api.log"))?;
        let mut stack = Self {
            base_url,
            api_key,
            db: PgPoolOptions::new()
                .max_connections(4)
                .connect(&database_url)
                .await
                .context("connecting to the bench database")?,
            api,
            workers: Vec::new(),
            binary: env.ttsq_bin.clone(),
            env: all_env,
            database,
            prefix,
            admin_url: env.admin_url.clone(),
            log_dir,
            config_path,
        };
        stack.wait_ready().await?;
        Ok(stack)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = client.get(format!("{}/ready", self.base_url)).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if let Some(status) = self.api.try_wait()? {
                bail!(
                    "the API exited ({status}); see {}",
                    self.log_dir.join("api.log").display()
                );
            }
            if Instant::now() > deadline {
                bail!("the API was not ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates another tenant with `ttsq tenant create NAME OPTIONS…` and
    /// returns its API key.
    pub fn create_tenant(&self, name: &str, options: &[&str]) -> anyhow::Result<String> {
        create_tenant(&self.binary, &self.env, name, options)
    }

    /// The settings the stack's processes run with.
    pub fn settings(&self) -> anyhow::Result<ttsq_config::Settings> {
        let env = self
            .env
            .iter()
            .filter(|(name, _)| name != "TTSQ_CONFIG")
            .cloned();
        Ok(ttsq_config::Settings::load(Some(&self.config_path), env)?)
    }

    /// Starts `count` more worker processes and waits until all of them
    /// heartbeat (so shared quotas are split among them from the start).
    pub async fn start_workers(&mut self, count: usize) -> anyhow::Result<()> {
        for _ in 0..count {
            let n = self.workers.len();
            let log = self.log_dir.join(format!("worker-{n}.log"));
            let child = spawn_logged(&self.binary, &self.env, "worker", &log)?;
            self.workers.push(child);
        }
        let want = i64::try_from(self.workers.len())?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let seen: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM workers WHERE role = 'worker'
                   AND last_seen > now() - interval '5 seconds' {DRIVER_SQL_TAG}"
            ))
            .fetch_one(&self.db)
            .await
            .unwrap_or(0);
            if seen >= want {
                return Ok(());
            }
            for worker in &mut self.workers {
                if let Some(status) = worker.try_wait()? {
                    bail!(
                        "a worker exited ({status}); logs in {}",
                        self.log_dir.display()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!("only {seen} of {want} workers registered within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Process ids of the workers.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.workers.iter().map(Child::id).collect()
    }

    /// Process ids of the API processes (one).
    pub fn api_pids(&self) -> Vec<u32> {
        vec![self.api.id()]
    }

    /// Name of the stack's database.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Counts tasks per terminal state: (terminal, succeeded).
    pub async fn terminal_counts(&self) -> anyhow::Result<(i64, i64)> {
        let row: (i64, i64) = sqlx::query_as(&format!(
            "SELECT count(*) FILTER (WHERE status IN ('succeeded', 'failed', 'cancelled')),
                    count(*) FILTER (WHERE status = 'succeeded')
               FROM tasks {DRIVER_SQL_TAG}"
        ))
        .fetch_one(&self.db)
        .await?;
        Ok(row)
    }

    /// Waits until `expected` tasks are terminal, printing progress; returns
    /// the number that succeeded. Fails after `limit`.
    pub async fn wait_terminal(&self, expected: i64, limit: Duration) -> anyhow::Result<i64> {
        let started = Instant::now();
        let mut last_report = Instant::now();
        loop {
            let (terminal, succeeded) = self.terminal_counts().await?;
            if terminal >= expected {
                return Ok(succeeded);
            }
            if last_report.elapsed() > Duration::from_secs(2) {
                eprintln!(
                    "    … {terminal}/{expected} terminal after {:.0} s",
                    started.elapsed().as_secs_f64()
                );
                last_report = Instant::now();
            }
            if started.elapsed() > limit {
                bail!(
                    "only {terminal} of {expected} tasks terminal after {limit:?}; logs in {}",
                    self.log_dir.display()
                );
            }
            // Each poll counts the whole table: polled faster, the driver's
            // own scans would be a visible share of Postgres's CPU.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Seconds since the epoch of the last `finished_at`.
    pub async fn last_finished_epoch(&self) -> anyhow::Result<f64> {
        let value: Option<f64> = sqlx::query_scalar(&format!(
            "SELECT extract(epoch FROM max(finished_at))::float8 FROM tasks {DRIVER_SQL_TAG}"
        ))
        .fetch_one(&self.db)
        .await?;
        value.context("no task finished")
    }

    /// Stops the workers (SIGTERM, then waits).
    pub fn stop_workers(&mut self) {
        for mut worker in self.workers.drain(..) {
            terminate(&mut worker);
        }
    }

    /// Stops every process, deletes the queues and drops the database.
    pub async fn teardown(mut self) {
        self.stop_workers();
        terminate(&mut self.api);
        self.db.close().await;
        let deleted = match self.settings() {
            Ok(settings) => delete_queues(&settings).await,
            Err(err) => Err(err),
        };
        if let Err(err) = deleted {
            eprintln!(
                "    (could not delete the queues of {}: {err:#})",
                self.prefix
            );
        }
        match PgConnection::connect(&self.admin_url).await {
            Ok(mut admin) => {
                if let Err(err) = sqlx::query(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.database
                ))
                .execute(&mut admin)
                .await
                {
                    eprintln!("    (could not drop {}: {err})", self.database);
                }
            }
            Err(err) => eprintln!("    (could not drop {}: {err})", self.database),
        }
        let _ = std::fs::remove_file(&self.config_path);
    }
}

/// Runs `ttsq tenant create NAME OPTIONS…` and returns the API key it prints.
fn create_tenant(
    binary: &Path,
    env: &[(String, String)],
    name: &str,
    options: &[&str],
) -> anyhow::Result<String> {
    let output = base_command(binary, env, "tenant")
        .args(["create", name])
        .args(options)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .context("running `ttsq tenant create`")?;
    if !output.status.success() {
        bail!(
            "`ttsq tenant create {name}` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

/// `ttsq <subcommand>` with nothing of the driver's environment but `PATH`.
fn base_command(binary: &Path, env: &[(String, String)], subcommand: &str) -> Command {
    let mut command = Command::new(binary);
    command
        .arg(subcommand)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    command
}

/// Starts `ttsq <subcommand>` with its stderr in `log`.
fn spawn_logged(
    binary: &Path,
    env: &[(String, String)],
    subcommand: &str,
    log: &Path,
) -> anyhow::Result<Child> {
    let file = std::fs::File::create(log)?;
    base_command(binary, env, subcommand)
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .with_context(|| format!("starting `{} {subcommand}`", binary.display()))
}

/// SIGTERM, up to 30 s of grace, then SIGKILL.
pub fn terminate(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..300 {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Deletes every queue the stack's processes declared — job, retry, dead
/// letter and webhook queues — named from the same settings they ran with.
async fn delete_queues(settings: &ttsq_config::Settings) -> anyhow::Result<()> {
    let broker = ttsq_queue::Broker::connect(&settings.queue, "ttsq-bench-teardown").await?;
    broker.delete_queues().await?;
    broker.close().await;
    Ok(())
}
