//! The client commands of the `ttsq` binary: `say`, `batch`, `jobs`,
//! `dialects` and `openapi`. They talk to a running API through
//! `ttsq-client` (never raw HTTP), configured by `TTSQ_URL` and
//! `TTSQ_API_KEY` (or `--url` and `--api-key`), and never read the
//! server's settings.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    io::{IsTerminal, Read, Write},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::Context;
use futures::{StreamExt, stream};
use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use ttsq_client::{
    API_KEY_VAR, AudioFormat, BatchItemStatus, Client, DEFAULT_URL, ListOptions, MAX_BATCH_ITEMS,
    NewJob, Problem, Task, TaskStatus, URL_VAR, batch_idempotency_key,
};
use uuid::Uuid;

use crate::cli_output::{Failure, Output, fail, out, out_json, print};

/// Where the API is and who calls it.
#[derive(clap::Args, Debug)]
pub struct Connection {
    /// URL of the ttsq API.
    #[arg(long, env = URL_VAR, default_value = DEFAULT_URL, global = true)]
    url: String,
    /// API key. Prefer the environment variable: a flag shows in `ps`.
    #[arg(long, env = API_KEY_VAR, hide_env_values = true, global = true)]
    api_key: Option<String>,
}

impl Connection {
    fn client(&self) -> anyhow::Result<Client> {
        let key = self
            .api_key
            .as_deref()
            .filter(|k| !k.trim().is_empty())
            .ok_or_else(|| {
                fail(
                    Failure::Usage,
                    format!("no API key: set {API_KEY_VAR} or pass --api-key"),
                )
            })?;
        Ok(Client::builder()
            .base_url(&self.url)
            .api_key(key)
            .user_agent(concat!("ttsq-cli/", env!("CARGO_PKG_VERSION")))
            .build()?)
    }
}

/// Most bytes `ttsq say -` reads from stdin: the API's default largest
/// request body, far more than a job's text may hold.
const MAX_STDIN_BYTES: u64 = 1024 * 1024;

/// Most bytes `ttsq say --file` reads: room for the API's longest long
/// text (`limits.max_long_text_chars`, 200,000 characters by default) in
/// any script, while refusing a file that is no text at all.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// How long one poll of a long job waits for it to finish before the
/// progress bar is updated from its counts.
const LONG_JOB_POLL: Duration = Duration::from_secs(1);

/// `ttsq say`.
#[derive(clap::Args, Debug)]
pub struct SayArgs {
    /// The text to speak; `-` reads it from stdin (at most 1 MiB).
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    text: Option<String>,
    /// Read the text from this UTF-8 file (at most 4 MiB), e.g. a whole
    /// chapter. It is synthesized as a long job: queued at normal priority,
    /// split by the server into chunks synthesized in parallel and joined
    /// into one audio file, with a progress bar over the chunks.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Dialect id (see `ttsq dialects`).
    #[arg(long, short)]
    dialect: String,
    /// Voice of the dialect; its default when absent.
    #[arg(long)]
    voice: Option<String>,
    /// Audio format: mp3, wav, pcm, opus or flac (what a dialect offers is
    /// in `ttsq dialects`); by default taken from the --out
    /// file's extension, else mp3.
    #[arg(long, short)]
    format: Option<String>,
    /// Speaking rate, 0.5 to 2.0.
    #[arg(long)]
    speed: Option<f64>,
    /// `normal` goes through the queue; `high` is synthesized at once. A
    /// long text (from --file, or longer than the dialect's
    /// max_request_chars) always goes through the queue.
    #[arg(long, default_value = "normal", value_parser = ["normal", "high"])]
    priority: String,
    /// File to write the audio to (`-` for stdout); default `{task id}.{ext}`.
    #[arg(long, short, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Longest wait for a normal-priority job, in seconds; for a long job,
    /// the longest wait while none of its chunks finishes.
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
    /// Directory for `{id}.{ext}` audio, `results.jsonl` and `submitted.jsonl`.
    #[arg(long, short, value_name = "DIR")]
    out: PathBuf,
    /// Downloads in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Longest wait, in seconds, while no job finishes; the jobs unfinished
    /// then are recorded as errors, and a rerun waits for them again.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Jobs per batch request, 1 to 1,000.
    #[arg(
        long,
        hide = true,
        default_value_t = MAX_BATCH_ITEMS,
        value_parser = chunk_size,
    )]
    chunk_size: usize,
    #[command(flatten)]
    connection: Connection,
}

