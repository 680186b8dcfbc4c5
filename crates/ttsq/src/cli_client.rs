//! The client commands of the `ttsq` binary: `say`, `batch`, `jobs`,
//! `dialects` and `openapi`. They talk to a running API through
//! `ttsq-client`, configured by `TTSQ_URL` and `TTSQ_API_KEY` (or `--url`
//! and `--api-key`), and never read the server's settings.

use std::{
    collections::{BTreeMap, HashSet},
    io::{IsTerminal, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use futures::{StreamExt, stream};
use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use ttsq_client::{Client, ListOptions, NewJob, Task, TaskStatus};
use uuid::Uuid;

/// Where the API is and who calls it.
#[derive(clap::Args, Debug)]
pub struct Connection {
    /// URL of the ttsq API.
    #[arg(
        long,
        env = "TTSQ_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// API key. Prefer the environment variable: a flag shows in `ps`.
    #[arg(long, env = "TTSQ_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,
    /// Print JSON instead of a table or a sentence.
    #[arg(long, global = true)]
    json: bool,
}

impl Connection {
    fn client(&self) -> anyhow::Result<Client> {
        let key = self
            .api_key
            .as_deref()
            .filter(|k| !k.trim().is_empty())
            .context("no API key: set TTSQ_API_KEY or pass --api-key")?;
        Ok(Client::new(&self.url, key)?)
    }
}

/// `ttsq say`.
#[derive(clap::Args, Debug)]
pub struct SayArgs {
    /// The text to speak.
    text: String,
    /// Dialect id (see `ttsq dialects`).
    #[arg(long, short)]
    dialect: String,
    /// Voice of the dialect; its default when absent.
    #[arg(long)]
    voice: Option<String>,
    /// mp3, wav, pcm, opus or flac; by default taken from the --output
    /// file's extension, else mp3.
    #[arg(long, short)]
    format: Option<String>,
    /// Speaking rate, 0.5 to 2.0.
    #[arg(long)]
    speed: Option<f64>,
    /// `normal` goes through the queue; `high` is synthesized at once.
    #[arg(long, default_value = "normal", value_parser = ["normal", "high"])]
    priority: String,
    /// File to write the audio to (`-` for stdout); default `{task id}.{ext}`.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Longest wait for a normal-priority job, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    #[command(flatten)]
    connection: Connection,
}

/// `ttsq batch`.
#[derive(clap::Args, Debug)]
pub struct BatchArgs {
    /// JSON Lines file: one job per line, each with an `id` (the output file
    /// name) and the job's fields (`text`, `dialect`, `voice`, `format`, …).
    file: PathBuf,
    /// Directory for `{id}.{ext}` audio and `results.jsonl`.
    #[arg(long, short)]
    out: PathBuf,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Longest wait for one job, in seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    #[command(flatten)]
    connection: Connection,
}

/// `ttsq jobs`.
#[derive(clap::Args, Debug)]
pub struct JobsArgs {
    #[command(subcommand)]
    command: JobsCommand,
    #[command(flatten)]
    connection: Connection,
}

#[derive(clap::Subcommand, Debug)]
enum JobsCommand {
    /// List your tasks, newest first.
    List {
        /// Only tasks in this state (queued, processing, succeeded, failed, cancelled).
        #[arg(long)]
        status: Option<String>,
        /// Tasks per page (1 to 200).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Continue after this cursor (printed under the previous page).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show one task.
    Get {
        /// Task id.
        id: Uuid,
        /// Wait up to this many seconds for it to finish.
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
    /// Cancel a task that is still queued.
    Cancel {
        /// Task id.
        id: Uuid,
    },
}

/// `ttsq dialects`.
#[derive(clap::Args, Debug)]
pub struct DialectsArgs {
    #[command(flatten)]
    connection: Connection,
}

/// Prints a line on stdout: command output, as opposed to stderr progress.
fn out(line: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").context("Failed to write to stdout")
}

fn out_json(value: &impl Serialize) -> anyhow::Result<()> {
    out(&serde_json::to_string_pretty(value)?)
}

fn extension(format: &str) -> &str {
    match format {
        "ogg_opus" => "opus",
        other => other,
    }
}

/// `ttsq say`: synthesizes one text and writes the audio.
pub async fn say(args: SayArgs) -> anyhow::Result<()> {
    let client = args.connection.client()?;
    let format = args.format.clone().or_else(|| {
        args.output
            .as_deref()
            .and_then(Path::extension)
            .and_then(|e| e.to_str())
            .map(|e| if e == "ogg" { "opus" } else { e }.to_owned())
    });
    let job = NewJob {
        voice: args.voice.clone(),
        speed: args.speed,
        format: format.clone(),
        ..NewJob::new(&args.text, &args.dialect)
    };
    let (task_id, cache_hit, audio) = if args.priority == "high" {
        let speech = client.synthesize(&job).await?;
        (speech.task_id, speech.cache_hit, speech.audio)
    } else {
        let accepted = client.submit(&job, None).await?;
        let task = client
            .wait(accepted.task_id, Duration::from_secs(args.timeout))
            .await?;
        ensure_succeeded(&task)?;
        (
            task.task_id,
            task.cache_hit,
            client.download(task.task_id).await?,
        )
    };
    let ext = extension(format.as_deref().unwrap_or("mp3"));
    let path = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{task_id}.{ext}")));
    if path.as_os_str() == "-" {
        std::io::stdout()
            .lock()
            .write_all(&audio)
            .context("Failed to write the audio to stdout")?;
    } else {
        std::fs::write(&path, &audio)
            .with_context(|| format!("Failed to write {}", path.display()))?;
    }
    if args.connection.json {
        out_json(&serde_json::json!({
            "task_id": task_id,
            "file": path,
            "bytes": audio.len(),
            "cache_hit": cache_hit,
        }))?;
    } else {
        eprintln!(
            "{} bytes → {} (task {task_id}{})",
            audio.len(),
            path.display(),
            if cache_hit { ", from cache" } else { "" }
        );
    }
    Ok(())
}

fn ensure_succeeded(task: &Task) -> anyhow::Result<()> {
    match (task.status, &task.error) {
        (TaskStatus::Succeeded, _) => Ok(()),
        (status, Some(error)) => bail!(
            "task {} {status}: {} ({})",
            task.task_id,
            error.message,
            error.code
        ),
        (status, None) => bail!("task {} {status}", task.task_id),
    }
}

/// One line of `results.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BatchResult {
    id: String,
    /// `succeeded`, `failed`, `cancelled`, or `error` when the job never
    /// became a task (refused, unreachable API, timeout).
    status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    task_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cache_hit: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl BatchResult {
    fn error(id: &str, task_id: Option<Uuid>, error: impl std::fmt::Display) -> Self {
        Self {
            id: id.to_owned(),
            status: "error".to_owned(),
            task_id,
            file: None,
            cache_hit: None,
            error: Some(error.to_string()),
        }
    }

    /// Finished for good: a rerun neither resubmits nor redownloads it.
    fn is_final(&self, out_dir: &Path) -> bool {
        match self.status.as_str() {
            "succeeded" => self
                .file
                .as_deref()
                .is_some_and(|f| out_dir.join(f).is_file()),
            "failed" | "cancelled" => self.task_id.is_some(),
            _ => false,
        }
    }
}

/// One job line of the input.
struct BatchLine {
    id: String,
    job: Value,
    idempotency_key: String,
}

/// Reads the input; a bad line is an error naming its number, before
/// anything is submitted.
fn read_batch(path: &Path) -> anyhow::Result<Vec<BatchLine>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("Failed to read {}", path.display()))?;
    let mut seen = HashSet::new();
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        if line.trim().is_empty() {
            continue;
        }
        let mut job: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{n}: not valid JSON", path.display()))?;
        let object = job
            .as_object_mut()
            .with_context(|| format!("{}:{n}: a job must be a JSON object", path.display()))?;
        let id = match object.remove("id") {
            Some(Value::String(s)) => s,
            Some(Value::Number(n)) => n.to_string(),
            _ => bail!(
                "{}:{n}: every job needs an `id` (string or number)",
                path.display()
            ),
        };
        let valid = !id.is_empty()
            && id.len() <= 128
            && !id.starts_with('.')
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            bail!(
                "{}:{n}: id `{id}` must be 1 to 128 letters, digits, `-`, `_` or `.` (it names the output file)",
                path.display()
            );
        }
        if !seen.insert(id.clone()) {
            bail!("{}:{n}: id `{id}` is used twice", path.display());
        }
        let idempotency_key = idempotency_key(&id, &job);
        lines.push(BatchLine {
            id,
            job,
            idempotency_key,
        });
    }
    Ok(lines)
}

