//! The fleet suite: exactly once across replicas. Several `ttsq
//! worker` child processes and the API (in process, taking high-priority
//! jobs inline) share one database, queue and bucket, and a fake vendor
//! counts every call. What must hold, whatever the replicas race on:
//!
//! - a content hash is synthesized once in the whole fleet (a replica that
//!   dies mid-call may cost one more call per hash it held, no more);
//! - every stored audio object is billed exactly once: one ledger row with
//!   `cache_hit = false` per `audio_objects` row;
//! - the index describes the bytes really stored: each `audio_objects` row's
//!   `sha256` and `bytes` equal the object read back from S3;
//! - a worker paused past its heartbeat TTL, whose tasks were handed to
//!   another worker meanwhile, writes nothing over that worker's claim.
//!
//! The fake's audio length drifts while a case runs (see [`Drift`]): two
//! calls for one text made at different moments answer different bytes, as
//! a neural vendor's would, so an index row describing bytes that were
//! thrown away shows up as a mismatch with S3.
//!
//! Who wrote what is logged by a trigger the test installs on `tasks` (see
//! [`WRITE_LOG`]): each worker process connects with its own Postgres
//! `application_name`, so every claim, finish and requeue names its writer.
//!
//! Every case spawns processes and counts calls, so each runs alone
//! (`.config/nextest.toml`).

use std::{
    process::Child,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use ttsq_fake_provider::{FakeConfig, FakeProvider};
use ttsq_testkit::{FakeRoutes, TestApp, TestOptions, signal_and_wait};
use uuid::Uuid;

const KEY: &str = "sk-fleet-test-key-0123456789";

/// The longest a case may take for every task to become terminal.
const SETTLE_WITHIN: Duration = Duration::from_secs(120);

/// Jobs in one worker batch (`worker.batch_size`).
const BATCH_SIZE: u64 = 8;
/// Batches one worker processes at once (`worker.concurrent_batches`).
const CONCURRENT_BATCHES: u64 = 4;
/// Provider calls one batch makes at once (`worker.syntheses_per_batch`).
const SYNTHESES_PER_BATCH: u64 = 8;

/// Distinct hashes one worker can have paid the vendor for without having
/// committed them: every task of every batch it holds, each a different
/// text (a batch synthesizes all its missing hashes before it writes any).
/// What a `kill -9` may cost at most, on top of one call per text.
const IN_FLIGHT_PER_WORKER: u64 = CONCURRENT_BATCHES * BATCH_SIZE;

/// Logs every UPDATE of `tasks` that changes its status or its claim, with
/// the writer's `application_name` (`fleet-w1`, … for the workers; empty for
/// the API in the test process) and the claim (`worker_batch_id`) before and
/// after, and who wrote each `audio_objects` row. Test scaffolding in the
/// test's own database, never part of the schema.
const WRITE_LOG: &str = "
CREATE TABLE fleet_task_writes (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    task_id     uuid NOT NULL,
    app         text NOT NULL,
    old_status  text NOT NULL,
    new_status  text NOT NULL,
    old_batch   uuid,
    new_batch   uuid
);
CREATE FUNCTION fleet_log_task_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fleet_task_writes (task_id, app, old_status, new_status, old_batch, new_batch)
    VALUES (NEW.id, current_setting('application_name'), OLD.status, NEW.status,
            OLD.worker_batch_id, NEW.worker_batch_id);
    RETURN NULL;
END
$$;
CREATE TRIGGER fleet_log_task_write
    AFTER UPDATE ON tasks
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.worker_batch_id IS DISTINCT FROM NEW.worker_batch_id)
    EXECUTE FUNCTION fleet_log_task_write();
CREATE TABLE fleet_audio_writes (
    at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    hash    text NOT NULL,
    app     text NOT NULL
);
CREATE FUNCTION fleet_log_audio_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fleet_audio_writes (hash, app) VALUES (NEW.hash, current_setting('application_name'));
    RETURN NULL;
END
$$;
CREATE TRIGGER fleet_log_audio_write
    AFTER INSERT OR UPDATE ON audio_objects
    FOR EACH ROW EXECUTE FUNCTION fleet_log_audio_write();
CREATE VIEW fleet_claims AS
    SELECT DISTINCT new_batch AS batch, app
      FROM fleet_task_writes
     WHERE new_status = 'processing' AND new_batch IS DISTINCT FROM old_batch;
";

