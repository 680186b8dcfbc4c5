//! The thirteen scenarios of the benchmark, each on its own deployment.

mod checks;
mod fair_share;
mod fake_stack;
mod long_job;
mod open_loop;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use ttsq_fake_provider::{FakeConfig, FakeProvider};

use self::{
    checks::Checks,
    fake_stack::{SHARED_PG_CONNECTIONS, direct_call, fake_config, settle_time, start},
};
use crate::{
    baseline::{self, Baselines},
    cli::Args,
    cost::{Cost, Meter},
    env::Env,
    load::{self, epoch_now, run_tag, text},
    report::{Table, f1, int, memory_kib, mib, p50_p99, pct, per_sec},
    stack::Stack,
};

/// Runs the baselines and every wanted scenario; fails when a scenario
/// failed to run or a check failed.
pub async fn run_all(args: &Args, env: &Env) -> anyhow::Result<()> {
    let object_bytes = sample_object_bytes().await?;
    let baselines = if args.no_baselines {
        None
    } else {
        let sizes = baseline::Sizes {
            messages: args.size(20_000, 500),
            objects: args.size(5_000, 200),
            s3_concurrency: args.s3_concurrency,
            rows: args.size(100_000, 2_000),
        };
        Some(baseline::measure(env, &sizes, object_bytes).await?)
    };
    let mut checks = Checks {
        failed: Vec::new(),
        passed: 0,
        enforce_targets: !args.smoke,
    };
    type Scenario = for<'a> fn(
        &'a Args,
        &'a Env,
        Option<&'a Baselines>,
        &'a mut Checks,
    ) -> futures::future::BoxFuture<'a, anyhow::Result<()>>;
    let all: [(u8, &str, Scenario); 13] = [
        (1, "throughput", |a, e, b, c| {
            Box::pin(throughput(a, e, b, c))
        }),
        (2, "batch submit", |a, e, _, c| {
            Box::pin(batch_submit(a, e, c))
        }),
        (3, "submit latency", |a, e, _, c| {
            Box::pin(submit_latency(a, e, c))
        }),
        (4, "high priority", |a, e, _, c| {
            Box::pin(high_priority(a, e, c))
        }),
        (5, "quota", |a, e, _, c| Box::pin(quota(a, e, c))),
        (6, "dedupe", |a, e, _, c| Box::pin(dedupe(a, e, c))),
        (7, "memory", |a, e, _, c| Box::pin(memory(a, e, c))),
        (8, "scaling", |a, e, _, c| Box::pin(scaling(a, e, c))),
        (9, "dedupe across replicas", |a, e, _, c| {
            Box::pin(dedupe_across_replicas(a, e, c))
        }),
        (10, "fair share", |a, e, _, c| {
            Box::pin(fair_share::run(a, e, c))
        }),
        (11, "time to first byte", |a, e, _, c| {
            Box::pin(time_to_first_byte(a, e, c))
        }),
        (12, "long job", |a, e, _, c| {
            Box::pin(long_job::run(a, e, c))
        }),
        (13, "open-loop submits", |a, e, _, c| {
            Box::pin(open_loop::run(a, e, c))
        }),
    ];
    let mut errors = Vec::new();
    for (n, name, scenario) in all {
        if !args.wants(n) {
            continue;
        }
        eprintln!("== scenario {n}: {name}");
        let started = Instant::now();
        let outcome = match ensure_disk_space(args, env, n, object_bytes) {
            Ok(()) => scenario(args, env, baselines.as_ref(), &mut checks).await,
            Err(err) => Err(err),
        };
        if let Err(err) = outcome {
            eprintln!("  scenario {n} failed: {err:#}");
            errors.push(format!("scenario {n} ({name}): {err:#}"));
        }
        // The audio of a scenario is never needed again: free the disk
        // before the next one (the S3 server and Postgres share it).
        if let Err(err) = baseline::empty_bucket(env).await {
            eprintln!("  (could not empty bucket {}: {err:#})", env.bucket);
        }
        eprintln!("  ({:.1} s)", started.elapsed().as_secs_f64());
    }
    eprintln!(
        "checks: {} passed, {} failed",
        checks.passed,
        checks.failed.len()
    );
    anyhow::ensure!(
        errors.is_empty() && checks.failed.is_empty(),
        "{}",
        errors
            .into_iter()
            .chain(checks.failed.iter().map(|c| format!("check failed: {c}")))
            .collect::<Vec<_>>()
            .join("; ")
    );
    Ok(())
}

