#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`Client`]: one method per API call, retries for idempotent ones;
//!   made by [`ClientBuilder`] or [`Client::from_env`].
//! - `types`: request and response shapes ([`NewJob`], [`Task`],
//!   [`AudioFormat`], [`Priority`], …).
//! - `batch`: batches of up to [`MAX_BATCH_ITEMS`] jobs, and
//!   [`Client::run_batch`] for any number of them.
//! - `error`: [`ClientError`] and [`Problem`], the server's problem+json.
//! - `webhook`: [`WebhookVerifier`], checking a webhook delivery's
//!   Standard Webhooks signature.

mod batch;
mod builder;
mod error;
mod types;
mod webhook;

use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, stream};
use reqwest::{Method, RequestBuilder, Response, StatusCode, header};
use serde::{Serialize, de::DeserializeOwned};
use uuid::Uuid;

pub use batch::{
    Batch, BatchAccepted, BatchCounts, BatchItem, BatchItemStatus, BatchPage, CancelledBatch,
    MAX_BATCH_ITEMS, NewBatch, batch_idempotency_key,
};
pub use builder::{API_KEY_VAR, ClientBuilder, DEFAULT_URL, URL_VAR};
pub use error::{ClientError, FieldError, Problem};
pub use types::{
    Accepted, AudioFormat, Dialect, ListOptions, Mark, NewJob, Priority, Speech, Task, TaskError,
    TaskPage, TaskStatus, Usage,
};
pub use webhook::{WebhookError, WebhookVerifier};

/// Longest single long-poll the client asks for; the server caps it too.
const POLL_SLICE: Duration = Duration::from_secs(20);

/// How idempotent calls are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub retries: u32,
    /// Pause before the first retry; doubled for each next one.
    pub initial_backoff: Duration,
    /// Longest pause, also the cap on a server's `Retry-After`.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// A client of one ttsq API as one tenant; cheap to clone.
