//! Scenario 10, fair share: tenant A's backlog against tenant B's trickle
//! of single jobs and one batch, with a zero-latency fake and with a fake
//! whose quota binds. B's latency and A's throughput are compared with the
//! same load alone on an idle stack; every run has a fresh stack and fake.

use std::time::Duration;

use anyhow::Context as _;
use ttsq_fake_provider::FakeProvider;

use super::{
    checks::Checks,
    fake_stack::{fake_config, start},
};
use crate::{
    cli::Args,
    env::Env,
    load::{self, epoch_now, run_tag, text},
    report::{Table, f1, int, p50_p99, pct, per_sec},
    stack::Stack,
};

/// The tenant with the backlog.
const TENANT_A: &str = "tenant-a";
/// The tenant with the light load.
const TENANT_B: &str = "tenant-b";
/// Concurrent requests submitting A's batches (as in scenario 2).
const BATCH_CLIENTS: usize = 4;
/// The quota-bound fake's rate limit, in requests per second.
const QUOTA_RPS: u32 = 100;
/// The quota-bound fake's concurrency limit.
const QUOTA_CONCURRENT: u32 = 8;
/// The quota-bound fake's latency per call, in milliseconds.
const QUOTA_LATENCY_MS: u64 = 50;

/// The provider a mode's runs call.
#[derive(Debug, Clone, Copy)]
enum Provider {
    /// The fake answers at once and has no quota.
    Instant,
    /// The fake takes [`QUOTA_LATENCY_MS`] per call and answers 429 past
    /// [`QUOTA_RPS`] or [`QUOTA_CONCURRENT`]; ttsq is given the same quota.
    QuotaBound,
}

impl Provider {
    fn title(self) -> String {
        match self {
            Self::Instant => "zero-latency fake".to_owned(),
            Self::QuotaBound => format!(
                "fake quota {QUOTA_RPS} req/s and {QUOTA_CONCURRENT} concurrent (ttsq's quota the same), {QUOTA_LATENCY_MS} ms per call"
            ),
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Self::Instant => "instant",
            Self::QuotaBound => "quota",
        }
    }

    /// ttsq's quota of the fake provider.
    fn quota(self) -> String {
        match self {
            Self::Instant => String::new(),
            Self::QuotaBound => {
                format!("requests_per_second = {QUOTA_RPS}, max_concurrent = {QUOTA_CONCURRENT}")
            }
        }
    }

    async fn start_fake(self) -> anyhow::Result<FakeProvider> {
        let fake = FakeProvider::start(fake_config()).await?;
        if let Self::QuotaBound = self {
            fake.update(|c| {
                c.latency.fixed_ms = QUOTA_LATENCY_MS;
                c.quota.requests_per_second = Some(QUOTA_RPS);
                c.quota.max_concurrent = Some(QUOTA_CONCURRENT);
            });
        }
        Ok(fake)
    }
}

/// Which tenants load a stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    /// B's pattern on an idle stack.
    BAlone,
    /// A's backlog on an idle stack.
    AAlone,
    /// A's backlog, then B's pattern as soon as the backlog is queued.
    Together,
}

impl Run {
    fn has_a(self) -> bool {
        self != Self::BAlone
    }

    fn has_b(self) -> bool {
        self != Self::AAlone
    }

    fn slug(self) -> &'static str {
        match self {
            Self::BAlone => "b-alone",
            Self::AAlone => "a-alone",
            Self::Together => "together",
        }
    }
}

/// The loads of the scenario.
struct Sizes {
    /// Jobs of A's backlog.
    backlog: usize,
    /// Seconds during which B submits one single job per second.
    b_secs: usize,
    /// Items of B's one batch.
    b_batch: usize,
}

impl Sizes {
    fn of(args: &Args) -> Self {
        Self {
            backlog: args.size(args.fair_share_jobs, 300),
            b_secs: args.size(args.fair_share_secs, 3),
            b_batch: args.size(args.fair_share_batch, 20),
        }
    }
}

/// Jobs the scenario stores audio for: each mode runs A's backlog twice and
/// B's pattern twice.
pub(super) fn jobs(args: &Args) -> usize {
    let sizes = Sizes::of(args);
    4 * (sizes.backlog + sizes.b_secs + sizes.b_batch)
}

/// What one run measured.
#[derive(Debug, Default)]
struct Figures {
    /// finished_at − created_at of B's single jobs.
    b_singles: Vec<Duration>,
    /// finished_at − created_at of the items of B's batch.
    b_items: Vec<Duration>,
    /// A's jobs per second from its first submit to its last terminal task.
    a_per_sec: Option<f64>,
    /// 429s the fake answered.
    rate_limited: u64,
    /// Jobs submitted.
    jobs: usize,
    /// Jobs that succeeded.
    succeeded: i64,
    /// The worker's `worker.batch_window_ms`.
    batch_window_ms: f64,
}