/// Refuses a scenario whose audio (plus rows and WAL, counted as much
/// again) would leave less than 4 GiB free on the disk of the temp dir —
/// on a one-disk machine the disk of the S3 server and Postgres too. A full
/// disk stops Postgres for everyone on the machine.
fn ensure_disk_space(
    args: &Args,
    env: &Env,
    scenario: u8,
    object_bytes: usize,
) -> anyhow::Result<()> {
    let jobs = match scenario {
        1 => args.size(args.throughput_jobs, 200),
        2 => args.size(args.batch_jobs, 200),
        3 => args.size(args.latency_requests, 200),
        7 => args.size(args.memory_jobs, 500),
        8 => 3 * args.size(args.scaling_jobs, 100),
        10 => fair_share::jobs(args),
        13 => open_loop::jobs(args),
        _ => 0,
    };
    let needed = (jobs * object_bytes * 2) as u64 + (4 << 30);
    let output = std::process::Command::new("df")
        .args(["-Pk"])
        .arg(&env.work_dir)
        .output()
        .context("running df")?;
    let available_kib: Option<u64> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .nth(1)
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok());
    match available_kib {
        Some(kib) if kib * 1024 < needed => anyhow::bail!(
            "not enough free disk: {} MiB available, {} MiB needed (audio of {jobs} jobs plus 4 GiB headroom)",
            kib / 1024,
            needed >> 20
        ),
        _ => Ok(()),
    }
}

/// Size of the fake's answer for a typical bench sentence.
async fn sample_object_bytes() -> anyhow::Result<usize> {
    let fake = FakeProvider::start(fake_config()).await?;
    let (bytes, _) =
        direct_call(&reqwest::Client::new(), &fake, &text("abcdefgh", 1), "wav").await?;
    fake.shutdown().await;
    Ok(bytes)
}

/// Submits `n` unique jobs and waits for them: (jobs/s first submit → last
/// terminal, submit seconds, end-to-end seconds, succeeded).
async fn submit_and_drain(
    args: &Args,
    stack: &Stack,
    n: usize,
    limit: Duration,
) -> anyhow::Result<(f64, f64, f64, i64)> {
    let http = load::client(args.clients)?;
    let run = run_tag();
    let first_submit = epoch_now();
    let submitted = load::submit_jobs(
        &http,
        &stack.base_url,
        &stack.api_key,
        (0..n).map(|i| text(&run, i)),
        args.clients,
    )
    .await?;
    let succeeded = stack.wait_terminal(n as i64, limit).await?;
    let last = stack.last_finished_epoch().await?;
    let span = (last - first_submit).max(submitted.elapsed.as_secs_f64());
    Ok((
        per_sec(n as f64, span),
        submitted.elapsed.as_secs_f64(),
        span,
        succeeded,
    ))
}

async fn throughput(
    args: &Args,
    env: &Env,
    baselines: Option<&Baselines>,
    checks: &mut Checks,
) -> anyhow::Result<()> {
    let n = args.size(args.throughput_jobs, 200);
    let fake = FakeProvider::start(fake_config()).await?;
    let mut stack = start(env, "throughput", &fake, "", &[]).await?;
    stack.start_workers(1).await?;
    let meter = Meter::start(&stack, true).await;
    let result = submit_and_drain(args, &stack, n, args.drain_limit(1_800)).await;
    let cost = match &result {
        Ok(_) => Some(meter.finish(&stack, n, args.smoke).await),
        Err(_) => None,
    };
    let calls = fake.stats().synthesis_requests;
    stack.teardown().await;
    fake.shutdown().await;
    let (rate, submit_secs, span, succeeded) = result?;

    let mut table = Table::new(
        format!(
            "1. Throughput: {} unique normal jobs, zero-latency fake, 1 worker",
            int(n as f64)
        ),
        &["measure", "value"],
    );
    table.row(vec!["jobs".into(), int(n as f64)]);
    table.row(vec!["succeeded".into(), int(succeeded as f64)]);
    table.row(vec!["provider calls".into(), int(calls as f64)]);
    table.row(vec![
        format!("submit phase ({} clients), s", args.clients),
        f1(submit_secs),
    ]);
    table.row(vec![
        "submits/s".into(),
        int(per_sec(n as f64, submit_secs)),
    ]);
    table.row(vec!["first submit → last terminal, s".into(), f1(span)]);
    table.row(vec![
        "**jobs/s end to end**".into(),
        format!("**{}**", int(rate)),
    ]);
    if let Some(b) = baselines {
        table.row(vec![
            "audio object size, bytes".into(),
            int(b.object_bytes as f64),
        ]);
        table.row(vec![
            "÷ raw S3 PutObject rate".into(),
            format!("{} (of {}/s)", pct(rate, b.put_per_sec), int(b.put_per_sec)),
        ]);
        table.row(vec![
            "÷ raw S3 HeadObject+PutObject rate".into(),
            format!(
                "{} (of {}/s)",
                pct(rate, b.head_put_per_sec),
                int(b.head_put_per_sec)
            ),
        ]);
        table.row(vec![
            "÷ raw broker rate (min of publish, consume+ack)".into(),
            format!(
                "{} (of {}/s)",
                pct(rate, b.broker_per_sec()),
                int(b.broker_per_sec())
            ),
        ]);
        table.row(vec![
            "÷ raw Postgres batched insert rate".into(),
            format!(
                "{} (of {} rows/s)",
                pct(rate, b.pg_rows_per_sec),
                int(b.pg_rows_per_sec)
            ),
        ]);
    }
    table.note("Targets: ≥ 2,000 jobs/s on 2 cores and ≥ 80 % of the raw S3 PUT rate.");
    checks.check(
        &mut table,
        succeeded == n as i64 && calls == n as u64,
        format!("all {n} jobs succeeded ({succeeded}), one provider call each ({calls})"),
    );
    table.print();
    if let Some(cost) = cost {
        cost.print("1. Throughput");
    }
    Ok(())
}

