//! Processing one batch of deliveries of one dialect.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    time::{Duration, Instant, SystemTime},
};

use futures::future::join_all;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tracing::{Instrument as _, Span, field::Empty};
use ttsq_core::backoff::Backoff;
use ttsq_core::{AudioFormat, JobMessage};
use ttsq_providers::SynthesisRequest;
use ttsq_queue::JobDelivery;
use ttsq_store::{AudioObject, ClaimedTask, FinishedTask, Reschedule, TaskOutcome};
use uuid::Uuid;

use crate::{WorkerContext, single_flight::Registration};

/// A delivery with its decoded message.
pub struct Item {
    /// The delivery, settled once the batch is done with it.
    pub delivery: JobDelivery,
    /// Its decoded body.
    pub message: JobMessage,
}

/// What became of one content hash in this batch.
enum HashResult {
    /// Already stored before this batch: every task is a cache hit.
    Stored(AudioObject),
    /// Synthesized now: the first task pays, the rest are cache hits.
    Synthesized(AudioObject),
    /// Gave up on it; its tasks fail with this error. `exhausted`: it was a
    /// passing failure with no attempts left, worth a copy in the DLQ.
    Failed {
        code: String,
        message: String,
        exhausted: bool,
    },
    /// A passing failure: retry its tasks after a back-off. `refund`: no
    /// attempt was really made (a vendor's 429, every circuit open), so it is
    /// not counted and the task waits the longest back-off before looking again.
    Retry {
        code: String,
        message: String,
        refund: bool,
    },
}

impl HashResult {
    fn retry(code: &str, message: impl ToString) -> Self {
        Self::Retry {
            code: code.to_owned(),
            message: message.to_string(),
            refund: false,
        }
    }
}

/// How each delivery of the batch is settled once its tasks are written.
enum Settle {
    Ack,
    Retry { attempt: u32, delay_index: usize },
    DeadLetter(String),
    Requeue,
}

