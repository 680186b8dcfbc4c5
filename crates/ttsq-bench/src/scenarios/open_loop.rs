//! Scenario 13, open-loop submits: single normal `POST /v1/tts/jobs` sent
//! on a fixed schedule (a rate per step) whether or not earlier ones have
//! answered, with one worker draining. Each request's latency runs from the
//! time it was *scheduled*, so a slow answer is never hidden by the sender
//! waiting for it (no coordinated omission). Every step runs on the same
//! stack and starts once the previous step's jobs are all terminal; each is
//! metered for CPU and Postgres per job.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{sync::Semaphore, task::JoinSet};
use ttsq_fake_provider::FakeProvider;

use super::{
    checks::Checks,
    fake_stack::{fake_config, start},
};
use crate::{
    cli::Args,
    cost::{Cost, Meter, Part},
    env::Env,
    load::{self, run_tag, text},
    report::{Table, f1, int, per_sec, quantile_ms},
    stack::Stack,
};

/// Requests in flight at most; a send due beyond it is not made and counts
/// as an error.
const IN_FLIGHT_CAP: usize = 4_096;
/// The rate whose p99 the target is about.
const TARGET_RATE: u32 = 1_000;
/// The target p99 at [`TARGET_RATE`], ms.
const TARGET_P99_MS: f64 = 20.0;
/// Submits that open connections and warm the API's pools first.
const WARM_UP: usize = 64;

/// Jobs of the scenario, for the disk check.
pub(super) fn jobs(args: &Args) -> usize {
    let (rates, step) = args.open_loop_steps();
    rates
        .iter()
        .map(|rate| (f64::from(*rate) * step.as_secs_f64()).round() as usize)
        .sum::<usize>()
        + WARM_UP
}

/// What one step did.
struct Step {
    rate: u32,
    sent: Sent,
    succeeded: i64,
    calls: u64,
    cost: Cost,
}

/// The answers of one step's schedule.
struct Sent {
    /// Sends the schedule held.
    scheduled: usize,
    /// Answered 202.
    accepted: usize,
    /// Not sent (over the in-flight cap), failed, or answered otherwise.
    errors: usize,
    /// The first error, to show.
    first_error: Option<String>,
    /// Scheduled send → answer of every accepted request, sorted.
    latencies: Vec<Duration>,
    /// Scheduled send → actual send of every request made, sorted.
    lags: Vec<Duration>,
    /// First scheduled send → last answer.
    elapsed: Duration,
}

/// Runs the steps on one stack and prints the scenario's table, then each
/// step's cost tables.
pub(super) async fn run(args: &Args, env: &Env, checks: &mut Checks) -> anyhow::Result<()> {
    let (rates, step) = args.open_loop_steps();
    anyhow::ensure!(!rates.is_empty(), "no open-loop rate above zero");
    let fake = FakeProvider::start(fake_config()).await?;
    let mut stack = start(env, "open-loop", &fake, "", &[]).await?;
    let result = async {
        stack.start_workers(1).await?;
        steps(args, &stack, &fake, &rates, step).await
    }
    .await;
    stack.teardown().await;
    fake.shutdown().await;
    let steps = result?;

    let mut table = Table::new(
        format!(
            "13. Open-loop submits: single normal jobs at a fixed rate, {:.0} s per step, 1 worker draining (latency from the scheduled send)",
            step.as_secs_f64()
        ),
        &[
            "target/s",
            "achieved/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "errors",
            "send lag p99 ms",
            "CPU ms/job api",
            "CPU ms/job worker",
            "CPU ms/job postgres",
            "statements/job",
            "transactions/job",
        ],
    );
    let na = |value: Option<f64>, decimals: usize| {
        value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.decimals$}"))
    };
    for s in &steps {
        let latency = |q: f64| f1(quantile_ms(&s.sent.latencies, q));
        table.row(vec![
            int(f64::from(s.rate)),
            int(per_sec(
                s.sent.accepted as f64,
                s.sent.elapsed.as_secs_f64(),
            )),
            latency(0.50),
            latency(0.90),
            latency(0.99),
            latency(1.0),
            int(s.sent.errors as f64),
            f1(quantile_ms(&s.sent.lags, 0.99)),
            na(s.cost.cpu_ms_per_job(Part::Api), 3),
            na(s.cost.cpu_ms_per_job(Part::Workers), 3),
            na(s.cost.cpu_ms_per_job(Part::Postgres), 3),
            na(s.cost.statements_per_job(), 2),
            na(s.cost.transactions_per_job(), 2),
        ]);
    }
    table.note(format!(
        "Each step sends rate × {:.0} s submits on a fixed schedule, each from its own task, whether or not earlier ones answered \
         (at most {} in flight); latency is scheduled send → 202, so the driver's own lateness (send lag) is in it. \
         Achieved/s: 202s ÷ first scheduled send → last answer. CPU and statements per job: the step from its first send \
         until its jobs are all terminal (the tables below).",
        step.as_secs_f64(),
        int(IN_FLIGHT_CAP as f64)
    ));
    table.note(target_note(&steps));
    for s in &steps {
        let expected = s.sent.scheduled;
        checks.check(
            &mut table,
            s.sent.accepted == expected
                && s.sent.errors == 0
                && s.succeeded == expected as i64
                && s.calls == expected as u64,
            format!(
                "{}/s: {} of {expected} submits answered 202 ({} errors{}), {} succeeded, {} provider calls",
                s.rate,
                s.sent.accepted,
                s.sent.errors,
                s.sent
                    .first_error
                    .as_ref()
                    .map(|e| format!(", first: {e}"))
                    .unwrap_or_default(),
                s.succeeded,
                s.calls
            ),
        );
    }
    table.print();
    for s in &steps {
        s.cost.print(&format!(
            "13. Open-loop submits at {}/s",
            int(f64::from(s.rate))
        ));
    }
    Ok(())
}