fn chunk_size(raw: &str) -> Result<usize, String> {
    raw.parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_BATCH_ITEMS).contains(n))
        .ok_or_else(|| format!("must be 1 to {MAX_BATCH_ITEMS}"))
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

/// The text of `ttsq say`: the argument, or stdin for `-`.
fn say_text(arg: &str) -> anyhow::Result<String> {
    if arg != "-" {
        return Ok(arg.to_owned());
    }
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_STDIN_BYTES + 1)
        .read_to_end(&mut bytes)
        .context("Failed to read the text from stdin")?;
    if bytes.len() as u64 > MAX_STDIN_BYTES {
        return Err(fail(
            Failure::Usage,
            format!(
                "stdin holds more than {MAX_STDIN_BYTES} bytes; a job's text is far shorter \
                 (the API's limits.max_text_chars): split it into lines for `ttsq batch`"
            ),
        ));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| fail(Failure::Usage, "the text on stdin is not UTF-8"))?;
    if text.trim().is_empty() {
        return Err(fail(Failure::Usage, "no text on stdin"));
    }
    Ok(text)
}

/// The text of `ttsq say --file`: the whole file, which must be UTF-8 (a
/// byte-order mark is dropped) and hold some text.
fn file_text(path: &Path) -> anyhow::Result<String> {
    let unreadable = |e: std::io::Error| {
        fail(
            Failure::Usage,
            format!("Failed to read {}: {e}", path.display()),
        )
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(fail(
            Failure::Usage,
            format!(
                "{} holds more than {} MiB; a long job's text is far shorter \
                 (the API's limits.max_long_text_chars): split it into several files",
                path.display(),
                MAX_FILE_BYTES / (1024 * 1024)
            ),
        ));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        fail(
            Failure::Usage,
            format!(
                "{} is not UTF-8 text (invalid byte at offset {}); convert it first, \
                 e.g. `iconv -t UTF-8`",
                path.display(),
                e.utf8_error().valid_up_to()
            ),
        )
    })?;
    let text = text
        .strip_prefix('\u{feff}')
        .map(str::to_owned)
        .unwrap_or(text);
    if text.trim().is_empty() {
        return Err(fail(
            Failure::Usage,
            format!("{} holds no text", path.display()),
        ));
    }
    Ok(text)
}

/// Whether `text` is longer than one request of `dialect` takes (its
/// `max_request_chars` in the catalog), so that the server makes it a long
/// job. `false` when the catalog does not say: the server decides anyway.
async fn is_long_text(client: &Client, dialect: &str, text: &str) -> anyhow::Result<bool> {
    let dialects = match client.dialects().await {
        Ok(dialects) => dialects,
        Err(err) if err.is_unavailable() || err.is_auth() => {
            return Err(err).context("Failed to read the dialect catalog");
        }
        Err(err) => {
            tracing::debug!(error = %err, "no dialect catalog; the server decides");
            return Ok(false);
        }
    };
    let limit = dialects
        .iter()
        .find(|d| d.id == dialect)
        .and_then(|d| d.max_request_chars);
    Ok(limit.is_some_and(|max| text.chars().count() > max as usize))
}

/// How often, at most, a long job's progress is written as a line when
/// stderr is not a terminal (a log, CI).
const PROGRESS_LINE_EVERY: Duration = Duration::from_secs(5);

/// A long job's progress on stderr: a bar over its chunks on a terminal (a
/// spinner until the task says how many it has); otherwise a plain line
/// now and then, for logs.
enum ChunkProgress {
    Bar(ProgressBar),
    Lines {
        task_id: Uuid,
        /// Chunks done when a line was last written, and when.
        written: Option<(u32, tokio::time::Instant)>,
    },
}