/// Runs a batch end to end. Never returns an error: whatever cannot be
/// finished goes back to the queue (or, failing that, to the outbox) and
/// comes back.
#[tracing::instrument(skip_all, fields(batch_id, dialect, size = items.len()))]
pub async fn process_batch(context: &WorkerContext, items: Vec<Item>) {
    let batch_id = Uuid::now_v7();
    let span = tracing::Span::current();
    span.record("batch_id", tracing::field::display(batch_id));
    if let Some(first) = items.first() {
        span.record("dialect", first.message.dialect.as_str());
    }
    let started = Instant::now();
    let metrics = ttsq_telemetry::metrics::get();
    let jobs: HashMap<Uuid, Span> = items
        .iter()
        .map(|item| (item.message.task_id, job_span(item, batch_id)))
        .collect();

    let ids: Vec<Uuid> = items
        .iter()
        .map(|i| i.message.task_id)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let claimed = match with_storage_retry(context, "claiming the batch", || {
        context
            .store
            .claim(&ids, batch_id, context.replica_id, context.replica_ttl)
    })
    .await
    {
        Ok(claimed) => claimed,
        Err(err) => {
            tracing::warn!(error = %err, "claiming failed; requeueing the batch");
            requeue_all(&items).await;
            return;
        }
    };

    // A task claimed more often than it has attempts crashed its workers
    // every time; a delivery at the broker's limit is the message's last.
    // Either way it fails now instead of looping.
    let last_delivery: HashSet<Uuid> = items
        .iter()
        .filter(|i| i.delivery.delivery_count() >= u64::from(context.delivery_limit))
        .map(|i| i.message.task_id)
        .collect();
    // Jobs worked on, not messages: a duplicate message (an outbox republish,
    // a redelivery) of a task that is already done claims nothing.
    metrics.batch_size.observe(claimed.len() as f64);
    let (spent, runnable): (Vec<&ClaimedTask>, Vec<&ClaimedTask>) = claimed
        .iter()
        .partition(|t| t.attempts > context.max_attempts() || last_delivery.contains(&t.id));
    let _in_flight = InFlight::add(claimed.len());
    for task in &claimed {
        if let Some(span) = jobs.get(&task.id) {
            span.record("voice", task.voice.as_str());
        }
    }
    let results = resolve_hashes(context, &runnable, &jobs).await;

    let mut finished = Vec::with_capacity(claimed.len());
    let mut retries = Vec::new();
    let mut settle: HashMap<Uuid, Settle> = HashMap::new();
    let mut paid: HashSet<&str> = HashSet::new();
    for task in spent {
        let (code, message) = if last_delivery.contains(&task.id) {
            ("delivery_limit", "the queue gave up redelivering this job")
        } else {
            (
                "attempts_exhausted",
                "every attempt at this job was interrupted",
            )
        };
        finished.push(failed(task, code, message));
        settle.insert(task.id, Settle::DeadLetter(code.to_owned()));
    }
    for task in runnable {
        match results.get(task.content_hash.as_str()) {
            Some(HashResult::Stored(object)) => {
                finished.push(succeeded(context, task, object, true));
            }
            Some(HashResult::Synthesized(object)) => {
                let first = paid.insert(task.content_hash.as_str());
                finished.push(succeeded(context, task, object, !first));
            }
            Some(HashResult::Failed {
                code,
                message,
                exhausted,
            }) => {
                finished.push(failed(task, code, message));
                if *exhausted {
                    settle.insert(task.id, Settle::DeadLetter(code.clone()));
                }
            }
            Some(HashResult::Retry {
                code,
                message,
                refund,
            }) => {
                let attempts = u32::try_from(task.attempts).unwrap_or(0);
                let (attempt, delay_index) = if *refund {
                    (
                        attempts.max(1),
                        context.retry_delays.len().saturating_sub(1),
                    )
                } else {
                    (attempts + 1, attempts.saturating_sub(1) as usize)
                };
                let delay = context
                    .retry_delays
                    .get(delay_index)
                    .or(context.retry_delays.last())
                    .copied()
                    .unwrap_or_default();
                retries.push(Reschedule {
                    task_id: task.id,
                    not_before: chrono::Utc::now()
                        + chrono::Duration::from_std(delay).unwrap_or_default(),
                    error_code: code.clone(),
                    error_message: message.clone(),
                    refund_attempt: *refund,
                });
                settle.insert(
                    task.id,
                    Settle::Retry {
                        attempt,
                        delay_index,
                    },
                );
            }
            // Every claimed hash has a result; should one be missing, the
            // task is still `processing` and comes back through the outbox.
            None => {
                settle.insert(task.id, Settle::Requeue);
            }
        }
    }

    // The one commit is a step of every finished job's trace.
    let commit_spans: Vec<Span> = finished
        .iter()
        .filter_map(|f| jobs.get(&f.task_id))
        .map(|job| tracing::info_span!(parent: job, "postgres.commit", db.system = "postgresql"))
        .collect();
    let committed = with_storage_retry(context, "finishing the batch", || {
        context.store.finish_tasks(&finished)
    })
    .await;
    drop(commit_spans);
    if let Err(err) = committed {
        tracing::warn!(error = %err, "finishing the batch failed; requeueing it");
        requeue_all(&items).await;
        return;
    }
    if let Err(err) = with_storage_retry(context, "rescheduling retries", || {
        context.store.reschedule(&retries)
    })
    .await
    {
        // Left `processing`: the claim timeout hands them back later.
        tracing::warn!(error = %err, "rescheduling retries failed");
    }
    let retried: HashSet<Uuid> = retries.iter().map(|r| r.task_id).collect();
    report_finished(&claimed, &finished, &retried, &jobs);
    metrics
        .batch_duration
        .observe(started.elapsed().as_secs_f64());
    tracing::info!(
        claimed = claimed.len(),
        finished = finished.len(),
        retried = retries.len(),
        "batch done"
    );
    settle_deliveries(context, &items, settle).await;
}

