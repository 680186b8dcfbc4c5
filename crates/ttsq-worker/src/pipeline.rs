//! Processing one batch of deliveries of one dialect.

use std::collections::{HashMap, HashSet};

use futures::future::join_all;
use sha2::{Digest, Sha256};
use ttsq_core::{AudioFormat, JobMessage};
use ttsq_providers::SynthesisRequest;
use ttsq_queue::JobDelivery;
use ttsq_store::{AudioObject, ClaimedTask, FinishedTask, TaskOutcome};
use uuid::Uuid;

use crate::WorkerContext;

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
    /// Gave up on it; its tasks fail with this code.
    Failed { code: String, message: String },
    /// A passing failure: leave its tasks for a redelivery.
    Retry,
}

/// Runs a batch end to end. Never returns an error: whatever cannot be
/// finished is requeued and comes back.
#[tracing::instrument(skip_all, fields(batch_id, dialect, size = items.len()))]
pub async fn process_batch(context: &WorkerContext, items: Vec<Item>) {
    let batch_id = Uuid::now_v7();
    let span = tracing::Span::current();
    span.record("batch_id", tracing::field::display(batch_id));
    if let Some(first) = items.first() {
        span.record("dialect", first.message.dialect.as_str());
    }

    let ids: Vec<Uuid> = items
        .iter()
        .map(|i| i.message.task_id)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let claimed = match context
        .store
        .claim(&ids, batch_id, context.replica_id)
        .await
    {
        Ok(claimed) => claimed,
        Err(err) => {
            tracing::warn!(error = %err, "claiming failed; requeueing the batch");
            requeue_all(&items).await;
            return;
        }
    };

    let results = resolve_hashes(context, &claimed).await;

    let mut finished = Vec::with_capacity(claimed.len());
    let mut retry: HashSet<Uuid> = HashSet::new();
    let mut paid: HashSet<&str> = HashSet::new();
    for task in &claimed {
        match results.get(task.content_hash.as_str()) {
            Some(HashResult::Stored(object)) => {
                finished.push(succeeded(context, task, object, true))
            }
            Some(HashResult::Synthesized(object)) => {
                let first = paid.insert(task.content_hash.as_str());
                finished.push(succeeded(context, task, object, !first));
            }
            Some(HashResult::Failed { code, message }) => finished.push(FinishedTask {
                task_id: task.id,
                outcome: TaskOutcome::Failed {
                    code: code.clone(),
                    message: message.clone(),
                },
            }),
            Some(HashResult::Retry) | None => {
                retry.insert(task.id);
            }
        }
    }

    if let Err(err) = context.store.finish_tasks(&finished).await {
        tracing::warn!(error = %err, "finishing the batch failed; requeueing it");
        requeue_all(&items).await;
        return;
    }
    tracing::info!(
        claimed = claimed.len(),
        finished = finished.len(),
        retried = retry.len(),
        "batch done"
    );

    for item in &items {
        let result = if retry.contains(&item.message.task_id) {
            item.delivery.requeue().await
        } else {
            // Finished now, or already finished or cancelled before.
            item.delivery.ack().await
        };
        if let Err(err) = result {
            tracing::warn!(error = %err, task_id = %item.message.task_id, "settling a delivery failed; it will be redelivered");
        }
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
    claimed: &'a [ClaimedTask],
) -> HashMap<&'a str, HashResult> {
    let mut first_task: HashMap<&str, &ClaimedTask> = HashMap::new();
    for task in claimed {
        first_task.entry(task.content_hash.as_str()).or_insert(task);
    }
    let hashes: Vec<String> = first_task.keys().map(|h| (*h).to_owned()).collect();
    let mut results = HashMap::new();
    let stored = match context.store.find_audio_many(&hashes).await {
        Ok(stored) => stored,
        Err(err) => {
            tracing::warn!(error = %err, "cache lookup failed");
            return first_task
                .into_keys()
                .map(|h| (h, HashResult::Retry))
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
    let synthesized = join_all(
        missing
            .into_iter()
            .map(|(hash, task)| async move { (hash, synthesize_and_store(context, task).await) }),
    )
    .await;
    results.extend(synthesized);
    results
}

async fn synthesize_and_store(context: &WorkerContext, task: &ClaimedTask) -> HashResult {
    let Ok(format) = task.format.parse::<AudioFormat>() else {
        return HashResult::Failed {
            code: "invalid_task".into(),
            message: format!("stored format `{}` is unknown", task.format),
        };
    };
    let request = SynthesisRequest {
        text: &task.text,
        dialect: &task.dialect,
        voice: &task.voice,
        speed: task.speed,
        emotion: task.emotion.as_deref(),
        format,
    };
    let (audio, provider) = match context.providers.synthesize(&request).await {
        Ok(done) => done,
        // A vendor's quota is never the job's fault: it waits for as long as it takes.
        Err(err @ ttsq_providers::ProviderError::RateLimited { .. }) => {
            tracing::warn!(task_id = %task.id, error = %err, "still rate-limited; requeueing");
            return HashResult::Retry;
        }
        Err(err) if err.is_retryable() && task.attempts < context.max_attempts => {
            tracing::warn!(task_id = %task.id, attempt = task.attempts, error = %err, "provider failed; will retry");
            return HashResult::Retry;
        }
        Err(err) => {
            return HashResult::Failed {
                code: err.code().into(),
                message: err.to_string(),
            };
        }
    };
    match store_audio(
        &context.store,
        &context.audio,
        &task.content_hash,
        format,
        audio,
        provider,
    )
    .await
    {
        Ok(on_file) => HashResult::Synthesized(on_file),
        Err(err) => {
            tracing::warn!(task_id = %task.id, error = %err, "storing audio failed; will retry");
            HashResult::Retry
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
/// Shared by the worker and the API's inline path.
pub async fn store_audio(
    store: &ttsq_store::Store,
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
    bucket.put(&key, audio.bytes, format.content_type()).await?;
    let object = AudioObject {
        hash: content_hash.to_owned(),
        s3_key: key,
        bytes,
        format: format.as_str().to_owned(),
        duration_ms: i32::try_from(audio.duration_ms).unwrap_or(i32::MAX),
        provider,
        sha256,
        created_at: chrono::Utc::now(),
    };
    Ok(store.record_audio(&object).await?)
}