async fn batch_submit(args: &Args, env: &Env, checks: &mut Checks) -> anyhow::Result<()> {
    let n = args.size(args.batch_jobs, 200);
    let per_request = load::BATCH_ITEMS.min(n);
    let fake = FakeProvider::start(fake_config()).await?;
    let stack = start(env, "batch", &fake, "", &[]).await?;
    let result = run_batches(args, &stack, n, per_request).await;
    stack.teardown().await;
    fake.shutdown().await;
    let mut table = Table::new(
        format!(
            "2. Batch submit: {} jobs through POST /v1/tts/batches, {per_request} per request",
            int(n as f64)
        ),
        &["measure", "value"],
    );
    match result? {
        BatchOutcome::Unavailable(reason) => {
            table.note(format!(
                "skipped: POST /v1/tts/batches not available ({reason})"
            ));
            checks.check(&mut table, true, "skipped cleanly".to_owned());
        }
        BatchOutcome::Done {
            accepted,
            seconds,
            latencies,
        } => {
            let mut latencies = latencies;
            let (p50, p99) = p50_p99(&mut latencies);
            table.row(vec!["jobs accepted".into(), int(accepted as f64)]);
            table.row(vec!["seconds".into(), f1(seconds)]);
            table.row(vec![
                "**accepted/s**".into(),
                format!("**{}**", int(per_sec(accepted as f64, seconds))),
            ]);
            table.row(vec![
                "request p50 / p99, ms".into(),
                format!("{} / {}", f1(p50), f1(p99)),
            ]);
            table.note("Target: ≥ 10,000 accepted/s.");
            checks.check(
                &mut table,
                accepted == n,
                format!("every job accepted ({accepted} of {n})"),
            );
        }
    }
    table.print();
    Ok(())
}

enum BatchOutcome {
    Unavailable(String),
    Done {
        accepted: usize,
        seconds: f64,
        latencies: Vec<Duration>,
    },
}