/// Acknowledges, retries or dead-letters every delivery of a batch whose
/// tasks are written. Each task's retry is published once, even when the
/// batch held several deliveries of it.
async fn settle_deliveries(
    context: &WorkerContext,
    items: &[Item],
    mut settle: HashMap<Uuid, Settle>,
) {
    let mut published = Vec::new();
    for item in items {
        let task_id = item.message.task_id;
        let result = match settle.remove(&task_id).unwrap_or(Settle::Ack) {
            Settle::Ack => item.delivery.ack().await,
            Settle::Requeue => item.delivery.requeue().await,
            Settle::DeadLetter(reason) => item.delivery.dead_letter(&reason).await,
            Settle::Retry {
                attempt,
                delay_index,
            } => {
                let mut next = item.message.clone();
                next.attempt = attempt;
                match item.delivery.retry_later(&next, delay_index).await {
                    Ok(()) => {
                        published.push(task_id);
                        Ok(())
                    }
                    Err(err) => {
                        // The task is queued and unpublished: the outbox
                        // relay publishes it once its back-off is over.
                        tracing::warn!(error = %err, %task_id, "publishing a retry failed; the outbox will");
                        item.delivery.ack().await
                    }
                }
            }
        };
        if let Err(err) = result {
            tracing::warn!(error = %err, %task_id, "settling a delivery failed; it will be redelivered");
        }
    }
    if let Err(err) = context.store.mark_published_many(&published).await {
        // The relay republishes them after their back-off: a duplicate
        // message, which the claim turns into a no-op.
        tracing::warn!(error = %err, "recording published retries failed");
    }
}

