//! Scenario 12, long job: one long text submitted as ONE job, split into
//! chunks that are synthesized across the fleet and joined, with 1 and 4
//! workers; its wall time against the sequential sum of its chunks' calls
//! sent straight to the fake in the same run, then the same text with one
//! paragraph edited (one provider call). Every worker count has a fresh
//! stack, fake and texts.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use ttsq_fake_provider::FakeProvider;
use uuid::Uuid;

use super::{
    checks::Checks,
    fake_stack::{SHARED_PG_CONNECTIONS, direct_call, fake_config, settle_time, start_with},
};
use crate::{
    cli::Args,
    env::Env,
    load::{self, run_tag},
    report::{Table, int},
    stack::Stack,
};

/// The fake's latency per call, in milliseconds.
const LATENCY_MS: u64 = 100;
/// Calls the fake (and ttsq's quota of it) allows at once.
const CONCURRENT: u32 = 16;
/// The provider's request limit (`max_text_chars` of `[providers.fake]`).
const REQUEST_CHARS: usize = 1_000;
/// A paragraph is at least this long: one chunk each, as two never fit in
/// [`REQUEST_CHARS`].
const PARAGRAPH_CHARS: usize = 840;
/// Most characters a long job takes (`limits.max_long_text_chars`' default).
const MAX_LONG_CHARS: usize = 200_000;
/// Worker processes of each run.
const WORKER_COUNTS: [usize; 2] = [1, 4];
/// Seconds each long poll waits for the terminal state.
const POLL_SECS: u32 = 5;

/// Words the paragraphs are drawn from.
const WORDS: [&str; 32] = [
    "river", "lantern", "quiet", "harbour", "morning", "copper", "garden", "distant", "winter",
    "letter", "window", "orchard", "silver", "meadow", "thunder", "village", "narrow", "candle",
    "mountain", "ember", "station", "hollow", "willow", "compass", "evening", "granite", "pepper",
    "shadow", "ribbon", "tavern", "marble", "feather",
];

/// Paragraph `i` of run `tag`: 840–980 characters of sentences drawn
/// from [`WORDS`], the same for the same `(tag, i)`, different for every
/// other; `edited` changes its first sentence only.
fn paragraph(tag: &str, i: usize, edited: bool) -> String {
    let mut out = if edited {
        format!("Paragraph {i} of run {tag} was edited since.")
    } else {
        format!("Paragraph {i} of run {tag} begins.")
    };
    let mut state = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = |n: usize| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as usize % n
    };
    while out.len() < PARAGRAPH_CHARS {
        let words = 6 + next(10);
        let mut sentence = String::new();
        for w in 0..words {
            let word = WORDS[next(WORDS.len())];
            if w == 0 {
                let mut chars = word.chars();
                if let Some(first) = chars.next() {
                    sentence.extend(first.to_uppercase());
                    sentence.push_str(chars.as_str());
                }
            } else {
                sentence.push(' ');
                sentence.push_str(word);
            }
            if w == words / 2 && next(3) == 0 {
                sentence.push(',');
            }
        }
        sentence.push('.');
        out.push(' ');
        out.push_str(&sentence);
    }
    out
}

/// The long text of run `tag`: paragraphs separated by blank lines, at
/// least `chars` characters; `edit` edits that paragraph.
fn long_text(tag: &str, chars: usize, edit: Option<usize>) -> String {
    let mut paragraphs = Vec::new();
    let mut total = 0;
    while total < chars {
        let p = paragraph(tag, paragraphs.len(), edit == Some(paragraphs.len()));
        total += p.chars().count() + 2;
        paragraphs.push(p);
    }
    paragraphs.join("\n\n")
}

/// What one worker count measured.
struct Figures {
    workers: usize,
    /// Characters of the long text.
    chars: usize,
    /// `chunks_total` of the long job.
    chunks: u64,
    /// Chunk rows of the long job in the database.
    chunk_rows: usize,
    /// Provider calls of the long job.
    calls: u64,
    /// Submit → `succeeded`.
    wall: Duration,
    /// The chunks' texts sent one after the other straight to the fake.
    sequential: Duration,
    /// Provider calls of the re-run with one paragraph edited.
    edit_calls: u64,
    /// Its submit → `succeeded`.
    edit_wall: Duration,
    /// `chunks_total` of the re-run.
    edit_chunks: u64,
    /// 429s the fake answered.
    rate_limited: u64,
    /// Most calls the fake handled at once.
    peak_concurrency: u64,
    /// Shortest and longest chunk, in characters.
    chunk_chars: (i32, i32),
}

