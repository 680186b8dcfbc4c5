//! What operators' tools call: `/metrics` (Prometheus text), `/health`
//! (liveness only) and `/ready` (each dependency with its latency and
//! error). They are served by [`serve`] on a listener of their own, kept off
//! the public network: an API process on `server.ops_listen`, a worker on
//! `worker.metrics_listen`. The public address answers `/ready` with its
//! status only, from a [`ReadinessCache`].

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{Arc, LazyLock, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use serde::Serialize;
use tokio::net::TcpListener;
use ttsq_audio::AudioStore;
use ttsq_providers::quota::ReplicaRole;
use ttsq_queue::Broker;
use ttsq_store::{Store, UsageToday};

/// Longest one readiness check or metrics sample may take: a dependency
/// that does not answer in time is reported down, not waited for.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a read of today's usage is reused: it is fleet-wide, so every
/// replica's scrape would otherwise repeat the same query.
const USAGE_TTL: Duration = Duration::from_secs(10);

/// The dependencies the operations endpoints look at; cheap to clone.
#[derive(Clone)]
pub struct Probes {
    /// Postgres.
    pub store: Store,
    /// RabbitMQ.
    pub broker: Arc<Broker>,
    /// S3 audio.
    pub audio: AudioStore,
    /// Providers: health and breaker states.
    pub providers: Arc<ttsq_providers::Router>,
    /// Whose readiness this is. RabbitMQ gates a worker's (it cannot work
    /// without it) but not the API's: the API writes accepted jobs to
    /// Postgres, and the dispatcher publishes them once RabbitMQ is back,
    /// so an API replica keeps accepting and answering through a broker
    /// outage. `All` answers as the API does.
    pub role: ReplicaRole,
}

#[derive(Serialize)]
struct Check {
    ok: bool,
    latency_ms: u128,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn check<E: std::fmt::Display>(started: Instant, result: Result<(), E>) -> Check {
    Check {
        ok: result.is_ok(),
        latency_ms: started.elapsed().as_millis(),
        error: result.err().map(|e| e.to_string()),
    }
}

/// Runs `probe` and reports it with its latency.
async fn timed(probe: impl Future<Output = Result<(), String>>) -> Check {
    let started = Instant::now();
    let result = probe.await;
    check(started, result)
}

/// Runs `probe` for at most [`CHECK_TIMEOUT`].
async fn bounded<E: std::fmt::Display>(
    probe: impl Future<Output = Result<(), E>>,
) -> Result<(), String> {
    match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", CHECK_TIMEOUT.as_millis())),
    }
}

/// RabbitMQ answers a round trip (the queue depths, which also refresh the
/// depth gauges).
async fn rabbitmq(broker: &Broker) -> Result<(), String> {
    if !broker.is_connected() {
        return Err("not connected".into());
    }
    let (jobs, dlq) = match tokio::time::timeout(CHECK_TIMEOUT, broker.depths()).await {
        Ok(result) => result.map_err(|e| e.to_string())?,
        Err(_) => return Err(format!("no answer within {} ms", CHECK_TIMEOUT.as_millis())),
    };
    let metrics = ttsq_telemetry::metrics::get();
    metrics.queue_depth.set(i64::from(jobs));
    metrics.dlq_depth.set(i64::from(dlq));
    Ok(())
}

/// One round of readiness checks.
pub struct Readiness {
    /// Every dependency that gates this role's readiness answered.
    pub ready: bool,
    /// Each dependency, and each provider's last health check.
    checks: BTreeMap<String, Check>,
}

impl Probes {
    /// Checks Postgres, RabbitMQ and S3 at once, each for at most the
    /// timeout, and reads each provider's last health check. Ready when
    /// Postgres and S3 answer, and RabbitMQ too for a worker (see
    /// [`Probes::role`]); providers are reported but do not gate it.
    pub async fn check(&self) -> Readiness {
        ttsq_telemetry::metrics::get().readiness_checks.inc();
        let (postgres, rabbitmq, s3) = tokio::join!(
            timed(bounded(self.store.ping())),
            timed(rabbitmq(&self.broker)),
            timed(bounded(self.audio.check())),
        );
        // Providers do not gate readiness either: with fallback chains a
        // vendor outage degrades routing, and taking every replica out of
        // service for it would turn a partial outage into a total one.
        let broker_gates = self.role == ReplicaRole::Worker;
        let ready = postgres.ok && s3.ok && (rabbitmq.ok || !broker_gates);
        let mut checks = BTreeMap::from([
            ("postgres".to_owned(), postgres),
            ("rabbitmq".to_owned(), rabbitmq),
            ("s3".to_owned(), s3),
        ]);
        let started = Instant::now();
        for (name, result) in self.providers.health().await {
            checks.insert(format!("provider:{name}"), check(started, result));
        }
        Readiness { ready, checks }
    }

    /// The detailed `/ready` of the operations listener: 200 when the
    /// dependencies that gate this role (see [`Probes::role`]) answer within
    /// the timeout, else 503; the body reports each dependency with its
    /// latency and error, and each provider's last health check.
    pub async fn readiness(&self) -> (StatusCode, Json<serde_json::Value>) {
        let Readiness { ready, checks } = self.check().await;
        (
            status_code(ready),
            Json(serde_json::json!({ "ready": ready, "checks": checks })),
        )
    }

    /// Sets the gauges that mirror state kept elsewhere — queue depths,
    /// breaker positions, today's usage — then renders every series.
    pub async fn render_metrics(&self) -> String {
        let metrics = ttsq_telemetry::metrics::get();
        self.providers.export_breaker_states();
        metrics.set_tenant_limits(
            self.store
                .limit_fractions()
                .into_iter()
                .map(|(_, limit, fraction)| (limit.as_str(), fraction)),
        );
        if let Err(err) = rabbitmq(&self.broker).await {
            tracing::debug!(error = %err, "queue depths not sampled");
        }
        match self.store.queued_tasks().await {
            Ok(queued) => metrics.tasks_queued.set(queued),
            Err(err) => tracing::debug!(error = %err, "queued tasks not counted"),
        }
        if let Some(usage) = usage_today(&self.store).await {
            metrics.daily_usage.set(usage.billable_characters);
            if usage.tasks > 0 {
                metrics
                    .cache_hit_ratio
                    .set(usage.cache_hits as f64 / usage.tasks as f64);
            }
        }
        ttsq_telemetry::metrics::render()
    }
}

/// Today's usage, read at most every [`USAGE_TTL`] per process.
async fn usage_today(store: &Store) -> Option<UsageToday> {
    static LAST: LazyLock<Mutex<Option<(Instant, UsageToday)>>> =
        LazyLock::new(|| Mutex::new(None));
    let cached = LAST.lock().ok().and_then(|last| *last);
    if let Some((at, usage)) = cached
        && at.elapsed() < USAGE_TTL
    {
        return Some(usage);
    }
    match tokio::time::timeout(CHECK_TIMEOUT, store.usage_today()).await {
        Ok(Ok(usage)) => {
            if let Ok(mut last) = LAST.lock() {
                *last = Some((Instant::now(), usage));
            }
            Some(usage)
        }
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "today's usage not sampled");
            cached.map(|(_, usage)| usage)
        }
        Err(_) => cached.map(|(_, usage)| usage),
    }
}

