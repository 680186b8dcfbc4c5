#![doc = include_str!("../README.md")]

pub mod dead_letters;
pub mod observability;
pub mod retention;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use ttsq_api::ApiContext;
use ttsq_audio::AudioStore;
use ttsq_config::Settings;
use ttsq_providers::{
    Router,
    quota::{ReplicaRole, replica_share},
};
use ttsq_queue::Broker;
use ttsq_store::Store;
use ttsq_worker::WorkerContext;

/// How often tasks of replicas that died are looked for.
const ORPHANS_EVERY: Duration = Duration::from_secs(2);

/// How often `/ready`'s view of provider health is refreshed.
const PROVIDER_HEALTH_EVERY: Duration = Duration::from_secs(5);

/// Connects with `database`, applies pending migrations and, given a
/// `service_role`, grants that role what the service uses, and no more
/// ([`ttsq_store::grants`]). Run as the owner role: `ttsq migrate
/// --grant-to ROLE` does, as does the test stack for each test's role.
pub async fn migrate(
    database: &ttsq_config::DatabaseSettings,
    service_role: Option<&str>,
) -> anyhow::Result<Store> {
    let store = Store::connect(database)
        .await
        .context("Failed to connect to Postgres (TTSQ_DATABASE_URL)")?;
    store
        .migrate()
        .await
        .context("Failed to migrate the database")?;
    if let Some(role) = service_role {
        store
            .grant_service_role(role)
            .await
            .with_context(|| format!("Failed to grant the service role {role}"))?;
    }
    Ok(store)
}

/// How often [`wait_for_schema`] looks again.
const SCHEMA_POLL: Duration = Duration::from_secs(2);