/// Runs a Postgres or S3 operation until it succeeds, fails for good, or
/// [`WorkerSettings::storage_retry`](ttsq_config::WorkerSettings::storage_retry)
/// has passed, backing off in between. A batch so rides out a database
/// restart or a storage blip holding its deliveries, instead of bouncing them
/// through the broker (which counts every bounce toward the delivery limit).
pub async fn with_storage_retry<T, E, F, Fut>(
    context: &WorkerContext,
    what: &str,
    mut operation: F,
) -> Result<T, E>
where
    E: std::fmt::Display + Transient,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + context.settings.storage_retry();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match operation().await {
            Ok(value) => return Ok(value),
            Err(err) if err.is_transient() => {
                let wait = backoff.next_delay();
                if Instant::now() + wait >= deadline {
                    return Err(err);
                }
                tracing::warn!(error = %err, retry_in = ?wait, "{what} failed; retrying");
                tokio::time::sleep(wait).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Errors that may clear up by themselves.
pub trait Transient {
    /// Whether trying again later may succeed.
    fn is_transient(&self) -> bool;
}

impl Transient for ttsq_store::StoreError {
    fn is_transient(&self) -> bool {
        ttsq_store::StoreError::is_transient(self)
    }
}

impl Transient for StoreAudioError {
    fn is_transient(&self) -> bool {
        match self {
            Self::Upload(err) => err.is_transient(),
            Self::Index(err) => err.is_transient(),
        }
    }
}

/// A job's span in this batch: a child of its submit span (through the
/// message's `traceparent`), after a `queue.wait` span covering its time
/// from submission until this batch picked it up.
fn job_span(item: &Item, batch_id: Uuid) -> Span {
    let traceparent = item
        .delivery
        .traceparent()
        .or_else(|| item.message.traceparent.clone());
    let submitted = submitted_at(item.message.task_id);
    if let Some(at) = submitted {
        ttsq_telemetry::trace_context::record_queue_wait(traceparent.as_deref(), at, "ttsq.jobs");
    }
    let span = tracing::info_span!(
        parent: None,
        "job",
        task_id = %item.message.task_id,
        tenant = %item.message.tenant_id,
        dialect = %item.message.dialect,
        batch_id = %batch_id,
        attempt = item.message.attempt,
        queue_wait_ms = submitted
            .and_then(|at| at.elapsed().ok())
            .map(|d| d.as_millis() as u64),
        voice = Empty,
        provider = Empty,
        status = Empty,
        cache_hit = Empty,
        latency_ms = Empty,
    );
    ttsq_telemetry::trace_context::adopt(&span, traceparent.as_deref());
    span
}

/// When a task was submitted: its id is a UUIDv7, stamped at submission.
pub fn submitted_at(task_id: Uuid) -> Option<SystemTime> {
    let (seconds, nanos) = task_id.get_timestamp()?.to_unix();
    SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::new(seconds, nanos))
}

/// One log line and the metrics per finished task, with its span's fields.
fn report_finished(
    claimed: &[ClaimedTask],
    finished: &[FinishedTask],
    retry: &HashSet<Uuid>,
    jobs: &HashMap<Uuid, Span>,
) {
    let metrics = ttsq_telemetry::metrics::get();
    let by_id: HashMap<Uuid, &ClaimedTask> = claimed.iter().map(|t| (t.id, t)).collect();
    for done in finished {
        let Some(task) = by_id.get(&done.task_id) else {
            continue;
        };
        let span = jobs.get(&done.task_id).cloned().unwrap_or_else(Span::none);
        let submitted = submitted_at(task.id);
        if let Some(latency) = submitted.and_then(|at| at.elapsed().ok()) {
            span.record("latency_ms", latency.as_millis() as u64);
        }
        match &done.outcome {
            TaskOutcome::Succeeded {
                cache_hit,
                provider,
                ..
            } => {
                span.record("provider", provider.as_str());
                span.record("status", "succeeded");
                span.record("cache_hit", *cache_hit);
                metrics.job_finished(&task.dialect, &task.voice, true, *cache_hit, submitted);
                tracing::info!(parent: &span, "task succeeded");
            }
            TaskOutcome::Failed { code, .. } => {
                span.record("status", "failed");
                metrics.job_finished(&task.dialect, &task.voice, false, false, submitted);
                tracing::warn!(parent: &span, error_code = %code, "task failed");
            }
        }
    }
    for id in retry {
        if let Some(span) = jobs.get(id) {
            tracing::info!(parent: span, "task returned to the queue for another attempt");
        }
    }
}

/// Counts tasks in `tts_tasks_in_flight` for as long as it lives.
struct InFlight(i64);

impl InFlight {
    fn add(tasks: usize) -> Self {
        let tasks = i64::try_from(tasks).unwrap_or(i64::MAX);
        ttsq_telemetry::metrics::get().in_flight.add(tasks);
        Self(tasks)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        ttsq_telemetry::metrics::get().in_flight.sub(self.0);
    }
}

fn failed(task: &ClaimedTask, code: &str, message: &str) -> FinishedTask {
    FinishedTask {
        task_id: task.id,
        outcome: TaskOutcome::Failed {
            code: code.to_owned(),
            message: message.to_owned(),
        },
    }
}

fn succeeded(
    context: &WorkerContext,
    task: &ClaimedTask,
    object: &AudioObject,
    cache_hit: bool,
) -> FinishedTask {
    FinishedTask {
        task_id: task.id,
        outcome: TaskOutcome::Succeeded {
            audio_hash: object.hash.clone(),
            cache_hit,
            provider: object.provider.clone(),
            price_per_1k: context.providers.price_per_1k(&object.provider),
            currency: context.providers.currency(&object.provider).to_owned(),
        },
    }
}

/// Hands every delivery back to the broker for another worker.
pub async fn requeue_all(items: &[Item]) {
    for item in items {
        if let Err(err) = item.delivery.requeue().await {
            tracing::warn!(error = %err, "requeueing failed; the delivery returns when the channel closes");
        }
    }
}

/// Looks every distinct hash up once and synthesizes the missing ones, once each.
async fn resolve_hashes<'a>(
    context: &WorkerContext,
    claimed: &[&'a ClaimedTask],
    jobs: &HashMap<Uuid, Span>,
) -> HashMap<&'a str, HashResult> {
    let mut first_task: HashMap<&str, &ClaimedTask> = HashMap::new();
    for &task in claimed {
        first_task.entry(task.content_hash.as_str()).or_insert(task);
    }
    let hashes: Vec<String> = first_task.keys().map(|h| (*h).to_owned()).collect();
    // Registered before the lookup, so that a hash another batch of this
    // worker is synthesizing is waited for, not paid for twice.
    let registrations: HashMap<&str, Registration> = first_task
        .keys()
        .map(|hash| (*hash, context.in_flight.register(hash)))
        .collect();
    let mut results = HashMap::new();
    let stored = match with_storage_retry(context, "the cache lookup", || {
        context.store.find_audio_many(&hashes)
    })
    .await
    {
        Ok(stored) => stored,
        Err(err) => {
            tracing::warn!(error = %err, "cache lookup failed");
            return first_task
                .into_keys()
                .map(|h| (h, HashResult::retry("storage_unavailable", &err)))
                .collect();
        }
    };
    let mut missing = Vec::new();
    for (hash, task) in first_task {
        match stored.get(hash) {
            Some(object) => {
                results.insert(hash, HashResult::Stored(object.clone()));
            }
            None => missing.push((hash, task)),
        }
    }
    // Each distinct text is synthesized once, in the trace of the job that
    // pays. Only the calls themselves take a permit: a hash waited for on
    // another batch holds none, so two batches waiting on each other's
    // hashes cannot starve each other.
    let permits = Semaphore::new(context.settings.syntheses_per_batch);
    let synthesized = join_all(missing.into_iter().map(|(hash, task)| {
        let span = jobs.get(&task.id).cloned().unwrap_or_else(Span::none);
        let registration = registrations.get(hash);
        let permits = &permits;
        async move {
            let synthesize = || async {
                let _permit = permits.acquire().await.ok();
                match synthesize_and_store(context, task).instrument(span).await {
                    HashResult::Synthesized(object) => Ok(object),
                    other => Err(other),
                }
            };
            let result = match registration {
                Some(registration) => match registration.resolve(synthesize).await {
                    Ok((object, true)) => HashResult::Synthesized(object),
                    // Another batch paid for it while this one waited.
                    Ok((object, false)) => HashResult::Stored(object),
                    Err(failed) => failed,
                },
                None => match synthesize().await {
                    Ok(object) => HashResult::Synthesized(object),
                    Err(failed) => failed,
                },
            };
            (hash, result)
        }
    }))
    .await;
    // One statement indexes every object this batch uploaded or took from
    // another batch (whose own index may not have committed yet), before
    // the registrations are released.
    let to_index: Vec<AudioObject> = synthesized
        .iter()
        .filter_map(|(_, result)| match result {
            HashResult::Synthesized(object) | HashResult::Stored(object) => Some(object.clone()),
            _ => None,
        })
        .collect();
    let on_file = with_storage_retry(context, "indexing audio", || {
        context.store.record_audio_many(&to_index)
    })
    .await;
    for (hash, result) in synthesized {
        let result = match (result, &on_file) {
            (HashResult::Synthesized(_), Ok(on_file)) | (HashResult::Stored(_), Ok(on_file))
                if !on_file.contains_key(hash) =>
            {
                HashResult::retry("storage_unavailable", "the audio index lost a row")
            }
            (HashResult::Synthesized(_), Ok(on_file)) => {
                HashResult::Synthesized(on_file[hash].clone())
            }
            (HashResult::Stored(_), Ok(on_file)) => HashResult::Stored(on_file[hash].clone()),
            (HashResult::Synthesized(_) | HashResult::Stored(_), Err(err)) => {
                tracing::warn!(error = %err, "indexing audio failed; will retry");
                HashResult::retry("storage_unavailable", err)
            }
            (other, _) => other,
        };
        results.insert(hash, result);
    }
    drop(registrations);
    results
}