/// The key a line is submitted with: from its id and its content, so a
/// rerun of the same line returns the task already made, while an edited
/// line is a new job.
fn idempotency_key(id: &str, job: &Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(id.as_bytes());
    hasher.update([0]);
    hasher.update(canonical(job).as_bytes());
    format!("ttsq-batch-{}", &hex::encode(hasher.finalize())[..40])
}

/// JSON with object keys sorted at every level.
fn canonical(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<_, _> = map.iter().map(|(k, v)| (k, canonical(v))).collect();
            let fields: Vec<_> = sorted
                .into_iter()
                .map(|(k, v)| format!("{}:{v}", Value::String(k.clone())))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

/// The last result of each id in an earlier run's `results.jsonl`.
fn read_results(path: &Path) -> anyhow::Result<BTreeMap<String, BatchResult>> {
    let mut results = BTreeMap::new();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(results),
        Err(e) => return Err(e).with_context(|| format!("Failed to read {}", path.display())),
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        // A line cut short by a killed run is simply redone.
        if let Ok(result) = serde_json::from_str::<BatchResult>(line) {
            results.insert(result.id.clone(), result);
        }
    }
    Ok(results)
}

fn progress(len: usize, prefix: &'static str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>9} [{bar:40}] {pos}/{len} {rate} ETA {eta} {msg}")
    {
        let style = style.with_key(
            "rate",
            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                // A write into the bar's line buffer cannot fail.
                let _ = write!(w, "{:>7.1} jobs/s", state.per_sec());
            },
        );
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(prefix);
    bar
}

