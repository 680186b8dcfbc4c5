//! The command line: what to run, at which sizes, against which services.

use std::{path::PathBuf, time::Duration};

use clap::Parser;

const ABOUT: &str = "Benchmarks ttsq on a live stack against the raw limits of its parts.";

const LONG_ABOUT: &str = "\
Benchmarks ttsq on a live stack (real RabbitMQ, Postgres and S3 server) with the
fake provider running inside this process, and measures in the same run the raw
limits ttsq is compared with. Every scenario starts its own deployment: a
database ttsq_bench_<id>, a queue prefix ttsq-bench-<id>., the API and worker
processes from the built `ttsq` binary; all are removed at the end. One Markdown
table per scenario goes to stdout; progress goes to stderr.

Baselines (always measured first):
  broker    lapin publish with confirms (pipelined) of persistent messages to a
            quorum queue, then consume + ack them (prefetch 256)
  s3        PutObject of objects the size of the fake's audio, N at once
  postgres  batched INSERT ... SELECT FROM UNNEST(...) of task-shaped rows, one
            transaction per 1,000 rows

Scenarios (--only 1,3,… picks some):
  1 throughput   20,000 unique normal jobs, zero-latency fake, 1 worker: jobs/s
                 from first submit to last terminal state; ratios to the raw S3
                 PUT rate and the raw broker rate
  2 batch        10,000 jobs through POST /v1/tts/batches (1,000 per request):
                 accepted/s; skipped when the endpoint answers 404
  3 latency      single submits (normal priority) from 64 concurrent clients:
                 p50/p99 of the 202
  4 high         high-priority submits vs calling the fake directly with the
                 same payload, one client: p50/p99 on a cache miss and a hit
  5 quota        fake limited to 50 req/s and 4 concurrent, 200 ms latency;
                 1, 2, 4 worker processes: achieved rate / quota, 429s
  6 dedupe       10,000 jobs over 10 distinct texts: provider calls
  7 memory       peak RSS (VmHWM) and sampled VmRSS of the API while a
                 100,000-job backlog is submitted and of a worker draining it
  8 scaling      fake latency 100 ms, concurrency 32: throughput with 1, 2, 4
                 workers
  9 fleet dedupe 10,000 jobs over 100 distinct texts, 4 worker processes, fake
                 latency 100 ms: provider calls and billed ledger rows (both
                 one per text: the single flight is fleet-wide), jobs/s
  10 fair share  tenant A queues a 20,000-job backlog through batches, then
                 tenant B submits one job a second for 30 s and one 200-item
                 batch; with a zero-latency fake, then a fake whose quota binds
                 (100 req/s, 8 concurrent, 50 ms): B's latency p50/p99 and A's
                 jobs/s against each alone on an idle stack, 429s
  11 ttfb        high-priority MP3 cache misses while the fake streams each
                 answer in 20 chunks over 1 s: p50/p99 time to the first audio
                 byte against the whole response
  12 long job    one 50,000-character text (MP3) as one job, the provider's
                 request limit 1,000 characters (a chunk per paragraph), fake
                 latency 100 ms and 16 concurrent; 1, then 4 workers: wall
                 time to `succeeded` against the sequential sum of the same
                 chunks sent straight to the fake, provider calls; then the
                 text with one paragraph edited (one call)
  13 open loop   single normal submits sent at a fixed rate whether or not
                 earlier ones answered (steps of 500, 1,000, 1,500/s for 10 s
                 each, --open-loop-rates, --open-loop-secs), 1 worker
                 draining: latency p50/p90/p99/max from each request's
                 scheduled send (no coordinated omission), achieved rate,
                 errors (at most 4,096 requests in flight; beyond, errors)

