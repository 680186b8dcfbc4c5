//! The chaos suite: a few thousand jobs through the API while something
//! breaks and is repaired, then the invariants that must hold whatever broke:
//!
//! - every accepted task (every `202`) is terminal, and so is every task in
//!   the database: `succeeded + failed + cancelled = tasks`;
//! - one ledger row per terminal task, never two for one task;
//! - the provider produced audio at most once per distinct text (plus, when
//!   a worker is killed, what it held in flight), however often jobs retried.
//!
//! Outages of Postgres, RabbitMQ and S3 come two ways: a cut of this test's
//! own links to them (`ttsq_testkit::link`: the network fails, the server
//! lives on), and for Postgres and RabbitMQ a real restart of the shared
//! server (`ttsq_testkit::restart`: every connection closed by the server,
//! nothing kept but what it persisted). Restarts need root and stop the
//! servers every test uses, so each case of this binary runs alone
//! (`.config/nextest.toml`). Workers are `ttsq worker` child processes. The
//! number of jobs per case is `TTSQ_CHAOS_JOBS` (default 2000).

use std::{
    collections::HashSet,
    process::Child,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use serde_json::{Value, json};
use ttsq_fake_provider::{FakeConfig, FakeProvider};
use ttsq_testkit::{FakeRoutes, TestApp, TestOptions, signal_and_wait};
use uuid::Uuid;

const KEY: &str = "sk-chaos-test-key-0123456789";

/// The longest any case may take to settle after its outage.
const SETTLE_WITHIN: Duration = Duration::from_secs(180);

fn jobs_per_case() -> usize {
    std::env::var("TTSQ_CHAOS_JOBS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000)
}

struct Chaos {
    app: TestApp,
    fake: FakeProvider,
    workers: Vec<Child>,
}

impl Chaos {
    /// The API in process, `workers` worker processes, every dialect routed
    /// to the fake (OpenAI wire format, a few milliseconds per request).
    async fn start(workers: usize) -> Self {
        let mut config = FakeConfig::default();
        config.keys.openai = Some(KEY.to_owned());
        config.latency.fixed_ms = 2;
        config.latency.jitter_ms = 3;
        config.voices.clear();
        let fake = FakeProvider::start(config)
            .await
            .expect("fake provider starts");
        let config_toml = FakeRoutes::new(fake.base_url())
            .with(r#"model = "tts-1""#)
            .with("price_per_1k_chars = 15.0")
            .with("quota = { max_concurrent = 32 }")
            .toml();
        let app = TestApp::spawn_with(TestOptions {
            worker: false,
            env: vec![
                ("TTSQ_PROVIDERS_FAKE_API_KEY".into(), KEY.into()),
                ("TTSQ_QUOTA_HEARTBEAT_SECS".into(), "1".into()),
                ("TTSQ_BREAKER_COOLDOWN_SECS".into(), "2".into()),
                // Back-off long enough to outlast the longest outage below.
                ("TTSQ_QUEUE_RETRY_DELAYS_SECS".into(), "1,2,4,8,16".into()),
                ("TTSQ_QUEUE_PREFETCH".into(), "128".into()),
                ("TTSQ_WORKER_STORAGE_RETRY_SECS".into(), "60".into()),
            ],
            config_toml: Some(config_toml),
            faulty_links: true,
        })
        .await;
        let mut chaos = Self {
            app,
            fake,
            workers: Vec::new(),
        };
        for _ in 0..workers {
            chaos.spawn_worker();
        }
        chaos
    }

    fn spawn_worker(&mut self) {
        let child = self
            .app
            .worker_command(env!("CARGO_BIN_EXE_ttsq"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("ttsq worker starts");
        self.workers.push(child);
    }

    fn links(&self) -> &ttsq_testkit::link::Links {
        self.app.links.as_ref().expect("started with faulty links")
    }

    /// Submits `count` distinct jobs, 32 at a time, in the background;
    /// returns the ids that were accepted (`202`) and a progress counter.
    fn submit(
        &self,
        count: usize,
        case: &str,
    ) -> (tokio::task::JoinHandle<Vec<Uuid>>, Arc<AtomicUsize>) {
        self.submit_paced(count, case, None)
    }

    /// [`Chaos::submit`], at most `per_second` submissions a second when
    /// given: spreads the submissions over a known time, so that an outage
    /// started a little after the first surely falls while submitting.
    fn submit_paced(
        &self,
        count: usize,
        case: &str,
        per_second: Option<f64>,
    ) -> (tokio::task::JoinHandle<Vec<Uuid>>, Arc<AtomicUsize>) {
        let http = self.app.http.clone();
        let url = format!("{}/v1/tts/jobs", self.app.base_url);
        let key = self.app.api_key.clone();
        let case = case.to_owned();
        let sent = Arc::new(AtomicUsize::new(0));
        let progress = Arc::clone(&sent);
        let task = tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            stream::iter(0..count)
                .map(|i| {
                    let (http, url, key, case, sent) = (
                        http.clone(),
                        url.clone(),
                        key.clone(),
                        case.clone(),
                        Arc::clone(&sent),
                    );
                    async move {
                        if let Some(rate) = per_second {
                            let due = start + Duration::from_secs_f64(i as f64 / rate);
                            tokio::time::sleep_until(due).await;
                        }
                        let body = json!({
                            "text": format!("Chaos {case}: sentence number {i}."),
                            "dialect": "en-gb", "voice": "rachel", "format": "wav"
                        });
                        let response = http.post(&url).bearer_auth(&key).json(&body).send().await;
                        sent.fetch_add(1, Ordering::Relaxed);
                        let response = response.ok()?;
                        if response.status() != 202 {
                            return None;
                        }
                        let task: Value = response.json().await.ok()?;
                        task["task_id"].as_str()?.parse().ok()
                    }
                })
                .buffer_unordered(32)
                .filter_map(|id: Option<Uuid>| async move { id })
                .collect()
                .await
        });
        (task, progress)
    }

    /// Tasks terminal so far (through the test's own link to Postgres).
    async fn terminal(&self) -> i64 {
        ttsq_store::sqlx::query_scalar(
            "SELECT count(*) FROM tasks WHERE status IN ('succeeded', 'failed', 'cancelled')",
        )
        .fetch_one(self.app.services.store.pool())
        .await
        .unwrap_or(0)
    }

    /// Waits until at least `count` tasks are terminal.
    async fn until_terminal(&self, count: usize) {
        let deadline = Instant::now() + SETTLE_WITHIN;
        while self.terminal().await < i64::try_from(count).unwrap_or(i64::MAX) {
            assert!(
                Instant::now() < deadline,
                "stuck below {count} terminal tasks"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for every task to be terminal, then checks the invariants.
    /// `lost_in_flight` is how many syntheses a killed worker may have paid
    /// for without storing them.
    async fn settle_and_check(mut self, accepted: &[Uuid], lost_in_flight: u64) -> Outcome {
        let app = &self.app;
        let deadline = Instant::now() + SETTLE_WITHIN;
        loop {
            let open = app
                .scalar("SELECT count(*) FROM tasks WHERE status IN ('queued', 'processing')")
                .await;
            if open == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{open} tasks still open {SETTLE_WITHIN:?} after the repair"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let accepted_set: HashSet<Uuid> = accepted.iter().copied().collect();
        assert_eq!(
            accepted_set.len(),
            accepted.len(),
            "a task id was handed out twice"
        );
        let ids: Vec<Uuid> = accepted.to_vec();
        let terminal_accepted: i64 = ttsq_store::sqlx::query_scalar(
            "SELECT count(*) FROM tasks WHERE id = ANY($1)
                AND status IN ('succeeded', 'failed', 'cancelled')",
        )
        .bind(&ids)
        .fetch_one(app.services.store.pool())
        .await
        .expect("count accepted tasks");
        assert_eq!(
            terminal_accepted,
            i64::try_from(accepted.len()).expect("small"),
            "every accepted task exists and is terminal"
        );

        let tasks = app.scalar("SELECT count(*) FROM tasks").await;
        let succeeded = app
            .scalar("SELECT count(*) FROM tasks WHERE status = 'succeeded'")
            .await;
        let failed = app
            .scalar("SELECT count(*) FROM tasks WHERE status = 'failed'")
            .await;
        let cancelled = app
            .scalar("SELECT count(*) FROM tasks WHERE status = 'cancelled'")
            .await;
        assert_eq!(
            succeeded + failed + cancelled,
            tasks,
            "succeeded + failed + cancelled = tasks"
        );

        let ledger = app.scalar("SELECT count(*) FROM usage_ledger").await;
        let ledger_tasks = app
            .scalar("SELECT count(DISTINCT task_id) FROM usage_ledger")
            .await;
        assert_eq!(ledger, tasks, "one ledger row per terminal task");
        assert_eq!(ledger_tasks, ledger, "no task billed twice");
        let billed_without_task = app
            .scalar(
                "SELECT count(*) FROM usage_ledger l WHERE NOT EXISTS
                   (SELECT 1 FROM tasks t WHERE t.id = l.task_id AND t.status = l.status)",
            )
            .await;
        assert_eq!(
            billed_without_task, 0,
            "every ledger row matches its task's end state"
        );

        let distinct = app
            .scalar("SELECT count(DISTINCT content_hash) FROM tasks")
            .await;
        let stats = self.fake.stats();
        assert!(
            stats.audio_responses <= u64::try_from(distinct).expect("count") + lost_in_flight,
            "provider produced audio {} times for {distinct} distinct texts (+{lost_in_flight} allowed)",
            stats.audio_responses
        );
        let failures: Vec<(Option<String>, Option<String>, i32)> = ttsq_store::sqlx::query_as(
            "SELECT error_code, error_message, attempts FROM tasks WHERE status = 'failed' LIMIT 5",
        )
        .fetch_all(app.services.store.pool())
        .await
        .expect("failures readable");
        let outcome = Outcome {
            failures,
            succeeded,
            failed,
            provider_calls: stats.synthesis_requests,
            audio_responses: stats.audio_responses,
        };
        for mut worker in self.workers.drain(..) {
            signal_and_wait(&mut worker, "-TERM");
        }
        outcome
    }
}

#[derive(Debug)]
struct Outcome {
    /// A few failed tasks' error code, message and attempts, for the report.
    #[expect(dead_code, reason = "read through Debug in assertion messages")]
    failures: Vec<(Option<String>, Option<String>, i32)>,
    succeeded: i64,
    failed: i64,
    provider_calls: u64,
    audio_responses: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_with_sigkill_mid_batch_is_replaced_and_nothing_is_lost() {
    let n = jobs_per_case();
    let mut chaos = Chaos::start(2).await;
    let (submitting, _) = chaos.submit(n, "kill");
    chaos.until_terminal(n / 4).await;

    let mut victim = chaos.workers.remove(0);
    signal_and_wait(&mut victim, "-KILL");
    chaos.spawn_worker();

    let accepted = submitting.await.expect("submitter");
    assert_eq!(accepted.len(), n, "every submission accepted");
    // What the killed worker held: its prefetch, at most.
    let outcome = chaos.settle_and_check(&accepted, 128).await;
    assert_eq!(outcome.succeeded, n as i64, "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_lost_while_submitting_and_consuming_loses_nothing() {
    let n = jobs_per_case();
    let chaos = Chaos::start(2).await;
    let (submitting, sent) = chaos.submit(n, "rabbitmq");
    while sent.load(Ordering::Relaxed) < n / 5 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    chaos.links().rabbitmq.outage(Duration::from_secs(5)).await;

    let accepted = submitting.await.expect("submitter");
    // The outbox keeps accepting while the broker is away.
    assert_eq!(accepted.len(), n, "every submission accepted");
    let outcome = chaos.settle_and_check(&accepted, 0).await;
    assert_eq!(outcome.succeeded, n as i64, "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lost_while_workers_finish_batches_loses_nothing() {
    let n = jobs_per_case();
    let chaos = Chaos::start(2).await;
    let (submitting, _) = chaos.submit(n, "postgres");
    let accepted = submitting.await.expect("submitter");
    assert_eq!(accepted.len(), n);
    chaos.until_terminal(n / 3).await;

    chaos.links().postgres.outage(Duration::from_secs(5)).await;

    let outcome = chaos.settle_and_check(&accepted, 0).await;
    assert_eq!(outcome.succeeded, n as i64, "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restarted_while_submitting_and_consuming_loses_nothing() {
    let n = jobs_per_case();
    let chaos = Chaos::start(2).await;
    // Paced to last about 7 s, so the restart (~10 s) falls mid-submission.
    let rate = n as f64 / 7.0;
    let (submitting, sent) = chaos.submit_paced(n, "rabbitmq-restart", Some(rate));
    while sent.load(Ordering::Relaxed) < n / 5 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The real server stops: every connection is closed by the broker, and
    // only what it persisted (the quorum queues' messages) comes back.
    restart(|| ttsq_testkit::restart::rabbitmq(Duration::from_secs(3))).await;

    let accepted = submitting.await.expect("submitter");
    assert_eq!(accepted.len(), n, "every submission accepted");
    let outcome = chaos.settle_and_check(&accepted, 0).await;
    assert_eq!(outcome.succeeded, n as i64, "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_while_workers_finish_batches_loses_nothing() {
    let n = jobs_per_case();
    let chaos = Chaos::start(2).await;
    let (submitting, _) = chaos.submit(n, "postgres-restart");
    let accepted = submitting.await.expect("submitter");
    assert_eq!(accepted.len(), n);
    chaos.until_terminal(n / 3).await;
    assert!(
        chaos.terminal().await < n as i64,
        "workers still busy when the server goes down"
    );
    // A fast shutdown rolls back the batches' open transactions and closes
    // every connection, the test's own included.
    restart(|| ttsq_testkit::restart::postgres(Duration::from_secs(3))).await;

    let outcome = chaos.settle_and_check(&accepted, 0).await;
    assert_eq!(outcome.succeeded, n as i64, "{outcome:?}");
}

/// Runs a blocking server restart off the runtime, failing the test if it
/// could not be carried out.
async fn restart(
    how: impl FnOnce() -> Result<(), ttsq_testkit::restart::RestartError> + Send + 'static,
) {
    tokio::task::spawn_blocking(how)
        .await
        .expect("restart thread")
        .expect("the server restarts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_unreachable_for_ten_seconds_loses_nothing_and_synthesizes_nothing_twice() {
    let n = jobs_per_case();
    let chaos = Chaos::start(2).await;
    let (submitting, _) = chaos.submit(n, "s3");
    let accepted = submitting.await.expect("submitter");
    assert_eq!(accepted.len(), n);
    chaos.until_terminal(n / 5).await;

    chaos.links().s3.outage(Duration::from_secs(10)).await;

    let outcome = chaos.settle_and_check(&accepted, 0).await;
    assert_eq!(outcome.succeeded, n as i64, "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_answering_503_for_twenty_seconds_delays_jobs_but_fails_none() {
    let n = jobs_per_case();
    let chaos = Chaos::start(2).await;
    let (submitting, _) = chaos.submit(n, "provider");
    chaos.until_terminal(n / 5).await;

    chaos.fake.update(|c| c.down = true);
    // The outage itself.
    tokio::time::sleep(Duration::from_secs(20)).await;
    chaos.fake.update(|c| c.down = false);

    let accepted = submitting.await.expect("submitter");
    assert_eq!(accepted.len(), n);
    let outcome = chaos.settle_and_check(&accepted, 0).await;
    // Retries back off for 31 s in all: longer than the outage.
    assert_eq!(outcome.failed, 0, "{outcome:?}");
    assert!(
        outcome.provider_calls > outcome.audio_responses,
        "the outage was felt: {outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_published_mid_run_go_to_the_dlq_and_jobs_carry_on() {
    let n = jobs_per_case();
    let chaos = Chaos::start(2).await;
    let (submitting, sent) = chaos.submit(n, "poison");
    while sent.load(Ordering::Relaxed) < n / 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let broker = &chaos.app.services.broker;
    broker
        .publish_raw(b"\xff\xfe not json at all")
        .await
        .expect("publish");
    broker
        .publish_raw(br#"{"v":99,"task_id":"00000000-0000-0000-0000-000000000000"}"#)
        .await
        .expect("publish");

    let accepted = submitting.await.expect("submitter");
    assert_eq!(accepted.len(), n);
    let deadline = Instant::now() + Duration::from_secs(30);
    let letters = loop {
        let letters = broker.dlq_list(10).await.expect("DLQ readable");
        if letters.len() >= 2 || Instant::now() > deadline {
            break letters;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut reasons: Vec<_> = letters.iter().filter_map(|l| l.reason.clone()).collect();
    reasons.sort();
    assert_eq!(reasons, ["malformed", "unsupported_version"]);
    let outcome = chaos.settle_and_check(&accepted, 0).await;
    assert_eq!(outcome.succeeded, n as i64, "{outcome:?}");
}