/// Runs both modes, three fresh stacks each, and prints a table per mode.
pub(super) async fn run(args: &Args, env: &Env, checks: &mut Checks) -> anyhow::Result<()> {
    let sizes = Sizes::of(args);
    for provider in [Provider::Instant, Provider::QuotaBound] {
        let b_alone = measure(args, env, provider, Run::BAlone, &sizes).await?;
        let a_alone = measure(args, env, provider, Run::AAlone, &sizes).await?;
        let together = measure(args, env, provider, Run::Together, &sizes).await?;
        report(provider, &sizes, [b_alone, a_alone, together], checks);
    }
    Ok(())
}

async fn measure(
    args: &Args,
    env: &Env,
    provider: Provider,
    run: Run,
    sizes: &Sizes,
) -> anyhow::Result<Figures> {
    let name = format!("fair-{}-{}", provider.slug(), run.slug());
    let fake = provider.start_fake().await?;
    let mut stack = start(env, &name, &fake, &provider.quota(), &[]).await?;
    let result = load_and_drain(args, &mut stack, run, sizes).await;
    let rate_limited = fake.stats().rate_limited;
    stack.teardown().await;
    fake.shutdown().await;
    Ok(Figures {
        rate_limited,
        ..result?
    })
}

async fn load_and_drain(
    args: &Args,
    stack: &mut Stack,
    run: Run,
    sizes: &Sizes,
) -> anyhow::Result<Figures> {
    stack.start_workers(1).await?;
    let batch_window_ms = stack.settings()?.worker.batch_window_ms as f64;
    let a_key = run
        .has_a()
        .then(|| stack.create_tenant(TENANT_A, &[]))
        .transpose()?;
    let b_key = run
        .has_b()
        .then(|| stack.create_tenant(TENANT_B, &[]))
        .transpose()?;
    let http = load::client(BATCH_CLIENTS)?;
    let tag = run_tag();
    let mut jobs = 0;
    let first_submit = epoch_now();
    if let Some(key) = &a_key {
        eprintln!("    A submits a backlog of {}", sizes.backlog);
        let texts = (0..sizes.backlog).map(|i| text(&format!("{tag}a"), i));
        load::submit_batches(&http, &stack.base_url, key, texts.collect(), BATCH_CLIENTS).await?;
        jobs += sizes.backlog;
    }
    if let Some(key) = &b_key {
        eprintln!(
            "    B submits a batch of {} and a job a second for {} s",
            sizes.b_batch, sizes.b_secs
        );
        tenant_b_load(&http, stack, key, &tag, sizes).await?;
        jobs += sizes.b_secs + sizes.b_batch;
    }
    let succeeded = stack
        .wait_terminal(jobs as i64, args.drain_limit(1_800))
        .await?;
    let a_per_sec = match a_key {
        Some(_) => {
            let last = last_finished_epoch(stack, TENANT_A).await?;
            Some(per_sec(sizes.backlog as f64, last - first_submit))
        }
        None => None,
    };
    let (b_singles, b_items) = latencies(stack, TENANT_B).await?;
    Ok(Figures {
        b_singles,
        b_items,
        a_per_sec,
        rate_limited: 0,
        jobs,
        succeeded,
        batch_window_ms,
    })
}

/// B's pattern: one batch at the start, and one single job a second.
async fn tenant_b_load(
    http: &reqwest::Client,
    stack: &Stack,
    key: &str,
    tag: &str,
    sizes: &Sizes,
) -> anyhow::Result<()> {
    let texts = (0..sizes.b_batch).map(|i| text(&format!("{tag}c"), i));
    let batch = load::submit_batches(http, &stack.base_url, key, texts.collect(), 1);
    let singles = async {
        let mut every_second = tokio::time::interval(Duration::from_secs(1));
        for i in 0..sizes.b_secs {
            every_second.tick().await;
            let single = [text(&format!("{tag}b"), i)];
            load::submit_jobs(http, &stack.base_url, key, single, 1).await?;
        }
        anyhow::Ok(())
    };
    tokio::try_join!(batch, singles)?;
    Ok(())
}

/// Seconds since the epoch of the tenant's last `finished_at`.
async fn last_finished_epoch(stack: &Stack, tenant: &str) -> anyhow::Result<f64> {
    let value: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM max(t.finished_at))::float8
           FROM tasks t JOIN tenants n ON n.id = t.tenant_id
          WHERE n.name = $1",
    )
    .bind(tenant)
    .fetch_one(&stack.db)
    .await?;
    value.with_context(|| format!("no task of {tenant} finished"))
}