/// `GET /metrics` of a probes-only server.
async fn metrics(State(probes): State<Probes>) -> impl IntoResponse {
    metrics_response(probes.render_metrics().await)
}

/// The Prometheus text with its content type.
pub fn metrics_response(text: String) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, ttsq_telemetry::metrics::CONTENT_TYPE)],
        text,
    )
}

/// `GET /health`'s body.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`: a process that answers is alive.
    status: HealthState,
}

/// The one liveness state.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// The process answers.
    Ok,
}

/// `GET /health`: the process is up. Dependencies are `/ready`'s business.
pub async fn health() -> Json<Health> {
    Json(Health {
        status: HealthState::Ok,
    })
}

async fn ready(State(probes): State<Probes>) -> (StatusCode, Json<serde_json::Value>) {
    probes.readiness().await
}

/// 200 when ready, else 503.
pub fn status_code(ready: bool) -> StatusCode {
    if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Readiness for the public `/ready`: one round of checks is shared by
/// every caller for [`ReadinessCache::TTL`] after it ends, and callers that
/// arrive while a round runs wait for it, so no number of callers makes the
/// process check its dependencies more than once per interval.
pub struct ReadinessCache {
    probes: Probes,
    /// When the last round ended, and whether it found the process ready.
    last: tokio::sync::Mutex<Option<(Instant, bool)>>,
}

impl ReadinessCache {
    /// How long a round's answer is reused.
    pub const TTL: Duration = Duration::from_secs(2);

    /// A cache over `probes`, empty until the first call.
    pub fn new(probes: Probes) -> Self {
        Self {
            probes,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// The dependencies it checks.
    pub fn probes(&self) -> &Probes {
        &self.probes
    }

    /// Whether the latest round found this process ready ([`Probes::check`]),
    /// running a round first when the last one is older than the TTL.
    pub async fn is_ready(&self) -> bool {
        let mut last = self.last.lock().await;
        if let Some((at, ready)) = *last
            && at.elapsed() < Self::TTL
        {
            return ready;
        }
        let ready = self.probes.check().await.ready;
        *last = Some((Instant::now(), ready));
        ready
    }
}

/// `/metrics`, `/health` and the detailed `/ready`: the operations
/// listener of every process.
pub fn router(probes: Probes) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(probes)
}

/// Serves [`router`] on `listener` until `shutdown` resolves.
pub async fn serve(
    probes: Probes,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tracing::info!(address = %listener.local_addr()?, "operations endpoints listening");
    axum::serve(listener, router(probes))
        .with_graceful_shutdown(shutdown)
        .await
}