/// How a case's fleet is set up.
struct FleetOptions {
    /// Worker processes started at once.
    workers: usize,
    /// Fixed part of the fake's answer time, in milliseconds.
    latency_ms: u64,
}

/// The API in process, worker child processes, the fake vendor.
struct Fleet {
    app: TestApp,
    fake: Arc<FakeProvider>,
    workers: Workers,
    drift: Drift,
}

/// A worker child process and the `application_name` it writes under.
struct Worker {
    name: String,
    child: Child,
}

/// The worker processes; any still running when this is dropped (a failed
/// assertion) are killed, so that no orphan keeps consuming.
#[derive(Default)]
struct Workers {
    live: Vec<Worker>,
    spawned: usize,
}

impl Drop for Workers {
    fn drop(&mut self) {
        for worker in &mut self.live {
            let _ = worker.child.kill();
            let _ = worker.child.wait();
        }
    }
}

/// Changes how long the fake's answers are, every 20 ms, among 21 values.
/// Audio length is the only part of the fake's answer that can vary, and
/// it varies the bytes: a real vendor never answers the same bytes twice
/// for one text either.
struct Drift {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Drift {
    fn start(fake: Arc<FakeProvider>) -> Self {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut tick = 0u32;
            let mut ticks = tokio::time::interval(Duration::from_millis(20));
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = ticks.tick() => {}
                }
                tick = tick.wrapping_add(1);
                // 10 to 30 ms per character: 15 to 50 KB of WAV per sentence.
                fake.update(|c| c.ms_per_char = 10 + (tick * 7) % 21);
            }
        });
        Self { stop, task }
    }
}

/// One job to submit: which text, and whether it is high priority.
#[derive(Debug, Clone, Copy)]
struct Planned {
    text: usize,
    high: bool,
}

/// Which copies of which texts are submitted at high priority: copy `copy`
/// (from 0) of every `every`-th text.
#[derive(Debug, Clone, Copy)]
struct HighPriority {
    every: usize,
    copy: usize,
}

/// `jobs` jobs over `texts` distinct texts, the copies of each text next to
/// each other (so that they are submitted, and picked up by different
/// workers, at the same moment), some copies high priority (so that the
/// API synthesizes inline what workers are about to synthesize too).
fn plan(jobs: usize, texts: usize, high: Option<HighPriority>) -> Vec<Planned> {
    let copies = jobs.div_ceil(texts);
    (0..jobs)
        .map(|i| Planned {
            text: i / copies,
            high: high
                .is_some_and(|h| (i / copies).is_multiple_of(h.every) && i % copies == h.copy),
        })
        .collect()
}

/// What the submissions got back.
#[derive(Debug, Default)]
struct Submitted {
    /// Task ids answered 202 (normal) or 200 (high).
    accepted: Vec<Uuid>,
    /// High-priority jobs answered 200.
    high: usize,
    /// Anything else: status and body.
    refused: Vec<String>,
}

/// What a case ends with: the figures every assertion reads.
#[derive(Debug, Default)]
struct Outcome {
    tasks: i64,
    succeeded: i64,
    failed: i64,
    distinct_texts: i64,
    /// Synthesis requests the fake received.
    provider_calls: u64,
    /// Of those, answered with audio.
    #[expect(dead_code, reason = "read through Debug in assertion messages")]
    audio_responses: u64,
    /// Rows in `audio_objects`.
    audio_objects: i64,
    /// Ledger rows with `cache_hit = false`.
    billed_rows: i64,
    /// Audio objects with more than one billed ledger row (through
    /// `tasks.audio_hash`): the same audio paid twice.
    objects_billed_twice: i64,
    /// Audio objects no billed ledger row paid for.
    objects_never_billed: i64,
    /// Ledger rows for one task beyond the first (the schema refuses them).
    tasks_billed_twice: i64,
    /// Index rows whose `sha256` or `bytes` differ from the object in S3,
    /// or whose object is missing; the first few described.
    s3_mismatches: usize,
    s3_examples: Vec<String>,
    /// A few failed tasks: code and message.
    #[expect(dead_code, reason = "read through Debug in assertion messages")]
    failures: Vec<(Option<String>, Option<String>)>,
}