/// Waits until the database holds every migration of this build, which
/// another process applies (the migration Job): what a replica's init
/// container runs, as the service role, so that no replica starts on a
/// schema older than its code. Applies nothing; retries while Postgres is
/// unreachable; fails after `timeout` naming what is still missing.
pub async fn wait_for_schema(
    database: &ttsq_config::DatabaseSettings,
    timeout: Duration,
) -> anyhow::Result<()> {
    use secrecy::ExposeSecret;
    let pool = ttsq_store::sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(database.url.expose_secret())
        .context("TTSQ_DATABASE_URL is not a valid Postgres URL")?;
    let store = Store::from_pool(pool);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut reported = String::new();
    loop {
        let state = match store.pending_migrations().await {
            Ok(pending) if pending.is_empty() => return Ok(()),
            Ok(pending) => format!("migrations not applied yet: {pending:?}"),
            Err(err) => format!("cannot read the schema's migrations: {err}"),
        };
        if state != reported {
            tracing::info!("waiting for the migration Job (ttsq migrate); {state}");
            reported = state;
        }
        if tokio::time::Instant::now() + SCHEMA_POLL > deadline {
            anyhow::bail!(
                "the schema is not current after {} s ({reported}): has `ttsq migrate` run \
                 with this image?",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(SCHEMA_POLL).await;
    }
}

/// Connects with `database` to read usage, without migrating: the role may
/// be a finance role ([`ttsq_store::finance`]), which may read the finance
/// views and the ledger and nothing else, not even sqlx's record of
/// migrations. Fails saying what to run when the schema is not migrated or
/// the role may not read the views. `ttsq usage` connects so.
pub async fn finance_store(database: &ttsq_config::DatabaseSettings) -> anyhow::Result<Store> {
    let store = Store::connect(database)
        .await
        .context("Failed to connect to Postgres (TTSQ_DATABASE_URL)")?;
    store
        .check_finance_access()
        .await
        .context("Cannot read the usage views")?;
    Ok(store)
}

/// What [`grant_finance`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinanceGrants {
    /// Whether the role asked for was created (`NOLOGIN`).
    pub created: bool,
    /// Every other finance role recorded earlier, granted again or not.
    pub others: Vec<ttsq_store::Regrant>,
}

/// Gives `role`, when given, finance access (`SELECT` on the usage views,
/// the ledger and the tenants' names, nothing else; created `NOLOGIN` when
/// missing), then grants every finance role recorded earlier again, so that
/// views a migration replaced are readable again. Run as the owner, after
/// [`migrate`]: `ttsq migrate [--finance-role ROLE]` does.
pub async fn grant_finance(store: &Store, role: Option<&str>) -> anyhow::Result<FinanceGrants> {
    let created = match role {
        Some(role) => store
            .grant_finance_role(role)
            .await
            .with_context(|| format!("Failed to give {role} finance access"))?,
        None => false,
    };
    let others = store
        .regrant_finance_roles()
        .await
        .context("Failed to grant the finance roles again")?
        .into_iter()
        .filter(|outcome| {
            let name = match outcome {
                ttsq_store::Regrant::Granted(name)
                | ttsq_store::Regrant::Missing(name)
                | ttsq_store::Regrant::Refused(name, _) => name,
            };
            Some(name.as_str()) != role
        })
        .collect();
    Ok(FinanceGrants { created, others })
}

/// Every dependency of a ttsq process, connected.
#[derive(Clone)]
pub struct Services {
    /// The settings they were built from.
    pub settings: Arc<Settings>,
    /// Postgres.
    pub store: Store,
    /// RabbitMQ, topology declared on every (re)connection.
    pub broker: Arc<Broker>,
    /// S3 audio.
    pub audio: AudioStore,
    /// Providers and the dialect catalog.
    pub providers: Arc<Router>,
    /// This process's id among the live replicas (its heartbeat row).
    pub replica_id: uuid::Uuid,
    /// Wakes this process's dispatcher; the API wakes it on submissions,
    /// the worker when a batch is done.
    pub dispatch: ttsq_dispatch::Waker,
    /// Live worker replicas at the latest heartbeat, for the dispatch windows.
    live_workers: Arc<AtomicU32>,
    /// Since when this replica's heartbeats have succeeded without a miss;
    /// `None` while Postgres is unreachable.
    heartbeating_since: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

impl Services {
    /// Connects to Postgres (migrating when configured) and S3, tries
    /// RabbitMQ once (it is not required to start) and builds the providers.
    /// Each failure names the dependency.
    pub async fn connect(settings: Settings, role: &str) -> anyhow::Result<Self> {
        let store = Store::connect(&settings.database)
            .await
            .context("Failed to connect to Postgres (TTSQ_DATABASE_URL)")?;
        if settings.database.run_migrations {
            store
                .migrate()
                .await
                .context("Failed to migrate the database")?;
        }
        // RabbitMQ may be down: the process starts anyway and the broker's
        // supervisor connects in the background (the API accepts into
        // Postgres meanwhile; a worker is not ready until it consumes).
        let broker = Broker::new(
            &settings.queue,
            &format!("ttsq-{role}-{}", std::process::id()),
        );
        if let Err(err) = broker.reconnect().await {
            tracing::warn!(
                error = %err,
                "RabbitMQ (TTSQ_QUEUE_URL) is unreachable; starting anyway and connecting in the background"
            );
        }
        let audio = AudioStore::connect(&settings.s3)
            .await
            .context("Failed to connect to S3 (TTSQ_S3_ENDPOINT)")?;
        let replica_id = uuid::Uuid::now_v7();
        // Vendor quotas are taken from one limiter in Postgres shared by all
        // replicas; the heartbeat's static share is only the fallback.
        let coordinator =
            ttsq_store::PgQuotaCoordinator::connect_lazy(&settings.database, replica_id)
                .context("Failed to set up the quota coordinator's pool (TTSQ_DATABASE_URL)")?;
        let providers = Router::from_settings(&settings)
            .context("invalid provider configuration")?
            .with_quota_coordinator(Arc::new(coordinator));
        anyhow::ensure!(
            !providers.catalog().is_empty(),
            "no provider serves any dialect"
        );
        ttsq_telemetry::metrics::get()
            .set_daily_usage_limit(settings.metrics.daily_character_limit);
        Ok(Self {
            settings: Arc::new(settings),
            store,
            broker: Arc::new(broker),
            audio,
            providers: Arc::new(providers),
            replica_id,
            dispatch: ttsq_dispatch::Waker::default(),
            live_workers: Arc::new(AtomicU32::new(1)),
            heartbeating_since: Arc::default(),
        })
    }

    /// The API's handler context.
    pub async fn api_context(&self) -> ApiContext {
        ApiContext::new(
            &self.settings,
            self.store.clone(),
            Arc::clone(&self.broker),
            self.audio.clone(),
            Arc::clone(&self.providers),
            self.replica_id,
            self.dispatch.clone(),
        )
        .await
    }

    /// How long a silent replica is presumed alive: three missed heartbeats.
    pub fn replica_ttl(&self) -> Duration {
        Duration::from_secs(self.settings.quota.heartbeat_secs * 3)
    }

    /// The worker's context, with a consumer tag unique to this process.
    pub fn worker_context(&self) -> WorkerContext {
        WorkerContext {
            store: self.store.clone(),
            broker: Arc::clone(&self.broker),
            audio: self.audio.clone(),
            providers: Arc::clone(&self.providers),
            settings: self.settings.worker.clone(),
            prefetch: self.settings.queue.prefetch,
            retry_delays: self.settings.queue.retry_delays(),
            delivery_limit: self.settings.queue.delivery_limit,
            replica_id: self.replica_id,
            replica_ttl: self.replica_ttl(),
            serve_fallback_audio: self.settings.cache.serve_fallback_audio,
            dispatch: self.dispatch.clone(),
            name: format!(
                "ttsq-worker-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ),
        }
    }

    /// Runs a replica until `shutdown`: registers it (heartbeat and quota
    /// share), runs the outbox relay, serves the API on `listener` when the
    /// role has one and consumes the queue when the role does, and serves
    /// the operations endpoints on `ops` (with the API's probes when there
    /// is an API); returns once all of it has stopped.
    pub async fn run(
        &self,
        role: ReplicaRole,
        listener: Option<TcpListener>,
        ops: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let heartbeat = self.start_heartbeat(role, shutdown.clone()).await;
        let relay = self.start_dispatch(shutdown.clone());
        let sweeper = self.start_retention_sweeper(shutdown.clone());
        let broker = Arc::clone(&self.broker);
        let supervisor_stop = shutdown.clone();
        let supervisor =
            tokio::spawn(async move { broker.supervise(supervisor_stop.cancelled()).await });
        let serving = async {
            match listener {
                Some(listener) => self.run_api(listener, ops, shutdown.clone()).await,
                None => self.serve_ops(self.probes(), ops, shutdown.clone()).await,
            }
        };
        let worker = async {
            match role {
                ReplicaRole::Worker | ReplicaRole::All => {
                    let outcome = self.run_worker(shutdown.clone()).await;
                    // A worker that stopped on its own takes its listener along.
                    if role == ReplicaRole::Worker {
                        shutdown.cancel();
                    }
                    outcome
                }
                ReplicaRole::Api => Ok(()),
            }
        };
        let (serving, worker) = tokio::join!(serving, worker);
        let _ = tokio::join!(heartbeat, relay, sweeper, supervisor);
        serving.and(worker)
    }

    /// Registers this process as a live replica and keeps its fallback share
    /// of the provider quotas current (used only while the quota coordinator
    /// in Postgres is unreachable): one heartbeat now (so the first request
    /// is already within the share), then one every `quota.heartbeat_secs`
    /// until `shutdown`, when it deregisters so the others take up its share.
    pub async fn start_heartbeat(
        &self,
        role: ReplicaRole,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        let id = self.replica_id;
        let every = Duration::from_secs(self.settings.quota.heartbeat_secs);
        self.heartbeat(id, role, every).await;
        let services = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = ticks.tick() => services.heartbeat(id, role, every).await,
                }
            }
            if let Err(err) = services.store.deregister(id).await {
                tracing::warn!(error = %err, "deregistering the replica failed; it expires on its own");
            }
        })
    }

    async fn heartbeat(&self, id: uuid::Uuid, role: ReplicaRole, every: Duration) {
        // Three missed heartbeats and a replica is presumed gone.
        let outcome = self.store.heartbeat(id, role.as_str(), every * 3).await;
        if let Ok(mut since) = self.heartbeating_since.lock() {
            match &outcome {
                Ok(_) => {
                    since.get_or_insert_with(std::time::Instant::now);
                }
                Err(_) => *since = None,
            }
        }
        match outcome {
            Ok(live) => {
                self.live_workers.store(live.workers, Ordering::Relaxed);
                let share = replica_share(
                    role,
                    live.apis,
                    live.workers,
                    self.settings.quota.high_priority_share,
                );
                self.providers.set_quota_share(share);
                tracing::debug!(apis = live.apis, workers = live.workers, share, "heartbeat");
            }
            // Keeping the last share is the safe choice: the replica count
            // did not change as far as this replica knows.
            Err(err) => {
                tracing::warn!(error = %err, "heartbeat failed; keeping the current quota share")
            }
        }
    }

    /// Whether this replica has heartbeated without a miss for a whole
    /// replica TTL: only then can it tell a dead replica from one that, like
    /// itself, just could not reach Postgres (after an outage every replica
    /// looks silent until its next heartbeat).
    fn sees_replicas_clearly(&self) -> bool {
        let ttl = self.replica_ttl();
        self.heartbeating_since
            .lock()
            .map(|since| since.is_some_and(|at| at.elapsed() >= ttl))
            .unwrap_or(false)
    }

    /// Runs this replica's dispatcher and orphan recovery until `shutdown`:
    /// the dispatcher publishes queued tasks in fair order as its windows
    /// have room ([`ttsq_dispatch`]), woken by this process's API and worker
    /// and by a short poll; every couple of seconds, tasks held by replicas
    /// that stopped heartbeating go back to waiting and the dispatcher is
    /// woken for them. Every replica runs both; the store keeps them from
    /// doubling up.
    pub fn start_dispatch(&self, shutdown: CancellationToken) -> JoinHandle<()> {
        let windows = ttsq_dispatch::Windows::new(&self.settings, self.providers.catalog());
        let dispatcher = ttsq_dispatch::Dispatcher::new(
            self.store.clone(),
            Arc::clone(&self.broker),
            windows,
            Arc::clone(&self.live_workers),
            self.dispatch.clone(),
            self.settings.dispatch.poll(),
        );
        let services = self.clone();
        tokio::spawn(async move {
            let stop = shutdown.clone();
            tokio::join!(
                dispatcher.run(stop.cancelled()),
                services.recover_orphans(shutdown)
            );
        })
    }

    /// Returns tasks of replicas that died to waiting, every
    /// [`ORPHANS_EVERY`], once this replica can tell a dead replica from its
    /// own lost view of Postgres.
    async fn recover_orphans(&self, shutdown: CancellationToken) {
        let replica_ttl = self.replica_ttl();
        let claim_timeout = self.settings.worker.claim_timeout();
        let mut ticks = tokio::time::interval(ORPHANS_EVERY);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
            match self.store.recover_lost_messages(claim_timeout).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::warn!(
                        tasks = n,
                        "tasks published long ago were never claimed; publishing them again"
                    );
                    self.dispatch.wake();
                }
                Err(err) => tracing::warn!(error = %err, "lost message recovery failed"),
            }
            if !self.sees_replicas_clearly() {
                continue;
            }
            match self.store.recover_orphans(replica_ttl, claim_timeout).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::warn!(tasks = n, "returned tasks of a vanished replica to waiting");
                    self.dispatch.wake();
                }
                Err(err) => tracing::warn!(error = %err, "orphan recovery failed"),
            }
        }
    }

    /// Serves the API on `listener` and its operations endpoints on `ops`
    /// until `shutdown` is cancelled; provider health for `/ready` is
    /// refreshed in the background meanwhile. An API server that stops on
    /// its own cancels `shutdown`, taking the operations listener along.
    pub async fn run_api(
        &self,
        listener: TcpListener,
        ops: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let context = self.api_context().await;
        let providers = Arc::clone(&self.providers);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(PROVIDER_HEALTH_EVERY);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = ticks.tick() => providers.refresh_health().await,
                }
            }
        });
        let probes = context.probes();
        let api = async {
            let outcome = ttsq_api::run(context, listener, shutdown.clone().cancelled_owned())
                .await
                .context("API server failed");
            shutdown.cancel();
            outcome
        };
        let (api, ops) = tokio::join!(api, self.serve_ops(probes, ops, shutdown.clone()));
        api.and(ops)
    }

    /// The webhook delivery service's context.
    pub fn webhook_context(&self) -> ttsq_webhooks::WebhookContext {
        let hooks = &self.settings.webhooks;
        ttsq_webhooks::WebhookContext {
            store: self.store.clone(),
            broker: Arc::clone(&self.broker),
            audio: self.audio.clone(),
            public_url: self.settings.server.public_url.trim_end_matches('/').into(),
            signing_key: hooks.enabled_key().cloned(),
            // Settings::load validated the networks.
            guard: ttsq_webhooks::TargetGuard::new(hooks.allowed_networks().unwrap_or_default()),
            timeout: Duration::from_secs(hooks.timeout_secs),
            concurrency: hooks.concurrency,
            per_tenant_in_flight: hooks.per_tenant_in_flight,
            name: format!(
                "ttsq-webhooks-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ),
        }
    }

    /// The sweeper that joins the audio of batches asking for it.
    pub fn joiner(&self) -> ttsq_worker::batches::Joiner {
        ttsq_worker::batches::Joiner::new(
            self.store.clone(),
            self.audio.clone(),
            &self.settings.batches,
            self.replica_id,
        )
    }

    /// The sweeper that joins the chunks of long jobs.
    pub fn long_joiner(&self) -> ttsq_worker::long_jobs::LongJoiner {
        ttsq_worker::long_jobs::LongJoiner::new(
            self.store.clone(),
            self.audio.clone(),
            &self.settings.batches,
            self.replica_id,
        )
    }

    /// Runs a worker until `shutdown` is cancelled, then drains it; beside
    /// it, the webhook delivery service and the joiners of batches' audio
    /// and of long jobs' chunks.
    pub async fn run_worker(&self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let hooks = ttsq_webhooks::run(self.webhook_context(), shutdown.clone().cancelled_owned());
        let joins = self.joiner().run(shutdown.clone().cancelled_owned());
        let long_joins = self.long_joiner().run(shutdown.clone().cancelled_owned());
        let (worker, (), (), ()) = tokio::join!(
            ttsq_worker::run(self.worker_context(), shutdown.cancelled_owned()),
            hooks,
            joins,
            long_joins
        );
        worker.context("worker failed")
    }
}