impl ChunkProgress {
    fn new(task_id: Uuid) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self::Lines {
                task_id,
                written: None,
            };
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {prefix:>10} {elapsed} {msg}") {
            bar.set_style(style);
        }
        bar.set_prefix("submitted");
        bar.enable_steady_tick(Duration::from_millis(120));
        Self::Bar(bar)
    }

    /// Shows the task's state: chunks done of chunks total once it carries
    /// them, else its status.
    fn show(&mut self, task: &Task) {
        let counts = task.chunks_total.zip(task.chunks_done);
        match self {
            Self::Bar(bar) => {
                if let Some((total, done)) = counts {
                    if bar.length() != Some(u64::from(total)) {
                        bar.set_style(progress_style("chunks"));
                        bar.set_length(u64::from(total));
                    }
                    bar.set_position(u64::from(done));
                }
                bar.set_prefix(task.status.to_string());
            }
            Self::Lines { task_id, written } => {
                let Some((total, done)) = counts else { return };
                let due = match written {
                    None => true,
                    Some((seen, at)) => {
                        done != *seen
                            && (task.status.is_terminal() || at.elapsed() >= PROGRESS_LINE_EVERY)
                    }
                };
                if due {
                    eprintln!("task {task_id}: {done} of {total} chunks synthesized");
                    *written = Some((done, tokio::time::Instant::now()));
                }
            }
        }
    }

    fn clear(&self) {
        if let Self::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// Polls a long job until it is terminal, showing its chunks on `progress`;
/// [`ttsq_client::ClientError::WaitTimeout`] when no chunk finished for
/// `stall`.
async fn follow_long_job(
    client: &Client,
    task_id: Uuid,
    stall: Duration,
    progress: &mut ChunkProgress,
) -> anyhow::Result<Task> {
    let mut progress_at = tokio::time::Instant::now();
    let mut seen_done = None;
    loop {
        let task = client.poll(task_id, LONG_JOB_POLL).await?;
        progress.show(&task);
        if task.status.is_terminal() {
            return Ok(task);
        }
        if task.chunks_done != seen_done {
            seen_done = task.chunks_done;
            progress_at = tokio::time::Instant::now();
        } else if progress_at.elapsed() >= stall {
            return Err(ttsq_client::ClientError::WaitTimeout {
                task_id,
                timeout: stall,
            }
            .into());
        }
    }
}

/// Submits `job` at normal priority as a long job, follows it to its end
/// with a progress bar and downloads its audio. Ctrl-C cancels the job
/// while it runs (its chunks not started are neither synthesized nor
/// billed) and fails.
async fn say_long(
    client: &Client,
    job: &NewJob,
    stall: Duration,
) -> anyhow::Result<(Task, bytes::Bytes)> {
    let accepted = client.submit(job, None).await?;
    let task_id = accepted.task_id;
    let mut progress = ChunkProgress::new(task_id);
    let ended = AtomicBool::new(false);
    let work = async {
        let followed = follow_long_job(client, task_id, stall, &mut progress).await;
        progress.clear();
        let task = followed?;
        ended.store(true, Ordering::Relaxed);
        ensure_succeeded(&task)?;
        let audio = client.download(task_id).await?;
        anyhow::Ok((task, audio))
    };
    tokio::select! {
        done = work => done,
        // Listening replaces the default handler for the process's life:
        // every wait after this one is inside this select.
        _ = tokio::signal::ctrl_c() => {
            progress.clear();
            let why = if ended.load(Ordering::Relaxed) {
                format!("interrupted (task {task_id} had ended)")
            } else {
                match client.cancel(task_id).await {
                    Ok(task) => format!("interrupted: task {task_id} {}", task.status),
                    Err(err) => format!("interrupted: task {task_id} was not cancelled: {err}"),
                }
            };
            Err(fail(Failure::JobsFailed, why))
        }
    }
}

/// `ttsq say`: synthesizes one text and writes the audio.
pub async fn say(args: SayArgs, output: Output) -> anyhow::Result<()> {
    let client = args.connection.client()?;
    let text = match (&args.file, &args.text) {
        (Some(path), _) => file_text(path)?,
        (None, Some(arg)) => say_text(arg)?,
        // clap requires one of them.
        (None, None) => return Err(fail(Failure::Usage, "give a text or --file")),
    };
    let format = args
        .format
        .as_deref()
        .map(AudioFormat::from)
        .or_else(|| args.out.as_deref().and_then(AudioFormat::from_path));
    let long = args.file.is_some() || is_long_text(&client, &args.dialect, &text).await?;
    let job = NewJob {
        voice: args.voice.clone(),
        speed: args.speed,
        format: format.clone(),
        ..NewJob::new(text, &args.dialect)
    };
    let mut chunks_total = None;
    let (task_id, cache_hit, audio) = if long {
        if args.priority == "high" {
            eprintln!("note: a long text goes through the queue: submitting it at normal priority");
        }
        let (task, audio) = say_long(&client, &job, Duration::from_secs(args.timeout)).await?;
        chunks_total = task.chunks_total;
        (task.task_id, task.cache_hit, audio)
    } else if args.priority == "high" {
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
    let ext = format.unwrap_or_default().extension().to_owned();
    let path = args
        .out
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
    let mut fields = serde_json::json!({
        "task_id": task_id,
        "status": TaskStatus::Succeeded,
        "file": path,
        "bytes": audio.len(),
        "cache_hit": cache_hit,
    });
    if let (Some(total), Some(object)) = (chunks_total, fields.as_object_mut()) {
        object.insert("chunks_total".to_owned(), total.into());
    }
    match output {
        // The audio is on stdout: the record goes to stderr.
        Output::Json | Output::Csv if path.as_os_str() == "-" => eprintln!("{fields}"),
        // Sentences go to stderr, so that `--out -` keeps stdout audio only.
        Output::Table => eprintln!(
            "{} bytes → {} (task {task_id}{}{})",
            audio.len(),
            path.display(),
            chunks_total.map_or_else(String::new, |n| format!(", {n} chunks")),
            if cache_hit { ", from cache" } else { "" }
        ),
        output => print(
            output,
            &["task_id", "file", "bytes", "cache_hit"],
            &[vec![
                task_id.to_string(),
                path.display().to_string(),
                audio.len().to_string(),
                cache_hit.to_string(),
            ]],
            &fields,
        )?,
    }
    Ok(())
}

fn ensure_succeeded(task: &Task) -> anyhow::Result<()> {
    let why = match (task.status, &task.error) {
        (TaskStatus::Succeeded, _) => return Ok(()),
        (status, Some(error)) => format!(
            "task {} {status}: {} ({})",
            task.task_id, error.message, error.code
        ),
        (status, None) => format!("task {} {status}", task.task_id),
    };
    Err(fail(Failure::JobsFailed, why))
}

/// One line of `results.jsonl`: how a job of the input ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BatchResult {
    id: String,
    /// `succeeded`, `failed`, `cancelled`, or `error` when the job never
    /// became a task (refused) or its audio is not here yet (timeout,
    /// download failure).
    status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    task_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cache_hit: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// The line's content key: a result of an edited line is not its result.
    /// Absent in files of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

impl BatchResult {
    fn error(line: &BatchLine, task_id: Option<Uuid>, error: impl std::fmt::Display) -> Self {
        Self {
            id: line.id.clone(),
            status: "error".to_owned(),
            task_id,
            file: None,
            cache_hit: None,
            error: Some(error.to_string()),
            key: Some(line.key.clone()),
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

/// One line of `submitted.jsonl`: a line that became a task, written as
/// soon as its batch is accepted, so that a rerun waits for that task
/// instead of submitting the line again.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Submission {
    id: String,
    key: String,
    task_id: Uuid,
    batch_id: Uuid,
}

/// One job line of the input.
struct BatchLine {
    id: String,
    job: Value,
    /// From the id and the content: names this version of the line.
    key: String,
}

impl BatchLine {
    /// The line as a batch item: its job, with its id as `custom_id`.
    fn item(&self) -> Value {
        let mut item = self.job.clone();
        if let Some(object) = item.as_object_mut() {
            object.insert("custom_id".to_owned(), Value::String(self.id.clone()));
        }
        item
    }

    /// The extension of the audio it asks for.
    fn extension(&self) -> String {
        self.job
            .get("format")
            .and_then(Value::as_str)
            .map(AudioFormat::from)
            .unwrap_or_default()
            .extension()
            .to_owned()
    }
}

/// Reads the input; a bad line is a usage error naming its number, before
/// anything is submitted.
fn read_batch(path: &Path) -> anyhow::Result<Vec<BatchLine>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(
            Failure::Usage,
            format!("Failed to read {}: {e}", path.display()),
        )
    })?;
    let bad =
        |n: usize, why: String| fail(Failure::Usage, format!("{}:{n}: {why}", path.display()));
    let mut seen = HashSet::new();
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        if line.trim().is_empty() {
            continue;
        }
        let mut job: Value =
            serde_json::from_str(line).map_err(|e| bad(n, format!("not valid JSON: {e}")))?;
        let object = job
            .as_object_mut()
            .ok_or_else(|| bad(n, "a job must be a JSON object".to_owned()))?;
        let id = match object.remove("id") {
            Some(Value::String(s)) => s,
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return Err(bad(
                    n,
                    "every job needs an `id` (string or number)".to_owned(),
                ));
            }
        };
        let valid = !id.is_empty()
            && id.len() <= 128
            && !id.starts_with('.')
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(bad(
                n,
                format!(
                    "id `{id}` must be 1 to 128 letters, digits, `-`, `_` or `.` (it names the output file)"
                ),
            ));
        }
        if !seen.insert(id.clone()) {
            return Err(bad(n, format!("id `{id}` is used twice")));
        }
        let key = line_key(&id, &job);
        lines.push(BatchLine { id, job, key });
    }
    Ok(lines)
}