async fn synthesize_and_store(context: &WorkerContext, task: &ClaimedTask) -> HashResult {
    let Ok(format) = task.format.parse::<AudioFormat>() else {
        return HashResult::Failed {
            code: "invalid_task".into(),
            message: format!("stored format `{}` is unknown", task.format),
            exhausted: false,
        };
    };
    let marks: Vec<ttsq_core::MarkKind> = task
        .marks
        .iter()
        .flatten()
        .filter_map(|m| m.parse().ok())
        .collect();
    let request = SynthesisRequest {
        text: &task.text,
        dialect: &task.dialect,
        voice: &task.voice,
        speed: task.speed,
        emotion: task.emotion.as_deref(),
        format,
        marks: &marks,
    };
    let (audio, provider) = match context.providers.synthesize(&request).await {
        Ok(done) => {
            Span::current().record("provider", done.1.as_str());
            done
        }
        // A vendor's quota is never the job's fault: it waits for as long as it takes.
        Err(
            err @ (ttsq_providers::ProviderError::RateLimited { .. }
            | ttsq_providers::ProviderError::CircuitOpen { .. }),
        ) => {
            tracing::warn!(task_id = %task.id, error = %err, "provider not taking requests; retrying later");
            return HashResult::Retry {
                code: err.code().into(),
                message: err.to_string(),
                refund: true,
            };
        }
        Err(err) if err.is_retryable() && task.attempts < context.max_attempts() => {
            tracing::warn!(task_id = %task.id, attempt = task.attempts, error = %err, "provider failed; will retry");
            return HashResult::retry(err.code(), &err);
        }
        Err(err) => {
            return HashResult::Failed {
                code: err.code().into(),
                message: err.to_string(),
                exhausted: err.is_retryable(),
            };
        }
    };
    // The audio is paid for: keep it through a storage outage rather than
    // synthesize it again on the next attempt.
    match with_storage_retry(context, "storing audio", || {
        upload_audio(
            &context.audio,
            &task.content_hash,
            format,
            audio.clone(),
            provider.clone(),
        )
    })
    .await
    {
        Ok(on_file) => HashResult::Synthesized(on_file),
        Err(err) => {
            tracing::warn!(task_id = %task.id, error = %err, "storing audio failed; will retry");
            HashResult::retry("storage_unavailable", &err)
        }
    }
}