async fn run_batches(
    args: &Args,
    stack: &Stack,
    n: usize,
    per_request: usize,
) -> anyhow::Result<BatchOutcome> {
    let http = load::client(8)?;
    let url = format!("{}/v1/tts/batches", stack.base_url);
    let run = run_tag();
    let probe = http
        .post(&url)
        .bearer_auth(&stack.api_key)
        .json(&json!({"items": [load::job(&text(&run, 999_999_999))]}))
        .send()
        .await?;
    let status = probe.status().as_u16();
    if status == 404 || status == 405 {
        return Ok(BatchOutcome::Unavailable(status.to_string()));
    }
    if status != 202 && status != 200 {
        let body = probe.text().await.unwrap_or_default();
        return Ok(BatchOutcome::Unavailable(format!("{status}: {body}")));
    }
    let _ = probe.bytes().await;
    let chunks: Vec<Value> = (0..n)
        .collect::<Vec<_>>()
        .chunks(per_request)
        .map(|chunk| load::batch(chunk.iter().map(|i| text(&run, *i))))
        .collect();
    let started = Instant::now();
    let concurrency = args.clients.clamp(1, 4);
    let results: Vec<anyhow::Result<(usize, Duration)>> = {
        use futures::StreamExt as _;
        futures::stream::iter(chunks)
            .map(|body| {
                let request = http.post(&url).bearer_auth(&stack.api_key).json(&body);
                async move {
                    let sent = Instant::now();
                    let response = request.send().await?;
                    let status = response.status();
                    let body: Value = response.json().await?;
                    anyhow::ensure!(status.is_success(), "batch answered {status}: {body}");
                    let ids = body["task_ids"]
                        .as_array()
                        .map(Vec::len)
                        .context("no task_ids in the answer")?;
                    Ok((ids, sent.elapsed()))
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await
    };
    let seconds = started.elapsed().as_secs_f64();
    let mut accepted = 0;
    let mut latencies = Vec::new();
    for result in results {
        let (ids, latency) = result?;
        accepted += ids;
        latencies.push(latency);
    }
    Ok(BatchOutcome::Done {
        accepted,
        seconds,
        latencies,
    })
}

async fn submit_latency(args: &Args, env: &Env, checks: &mut Checks) -> anyhow::Result<()> {
    let n = args.size(args.latency_requests, 200);
    let fake = FakeProvider::start(fake_config()).await?;
    let mut stack = start(env, "latency", &fake, "", &[]).await?;
    stack.start_workers(1).await?;
    let http = load::client(args.clients)?;
    let run = run_tag();
    // Warm the connection pool and the API's own pools first.
    let warm = load::submit_jobs(
        &http,
        &stack.base_url,
        &stack.api_key,
        (0..args.clients).map(|i| text(&format!("{run}w"), i)),
        args.clients,
    )
    .await;
    let result = async {
        warm?;
        let meter = Meter::start(&stack, true).await;
        let submitted = load::submit_jobs(
            &http,
            &stack.base_url,
            &stack.api_key,
            (0..n).map(|i| text(&run, i)),
            args.clients,
        )
        .await?;
        let succeeded = stack
            .wait_terminal((n + args.clients) as i64, args.drain_limit(600))
            .await?;
        let cost = meter.finish(&stack, n, args.smoke).await;
        anyhow::Ok((submitted, succeeded, cost))
    }
    .await;
    stack.teardown().await;
    fake.shutdown().await;
    let (mut submitted, succeeded, cost) = result?;
    let (p50, p99) = p50_p99(&mut submitted.latencies);
    let mut table = Table::new(
        format!(
            "3. Single submit latency: {} normal jobs from {} concurrent clients (1 worker draining meanwhile)",
            int(n as f64),
            args.clients
        ),
        &["requests", "submits/s", "p50 ms", "p99 ms", "max ms"],
    );
    let max = submitted
        .latencies
        .last()
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or_default();
    table.row(vec![
        int(submitted.accepted as f64),
        int(per_sec(
            submitted.accepted as f64,
            submitted.elapsed.as_secs_f64(),
        )),
        f1(p50),
        f1(p99),
        f1(max),
    ]);
    table.note("Target: p99 ≤ 20 ms.");
    checks.check(
        &mut table,
        submitted.accepted == n && succeeded == (n + args.clients) as i64,
        format!("{n} submits answered 202 and every job succeeded"),
    );
    table.print();
    cost.print("3. Single submit latency");
    Ok(())
}

async fn high_priority(args: &Args, env: &Env, checks: &mut Checks) -> anyhow::Result<()> {
    let n = args.size(args.high_requests, 20);
    let fake = FakeProvider::start(fake_config()).await?;
    let stack = start(env, "high", &fake, "", &[]).await?;
    let result = high_priority_runs(args, &stack, &fake, n).await;
    stack.teardown().await;
    fake.shutdown().await;
    let runs = result?;
    let mut table = Table::new(
        format!("4. High priority: {n} sequential requests per case, zero-latency fake"),
        &[
            "case",
            "p50 ms",
            "p99 ms",
            "overhead p50 ms",
            "overhead p99 ms",
        ],
    );
    let (mut direct, mut miss, mut hit, hits, costs) = runs;
    let (d50, d99) = p50_p99(&mut direct);
    let (m50, m99) = p50_p99(&mut miss);
    let (h50, h99) = p50_p99(&mut hit);
    table.row(vec![
        "fake provider called directly (same payload)".into(),
        f1(d50),
        f1(d99),
        "—".into(),
        "—".into(),
    ]);
    table.row(vec![
        "ttsq high priority, cache miss".into(),
        f1(m50),
        f1(m99),
        f1(m50 - d50),
        f1(m99 - d99),
    ]);
    table.row(vec![
        "ttsq high priority, cache hit".into(),
        f1(h50),
        f1(h99),
        f1(h50 - d50),
        f1(h99 - d99),
    ]);
    table.note("Target: p50 overhead ≤ 2 ms. A hit never calls the provider; its overhead is against the direct call all the same.");
    checks.check(
        &mut table,
        hits == n,
        format!("every repeat answered X-Cache: hit ({hits} of {n})"),
    );
    table.print();
    let [direct, miss, hit] = costs;
    direct.print("4. High priority, fake provider called directly");
    miss.print("4. High priority, cache miss");
    hit.print("4. High priority, cache hit");
    Ok(())
}

/// Latencies of scenario 4's three cases (direct, miss, hit), the hits
/// seen, and each case's cost.
type HighPriorityRuns = (
    Vec<Duration>,
    Vec<Duration>,
    Vec<Duration>,
    usize,
    [Cost; 3],
);

async fn high_priority_runs(
    args: &Args,
    stack: &Stack,
    fake: &FakeProvider,
    n: usize,
) -> anyhow::Result<HighPriorityRuns> {
    let http = load::client(4)?;
    let run = run_tag();
    let url = format!("{}/v1/tts/jobs", stack.base_url);
    let high = |input: String| {
        let mut body = load::job(&input);
        body["priority"] = json!("high");
        http.post(&url).bearer_auth(&stack.api_key).json(&body)
    };
    // Warm-up of both paths.
    for i in 0..5 {
        direct_call(&http, fake, &text(&format!("{run}w"), i), "wav").await?;
        let response = high(text(&format!("{run}x"), i)).send().await?;
        anyhow::ensure!(
            response.status() == 200,
            "high priority answered {}",
            response.status()
        );
        let _ = response.bytes().await?;
    }
    let mut direct = Vec::with_capacity(n);
    let mut miss = Vec::with_capacity(n);
    let mut hit = Vec::with_capacity(n);
    // The direct calls leave ttsq idle: CPU only.
    let meter = Meter::start(stack, false).await;
    for i in 0..n {
        direct.push(
            direct_call(&http, fake, &text(&format!("{run}d"), i), "wav")
                .await?
                .1,
        );
    }
    let direct_cost = meter.finish(stack, n, args.smoke).await;
    let meter = Meter::start(stack, true).await;
    for i in 0..n {
        let started = Instant::now();
        let response = high(text(&format!("{run}m"), i)).send().await?;
        anyhow::ensure!(
            response.status() == 200,
            "high priority answered {}",
            response.status()
        );
        let _ = response.bytes().await?;
        miss.push(started.elapsed());
    }
    let miss_cost = meter.finish(stack, n, args.smoke).await;
    let repeated = text(&format!("{run}m"), 0);
    let mut hits = 0;
    let meter = Meter::start(stack, true).await;
    for _ in 0..n {
        let started = Instant::now();
        let response = high(repeated.clone()).send().await?;
        anyhow::ensure!(
            response.status() == 200,
            "high priority answered {}",
            response.status()
        );
        if response
            .headers()
            .get("x-cache")
            .is_some_and(|v| v.as_bytes() == b"hit")
        {
            hits += 1;
        }
        let _ = response.bytes().await?;
        hit.push(started.elapsed());
    }
    let hit_cost = meter.finish(stack, n, args.smoke).await;
    Ok((direct, miss, hit, hits, [direct_cost, miss_cost, hit_cost]))
}

/// How long the fake takes to stream one answer in scenario 11.
const STREAM_SPREAD: Duration = Duration::from_millis(1_000);

async fn time_to_first_byte(args: &Args, env: &Env, checks: &mut Checks) -> anyhow::Result<()> {
    let n = args.size(20, 3);
    let fake = FakeProvider::start(FakeConfig {
        streaming: ttsq_fake_provider::Streaming {
            chunks: 20,
            spread_ms: STREAM_SPREAD.as_millis() as u64,
            fail_after_chunks: None,
        },
        ..fake_config()
    })
    .await?;
    let stack = start(env, "ttfb", &fake, "", &[]).await?;
    // WAV is rewritten from the vendor's whole body, so it is answered
    // whole: the baseline, as every format was answered before streaming.
    let result = async {
        let streamed = first_byte_runs(&stack, n, "mp3", "s").await?;
        let whole = first_byte_runs(&stack, n, "wav", "w").await?;
        anyhow::Ok((streamed, whole))
    }
    .await;
    stack.teardown().await;
    fake.shutdown().await;
    let ((mut first, mut whole), (mut base_first, mut base_whole)) = result?;
    let mut table = Table::new(
        format!(
            "11. Time to first byte: {n} sequential high-priority requests (cache misses) each \
             of MP3 (streamed) and WAV (answered whole, the baseline), fake streaming each \
             answer in 20 chunks over {} ms",
            STREAM_SPREAD.as_millis()
        ),
        &["measure", "p50 ms", "p99 ms"],
    );
    let (f50, f99) = p50_p99(&mut first);
    let (w50, w99) = p50_p99(&mut whole);
    let (b50, b99) = p50_p99(&mut base_first);
    let (bw50, bw99) = p50_p99(&mut base_whole);
    table.row(vec!["MP3 first audio byte".into(), f1(f50), f1(f99)]);
    table.row(vec!["MP3 whole response".into(), f1(w50), f1(w99)]);
    table.row(vec![
        "WAV (not streamed) first byte".into(),
        f1(b50),
        f1(b99),
    ]);
    table.row(vec![
        "WAV (not streamed) whole response".into(),
        f1(bw50),
        f1(bw99),
    ]);
    table.note(format!(
        "First byte, streamed ÷ not streamed: {:.3} at p50.",
        f50 / b50.max(f64::MIN_POSITIVE)
    ));
    table.note("The first bytes are passed on as the provider sends them; the object is stored, and the task finished and billed, after the last.");
    checks.check(
        &mut table,
        f50 + 500.0 < w50,
        format!("the first byte comes well before the whole (p50 {f50:.1} ms vs {w50:.1} ms)"),
    );
    table.print();
    Ok(())
}

/// Times `n` high-priority cache misses in `format`: to the first body
/// byte, and to the end. `tag` keeps each series' texts apart.
async fn first_byte_runs(
    stack: &Stack,
    n: usize,
    format: &str,
    tag: &str,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let http = load::client(2)?;
    let run = run_tag();
    let url = format!("{}/v1/tts/jobs", stack.base_url);
    let mut first = Vec::with_capacity(n);
    let mut whole = Vec::with_capacity(n);
    for i in 0..n {
        let mut body = load::job(&text(&format!("{run}{tag}"), i));
        body["priority"] = json!("high");
        body["format"] = json!(format);
        let started = Instant::now();
        let mut response = http
            .post(&url)
            .bearer_auth(&stack.api_key)
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == 200,
            "high priority answered {}",
            response.status()
        );
        let mut first_at = None;
        while let Some(chunk) = response.chunk().await? {
            if first_at.is_none() && !chunk.is_empty() {
                first_at = Some(started.elapsed());
            }
        }
        whole.push(started.elapsed());
        first.push(first_at.context("an empty answer")?);
    }
    Ok((first, whole))
}

async fn quota(args: &Args, env: &Env, checks: &mut Checks) -> anyhow::Result<()> {
    let n = args.size(args.quota_jobs, 30);
    let mut table = Table::new(
        format!(
            "5. Quota: fake limited to 50 req/s and 4 concurrent, 200 ms latency; {n} jobs per run"
        ),
        &[
            "workers",
            "achieved req/s",
            "÷ 50 req/s quota",
            "÷ 20 req/s (4 concurrent ÷ 0.2 s)",
            "429s",
            "peak concurrency",
            "succeeded",
        ],
    );
    for workers in [1, 2, 4] {
        eprintln!("  {workers} worker(s)");
        let fake = FakeProvider::start(FakeConfig {
            log_capacity: n + 100,
            ..fake_config()
        })
        .await?;
        fake.update(|c| {
            c.latency.fixed_ms = 200;
            c.quota.requests_per_second = Some(50);
            c.quota.max_concurrent = Some(4);
        });
        let mut stack = start(
            env,
            &format!("quota-{workers}"),
            &fake,
            "requests_per_second = 50, max_concurrent = 4",
            &[
                ("TTSQ_QUEUE_PREFETCH", "48"),
                ("TTSQ_WORKER_BATCH_SIZE", "8"),
                ("TTSQ_DATABASE_MAX_CONNECTIONS", SHARED_PG_CONNECTIONS),
            ],
        )
        .await?;
        let result = async {
            stack.start_workers(workers).await?;
            // Every replica must have seen the others' heartbeats.
            tokio::time::sleep(settle_time(args)).await;
            submit_and_drain(args, &stack, n, args.drain_limit(600)).await
        }
        .await;
        let stats = fake.stats();
        stack.teardown().await;
        fake.shutdown().await;
        let (_, _, _, succeeded) = result?;
        let times: Vec<u64> = stats
            .recent
            .iter()
            .filter(|r| r.method == "POST" && r.status == Some(200))
            .map(|r| r.elapsed_ms)
            .collect();
        let span = match (times.iter().min(), times.iter().max()) {
            (Some(min), Some(max)) if max > min => (max - min) as f64 / 1000.0,
            _ => 0.0,
        };
        let rate = per_sec(times.len().saturating_sub(1) as f64, span);
        table.row(vec![
            workers.to_string(),
            f1(rate),
            pct(rate, 50.0),
            pct(rate, 20.0),
            stats.rate_limited.to_string(),
            stats.peak_concurrency.to_string(),
            int(succeeded as f64),
        ]);
        checks.check(
            &mut table,
            succeeded == n as i64 && stats.peak_concurrency <= 4,
            format!(
                "{workers} worker(s): all {n} jobs succeeded ({succeeded}), peak concurrency {} ≤ 4",
                stats.peak_concurrency
            ),
        );
    }
    table.note("Target: ≥ 90 % of the quota and zero 429s at every replica count. With 4 concurrent requests of 200 ms, at most 20 req/s can be in flight: the concurrency limit binds before the 50 req/s rate. Workers run with prefetch 48 and batches of 8 so every replica keeps work to the end; every process has 8 Postgres connections.");
    table.print();
    Ok(())
}

async fn dedupe(args: &Args, env: &Env, checks: &mut Checks) -> anyhow::Result<()> {
    let n = args.size(args.dedupe_jobs, 200);
    let distinct = 10;
    let fake = FakeProvider::start(fake_config()).await?;
    let mut stack = start(env, "dedupe", &fake, "", &[]).await?;
    let result = async {
        stack.start_workers(1).await?;
        let http = load::client(args.clients)?;
        let run = run_tag();
        let submitted = load::submit_jobs(
            &http,
            &stack.base_url,
            &stack.api_key,
            (0..n).map(|i| text(&run, i % distinct)),
            args.clients,
        )
        .await?;
        let succeeded = stack.wait_terminal(n as i64, args.drain_limit(900)).await?;
        let hits: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE cache_hit")
            .fetch_one(&stack.db)
            .await?;
        let billed: i64 =
            sqlx::query_scalar("SELECT count(*) FROM usage_ledger WHERE billable_characters > 0")
                .fetch_one(&stack.db)
                .await
                .unwrap_or(-1);
        anyhow::Ok((submitted, succeeded, hits, billed))
    }
    .await;
    let calls = fake.stats().synthesis_requests;
    stack.teardown().await;
    fake.shutdown().await;
    let (submitted, succeeded, hits, billed) = result?;
    let mut table = Table::new(
        format!(
            "6. Dedupe: {} jobs over {distinct} distinct texts, 1 worker",
            int(n as f64)
        ),
        &["measure", "value"],
    );
    table.row(vec!["jobs".into(), int(submitted.accepted as f64)]);
    table.row(vec!["succeeded".into(), int(succeeded as f64)]);
    table.row(vec!["**provider calls**".into(), format!("**{calls}**")]);
    table.row(vec!["cache hits".into(), int(hits as f64)]);
    table.row(vec![
        "ledger rows billed (> 0 characters)".into(),
        billed.to_string(),
    ]);
    table.note("Target: 10 provider calls.");
    checks.check(
        &mut table,
        calls == distinct as u64 && succeeded == n as i64,
        format!("provider calls ({calls}) == distinct texts ({distinct}); all {n} succeeded"),
    );
    table.print();
    Ok(())
}

/// Samples `(seconds, VmRSS KiB)` of a process every 100 ms until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Vec<(f64, u64)>>,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                if let Some((rss, _)) = memory_kib(pid) {
                    samples.push((started.elapsed().as_secs_f64(), rss));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            samples
        });
        Self { stop, task }
    }

    async fn finish(self) -> Vec<(f64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

/// RSS at 0, 25, 50, 75, 100 % of the samples, and the maximum sampled.
fn quartiles(samples: &[(f64, u64)]) -> Vec<String> {
    if samples.is_empty() {
        return vec!["—".into(); 5];
    }
    [0.0, 0.25, 0.5, 0.75, 1.0]
        .iter()
        .map(|q| {
            let index = ((samples.len() - 1) as f64 * q).round() as usize;
            mib(samples[index].1)
        })
        .collect()
}

async fn memory(args: &Args, env: &Env, checks: &mut Checks) -> anyhow::Result<()> {
    let n = args.size(args.memory_jobs, 500);
    let fake = FakeProvider::start(fake_config()).await?;
    let mut stack = start(env, "memory", &fake, "", &[]).await?;
    let api_pid = stack.api.id();
    let result = async {
        let http = load::client(args.clients)?;
        let run = run_tag();
        eprintln!("  submitting a backlog of {n} jobs (no worker yet)");
        let api_sampler = Sampler::start(api_pid);
        load::submit_jobs(
            &http,
            &stack.base_url,
            &stack.api_key,
            (0..n).map(|i| text(&run, i)),
            args.clients,
        )
        .await?;
        let api_submit = api_sampler.finish().await;
        let api_hwm_submit = memory_kib(api_pid).map(|m| m.1).unwrap_or_default();
        eprintln!("  draining it with one worker");
        stack.start_workers(1).await?;
        let worker_pid = stack.worker_pids()[0];
        let worker_sampler = Sampler::start(worker_pid);
        let api_sampler = Sampler::start(api_pid);
        let meter = Meter::start(&stack, true).await;
        let started = Instant::now();
        let succeeded = stack
            .wait_terminal(n as i64, args.drain_limit(3_600))
            .await?;
        let drain_secs = started.elapsed().as_secs_f64();
        let worker_hwm = memory_kib(worker_pid).map(|m| m.1).unwrap_or_default();
        let api_hwm = memory_kib(api_pid).map(|m| m.1).unwrap_or_default();
        let worker_drain = worker_sampler.finish().await;
        let api_drain = api_sampler.finish().await;
        let cost = meter.finish(&stack, n, args.smoke).await;
        anyhow::Ok((
            api_submit,
            api_hwm_submit,
            worker_drain,
            worker_hwm,
            api_drain,
            api_hwm,
            succeeded,
            drain_secs,
            cost,
        ))
    }
    .await;
    stack.teardown().await;
    fake.shutdown().await;
    let (
        api_submit,
        api_hwm_submit,
        worker_drain,
        worker_hwm,
        api_drain,
        api_hwm,
        succeeded,
        drain_secs,
        cost,
    ) = result?;
    let mut table = Table::new(
        format!(
            "7. Memory: a backlog of {} jobs submitted, then drained by 1 worker (VmRSS sampled every 100 ms, MiB)",
            int(n as f64)
        ),
        &[
            "process, phase",
            "start",
            "25 %",
            "50 %",
            "75 %",
            "end",
            "peak (VmHWM)",
        ],
    );
    let mut row = |label: &str, samples: &[(f64, u64)], hwm: u64| {
        let mut cells = vec![label.to_owned()];
        cells.extend(quartiles(samples));
        cells.push(mib(hwm));
        table.row(cells);
    };
    row("api, submitting the backlog", &api_submit, api_hwm_submit);
    row("api, while the worker drains", &api_drain, api_hwm);
    row("worker, draining the backlog", &worker_drain, worker_hwm);
    table.note(format!(
        "Drain: {} jobs in {:.1} s ({} jobs/s). Target: ≤ 64 MiB each, flat, not growing with the backlog.",
        int(succeeded as f64),
        drain_secs,
        int(per_sec(succeeded as f64, drain_secs))
    ));
    checks.check(
        &mut table,
        succeeded == n as i64 && worker_hwm > 0 && api_hwm > 0,
        format!("all {n} jobs succeeded ({succeeded}) and both processes were sampled"),
    );
    table.print();
    cost.print("7. Memory, the drain");
    Ok(())
}

async fn scaling(args: &Args, env: &Env, checks: &mut Checks) -> anyhow::Result<()> {
    let n = args.size(args.scaling_jobs, 100);
    let mut table = Table::new(
        format!(
            "8. Scaling: fake latency 100 ms, concurrency 32 (fake and ttsq quota); {} jobs per run",
            int(n as f64)
        ),
        &[
            "workers",
            "jobs/s end to end",
            "peak provider concurrency",
            "429s",
            "succeeded",
        ],
    );
    let mut first_rate = None;
    for workers in [1, 2, 4] {
        eprintln!("  {workers} worker(s)");
        let fake = FakeProvider::start(fake_config()).await?;
        fake.update(|c| {
            c.latency.fixed_ms = 100;
            c.quota.max_concurrent = Some(32);
        });
        let mut stack = start(
            env,
            &format!("scaling-{workers}"),
            &fake,
            "max_concurrent = 32",
            &[("TTSQ_DATABASE_MAX_CONNECTIONS", SHARED_PG_CONNECTIONS)],
        )
        .await?;
        let result = async {
            stack.start_workers(workers).await?;
            tokio::time::sleep(settle_time(args)).await;
            submit_and_drain(args, &stack, n, args.drain_limit(1_200)).await
        }
        .await;
        let stats = fake.stats();
        stack.teardown().await;
        fake.shutdown().await;
        let (rate, _, _, succeeded) = result?;
        first_rate.get_or_insert(rate);
        table.row(vec![
            workers.to_string(),
            format!(
                "{} ({:.2}×)",
                int(rate),
                rate / first_rate.unwrap_or(rate).max(f64::EPSILON)
            ),
            stats.peak_concurrency.to_string(),
            stats.rate_limited.to_string(),
            int(succeeded as f64),
        ]);
        checks.check(
            &mut table,
            succeeded == n as i64,
            format!("{workers} worker(s): all {n} jobs succeeded ({succeeded})"),
        );
    }
    table.note("The ceiling is the quota: 32 concurrent × 10 per second per slot = 320 req/s (concurrency slots are shared by all replicas through Postgres and used whole). Every process has 8 Postgres connections.");
    table.print();
    Ok(())
}

/// Distinct texts of scenario 9: a hundred (twenty in smoke mode).
fn fleet_texts(args: &Args) -> usize {
    if args.smoke { 20 } else { 100 }
}

async fn dedupe_across_replicas(args: &Args, env: &Env, checks: &mut Checks) -> anyhow::Result<()> {
    let n = args.size(args.fleet_dedupe_jobs, 400);
    let distinct = fleet_texts(args);
    let workers = 4;
    let fake = FakeProvider::start(fake_config()).await?;
    // A vendor's answer takes time: copies of a text picked up by several
    // replicas meanwhile are what a fleet-wide single flight must absorb.
    fake.update(|c| c.latency.fixed_ms = 100);
    let mut stack = start(
        env,
        "fleet-dedupe",
        &fake,
        "",
        &[("TTSQ_DATABASE_MAX_CONNECTIONS", SHARED_PG_CONNECTIONS)],
    )
    .await?;
    let result = async {
        stack.start_workers(workers).await?;
        tokio::time::sleep(settle_time(args)).await;
        let http = load::client(args.clients)?;
        let run = run_tag();
        let first_submit = epoch_now();
        let submitted = load::submit_jobs(
            &http,
            &stack.base_url,
            &stack.api_key,
            (0..n).map(|i| text(&run, i % distinct)),
            args.clients,
        )
        .await?;
        let succeeded = stack.wait_terminal(n as i64, args.drain_limit(900)).await?;
        let span = (stack.last_finished_epoch().await? - first_submit)
            .max(submitted.elapsed.as_secs_f64());
        let (objects, billed, billed_twice): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM audio_objects),
                    (SELECT count(*) FROM usage_ledger WHERE NOT cache_hit),
                    (SELECT count(*) FROM (
                        SELECT t.audio_hash FROM usage_ledger l JOIN tasks t ON t.id = l.task_id
                         WHERE NOT l.cache_hit GROUP BY t.audio_hash HAVING count(*) > 1) twice)",
        )
        .fetch_one(&stack.db)
        .await?;
        anyhow::Ok((submitted, succeeded, span, objects, billed, billed_twice))
    }
    .await;
    let calls = fake.stats().synthesis_requests;
    stack.teardown().await;
    fake.shutdown().await;
    let (submitted, succeeded, span, objects, billed, billed_twice) = result?;
    let mut table = Table::new(
        format!(
            "9. Dedupe across replicas: {} jobs over {distinct} distinct texts, {workers} workers, fake latency 100 ms",
            int(n as f64)
        ),
        &["measure", "value"],
    );
    table.row(vec!["jobs".into(), int(submitted.accepted as f64)]);
    table.row(vec!["succeeded".into(), int(succeeded as f64)]);
    table.row(vec![
        format!("**provider calls, {workers} workers**"),
        format!("**{calls}**"),
    ]);
    table.row(vec!["audio objects stored".into(), int(objects as f64)]);
    table.row(vec![
        "billed ledger rows (cache_hit = false)".into(),
        int(billed as f64),
    ]);
    table.row(vec![
        "audio objects billed more than once".into(),
        int(billed_twice as f64),
    ]);
    table.row(vec![
        "jobs/s, first submit → last terminal".into(),
        int(per_sec(n as f64, span)),
    ]);
    table.note(format!(
        "Target: {distinct} provider calls and {distinct} billed ledger rows, one per distinct text whichever replica picks up its copies first."
    ));
    checks.check(
        &mut table,
        calls == distinct as u64 && billed == distinct as i64 && succeeded == n as i64,
        format!(
            "provider calls ({calls}) == billed rows ({billed}) == distinct texts ({distinct}); all {n} succeeded ({succeeded})"
        ),
    );
    table.print();
    Ok(())
}