/// finished_at − created_at of the tenant's finished tasks: (single jobs,
/// batch items).
async fn latencies(stack: &Stack, tenant: &str) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let rows: Vec<(bool, f64)> = sqlx::query_as(
        "SELECT t.batch_id IS NOT NULL,
                extract(epoch FROM t.finished_at - t.created_at)::float8
           FROM tasks t JOIN tenants n ON n.id = t.tenant_id
          WHERE n.name = $1 AND t.finished_at IS NOT NULL",
    )
    .bind(tenant)
    .fetch_all(&stack.db)
    .await?;
    let (items, singles): (Vec<_>, Vec<_>) = rows.into_iter().partition(|(item, _)| *item);
    let durations = |rows: Vec<(bool, f64)>| {
        rows.into_iter()
            .map(|(_, secs)| Duration::from_secs_f64(secs.max(0.0)))
            .collect()
    };
    Ok((durations(singles), durations(items)))
}

/// `together / alone` as a factor.
fn factor(together: f64, alone: f64) -> String {
    if alone > 0.0 {
        format!("{:.1}×", together / alone)
    } else {
        "n/a".to_owned()
    }
}

fn report(provider: Provider, sizes: &Sizes, runs: [Figures; 3], checks: &mut Checks) {
    let [mut b_alone, a_alone, mut together] = runs;
    let mut table = Table::new(
        format!(
            "10. Fair share, {}: A's backlog of {} jobs (batches of {}), then B one job a second for {} s and one {}-item batch; 1 worker",
            provider.title(),
            int(sizes.backlog as f64),
            int(load::BATCH_ITEMS as f64),
            sizes.b_secs,
            sizes.b_batch,
        ),
        &["measure", "alone", "together", "together ÷ alone"],
    );
    let singles = (
        p50_p99(&mut b_alone.b_singles),
        p50_p99(&mut together.b_singles),
    );
    let items = (
        p50_p99(&mut b_alone.b_items),
        p50_p99(&mut together.b_items),
    );
    for (label, alone, with_a) in [
        ("B single jobs p50, ms", singles.0.0, singles.1.0),
        ("**B single jobs p99, ms**", singles.0.1, singles.1.1),
        ("B batch items p50, ms", items.0.0, items.1.0),
        ("B batch items p99, ms", items.0.1, items.1.1),
    ] {
        table.row(vec![
            label.into(),
            f1(alone),
            f1(with_a),
            factor(with_a, alone),
        ]);
    }
    let a_alone_rate = a_alone.a_per_sec.unwrap_or_default();
    let a_together_rate = together.a_per_sec.unwrap_or_default();
    table.row(vec![
        "**A jobs/s, first submit → last terminal**".into(),
        int(a_alone_rate),
        int(a_together_rate),
        pct(a_together_rate, a_alone_rate),
    ]);
    table.row(vec![
        "429s from the fake".into(),
        format!(
            "{} (B) / {} (A)",
            b_alone.rate_limited, a_alone.rate_limited
        ),
        together.rate_limited.to_string(),
        "—".into(),
    ]);
    let runs = [&b_alone, &a_alone, &together];
    let jobs: usize = runs.iter().map(|r| r.jobs).sum();
    let succeeded: i64 = runs.iter().map(|r| r.succeeded).sum();
    table.row(vec![
        "jobs succeeded".into(),
        format!(
            "{} (B) / {} (A)",
            int(b_alone.succeeded as f64),
            int(a_alone.succeeded as f64)
        ),
        int(together.succeeded as f64),
        "—".into(),
    ]);
    let window = together.batch_window_ms;
    let p99_limit = 2.0 * singles.0.1 + window;
    table.note(format!(
        "Targets: B's single-job p99 together ≤ 2 × alone + one batch window ({window:.0} ms); A's jobs/s together ≥ 90 % of alone; no 429. Latency: finished_at − created_at of each of B's tasks."
    ));
    checks.check(
        &mut table,
        succeeded == jobs as i64,
        format!("all {jobs} jobs of the three runs succeeded ({succeeded})"),
    );
    checks.target(
        &mut table,
        singles.1.1 <= p99_limit,
        format!(
            "B's single-job p99 together {} ms ≤ 2 × {} + {window:.0} = {} ms",
            f1(singles.1.1),
            f1(singles.0.1),
            f1(p99_limit)
        ),
    );
    checks.target(
        &mut table,
        a_together_rate >= 0.9 * a_alone_rate,
        format!(
            "A's jobs/s together {} ≥ 90 % of alone {}",
            int(a_together_rate),
            int(a_alone_rate)
        ),
    );
    let rate_limited: u64 = runs.iter().map(|r| r.rate_limited).sum();
    checks.target(
        &mut table,
        rate_limited == 0,
        format!("no 429 from the fake in the three runs ({rate_limited})"),
    );
    table.print();
}