/// The key of a line's version: from its id and its content (object keys
/// sorted), so that an edited line is a new job.
fn line_key(id: &str, job: &Value) -> String {
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

/// The last record of each id in a JSON Lines file of an earlier run; a
/// line cut short by a killed run is skipped (its job is simply redone).
fn read_records<T: serde::de::DeserializeOwned>(
    path: &Path,
    id: impl Fn(&T) -> &str,
) -> anyhow::Result<BTreeMap<String, T>> {
    let mut records = BTreeMap::new();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(records),
        Err(e) => return Err(e).with_context(|| format!("Failed to read {}", path.display())),
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Ok(record) = serde_json::from_str::<T>(line) {
            records.insert(id(&record).to_owned(), record);
        }
    }
    Ok(records)
}

fn progress(len: usize, prefix: &'static str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(progress_style("jobs"));
    bar.set_prefix(prefix);
    bar
}

/// The style of the command line's progress bars: position, rate of
/// `unit`s per second and time left.
fn progress_style(unit: &'static str) -> ProgressStyle {
    let Ok(style) =
        ProgressStyle::with_template("{prefix:>9} [{bar:40}] {pos}/{len} {rate} ETA {eta} {msg}")
    else {
        return ProgressStyle::default_bar();
    };
    style
        .with_key(
            "rate",
            move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                // A write into the bar's line buffer cannot fail.
                let _ = write!(w, "{:>7.1} {unit}/s", state.per_sec());
            },
        )
        .progress_chars("=> ")
}