Cost per job (scenarios 1, 3, 4 per case, 7's drain, 13 per rate): CPU
seconds of the API, the workers, Postgres, RabbitMQ, the S3 server and this
driver from /proc (Linux; n/a elsewhere or when a service is not local), and
in the stack's database transactions, rows written, WAL bytes and statements
(pg_stat_statements where the server preloads it) with the busiest twelve.
Postgres's counters are read 10.5 s after each phase, when every backend has
flushed them.

Sizes scale with --scale; --smoke runs every scenario with tiny sizes (well
under a minute; CI runs it).";

/// Command line.
#[derive(Debug, Parser)]
#[command(name = "ttsq-bench", about = ABOUT, long_about = LONG_ABOUT)]
pub struct Args {
    /// Tiny sizes: every scenario in well under a minute (what CI runs).
    #[arg(long)]
    pub smoke: bool,
    /// Multiplies every size (jobs, requests, baseline operations).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Scenarios to run, by number (default: all).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<u8>,
    /// Skip the baselines (ratios are then left out).
    #[arg(long)]
    pub no_baselines: bool,
    /// Jobs of scenario 1 (before --scale).
    #[arg(long, default_value_t = 20_000)]
    pub throughput_jobs: usize,
    /// Jobs of scenario 2.
    #[arg(long, default_value_t = 10_000)]
    pub batch_jobs: usize,
    /// Requests of scenario 3.
    #[arg(long, default_value_t = 5_000)]
    pub latency_requests: usize,
    /// Requests per case (direct, miss, hit) of scenario 4.
    #[arg(long, default_value_t = 300)]
    pub high_requests: usize,
    /// Jobs per replica count of scenario 5.
    #[arg(long, default_value_t = 400)]
    pub quota_jobs: usize,
    /// Jobs of scenario 6.
    #[arg(long, default_value_t = 10_000)]
    pub dedupe_jobs: usize,
    /// Backlog of scenario 7.
    #[arg(long, default_value_t = 100_000)]
    pub memory_jobs: usize,
    /// Jobs per worker count of scenario 8.
    #[arg(long, default_value_t = 3_000)]
    pub scaling_jobs: usize,
    /// Jobs of scenario 9.
    #[arg(long, default_value_t = 10_000)]
    pub fleet_dedupe_jobs: usize,
    /// Tenant A's backlog in scenario 10.
    #[arg(long, default_value_t = 20_000)]
    pub fair_share_jobs: usize,
    /// Seconds during which tenant B submits a job a second in scenario 10.
    #[arg(long, default_value_t = 30)]
    pub fair_share_secs: usize,
    /// Items of tenant B's batch in scenario 10.
    #[arg(long, default_value_t = 200)]
    pub fair_share_batch: usize,
    /// Characters of the long job of scenario 12 (at most 200,000).
    #[arg(long, default_value_t = 50_000)]
    pub long_job_chars: usize,
    /// Submit rates of scenario 13's steps, per second.
    #[arg(long, value_delimiter = ',', default_value = "500,1000,1500")]
    pub open_loop_rates: Vec<u32>,
    /// Seconds of each of scenario 13's steps (before --scale, at least 1).
    #[arg(long, default_value_t = 10.0)]
    pub open_loop_secs: f64,
    /// Concurrent HTTP clients submitting jobs.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Concurrent PUTs of the S3 baseline.
    #[arg(long, default_value_t = 64)]
    pub s3_concurrency: usize,
    /// The `ttsq` binary (default: `ttsq` next to this executable).
    #[arg(long, env = "TTSQ_BENCH_TTSQ_BIN")]
    pub ttsq_bin: Option<PathBuf>,
    /// Postgres URL of a database to connect to for CREATE/DROP DATABASE.
    #[arg(
        long,
        env = "TTSQ_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: String,
    /// RabbitMQ URL.
    #[arg(
        long,
        env = "TTSQ_BENCH_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// S3 endpoint.
    #[arg(
        long,
        env = "TTSQ_S3_ENDPOINT",
        default_value = "http://127.0.0.1:8014"
    )]
    pub s3_endpoint: String,
    /// S3 access key id.
    #[arg(long, env = "TTSQ_S3_ACCESS_KEY_ID", default_value = "ttsq")]
    pub s3_access_key: String,
    /// S3 secret access key.
    #[arg(
        long,
        env = "TTSQ_S3_SECRET_ACCESS_KEY",
        default_value = "ttsq-local-secret",
        hide_default_value = true
    )]
    pub s3_secret_key: String,
    /// Keep the run's S3 bucket (its objects are deleted by default).
    #[arg(long)]
    pub keep_bucket: bool,
    /// A ttsq setting for every API and worker process, as
    /// `TTSQ_SECTION_KEY=value`, applied after the scenario's own (repeat it
    /// for several), e.g. `--set TTSQ_WORKER_SYNTHESES_PER_BATCH=64` to
    /// compare a tuning against the defaults.
    #[arg(long = "set", value_name = "TTSQ_KEY=VALUE", value_parser = parse_setting)]
    pub settings: Vec<(String, String)>,
}

/// `--set` values: a `TTSQ_` variable and its value.
fn parse_setting(raw: &str) -> Result<(String, String), String> {
    let (name, value) = raw
        .split_once('=')
        .ok_or_else(|| format!("`{raw}` is not TTSQ_KEY=VALUE"))?;
    if !name.starts_with("TTSQ_") {
        return Err(format!("`{name}` is not a ttsq setting (TTSQ_…)"));
    }
    Ok((name.to_owned(), value.to_owned()))
}

impl Args {
    /// `n` scaled (smoke: `smoke_n`), at least 1.
    pub fn size(&self, n: usize, smoke_n: usize) -> usize {
        if self.smoke {
            smoke_n
        } else {
            ((n as f64 * self.scale).round() as usize).max(1)
        }
    }

    /// How long a scenario waits for its jobs to finish: `full_secs` in a
    /// real run, two minutes in smoke mode, whose few hundred jobs take
    /// seconds — a stalled smoke run fails fast instead of eating CI's time.
    pub fn drain_limit(&self, full_secs: u64) -> Duration {
        Duration::from_secs(if self.smoke { 120 } else { full_secs })
    }

    /// Scenario 13's steps: the rates per second (zero rates dropped) and
    /// how long each lasts; in smoke mode 20 and 40 per second for 1 s.
    pub fn open_loop_steps(&self) -> (Vec<u32>, Duration) {
        if self.smoke {
            return (vec![20, 40], Duration::from_secs(1));
        }
        let rates = self
            .open_loop_rates
            .iter()
            .copied()
            .filter(|rate| *rate > 0)
            .collect();
        let secs = (self.open_loop_secs * self.scale).max(1.0);
        (rates, Duration::from_secs_f64(secs))
    }

    /// Whether scenario `n` runs.
    pub fn wants(&self, n: u8) -> bool {
        self.only.is_empty() || self.only.contains(&n)
    }
}