/// "Target: p99 ≤ 20 ms at 1,000/s — met/missed", or the step closest to
/// it when no step ran at 1,000/s (smoke mode). A target, not a check.
fn target_note(steps: &[Step]) -> String {
    let target = format!(
        "Target: p99 ≤ {TARGET_P99_MS:.0} ms at {}/s",
        int(f64::from(TARGET_RATE))
    );
    let judged = |s: &Step| {
        let p99 = quantile_ms(&s.sent.latencies, 0.99);
        let outcome = if p99 <= TARGET_P99_MS {
            "met"
        } else {
            "missed"
        };
        (outcome, p99)
    };
    match steps.iter().find(|s| s.rate == TARGET_RATE) {
        Some(s) => {
            let (outcome, p99) = judged(s);
            format!("{target}: {outcome} (p99 {p99:.1} ms).")
        }
        None => match steps.iter().min_by_key(|s| s.rate.abs_diff(TARGET_RATE)) {
            Some(s) => {
                let (outcome, p99) = judged(s);
                format!(
                    "{target}: no step at that rate; at {}/s it would be {outcome} (p99 {p99:.1} ms).",
                    int(f64::from(s.rate))
                )
            }
            None => format!("{target}: no step ran."),
        },
    }
}

async fn steps(
    args: &Args,
    stack: &Stack,
    fake: &FakeProvider,
    rates: &[u32],
    step: Duration,
) -> anyhow::Result<Vec<Step>> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(IN_FLIGHT_CAP)
        .timeout(Duration::from_secs(30))
        .build()?;
    let run = run_tag();
    // Warm-up: opens keep-alive connections and the API's own pools.
    load::submit_jobs(
        &http,
        &stack.base_url,
        &stack.api_key,
        (0..WARM_UP).map(|i| text(&format!("{run}w"), i)),
        WARM_UP,
    )
    .await?;
    let mut expected = WARM_UP as i64;
    let mut succeeded_before = stack.wait_terminal(expected, args.drain_limit(300)).await?;
    let mut calls_before = fake.stats().synthesis_requests;
    let mut offset = 0;
    let mut done = Vec::with_capacity(rates.len());
    for &rate in rates {
        eprintln!("  {rate}/s for {:.0} s", step.as_secs_f64());
        let meter = Meter::start(stack, true).await;
        let sent = open_loop(&http, stack, &run, offset, rate, step).await;
        offset += sent.scheduled;
        expected += sent.accepted as i64;
        let succeeded = stack.wait_terminal(expected, args.drain_limit(900)).await?;
        let cost = meter.finish(stack, sent.accepted, args.smoke).await;
        let calls = fake.stats().synthesis_requests;
        done.push(Step {
            rate,
            succeeded: succeeded - succeeded_before,
            calls: calls - calls_before,
            sent,
            cost,
        });
        succeeded_before = succeeded;
        calls_before = calls;
    }
    Ok(done)
}

/// What one scheduled request came to.
enum Outcome {
    Accepted { lag: Duration, latency: Duration },
    Failed { lag: Duration, error: String },
}

/// Sends `rate × step` submits, the `i`-th due `i / rate` s after the
/// start, each from its own task, and collects their answers.
async fn open_loop(
    http: &reqwest::Client,
    stack: &Stack,
    run: &str,
    offset: usize,
    rate: u32,
    step: Duration,
) -> Sent {
    let total = (f64::from(rate) * step.as_secs_f64()).round() as usize;
    let url = format!("{}/v1/tts/jobs", stack.base_url);
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT_CAP));
    let mut tasks = JoinSet::new();
    let mut errors = 0;
    let mut first_error = None;
    let start = tokio::time::Instant::now() + Duration::from_millis(5);
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
        // Sleeps only when ahead: a late loop sends everything due at once.
        tokio::time::sleep_until(due).await;
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            errors += 1;
            first_error.get_or_insert_with(|| format!("over {IN_FLIGHT_CAP} requests in flight"));
            continue;
        };
        let request = http
            .post(&url)
            .bearer_auth(&stack.api_key)
            .json(&load::job(&text(run, offset + i)));
        tasks.spawn(async move {
            let lag = due.elapsed();
            let answer = async {
                let response = request.send().await?;
                let status = response.status();
                let body = response.bytes().await?;
                anyhow::ensure!(
                    status.as_u16() == 202,
                    "answered {status}: {}",
                    String::from_utf8_lossy(&body)
                );
                anyhow::Ok(())
            }
            .await;
            drop(permit);
            match answer {
                Ok(()) => Outcome::Accepted {
                    lag,
                    latency: due.elapsed(),
                },
                Err(err) => Outcome::Failed {
                    lag,
                    error: format!("{err:#}"),
                },
            }
        });
    }
    let mut latencies = Vec::with_capacity(total);
    let mut lags = Vec::with_capacity(total);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Outcome::Accepted { lag, latency }) => {
                lags.push(lag);
                latencies.push(latency);
            }
            Ok(Outcome::Failed { lag, error }) => {
                lags.push(lag);
                errors += 1;
                first_error.get_or_insert(error);
            }
            Err(err) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("a send task failed: {err}"));
            }
        }
    }
    let elapsed = Instant::now().saturating_duration_since(start.into_std());
    latencies.sort_unstable();
    lags.sort_unstable();
    Sent {
        scheduled: total,
        accepted: latencies.len(),
        errors,
        first_error,
        latencies,
        lags,
        elapsed,
    }
}