/// An append-only JSON Lines file, written line by line as things happen,
/// so that a killed run loses nothing it did.
struct JsonLines(std::fs::File);

impl JsonLines {
    fn open(path: &Path) -> anyhow::Result<Self> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(Self)
            .with_context(|| format!("Failed to open {}", path.display()))
    }

    fn append(&mut self, record: &impl Serialize) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        self.0
            .write_all(line.as_bytes())
            .context("Failed to write a record of the batch")
    }
}

/// `results.jsonl` and the run's counts.
struct ResultLog {
    file: JsonLines,
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
        self.file.append(result)
    }
}

/// A line submitted (in this run or an earlier one) and not finished yet.
struct Pending<'a> {
    line: &'a BatchLine,
    task_id: Uuid,
    batch_id: Uuid,
}

/// `ttsq batch`: submits the unfinished lines in batches, waits for them,
/// downloads their audio and records every result.
pub async fn batch(args: BatchArgs, output: Output) -> anyhow::Result<()> {
    let client = args.connection.client()?;
    let lines = read_batch(&args.file)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("Failed to create {}", args.out.display()))?;
    let results_path = args.out.join("results.jsonl");
    let submitted_path = args.out.join("submitted.jsonl");
    let earlier = read_records(&results_path, |r: &BatchResult| &r.id)?;
    let submissions = read_records(&submitted_path, |s: &Submission| &s.id)?;

    let mut done = Vec::new();
    let mut pending = Vec::new();
    let mut todo = Vec::new();
    for line in &lines {
        let result = earlier
            .get(&line.id)
            .filter(|r| r.key.as_deref().is_none_or(|k| k == line.key));
        if result.is_some_and(|r| r.is_final(&args.out)) {
            done.push((line, result.is_some_and(|r| r.status == "succeeded")));
            continue;
        }
        match submissions.get(&line.id).filter(|s| s.key == line.key) {
            Some(s) => pending.push(Pending {
                line,
                task_id: s.task_id,
                batch_id: s.batch_id,
            }),
            None => todo.push(line),
        }
    }
    let earlier_succeeded = done.iter().filter(|(_, ok)| *ok).count();
    let earlier_failed = done.len() - earlier_succeeded;
    if !done.is_empty() || !pending.is_empty() {
        eprintln!(
            "{} of {} jobs already finished in {}; resuming with the other {} ({} submitted before)",
            done.len(),
            lines.len(),
            results_path.display(),
            todo.len() + pending.len(),
            pending.len(),
        );
    }
    let mut log = ResultLog {
        file: JsonLines::open(&results_path)?,
        failed: 0,
        succeeded: 0,
    };
    let mut state = JsonLines::open(&submitted_path)?;
    submit_lines(
        &client,
        &todo,
        args.chunk_size,
        &mut log,
        &mut state,
        &mut pending,
    )
    .await?;
    let timeout = Duration::from_secs(args.timeout);
    finish_lines(
        &client,
        &args.out,
        pending,
        args.concurrency.max(1),
        timeout,
        &mut log,
    )
    .await?;

    let failed = log.failed + earlier_failed;
    let succeeded = log.succeeded + earlier_succeeded;
    let summary = serde_json::json!({
        "jobs": lines.len(),
        "succeeded": succeeded,
        "failed": failed,
        "resumed": done.len(),
        "results": results_path,
    });
    match output {
        Output::Table => eprintln!(
            "{succeeded} succeeded, {failed} failed ({} already done before this run); results in {}",
            done.len(),
            results_path.display()
        ),
        output => print(
            output,
            &["jobs", "succeeded", "failed", "resumed", "results"],
            &[vec![
                lines.len().to_string(),
                succeeded.to_string(),
                failed.to_string(),
                done.len().to_string(),
                results_path.display().to_string(),
            ]],
            &summary,
        )?,
    }
    if failed > 0 {
        return Err(fail(
            Failure::JobsFailed,
            format!(
                "{failed} of {} jobs failed; see {}",
                lines.len(),
                results_path.display()
            ),
        ));
    }
    Ok(())
}