/// Runs both worker counts, each on a fresh stack and fake, and prints the
/// table.
pub(super) async fn run(args: &Args, env: &Env, checks: &mut Checks) -> anyhow::Result<()> {
    let chars = args.size(args.long_job_chars, 10_000).min(MAX_LONG_CHARS);
    let mut runs = Vec::new();
    for workers in WORKER_COUNTS {
        eprintln!("  {workers} worker(s)");
        runs.push(measure(args, env, workers, chars).await?);
    }
    report(&runs, checks);
    Ok(())
}

async fn measure(args: &Args, env: &Env, workers: usize, chars: usize) -> anyhow::Result<Figures> {
    let fake = FakeProvider::start(fake_config()).await?;
    fake.update(|c| {
        c.latency.fixed_ms = LATENCY_MS;
        c.quota.max_concurrent = Some(CONCURRENT);
    });
    let provider =
        format!("quota = {{ max_concurrent = {CONCURRENT} }}\nmax_text_chars = {REQUEST_CHARS}");
    let mut stack = start_with(
        env,
        &format!("long-job-{workers}"),
        &fake,
        &provider,
        &[("TTSQ_DATABASE_MAX_CONNECTIONS", SHARED_PG_CONNECTIONS)],
    )
    .await?;
    let result = async {
        stack.start_workers(workers).await?;
        tokio::time::sleep(settle_time(args)).await;
        runs(args, &stack, &fake, workers, chars).await
    }
    .await;
    stack.teardown().await;
    fake.shutdown().await;
    result
}

/// The long job, its edited re-run, then the sequential baseline of its
/// chunks (after ttsq's calls, so they are counted apart).
async fn runs(
    args: &Args,
    stack: &Stack,
    fake: &FakeProvider,
    workers: usize,
    chars: usize,
) -> anyhow::Result<Figures> {
    let http = load::client(2)?;
    let tag = run_tag();
    let limit = args.drain_limit(900);

    let text = long_text(&tag, chars, None);
    let paragraphs = text.split("\n\n").count();
    eprintln!(
        "    a long job of {} characters, {paragraphs} paragraphs",
        text.chars().count()
    );
    let first = submit_and_wait(&http, stack, &text, limit).await?;
    let calls = fake.stats().synthesis_requests;

    let edited = long_text(&tag, chars, Some(paragraphs / 2));
    eprintln!("    the same with paragraph {} edited", paragraphs / 2);
    let edit = submit_and_wait(&http, stack, &edited, limit).await?;
    let stats = fake.stats();

    let chunks: Vec<(String, i32)> = sqlx::query_as(
        "SELECT text, characters FROM tasks WHERE parent_id = $1 ORDER BY chunk_index",
    )
    .bind(first.id)
    .fetch_all(&stack.db)
    .await?;
    eprintln!(
        "    the {} chunks sent one after the other to the fake",
        chunks.len()
    );
    let mut sequential = Duration::ZERO;
    for (chunk, _) in &chunks {
        sequential += direct_call(&http, fake, chunk, "mp3").await?.1;
    }
    let lengths = chunks.iter().map(|(_, n)| *n);
    Ok(Figures {
        workers,
        chars: text.chars().count(),
        chunks: first.chunks_total,
        chunk_rows: chunks.len(),
        calls,
        wall: first.wall,
        sequential,
        edit_calls: stats.synthesis_requests - calls,
        edit_wall: edit.wall,
        edit_chunks: edit.chunks_total,
        rate_limited: stats.rate_limited,
        peak_concurrency: stats.peak_concurrency,
        chunk_chars: (
            lengths.clone().min().unwrap_or_default(),
            lengths.max().unwrap_or_default(),
        ),
    })
}

/// A long job that succeeded.
struct Done {
    id: Uuid,
    chunks_total: u64,
    wall: Duration,
}

/// Submits `text` as one normal-priority MP3 job and long-polls it until it
/// is terminal; fails unless it succeeded within `limit`.
async fn submit_and_wait(
    http: &reqwest::Client,
    stack: &Stack,
    text: &str,
    limit: Duration,
) -> anyhow::Result<Done> {
    let mut body = load::job(text);
    body["format"] = json!("mp3");
    let started = Instant::now();
    let response = http
        .post(format!("{}/v1/tts/jobs", stack.base_url))
        .bearer_auth(&stack.api_key)
        .json(&body)
        .send()
        .await?;
    let status = response.status();
    let answer: Value = response.json().await?;
    anyhow::ensure!(status == 202, "the long job answered {status}: {answer}");
    let id: Uuid = answer["task_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no task_id in {answer}"))?;
    let url = format!("{}/v1/tts/jobs/{id}?wait={POLL_SECS}", stack.base_url);
    loop {
        let task: Value = http
            .get(&url)
            .bearer_auth(&stack.api_key)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let wall = started.elapsed();
        match task["status"].as_str() {
            Some("succeeded") => {
                let chunks_total = task["chunks_total"]
                    .as_u64()
                    .with_context(|| format!("a long job without chunks_total: {task}"))?;
                return Ok(Done {
                    id,
                    chunks_total,
                    wall,
                });
            }
            Some("failed" | "cancelled") => bail!("the long job ended: {task}"),
            _ => {}
        }
        eprintln!(
            "    … {}/{} chunks after {:.0} s",
            task["chunks_done"],
            task["chunks_total"],
            wall.as_secs_f64()
        );
        if wall > limit {
            bail!("the long job was not done after {limit:?}: {task}");
        }
    }
}