/// Why synthesized audio could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreAudioError {
    /// The upload to S3 failed.
    #[error(transparent)]
    Upload(#[from] ttsq_audio::AudioStoreError),
    /// Indexing it in Postgres failed.
    #[error(transparent)]
    Index(#[from] ttsq_store::StoreError),
}

/// Uploads synthesized audio under its content hash and indexes it; returns
/// the object on file (an earlier one, when another process won the race).
/// The API's inline path; batches upload with [`upload_audio`] and index all
/// their objects in one statement.
pub async fn store_audio(
    store: &ttsq_store::Store,
    bucket: &ttsq_audio::AudioStore,
    content_hash: &str,
    format: AudioFormat,
    audio: ttsq_providers::Audio,
    provider: String,
) -> Result<AudioObject, StoreAudioError> {
    let object = upload_audio(bucket, content_hash, format, audio, provider).await?;
    Ok(store
        .record_audio(&object)
        .instrument(tracing::info_span!("postgres.record_audio"))
        .await?)
}

/// Uploads synthesized audio under its content hash; returns the object to
/// index (not indexed yet).
pub async fn upload_audio(
    bucket: &ttsq_audio::AudioStore,
    content_hash: &str,
    format: AudioFormat,
    audio: ttsq_providers::Audio,
    provider: String,
) -> Result<AudioObject, StoreAudioError> {
    let key = ttsq_core::ContentHash::parse(content_hash)
        .map(|h| h.object_key(format))
        .unwrap_or_else(|| format!("audio/invalid/{content_hash}.{}", format.extension()));
    let sha256 = hex::encode(Sha256::digest(&audio.bytes));
    let bytes = i64::try_from(audio.bytes.len()).unwrap_or(i64::MAX);
    // Marks first: once the audio is indexed, its marks must be there too.
    if !audio.marks.is_empty()
        && let Some(hash) = ttsq_core::ContentHash::parse(content_hash)
    {
        let marks_key = hash.marks_key();
        let json = serde_json::to_vec(&audio.marks).unwrap_or_default();
        bucket
            .put(&marks_key, json.into(), "application/json")
            .instrument(tracing::info_span!("s3.put", s3.key = %marks_key))
            .await?;
    }
    bucket
        .put(&key, audio.bytes, format.content_type())
        .instrument(tracing::info_span!("s3.put", s3.key = %key, bytes))
        .await?;
    Ok(AudioObject {
        hash: content_hash.to_owned(),
        s3_key: key,
        bytes,
        format: format.as_str().to_owned(),
        duration_ms: i32::try_from(audio.duration_ms).unwrap_or(i32::MAX),
        provider,
        sha256,
        created_at: chrono::Utc::now(),
    })
}