/// Appends results to `results.jsonl` as they come, so that a killed run
/// loses nothing it finished.
struct ResultLog {
    file: std::fs::File,
    failed: usize,
    succeeded: usize,
}

impl ResultLog {
    fn record(&mut self, result: &BatchResult) -> anyhow::Result<()> {
        if result.status == "succeeded" {
            self.succeeded += 1;
        } else {
            self.failed += 1;
        }
        let mut line = serde_json::to_string(result)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .context("Failed to write results.jsonl")
    }
}

/// `ttsq batch`: submits every unfinished line, waits, downloads, records.
pub async fn batch(args: BatchArgs) -> anyhow::Result<()> {
    let client = args.connection.client()?;
    let lines = read_batch(&args.file)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("Failed to create {}", args.out.display()))?;
    let results_path = args.out.join("results.jsonl");
    let earlier = read_results(&results_path)?;
    let (done, todo): (Vec<_>, Vec<_>) = lines
        .iter()
        .partition(|l| earlier.get(&l.id).is_some_and(|r| r.is_final(&args.out)));
    let earlier_failed = done
        .iter()
        .filter(|l| earlier.get(&l.id).is_some_and(|r| r.status != "succeeded"))
        .count();
    if !done.is_empty() {
        eprintln!(
            "{} of {} jobs already finished in {}; resuming with the other {}",
            done.len(),
            lines.len(),
            results_path.display(),
            todo.len()
        );
    }
    let mut log = ResultLog {
        file: std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&results_path)
            .with_context(|| format!("Failed to open {}", results_path.display()))?,
        failed: 0,
        succeeded: 0,
    };
    let concurrency = args.concurrency.max(1);

    // Phase 1: submit everything, so that workers can batch by dialect.
    let bar = progress(todo.len(), "submitted");
    let mut submitted = Vec::with_capacity(todo.len());
    let mut submissions = stream::iter(&todo)
        .map(|line| {
            let client = &client;
            async move {
                let result = client.submit(&line.job, Some(&line.idempotency_key)).await;
                (*line, result)
            }
        })
        .buffered(concurrency);
    while let Some((line, result)) = submissions.next().await {
        bar.inc(1);
        match result {
            Ok(accepted) => submitted.push((line, accepted.task_id)),
            Err(err) => log.record(&BatchResult::error(&line.id, None, err))?,
        }
    }
    bar.finish_and_clear();

    // Phase 2: wait for each task and download its audio.
    let bar = progress(submitted.len(), "finished");
    let timeout = Duration::from_secs(args.timeout);
    let mut finishing = stream::iter(submitted)
        .map(|(line, task_id)| {
            let client = &client;
            let out_dir = &args.out;
            async move { finish_line(client, out_dir, &line.id, task_id, timeout).await }
        })
        .buffer_unordered(concurrency);
    while let Some(result) = finishing.next().await {
        bar.inc(1);
        if result.status != "succeeded" {
            bar.suspend(|| {
                eprintln!(
                    "{}: {} {}",
                    result.id,
                    result.status,
                    result.error.as_deref().unwrap_or_default()
                );
            });
        }
        log.record(&result)?;
    }
    bar.finish_and_clear();

    let failed = log.failed + earlier_failed;
    let summary = serde_json::json!({
        "jobs": lines.len(),
        "succeeded": log.succeeded + done.len() - earlier_failed,
        "failed": failed,
        "resumed": done.len(),
        "results": results_path,
    });
    if args.connection.json {
        out_json(&summary)?;
    } else {
        eprintln!(
            "{} succeeded, {failed} failed ({} already done before this run); results in {}",
            log.succeeded + done.len() - earlier_failed,
            done.len(),
            results_path.display()
        );
    }
    if failed > 0 {
        bail!(
            "{failed} of {} jobs failed; see {}",
            lines.len(),
            results_path.display()
        );
    }
    Ok(())
}