/// `sum ÷ wall`.
fn speed_up(sum: Duration, wall: Duration) -> f64 {
    sum.as_secs_f64() / wall.as_secs_f64().max(f64::MIN_POSITIVE)
}

fn report(runs: &[Figures], checks: &mut Checks) {
    let chars = runs.first().map(|r| r.chars).unwrap_or_default();
    let mut table = Table::new(
        format!(
            "12. Long job: one job of {} characters (MP3), provider request limit {} characters, fake latency {LATENCY_MS} ms per call and {CONCURRENT} concurrent (ttsq's quota the same); 1 and 4 workers",
            int(chars as f64),
            int(REQUEST_CHARS as f64)
        ),
        &[
            "workers",
            "chunks",
            "calls",
            "wall s",
            "sequential sum s",
            "speed-up (sum ÷ wall)",
        ],
    );
    for run in runs {
        let up = speed_up(run.sequential, run.wall);
        table.row(vec![
            run.workers.to_string(),
            run.chunks.to_string(),
            run.calls.to_string(),
            format!("**{:.2}**", run.wall.as_secs_f64()),
            format!("{:.2}", run.sequential.as_secs_f64()),
            format!("**{up:.1}×**"),
        ]);
    }
    for run in runs {
        table.row(vec![
            format!("{}, one paragraph edited", run.workers),
            run.edit_chunks.to_string(),
            run.edit_calls.to_string(),
            format!("{:.2}", run.edit_wall.as_secs_f64()),
            format!("{:.2}", run.sequential.as_secs_f64()),
            format!("{:.1}×", speed_up(run.sequential, run.edit_wall)),
        ]);
    }
    table.note(
        "Wall: from the submit to the long poll answering `succeeded` (split, chunks queued, synthesized, joined into one object). Sequential sum: the same run's chunk texts sent one after the other straight to the fake, as ttsq's adapter sends them — what a vendor's sequential long-text job costs; the edited rows compare it with the re-run, which synthesizes one chunk and joins.",
    );
    for run in runs {
        table.note(format!(
            "{} worker(s): chunks of {}–{} characters; peak provider concurrency {}, {} 429s from the fake.",
            run.workers,
            run.chunk_chars.0,
            run.chunk_chars.1,
            run.peak_concurrency,
            run.rate_limited
        ));
    }
    table.note("Target: speed-up > 1 with every worker count.");
    for run in runs {
        let w = run.workers;
        checks.check(
            &mut table,
            run.chunks > 1 && run.chunk_rows as u64 == run.chunks && run.calls == run.chunks,
            format!(
                "{w} worker(s): one provider call per chunk ({} calls, {} chunks, {} chunk rows)",
                run.calls, run.chunks, run.chunk_rows
            ),
        );
        checks.check(
            &mut table,
            run.edit_calls == 1,
            format!(
                "{w} worker(s): the re-run with one paragraph edited made 1 provider call ({})",
                run.edit_calls
            ),
        );
        let up = speed_up(run.sequential, run.wall);
        checks.target(
            &mut table,
            up > 1.0,
            format!(
                "{w} worker(s): speed-up {up:.1}× > 1 ({:.2} s sequential, {:.2} s wall)",
                run.sequential.as_secs_f64(),
                run.wall.as_secs_f64()
            ),
        );
    }
    table.print();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_are_distinct_deterministic_and_one_request_each() {
        let text = long_text("abcdefgh", 50_000, None);
        let paragraphs: Vec<&str> = text.split("\n\n").collect();
        assert!(text.chars().count() >= 50_000);
        assert!((50..70).contains(&paragraphs.len()), "{}", paragraphs.len());
        for p in &paragraphs {
            let n = p.chars().count();
            assert!((PARAGRAPH_CHARS..=REQUEST_CHARS).contains(&n), "{n}: {p}");
            assert!(!p.contains('\n'));
        }
        let distinct: std::collections::HashSet<_> = paragraphs.iter().collect();
        assert_eq!(distinct.len(), paragraphs.len());
        assert_eq!(text, long_text("abcdefgh", 50_000, None));

        let edited = long_text("abcdefgh", 50_000, Some(7));
        let changed = edited
            .split("\n\n")
            .zip(&paragraphs)
            .filter(|(a, b)| a != *b)
            .count();
        assert_eq!(changed, 1);
        assert_eq!(edited.split("\n\n").count(), paragraphs.len());
    }
}