///
/// ```no_run
/// # fn demo() -> Result<(), ttsq_client::ClientError> {
/// use std::time::Duration;
/// use ttsq_client::{Client, RetryPolicy};
///
/// // TTSQ_URL and TTSQ_API_KEY, as the `ttsq` command line reads them.
/// let client = Client::from_env()?;
/// // Or everything spelled out, on the caller's own reqwest client.
/// let client = Client::builder()
///     .base_url("https://tts.example.com")
///     .api_key("ttsq_…")
///     .timeout(Duration::from_secs(60))
///     .retry(RetryPolicy { retries: 2, ..RetryPolicy::default() })
///     .user_agent("my-app/1.0")
///     .http_client(reqwest::Client::new())
///     .build()?;
/// # let _ = client; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base_url: String,
    api_key: String,
    retry: RetryPolicy,
    /// Longest wait for one request's answer (long-polls ask for less).
    timeout: Duration,
    /// Sent as `User-Agent` on every request, when set on the builder.
    user_agent: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret: never in logs or error output.
        f.debug_struct("Client")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// The same client with another retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The API's base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Submits one job and returns the task: `queued` for normal priority
    /// (or already terminal on a cache hit), terminal for high priority (as
    /// JSON; use [`Client::synthesize`] for the bytes). With an
    /// `idempotency_key` the call is retried on transient failures, and
    /// the server answers a repeat with the first task.
    pub async fn submit<J: Serialize + ?Sized>(
        &self,
        job: &J,
        idempotency_key: Option<&str>,
    ) -> Result<Accepted, ClientError> {
        let response = self
            .send(
                Method::POST,
                "/v1/tts/jobs",
                idempotency_key.is_some(),
                |r| {
                    let r = r.header(header::ACCEPT, "application/json").json(job);
                    match idempotency_key {
                        Some(key) => r.header("idempotency-key", key),
                        None => r,
                    }
                },
            )
            .await?;
        decode(response).await
    }

    /// Submits many jobs one request each, each with its idempotency key,
    /// at most `concurrency` at once; results come back in input order.
    /// For many jobs at once prefer [`Client::submit_batch`] (one request
    /// per 1,000 jobs) or [`Client::run_batch`].
    pub async fn submit_each<J: Serialize + Sync>(
        &self,
        jobs: &[(String, J)],
        concurrency: usize,
    ) -> Vec<Result<Accepted, ClientError>> {
        stream::iter(jobs)
            .map(|(key, job)| self.submit(job, Some(key)))
            .buffered(concurrency.max(1))
            .collect()
            .await
    }

    /// Synthesizes a job at high priority and returns the audio itself.
    pub async fn synthesize(&self, job: &NewJob) -> Result<Speech, ClientError> {
        let mut job = job.clone();
        job.priority = Some(Priority::High);
        let response = self
            .send(Method::POST, "/v1/tts/jobs", false, |r| {
                r.header(header::ACCEPT, "audio/*").json(&job)
            })
            .await?;
        if response.status() != StatusCode::OK {
            return Err(ClientError::Unexpected(format!(
                "expected the audio, got HTTP {}",
                response.status()
            )));
        }
        let headers = response.headers();
        let task_id = headers
            .get("x-task-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ClientError::Unexpected("the response has no X-Task-Id".into()))?;
        let cache_hit = headers.get("x-cache").is_some_and(|v| v == "hit");
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        let audio = response.bytes().await.map_err(ClientError::Http)?;
        Ok(Speech {
            task_id,
            cache_hit,
            content_type,
            audio,
        })
    }

    /// A task as it is now.
    pub async fn get(&self, task_id: Uuid) -> Result<Task, ClientError> {
        let response = self
            .send(Method::GET, &format!("/v1/tts/jobs/{task_id}"), true, |r| r)
            .await?;
        decode(response).await
    }

    /// One long-poll: the task as soon as it is terminal, or as it is after
    /// `wait` (at most 20 s, in milliseconds). For showing progress between
    /// polls (a long job's [`Task::chunks_done`]); [`Client::wait`] for just
    /// the end.
    pub async fn poll(&self, task_id: Uuid, wait: Duration) -> Result<Task, ClientError> {
        let wait = wait.min(POLL_SLICE);
        let path = format!(
            "/v1/tts/jobs/{task_id}?wait={}.{:03}",
            wait.as_secs(),
            wait.subsec_millis()
        );
        decode(self.send(Method::GET, &path, true, |r| r).await?).await
    }

    /// Long-polls a task until it is terminal; [`ClientError::WaitTimeout`]
    /// when it is not within `timeout`.
    pub async fn wait(&self, task_id: Uuid, timeout: Duration) -> Result<Task, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let slice = left.min(POLL_SLICE).as_secs();
            let path = format!("/v1/tts/jobs/{task_id}?wait={slice}");
            let task: Task = decode(self.send(Method::GET, &path, true, |r| r).await?).await?;
            if task.status.is_terminal() {
                return Ok(task);
            }
            if left.is_zero() {
                return Err(ClientError::WaitTimeout { task_id, timeout });
            }
            if slice == 0 {
                tokio::time::sleep(left.min(Duration::from_millis(200))).await;
            }
        }
    }

    /// The audio of a succeeded task.
    pub async fn download(&self, task_id: Uuid) -> Result<Bytes, ClientError> {
        let response = self
            .send(
                Method::GET,
                &format!("/v1/tts/jobs/{task_id}/audio?inline=1"),
                true,
                |r| r,
            )
            .await?;
        response.bytes().await.map_err(ClientError::Http)
    }

    /// One page of the tenant's tasks, newest first.
    pub async fn list(&self, options: &ListOptions) -> Result<TaskPage, ClientError> {
        let response = self
            .send(Method::GET, "/v1/tts/jobs", true, |r| r.query(options))
            .await?;
        decode(response).await
    }

    /// Cancels a task that is still queued; a `409` problem when it is not.
    pub async fn cancel(&self, task_id: Uuid) -> Result<Task, ClientError> {
        let response = self
            .send(
                Method::DELETE,
                &format!("/v1/tts/jobs/{task_id}"),
                true,
                |r| r,
            )
            .await?;
        decode(response).await
    }

    /// The speech marks of a succeeded task that asked for them
    /// ([`NewJob::marks`]): a `404` problem when it did not, `409` while it
    /// is not succeeded.
    pub async fn marks(&self, task_id: Uuid) -> Result<Vec<Mark>, ClientError> {
        let response = self
            .send(
                Method::GET,
                &format!("/v1/tts/jobs/{task_id}/marks"),
                true,
                |r| r,
            )
            .await?;
        decode(response).await
    }

    /// The dialect catalog.
    pub async fn dialects(&self) -> Result<Vec<Dialect>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Body {
            dialects: Vec<Dialect>,
        }
        let response = self.send(Method::GET, "/v1/dialects", true, |r| r).await?;
        Ok(decode::<Body>(response).await?.dialects)
    }

    /// The tenant's usage by day, `from` and `to` inclusive (`YYYY-MM-DD`).
    pub async fn usage(&self, from: Option<&str>, to: Option<&str>) -> Result<Usage, ClientError> {
        let mut query = Vec::new();
        if let Some(from) = from {
            query.push(("from", from));
        }
        if let Some(to) = to {
            query.push(("to", to));
        }
        let response = self
            .send(Method::GET, "/v1/usage", true, |r| r.query(&query))
            .await?;
        decode(response).await
    }

    /// Sends a request built by `build`, retrying when `idempotent` on
    /// connection errors and `502`/`503`; a non-2xx answer becomes
    /// [`ClientError::Api`].
    async fn send(
        &self,
        method: Method,
        path: &str,
        idempotent: bool,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, ClientError> {
        let url = format!("{}{path}", self.base_url);
        let mut attempt = 0;
        loop {
            let mut request = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&self.api_key)
                .timeout(self.timeout);
            if let Some(agent) = &self.user_agent {
                request = request.header(header::USER_AGENT, agent);
            }
            let request = build(request);
            let result = request.send().await;
            let retry_after = match &result {
                Err(err) if err.is_connect() => Some(None),
                Ok(r)
                    if matches!(
                        r.status(),
                        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
                    ) =>
                {
                    Some(
                        r.headers()
                            .get(header::RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u64>().ok())
                            .map(Duration::from_secs),
                    )
                }
                _ => None,
            };
            if let Some(server_says) = retry_after
                && idempotent
                && attempt < self.retry.retries
            {
                let backoff = self
                    .retry
                    .initial_backoff
                    .saturating_mul(2u32.saturating_pow(attempt));
                let pause = server_says.unwrap_or(backoff).min(self.retry.max_backoff);
                tracing::debug!(%method, path, attempt, ?pause, "retrying");
                tokio::time::sleep(pause).await;
                attempt += 1;
                continue;
            }
            let response = result.map_err(ClientError::Http)?;
            if response.status().is_success() || response.status().is_redirection() {
                return Ok(response);
            }
            return Err(ClientError::Api(Box::new(
                Problem::from_response(response).await,
            )));
        }
    }
}

/// Reads a JSON response body.
async fn decode<T: DeserializeOwned>(response: Response) -> Result<T, ClientError> {
    let bytes = response.bytes().await.map_err(ClientError::Http)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ClientError::Unexpected(format!("cannot read the response: {e}")))
}