async fn finish_line(
    client: &Client,
    out_dir: &Path,
    id: &str,
    task_id: Uuid,
    timeout: Duration,
) -> BatchResult {
    let task = match client.wait(task_id, timeout).await {
        Ok(task) => task,
        Err(err) => return BatchResult::error(id, Some(task_id), err),
    };
    if task.status != TaskStatus::Succeeded {
        return BatchResult {
            id: id.to_owned(),
            status: task.status.to_string(),
            task_id: Some(task_id),
            file: None,
            cache_hit: None,
            error: task.error.map(|e| format!("{}: {}", e.code, e.message)),
        };
    }
    let file = format!("{id}.{}", extension(&task.format));
    let written = match client.download(task_id).await {
        Ok(audio) => tokio::fs::write(out_dir.join(&file), &audio)
            .await
            .map_err(|e| format!("cannot write {file}: {e}")),
        Err(err) => Err(err.to_string()),
    };
    match written {
        Ok(()) => BatchResult {
            id: id.to_owned(),
            status: "succeeded".to_owned(),
            task_id: Some(task_id),
            file: Some(file),
            cache_hit: Some(task.cache_hit),
            error: None,
        },
        Err(error) => BatchResult::error(id, Some(task_id), error),
    }
}

/// Renders rows as aligned columns under a header.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut text = line(header.to_vec());
    for row in rows {
        text.push('\n');
        text.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    text
}

fn task_rows(tasks: &[Task]) -> Vec<Vec<String>> {
    tasks
        .iter()
        .map(|t| {
            vec![
                t.task_id.to_string(),
                t.status.to_string(),
                t.dialect.clone(),
                t.format.clone(),
                t.characters.to_string(),
                t.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                t.error.as_ref().map(|e| e.code.clone()).unwrap_or_default(),
            ]
        })
        .collect()
}

const TASK_HEADER: [&str; 7] = [
    "TASK",
    "STATUS",
    "DIALECT",
    "FORMAT",
    "CHARS",
    "CREATED (UTC)",
    "ERROR",
];