/// Submits `todo` in batches of `chunk_size`, each with the idempotency key
/// of its content (a rerun after a crash between the request and the
/// record gets the same batch back). The API takes a batch whole or not at
/// all: the items it names as invalid are recorded as errors, and the rest
/// is submitted again without them; a batch too large in bytes is halved.
/// Stops at once when the API is unreachable or refuses the key: what was
/// submitted is in `submitted.jsonl` for the rerun.
async fn submit_lines<'a>(
    client: &Client,
    todo: &[&'a BatchLine],
    chunk_size: usize,
    log: &mut ResultLog,
    state: &mut JsonLines,
    pending: &mut Vec<Pending<'a>>,
) -> anyhow::Result<()> {
    let bar = progress(todo.len(), "submitted");
    let mut queue: VecDeque<Vec<&BatchLine>> =
        todo.chunks(chunk_size.max(1)).map(<[_]>::to_vec).collect();
    while let Some(chunk) = queue.pop_front() {
        let body = serde_json::json!({
            "items": chunk.iter().map(|line| line.item()).collect::<Vec<_>>(),
        });
        let key = batch_idempotency_key(&body)?;
        let refusal = match client.submit_batch(&body, Some(&key)).await {
            Ok(accepted) => {
                anyhow::ensure!(
                    accepted.task_ids.len() == chunk.len(),
                    "the API answered {} task ids for a batch of {}",
                    accepted.task_ids.len(),
                    chunk.len()
                );
                for (line, task_id) in chunk.iter().zip(accepted.task_ids) {
                    state.append(&Submission {
                        id: line.id.clone(),
                        key: line.key.clone(),
                        task_id,
                        batch_id: accepted.batch_id,
                    })?;
                    pending.push(Pending {
                        line,
                        task_id,
                        batch_id: accepted.batch_id,
                    });
                }
                bar.inc(chunk.len() as u64);
                continue;
            }
            Err(err) if err.is_unavailable() || err.is_auth() => {
                bar.finish_and_clear();
                return Err(err).context("Failed to submit a batch");
            }
            Err(err) => err,
        };
        let items = refusal
            .problem()
            .map(Problem::item_errors)
            .unwrap_or_default();
        if refusal.status() == Some(413) && chunk.len() > 1 {
            let (first, second) = chunk.split_at(chunk.len() / 2);
            queue.push_front(second.to_vec());
            queue.push_front(first.to_vec());
            continue;
        }
        if refusal.status() != Some(400) || items.is_empty() {
            for line in &chunk {
                log.record(&BatchResult::error(line, None, &refusal))?;
            }
            bar.inc(chunk.len() as u64);
            continue;
        }
        let mut rest = Vec::with_capacity(chunk.len());
        for (index, line) in chunk.into_iter().enumerate() {
            match items.get(&index) {
                Some(errors) => {
                    let why: Vec<String> = errors
                        .iter()
                        .map(|e| match e.field.as_str() {
                            "" => e.reason.clone(),
                            field => format!("{field}: {}", e.reason),
                        })
                        .collect();
                    bar.suspend(|| eprintln!("{}: refused: {}", line.id, why.join("; ")));
                    log.record(&BatchResult::error(line, None, why.join("; ")))?;
                    bar.inc(1);
                }
                None => rest.push(line),
            }
        }
        if !rest.is_empty() {
            queue.push_front(rest);
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// Waits for the pending lines' batches, downloads each item's audio as it
/// finishes and records it. A batch's items are read only when its counts
/// show that more of them finished.
async fn finish_lines(
    client: &Client,
    out_dir: &Path,
    pending: Vec<Pending<'_>>,
    concurrency: usize,
    timeout: Duration,
    log: &mut ResultLog,
) -> anyhow::Result<()> {
    let bar = progress(pending.len(), "finished");
    let mut batches: BTreeMap<Uuid, (u64, HashMap<Uuid, &BatchLine>)> = BTreeMap::new();
    for p in pending {
        batches
            .entry(p.batch_id)
            .or_insert_with(|| (u64::MAX, HashMap::new()))
            .1
            .insert(p.task_id, p.line);
    }
    let mut progress_at = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(250);
    while !batches.is_empty() {
        let mut finished = Vec::new();
        for (batch_id, (seen_terminal, lines)) in &mut batches {
            let counts = client
                .get_batch(*batch_id, None, Some(1))
                .await?
                .batch
                .counts;
            if counts.terminal() == *seen_terminal {
                continue;
            }
            *seen_terminal = counts.terminal();
            for item in client.batch_items(*batch_id).await?.1 {
                if item.status.is_terminal()
                    && let Some(line) = lines.remove(&item.task_id)
                {
                    finished.push((line, item));
                }
            }
        }
        batches.retain(|_, (_, lines)| !lines.is_empty());
        if finished.is_empty() {
            if progress_at.elapsed() >= timeout {
                for (_, lines) in batches.values() {
                    for (task_id, line) in lines {
                        let why = format!(
                            "did not finish within {}s of the last job finishing; rerun to wait again",
                            timeout.as_secs()
                        );
                        log.record(&BatchResult::error(line, Some(*task_id), why))?;
                        bar.inc(1);
                    }
                }
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
            continue;
        }
        progress_at = tokio::time::Instant::now();
        pause = Duration::from_millis(250);
        let mut downloads = stream::iter(finished)
            .map(|(line, item)| finish_item(client, out_dir, line, item))
            .buffer_unordered(concurrency);
        while let Some(result) = downloads.next().await {
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
    }
    bar.finish_and_clear();
    Ok(())
}

/// The result of a finished item: its audio downloaded to `{id}.{ext}`
/// when it succeeded.
async fn finish_item(
    client: &Client,
    out_dir: &Path,
    line: &BatchLine,
    item: BatchItemStatus,
) -> BatchResult {
    if item.status != TaskStatus::Succeeded {
        return BatchResult {
            id: line.id.clone(),
            status: item.status.to_string(),
            task_id: Some(item.task_id),
            file: None,
            cache_hit: None,
            error: item.error.map(|e| format!("{}: {}", e.code, e.message)),
            key: Some(line.key.clone()),
        };
    }
    let file = format!("{}.{}", line.id, line.extension());
    let written = match client.download(item.task_id).await {
        Ok(audio) => tokio::fs::write(out_dir.join(&file), &audio)
            .await
            .map_err(|e| format!("cannot write {file}: {e}")),
        Err(err) => Err(err.to_string()),
    };
    match written {
        Ok(()) => BatchResult {
            id: line.id.clone(),
            status: "succeeded".to_owned(),
            task_id: Some(item.task_id),
            file: Some(file),
            cache_hit: Some(item.cache_hit),
            error: None,
            key: Some(line.key.clone()),
        },
        Err(error) => BatchResult::error(line, Some(item.task_id), error),
    }
}

fn task_row(t: &Task) -> Vec<String> {
    vec![
        t.task_id.to_string(),
        t.status.to_string(),
        t.dialect.clone(),
        t.format.to_string(),
        t.characters.to_string(),
        t.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        t.error.as_ref().map(|e| e.code.clone()).unwrap_or_default(),
    ]
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
pub async fn jobs(args: JobsArgs, output: Output) -> anyhow::Result<()> {
    let client = args.connection.client()?;
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
                        .ok_or_else(|| {
                            fail(Failure::Usage, format!("unknown status `{s}`; use queued, processing, succeeded, failed or cancelled"))
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
            let rows: Vec<Vec<String>> = page.jobs.iter().map(task_row).collect();
            print(
                output,
                &TASK_HEADER,
                &rows,
                &serde_json::json!({
                    "jobs": page.jobs,
                    "next_cursor": page.next_cursor,
                }),
            )?;
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
            print_task(&task, output)
        }
        JobsCommand::Cancel { id } => {
            let task = client.cancel(id).await?;
            print_task(&task, output)
        }
    }
}

fn print_task(task: &Task, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => return out_json(task),
        Output::Csv => {
            return print(
                output,
                &TASK_HEADER,
                &[task_row(task)],
                &serde_json::json!(task),
            );
        }
        Output::Table => {}
    }
    let mut fields = vec![
        ("task", task.task_id.to_string()),
        ("status", task.status.to_string()),
        ("priority", task.priority.to_string()),
        ("dialect", task.dialect.clone()),
        ("voice", task.voice.clone()),
        ("format", task.format.to_string()),
        ("characters", task.characters.to_string()),
        ("cache hit", task.cache_hit.to_string()),
        ("attempts", task.attempts.to_string()),
        ("created", task.created_at.to_rfc3339()),
    ];
    if let (Some(total), Some(done)) = (task.chunks_total, task.chunks_done) {
        fields.push(("chunks", format!("{done} of {total} synthesized")));
    }
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
pub async fn dialects(args: DialectsArgs, output: Output) -> anyhow::Result<()> {
    let client = args.connection.client()?;
    let dialects = client.dialects().await?;
    let rows: Vec<Vec<String>> = dialects
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                d.name.clone(),
                d.voices.join(","),
                d.formats
                    .iter()
                    .map(AudioFormat::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
                d.provider_chain.join(" > "),
            ]
        })
        .collect();
    print(
        output,
        &["DIALECT", "NAME", "VOICES", "FORMATS", "PROVIDERS"],
        &rows,
        &serde_json::json!(dialects),
    )
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
    fn the_line_key_ignores_key_order_but_not_content() {
        let a = serde_json::json!({"text": "hi", "dialect": "en-gb", "metadata": {"x": 1, "y": 2}});
        let b = serde_json::json!({"metadata": {"y": 2, "x": 1}, "dialect": "en-gb", "text": "hi"});
        let c = serde_json::json!({"text": "hi!", "dialect": "en-gb"});
        assert_eq!(line_key("1", &a), line_key("1", &b));
        assert_ne!(line_key("1", &a), line_key("2", &a));
        assert_ne!(line_key("1", &a), line_key("1", &c));
    }

    #[test]
    fn a_line_becomes_an_item_with_its_id_and_names_its_file_by_format() {
        let line = BatchLine {
            id: "intro".to_owned(),
            job: serde_json::json!({"text": "hi", "dialect": "en-gb", "format": "ogg_opus"}),
            key: String::new(),
        };
        assert_eq!(line.item()["custom_id"], "intro");
        assert_eq!(line.extension(), "opus");
    }
}
