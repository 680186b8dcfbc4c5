//! HTTP load: the job texts, and many clients submitting jobs, each request
//! timed.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use futures::{StreamExt as _, stream};
use serde_json::{Value, json};

/// Dialect every bench job uses; routed to the fake.
pub const DIALECT: &str = "en-gb";
/// Voice every bench job uses.
pub const VOICE: &str = "rachel";

/// A normal-priority job body.
pub fn job(text: &str) -> Value {
    json!({"text": text, "dialect": DIALECT, "voice": VOICE, "format": "wav"})
}

/// Most jobs one `POST /v1/tts/batches` takes.
pub const BATCH_ITEMS: usize = 1_000;

/// A `POST /v1/tts/batches` body of normal jobs, one per text.
pub fn batch(texts: impl IntoIterator<Item = String>) -> Value {
    json!({"items": texts.into_iter().map(|t| job(&t)).collect::<Vec<_>>()})
}

/// What a burst of submits did.
pub struct Submitted {
    /// Requests answered 202 (or 200).
    pub accepted: usize,
    /// Latency of every accepted request.
    pub latencies: Vec<Duration>,
    /// Wall time from the first request to the last answer.
    pub elapsed: Duration,
}

/// An HTTP client with a connection pool big enough for `clients`.
pub fn client(clients: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .timeout(Duration::from_secs(120))
        .build()?)
}

/// POSTs every body to `{base_url}{path}` from `clients` concurrent clients.
/// Fails on the first answer other than 200/202, with its body.
pub async fn post_all(
    http: &reqwest::Client,
    base_url: &str,
    path: &str,
    key: &str,
    bodies: Vec<Value>,
    clients: usize,
    progress_label: &str,
) -> anyhow::Result<Submitted> {
    let total = bodies.len();
    let url = format!("{base_url}{path}");
    let started = Instant::now();
    let mut results = stream::iter(bodies)
        .map(|body| {
            let request = http.post(&url).bearer_auth(key).json(&body);
            async move {
                let sent = Instant::now();
                let response = request.send().await?;
                let status = response.status();
                if status.as_u16() != 202 && status.as_u16() != 200 {
                    let text = response.text().await.unwrap_or_default();
                    bail!("{path} answered {status}: {text}");
                }
                // Read the body so the connection is reused.
                let _ = response.bytes().await?;
                Ok(sent.elapsed())
            }
        })
        .buffer_unordered(clients.max(1));
    let mut latencies = Vec::with_capacity(total);
    let mut last_report = Instant::now();
    while let Some(result) = results.next().await {
        latencies.push(result?);
        if last_report.elapsed() > Duration::from_secs(2) {
            eprintln!("    … {progress_label}: {}/{total}", latencies.len());
            last_report = Instant::now();
        }
    }
    Ok(Submitted {
        accepted: latencies.len(),
        latencies,
        elapsed: started.elapsed(),
    })
}

/// Submits `texts` as normal jobs through `POST /v1/tts/jobs`.
pub async fn submit_jobs(
    http: &reqwest::Client,
    base_url: &str,
    key: &str,
    texts: impl IntoIterator<Item = String>,
    clients: usize,
) -> anyhow::Result<Submitted> {
    let bodies = texts.into_iter().map(|t| job(&t)).collect();
    post_all(
        http,
        base_url,
        "/v1/tts/jobs",
        key,
        bodies,
        clients,
        "submitted",
    )
    .await
}

/// Submits `texts` as normal jobs through `POST /v1/tts/batches`,
/// [`BATCH_ITEMS`] per request, from `clients` concurrent clients; the
/// answer counts requests, not jobs.
pub async fn submit_batches(
    http: &reqwest::Client,
    base_url: &str,
    key: &str,
    texts: Vec<String>,
    clients: usize,
) -> anyhow::Result<Submitted> {
    let bodies = texts
        .chunks(BATCH_ITEMS)
        .map(|chunk| batch(chunk.iter().cloned()))
        .collect();
    post_all(
        http,
        base_url,
        "/v1/tts/batches",
        key,
        bodies,
        clients,
        "batches submitted",
    )
    .await
}

/// The `i`-th job text of run `run`: unique per run and index.
pub fn text(run: &str, i: usize) -> String {
    format!("Bench {run} sentence {i:06}.")
}

/// A short random tag that keeps one run's texts apart from another's.
pub fn run_tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// Seconds since the Unix epoch, to compare with ttsq's timestamps.
pub fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}