/// `ttsq jobs list|get|cancel`.
pub async fn jobs(args: JobsArgs) -> anyhow::Result<()> {
    let client = args.connection.client()?;
    let json = args.connection.json;
    match args.command {
        JobsCommand::List {
            status,
            limit,
            cursor,
        } => {
            let status = status
                .map(|s| {
                    serde_json::from_value::<TaskStatus>(Value::String(s.clone()))
                        .ok()
                        .filter(|s| *s != TaskStatus::Unknown)
                        .with_context(|| {
                            format!("unknown status `{s}`; use queued, processing, succeeded, failed or cancelled")
                        })
                })
                .transpose()?;
            let page = client
                .list(&ListOptions {
                    status,
                    limit: Some(limit),
                    cursor,
                })
                .await?;
            if json {
                return out_json(&serde_json::json!({
                    "jobs": page.jobs,
                    "next_cursor": page.next_cursor,
                }));
            }
            out(&table(&TASK_HEADER, &task_rows(&page.jobs)))?;
            if let Some(cursor) = page.next_cursor {
                eprintln!("more: ttsq jobs list --cursor {cursor}");
            }
            Ok(())
        }
        JobsCommand::Get { id, wait } => {
            let task = if wait > 0 {
                match client.wait(id, Duration::from_secs(wait)).await {
                    Ok(task) => task,
                    Err(ttsq_client::ClientError::WaitTimeout { .. }) => client.get(id).await?,
                    Err(err) => return Err(err.into()),
                }
            } else {
                client.get(id).await?
            };
            print_task(&task, json)
        }
        JobsCommand::Cancel { id } => {
            let task = client.cancel(id).await?;
            print_task(&task, json)
        }
    }
}

fn print_task(task: &Task, json: bool) -> anyhow::Result<()> {
    if json {
        return out_json(task);
    }
    let mut fields = vec![
        ("task", task.task_id.to_string()),
        ("status", task.status.to_string()),
        ("priority", task.priority.clone()),
        ("dialect", task.dialect.clone()),
        ("voice", task.voice.clone()),
        ("format", task.format.clone()),
        ("characters", task.characters.to_string()),
        ("cache hit", task.cache_hit.to_string()),
        ("attempts", task.attempts.to_string()),
        ("created", task.created_at.to_rfc3339()),
    ];
    if let Some(finished) = task.finished_at {
        fields.push(("finished", finished.to_rfc3339()));
    }
    if let Some(bytes) = task.audio_bytes {
        fields.push(("audio bytes", bytes.to_string()));
    }
    if let Some(error) = &task.error {
        fields.push(("error", format!("{}: {}", error.code, error.message)));
    }
    let width = fields.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    let text: Vec<String> = fields
        .into_iter()
        .map(|(k, v)| format!("{:<width$}  {v}", format!("{k}:")))
        .collect();
    out(&text.join("\n"))
}

/// `ttsq dialects`.
pub async fn dialects(args: DialectsArgs) -> anyhow::Result<()> {
    let client = args.connection.client()?;
    let dialects = client.dialects().await?;
    if args.connection.json {
        return out_json(&dialects);
    }
    let rows: Vec<Vec<String>> = dialects
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                d.name.clone(),
                d.voices.join(","),
                d.formats.join(","),
                d.provider_chain.join(" > "),
            ]
        })
        .collect();
    out(&table(
        &["DIALECT", "NAME", "VOICES", "FORMATS", "PROVIDERS"],
        &rows,
    ))
}

/// `ttsq openapi`: the API's OpenAPI document, as committed in docs/.
pub fn openapi() -> anyhow::Result<()> {
    std::io::stdout()
        .lock()
        .write_all(ttsq_api::openapi::document_json().as_bytes())
        .context("Failed to write to stdout")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idempotency_key_ignores_key_order_but_not_content() {
        let a = serde_json::json!({"text": "hi", "dialect": "en-gb", "metadata": {"x": 1, "y": 2}});
        let b = serde_json::json!({"metadata": {"y": 2, "x": 1}, "dialect": "en-gb", "text": "hi"});
        let c = serde_json::json!({"text": "hi!", "dialect": "en-gb"});
        assert_eq!(idempotency_key("1", &a), idempotency_key("1", &b));
        assert_ne!(idempotency_key("1", &a), idempotency_key("2", &a));
        assert_ne!(idempotency_key("1", &a), idempotency_key("1", &c));
        assert!(idempotency_key("1", &a).len() <= 255);
    }

    #[test]
    fn tables_align_their_columns() {
        let text = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(text, "A    BB\nxxx  y");
    }
}