impl Fleet {
    async fn start(options: FleetOptions) -> Self {
        let mut config = FakeConfig::default();
        config.keys.openai = Some(KEY.to_owned());
        config.latency.fixed_ms = options.latency_ms;
        config.latency.jitter_ms = options.latency_ms / 2;
        config.voices.clear();
        config.log_capacity = 0;
        let fake = Arc::new(
            FakeProvider::start(config)
                .await
                .expect("fake provider starts"),
        );
        let config_toml = FakeRoutes::new(fake.base_url())
            .with(r#"model = "tts-1""#)
            .with("price_per_1k_chars = 15.0")
            .with("timeout_secs = 30")
            .with("quota = { max_concurrent = 32 }")
            .toml();
        let env: Vec<(String, String)> = vec![
            ("TTSQ_PROVIDERS_FAKE_API_KEY".into(), KEY.into()),
            // A replica silent for 3 s is presumed dead.
            ("TTSQ_QUOTA_HEARTBEAT_SECS".into(), "1".into()),
            ("TTSQ_QUEUE_PREFETCH".into(), "64".into()),
            // Retries (a job whose text a dead replica held) come back soon.
            ("TTSQ_QUEUE_RETRY_DELAYS_SECS".into(), "1,2,4,8".into()),
            ("TTSQ_WORKER_BATCH_SIZE".into(), BATCH_SIZE.to_string()),
            (
                "TTSQ_WORKER_CONCURRENT_BATCHES".into(),
                CONCURRENT_BATCHES.to_string(),
            ),
            (
                "TTSQ_WORKER_SYNTHESES_PER_BATCH".into(),
                SYNTHESES_PER_BATCH.to_string(),
            ),
            // Five processes share the Postgres server with other tests.
            ("TTSQ_DATABASE_MAX_CONNECTIONS".into(), "6".into()),
        ];
        let app = TestApp::spawn_with(TestOptions {
            worker: false,
            env,
            config_toml: Some(config_toml),
            faulty_links: false,
        })
        .await;
        // Schema changes are the owner's; the service role, which the
        // workers' trigger writes the log as, is then granted the new tables.
        ttsq_store::sqlx::raw_sql(WRITE_LOG)
            .execute(&mut app.owner_connection().await)
            .await
            .expect("the write log installs");
        app.grant_service_role().await;
        let drift = Drift::start(Arc::clone(&fake));
        let mut fleet = Self {
            app,
            fake,
            workers: Workers::default(),
            drift,
        };
        for _ in 0..options.workers {
            fleet.spawn_worker();
        }
        fleet.until_workers_heartbeat(options.workers).await;
        fleet
    }

    /// Starts one more worker process, `fleet-w{n}` to Postgres.
    fn spawn_worker(&mut self) -> String {
        self.workers.spawned += 1;
        let name = format!("fleet-w{}", self.workers.spawned);
        let url = self
            .app
            .child_env()
            .iter()
            .find(|(k, _)| k == "TTSQ_DATABASE_URL")
            .map(|(_, v)| v.clone())
            .expect("the test stack has a database URL");
        let separator = if url.contains('?') { '&' } else { '?' };
        let child = self
            .app
            .worker_command(env!("CARGO_BIN_EXE_ttsq"))
            .env(
                "TTSQ_DATABASE_URL",
                format!("{url}{separator}application_name={name}"),
            )
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("ttsq worker starts");
        self.workers.live.push(Worker {
            name: name.clone(),
            child,
        });
        name
    }

    /// Waits until `count` worker processes heartbeat, so that all of them
    /// consume from the first job on.
    async fn until_workers_heartbeat(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let seen = self
                .app
                .scalar(
                    "SELECT count(*) FROM workers WHERE role = 'worker'
                       AND last_seen > now() - interval '3 seconds'",
                )
                .await;
            if seen >= i64::try_from(count).expect("small") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {seen} of {count} workers heartbeat"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Content-hash leases (`synthesis_leases`, the fleet-wide single
    /// flight) held by the worker process `pid`: hashes it is synthesizing
    /// right now. `None` where the schema has no such table.
    async fn leases_held(&self, pid: i32) -> Option<i64> {
        let pool = self.app.services.store.pool();
        let has_leases: bool =
            ttsq_store::sqlx::query_scalar("SELECT to_regclass('synthesis_leases') IS NOT NULL")
                .fetch_one(pool)
                .await
                .expect("catalog readable");
        if !has_leases {
            return None;
        }
        ttsq_store::sqlx::query_scalar(
            "SELECT count(*) FROM synthesis_leases l JOIN workers w ON w.id = l.holder
              WHERE w.pid = $1",
        )
        .bind(pid)
        .fetch_one(pool)
        .await
        .ok()
    }

    /// Waits (up to `limit`) until worker `index` is synthesizing: it holds
    /// content-hash leases where the schema has them; otherwise it holds
    /// tasks while the vendor has at least 8 calls in hand.
    async fn until_synthesizing(&self, index: usize, limit: Duration) {
        let worker = &self.workers.live[index];
        let pid = i32::try_from(worker.child.id()).expect("a pid");
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let busy = match self.leases_held(pid).await {
                Some(leases) => leases > 0,
                None => {
                    self.processing_under(&worker.name).await > 0
                        && self.fake.stats().in_flight >= 8
                }
            };
            if busy {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Kills worker `index` with SIGKILL and starts a replacement; says
    /// what the victim held (tasks; content-hash leases, where the schema
    /// has them) and how many calls the vendor had in hand at that moment.
    async fn kill_and_replace(&mut self, index: usize) -> String {
        let name = self.workers.live[index].name.clone();
        let pid = i32::try_from(self.workers.live[index].child.id()).expect("a pid");
        let tasks = self.processing_under(&name).await;
        let leases = self.leases_held(pid).await;
        let calls = self.fake.stats().in_flight;
        let mut victim = self.workers.live.remove(index);
        signal_and_wait(&mut victim.child, "-KILL");
        self.spawn_worker();
        format!(
            "{name}: {tasks} tasks, {} leases held; {calls} calls at the vendor",
            leases.map_or_else(|| "no".to_owned(), |n| n.to_string())
        )
    }

    /// Submits `plan`, 48 at a time, in the background; at most
    /// `per_second` a second when given.
    fn submit(
        &self,
        plan: Vec<Planned>,
        case: &str,
        per_second: Option<f64>,
    ) -> JoinHandle<Submitted> {
        let http = self.app.http.clone();
        let url = format!("{}/v1/tts/jobs", self.app.base_url);
        let key = self.app.api_key.clone();
        // Texts of this run only: audio an earlier run left in the bucket
        // must not make a text a cache hit (or an upload find its key taken).
        let case = format!("{case} {}", &Uuid::new_v4().simple().to_string()[..8]);
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let answers: Vec<Result<(Uuid, bool), String>> =
                stream::iter(plan.into_iter().enumerate())
                    .map(|(i, job)| {
                        let (http, url, key, case) =
                            (http.clone(), url.clone(), key.clone(), case.clone());
                        async move {
                            if let Some(rate) = per_second {
                                tokio::time::sleep_until(
                                    start + Duration::from_secs_f64(i as f64 / rate),
                                )
                                .await;
                            }
                            let mut body = json!({
                                "text": format!("Fleet {case}: sentence number {}.", job.text),
                                "dialect": "en-gb", "voice": "rachel", "format": "wav"
                            });
                            if job.high {
                                body["priority"] = json!("high");
                            }
                            let response = http
                                .post(&url)
                                .bearer_auth(&key)
                                .header("accept", "application/json")
                                .json(&body)
                                .send()
                                .await
                                .map_err(|e| format!("job {i}: {e}"))?;
                            let status = response.status().as_u16();
                            let text = response.text().await.unwrap_or_default();
                            let expected = if job.high { 200 } else { 202 };
                            if status != expected {
                                return Err(format!("job {i}: {status} {text}"));
                            }
                            let task: Value =
                                serde_json::from_str(&text).map_err(|e| format!("job {i}: {e}"))?;
                            let id = task["task_id"]
                                .as_str()
                                .and_then(|s| s.parse().ok())
                                .ok_or_else(|| format!("job {i}: no task_id in {text}"))?;
                            Ok((id, job.high))
                        }
                    })
                    .buffer_unordered(48)
                    .collect()
                    .await;
            let mut submitted = Submitted::default();
            for answer in answers {
                match answer {
                    Ok((id, high)) => {
                        submitted.accepted.push(id);
                        submitted.high += usize::from(high);
                    }
                    Err(refused) => submitted.refused.push(refused),
                }
            }
            submitted
        })
    }

    /// Tasks terminal so far.
    async fn terminal(&self) -> i64 {
        self.app
            .scalar(
                "SELECT count(*) FROM tasks WHERE status IN ('succeeded', 'failed', 'cancelled')",
            )
            .await
    }

    /// Waits until at least `count` tasks are terminal.
    async fn until_terminal(&self, count: usize) {
        let deadline = Instant::now() + SETTLE_WITHIN;
        while self.terminal().await < i64::try_from(count).expect("small") {
            assert!(
                Instant::now() < deadline,
                "stuck below {count} terminal tasks"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Tasks `processing` now under a claim (`worker_batch_id`) that the
    /// worker named `name` made.
    async fn processing_under(&self, name: &str) -> i64 {
        ttsq_store::sqlx::query_scalar(
            "SELECT count(*) FROM tasks t
              WHERE t.status = 'processing'
                AND t.worker_batch_id IN (SELECT batch FROM fleet_claims WHERE app = $1)",
        )
        .bind(name)
        .fetch_one(self.app.services.store.pool())
        .await
        .expect("claims readable")
    }

    /// The writes to the tasks worker `name` claimed, oldest first per task:
    /// what happened to them, for a failure's message.
    async fn history(&self, name: &str) -> Vec<String> {
        let rows: Vec<(String, String, String, String, String, String, String)> =
            ttsq_store::sqlx::query_as(
                "SELECT to_char(w.at, 'HH24:MI:SS.MS'), right(w.task_id::text, 12), w.app,
                        w.old_status, w.new_status,
                        coalesce((SELECT c.app FROM fleet_claims c WHERE c.batch = w.old_batch), '-'),
                        coalesce((SELECT c.app FROM fleet_claims c WHERE c.batch = w.new_batch), '-')
                   FROM fleet_task_writes w
                  WHERE w.task_id IN (SELECT w2.task_id FROM fleet_task_writes w2
                                        JOIN fleet_claims c ON c.batch = w2.new_batch AND c.app = $1)
                  ORDER BY w.task_id, w.id
                  LIMIT 60",
            )
            .bind(name)
            .fetch_all(self.app.services.store.pool())
            .await
            .expect("write log readable");
        rows.into_iter()
            .map(|(at, task, app, from, to, old_claim, new_claim)| {
                format!(
                    "{at} {task}… by {app:?}: {from} → {to}, claim of {old_claim} → {new_claim}"
                )
            })
            .collect()
    }

    /// Waits (up to `limit`) until worker `name` holds tasks while the
    /// vendor is answering calls.
    async fn until_busy(&self, name: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.processing_under(name).await > 0 && self.fake.stats().in_flight > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until no task is queued or processing and every accepted one
    /// exists.
    async fn settle(&self, accepted: usize) {
        let deadline = Instant::now() + SETTLE_WITHIN;
        loop {
            let open = self
                .app
                .scalar("SELECT count(*) FROM tasks WHERE status IN ('queued', 'processing')")
                .await;
            let tasks = self.app.scalar("SELECT count(*) FROM tasks").await;
            if open == 0 && tasks >= i64::try_from(accepted).expect("small") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{open} tasks still open after {SETTLE_WITHIN:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reads the figures of the outcome, the audio objects checked against S3.
    async fn outcome(&self) -> Outcome {
        let app = &self.app;
        let pool = app.services.store.pool();
        let stats = self.fake.stats();
        let (objects_billed_twice, objects_never_billed): (i64, i64) = ttsq_store::sqlx::query_as(
            "SELECT count(*) FILTER (WHERE billed > 1), count(*) FILTER (WHERE billed = 0)
                   FROM (SELECT a.hash, count(l.task_id) AS billed
                           FROM audio_objects a
                           LEFT JOIN tasks t ON t.audio_hash = a.hash
                           LEFT JOIN usage_ledger l ON l.task_id = t.id AND NOT l.cache_hit
                          GROUP BY a.hash) per_object",
        )
        .fetch_one(pool)
        .await
        .expect("ledger per object readable");
        let failures = ttsq_store::sqlx::query_as(
            "SELECT error_code, error_message FROM tasks WHERE status = 'failed' LIMIT 5",
        )
        .fetch_all(pool)
        .await
        .expect("failures readable");
        let (s3_mismatches, s3_examples) = self.s3_mismatches().await;
        Outcome {
            tasks: app.scalar("SELECT count(*) FROM tasks").await,
            succeeded: app
                .scalar("SELECT count(*) FROM tasks WHERE status = 'succeeded'")
                .await,
            failed: app
                .scalar("SELECT count(*) FROM tasks WHERE status = 'failed'")
                .await,
            distinct_texts: app
                .scalar("SELECT count(DISTINCT content_hash) FROM tasks")
                .await,
            provider_calls: stats.synthesis_requests,
            audio_responses: stats.audio_responses,
            audio_objects: app.scalar("SELECT count(*) FROM audio_objects").await,
            billed_rows: app
                .scalar("SELECT count(*) FROM usage_ledger WHERE NOT cache_hit")
                .await,
            objects_billed_twice,
            objects_never_billed,
            tasks_billed_twice: app
                .scalar("SELECT count(*) - count(DISTINCT task_id) FROM usage_ledger")
                .await,
            s3_mismatches,
            s3_examples,
            failures,
        }
    }

    /// Reads every indexed object back from S3 (with the test's own S3
    /// settings) and compares its size and SHA-256 with the index row.
    async fn s3_mismatches(&self) -> (usize, Vec<String>) {
        let rows: Vec<(String, String, i64, String, Option<String>)> = ttsq_store::sqlx::query_as(
            "SELECT a.hash, a.s3_key, a.bytes, a.sha256,
                        (SELECT string_agg(w.app, ',' ORDER BY w.at) FROM fleet_audio_writes w
                          WHERE w.hash = a.hash)
                   FROM audio_objects a",
        )
        .fetch_all(self.app.services.store.pool())
        .await
        .expect("audio index readable");
        let audio = &self.app.services.audio;
        let mismatches: Vec<String> = stream::iter(rows)
            .map(|(hash, key, bytes, sha256, writers)| async move {
                match audio.get(&key).await {
                    Ok(stored) => {
                        let actual = hex::encode(Sha256::digest(&stored));
                        let size = i64::try_from(stored.len()).expect("small");
                        (actual != sha256 || size != bytes).then(|| {
                            format!(
                                "{hash:.12}…: index {bytes} B {sha256:.12}… (written by {writers:?}), S3 {size} B {actual:.12}…"
                            )
                        })
                    }
                    Err(err) => Some(format!("{hash}: {key} unreadable: {err}")),
                }
            })
            .buffer_unordered(8)
            .filter_map(|m| async move { m })
            .collect()
            .await;
        let count = mismatches.len();
        (count, mismatches.into_iter().take(5).collect())
    }

    /// Stops the drift and the workers (SIGTERM: each finishes what it
    /// holds), so that the fake's counters include every call any worker
    /// ever made.
    fn stop_workers(&mut self) {
        self.drift.stop.cancel();
        for mut worker in std::mem::take(&mut self.workers.live) {
            signal_and_wait(&mut worker.child, "-TERM");
        }
    }

    /// Stops everything; drops the test database.
    async fn teardown(mut self) {
        self.stop_workers();
        let _ = self.drift.task.await;
    }
}

/// Sends `signal` (`-STOP`, `-CONT`) to a worker without waiting for it.
fn signal(worker: &Worker, signal: &str) {
    let sent = std::process::Command::new("kill")
        .args([signal, &worker.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "kill {signal} {} failed", worker.name);
}

/// Collects the broken promises of a case, to report them all at once with
/// every figure.
#[derive(Default)]
struct Violations(Vec<String>);

impl Violations {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.0.push(what.into());
        }
    }

    fn assert_none(self, outcome: &Outcome) {
        if std::env::var_os("TEST_LOG").is_some() {
            eprintln!("{outcome:#?}");
        }
        assert!(
            self.0.is_empty(),
            "{} violation(s):\n  - {}\n{outcome:#?}",
            self.0.len(),
            self.0.join("\n  - ")
        );
    }
}

/// The checks every case makes: all accepted, all succeeded, one bill per
/// stored object, the index equal to S3.
fn common_checks(
    submitted: &Submitted,
    jobs: usize,
    texts: usize,
    outcome: &Outcome,
) -> Violations {
    let mut v = Violations::default();
    let jobs = i64::try_from(jobs).expect("small");
    let texts = i64::try_from(texts).expect("small");
    v.check(
        submitted.refused.is_empty(),
        format!(
            "{} submissions refused, e.g. {:?}",
            submitted.refused.len(),
            submitted.refused.iter().take(3).collect::<Vec<_>>()
        ),
    );
    v.check(
        outcome.tasks == jobs && outcome.succeeded == jobs,
        format!(
            "every task succeeded: {} of {} tasks ({} jobs submitted), {} failed",
            outcome.succeeded, outcome.tasks, jobs, outcome.failed
        ),
    );
    v.check(
        outcome.distinct_texts == texts && outcome.audio_objects == texts,
        format!(
            "one audio object per distinct text: {} objects, {} distinct hashes, {texts} texts",
            outcome.audio_objects, outcome.distinct_texts
        ),
    );
    v.check(
        outcome.objects_billed_twice == 0 && outcome.objects_never_billed == 0,
        format!(
            "exactly one billed ledger row per audio object: {} objects billed twice or more, {} never billed",
            outcome.objects_billed_twice, outcome.objects_never_billed
        ),
    );
    v.check(
        outcome.billed_rows == outcome.audio_objects,
        format!(
            "billed ledger rows ({}) = audio objects ({})",
            outcome.billed_rows, outcome.audio_objects
        ),
    );
    v.check(
        outcome.tasks_billed_twice == 0,
        format!("{} tasks billed twice", outcome.tasks_billed_twice),
    );
    v.check(
        outcome.s3_mismatches == 0,
        format!(
            "{} audio_objects rows disagree with S3, e.g. {:?}",
            outcome.s3_mismatches, outcome.s3_examples
        ),
    );
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_and_high_priority_submits_synthesize_each_text_once_and_bill_it_once() {
    let (jobs, texts) = (2_000, 200);
    let mut fleet = Fleet::start(FleetOptions {
        workers: 4,
        latency_ms: 100,
    })
    .await;

    // Ten copies of each text at once. Of every other text, the sixth copy
    // is high priority: the API, which synthesizes inline at once, mostly
    // wins those texts and the workers wait for it; the workers race each
    // other for the rest.
    let high = HighPriority { every: 2, copy: 5 };
    let submitted = fleet
        .submit(plan(jobs, texts, Some(high)), "once", None)
        .await
        .expect("submitter");
    fleet.settle(submitted.accepted.len()).await;
    fleet.stop_workers();
    let outcome = fleet.outcome().await;
    fleet.teardown().await;

    let mut violations = common_checks(&submitted, jobs, texts, &outcome);
    violations.check(
        submitted.high == texts / high.every,
        format!(
            "{} high-priority jobs answered 200, of {}",
            submitted.high,
            texts / high.every
        ),
    );
    violations.check(
        outcome.provider_calls == texts as u64,
        format!(
            "exactly {texts} provider calls for {texts} texts: {}",
            outcome.provider_calls
        ),
    );
    violations.check(
        outcome.billed_rows == texts as i64,
        format!(
            "exactly {texts} billed (cache_hit = false) ledger rows: {}",
            outcome.billed_rows
        ),
    );
    violations.assert_none(&outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_with_sigkill_mid_run_cost_at_most_their_calls_in_flight_and_bill_each_object_once()
 {
    let (jobs, texts) = (2_000, 200);
    let kills = 2;
    // Calls slow enough that a couple of dozen are in flight at any moment,
    // a few of them the victim's.
    let mut fleet = Fleet::start(FleetOptions {
        workers: 4,
        latency_ms: 600,
    })
    .await;

    // Spread over about 8 s, so that both kills fall while texts are still
    // being synthesized. High priority only for the last copy of every
    // tenth text: the workers synthesize (and die holding) the rest.
    let high = HighPriority { every: 10, copy: 9 };
    let submitting = fleet.submit(plan(jobs, texts, Some(high)), "kill", Some(250.0));
    let mut killed = Vec::new();
    for k in 1..=kills {
        fleet.until_terminal(jobs * k / (kills + 1)).await;
        fleet.until_synthesizing(0, Duration::from_secs(10)).await;
        killed.push(fleet.kill_and_replace(0).await);
    }
    let submitted = submitting.await.expect("submitter");
    fleet.settle(submitted.accepted.len()).await;
    fleet.stop_workers();
    let outcome = fleet.outcome().await;
    fleet.teardown().await;

    let mut violations = common_checks(&submitted, jobs, texts, &outcome);
    // A worker killed mid-run may have paid the vendor for every hash of
    // every batch it held without committing any (a batch synthesizes all
    // its missing hashes before it writes); another replica synthesizes
    // those again once the dead one's lease is gone. Nothing else may cost
    // a second call.
    let allowed = texts as u64 + kills as u64 * IN_FLIGHT_PER_WORKER;
    violations.check(
        outcome.provider_calls <= allowed,
        format!(
            "provider calls ≤ {texts} texts + {kills} kills × {IN_FLIGHT_PER_WORKER} in flight = {allowed}: {} (killed {killed:?})",
            outcome.provider_calls
        ),
    );
    if std::env::var_os("TEST_LOG").is_some() {
        eprintln!("killed: {killed:#?}");
    }
    violations.assert_none(&outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_paused_past_its_heartbeat_ttl_changes_nothing_another_worker_holds() {
    // Every text distinct, so that none of the others' tasks waits for a
    // text the paused one is synthesizing.
    let (jobs, texts) = (60, 60);
    let mut fleet = Fleet::start(FleetOptions {
        workers: 3,
        latency_ms: 200,
    })
    .await;
    let victim = fleet.workers.live[0].name.clone();

    let submitting = fleet.submit(plan(jobs, texts, None), "pause", None);
    fleet.until_busy(&victim, Duration::from_secs(20)).await;
    signal(&fleet.workers.live[0], "-STOP");
    let stopped = Instant::now();
    // The victim's heartbeat goes stale 2 to 3 s into the pause (it beats
    // every second, the TTL is 3 s), and the next orphan sweep (every 2 s)
    // hands its tasks back to the queue. Calls for exactly those texts last
    // long, so that whoever takes one over still holds it when the victim
    // wakes up; every other call stays fast, so that the others are not
    // held up by their own tasks before they reach the victim's, however
    // slow the machine.
    let held: Vec<String> = ttsq_store::sqlx::query_scalar(
        "SELECT t.text FROM tasks t
          WHERE t.status = 'processing'
            AND t.worker_batch_id IN (SELECT batch FROM fleet_claims WHERE app = $1)",
    )
    .bind(&victim)
    .fetch_all(fleet.app.services.store.pool())
    .await
    .expect("claims readable");
    assert!(!held.is_empty(), "{victim} never held a task");
    fleet.fake.update(|c| {
        c.slow_texts_containing = held.clone();
        c.slow_texts_latency_ms = 7_000;
    });
    // Woken up as soon as another worker holds one of its tasks.
    let deadline = Duration::from_secs(40);
    let taken_over = loop {
        let taken_over = ttsq_store::sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM tasks t
              WHERE t.status = 'processing'
                AND t.worker_batch_id IN (SELECT batch FROM fleet_claims WHERE app <> $1)
                AND t.id IN (SELECT w.task_id FROM fleet_task_writes w
                               JOIN fleet_claims c ON c.batch = w.new_batch AND c.app = $1)",
        )
        .bind(&victim)
        .fetch_one(fleet.app.services.store.pool())
        .await
        .expect("claims readable");
        if taken_over > 0 || stopped.elapsed() > deadline {
            break taken_over;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let paused_for = stopped.elapsed();
    let history_at_wake_up = fleet.history(&victim).await;
    // Fast again for whatever the victim calls once it is woken up.
    fleet.fake.update(|c| c.slow_texts_containing.clear());
    signal(&fleet.workers.live[0], "-CONT");

    let submitted = submitting.await.expect("submitter");
    fleet.settle(submitted.accepted.len()).await;
    fleet.stop_workers();
    // A write that takes a task out of `processing` (finish, fail, requeue)
    // made by the victim over a claim it did not make.
    let stale: Vec<(Uuid, String, String, Option<String>)> = ttsq_store::sqlx::query_as(
        "SELECT w.task_id, w.old_status, w.new_status, c.app
           FROM fleet_task_writes w
           LEFT JOIN fleet_claims c ON c.batch = w.old_batch
          WHERE w.app = $1 AND w.old_status = 'processing' AND w.new_status <> 'processing'
            AND c.app IS DISTINCT FROM $1
          ORDER BY w.id",
    )
    .bind(&victim)
    .fetch_all(fleet.app.services.store.pool())
    .await
    .expect("write log readable");
    let outcome = fleet.outcome().await;
    fleet.teardown().await;

    assert!(
        taken_over > 0,
        "the case did not happen: nothing {victim} held was claimed by another worker \
         after {:?} paused ({outcome:#?})\nits tasks when it woke up:\n{}",
        paused_for,
        history_at_wake_up.join("\n")
    );
    let mut violations = common_checks(&submitted, jobs, texts, &outcome);
    violations.check(
        stale.is_empty(),
        format!(
            "{victim}, paused while {taken_over} of its tasks were taken over, wrote {} of them \
             over another worker's claim, e.g. (task, from, to, claim holder) {:?}",
            stale.len(),
            stale.iter().take(3).collect::<Vec<_>>()
        ),
    );
    violations.assert_none(&outcome);
}
