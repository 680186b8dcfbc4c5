//! Processing one dialect group: deliveries of one dialect, synthesized together.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    time::{Duration, Instant},
};

use futures::future::join_all;
use tokio::sync::Semaphore;
use tracing::{Instrument as _, Span, field::Empty};
use ttsq_core::{JobMessage, backoff::Backoff};
use ttsq_providers::ProviderError;
use ttsq_queue::JobDelivery;
use ttsq_store::{
    AudioObject, ClaimCommit, ClaimCommitted, ClaimedTask, FinishedTask, MadeAudio, Reschedule,
    TaskOutcome,
};
use ttsq_synthesis::{
    MakeAudioError, MakeOptions, SYNTHESIS_IN_PROGRESS, Transient, Utterance, make_audio,
    retry_transient,
};
use uuid::Uuid;

use crate::context::WorkerContext;

/// A delivery with its decoded message.
pub struct Item {
    /// The delivery, settled once the group is done with it.
    pub delivery: JobDelivery,
    /// Its decoded body.
    pub message: JobMessage,
}

/// How each delivery of the group is settled once its tasks are written.
enum Settle {
    Ack,
    Retry { attempt: u32, delay_index: usize },
    DeadLetter(String),
    Requeue,
}

/// How long a group waits, at most, for hashes another claim is
/// synthesizing, before it hands their tasks back for a later attempt.
const HASH_WAIT: Duration = Duration::from_secs(30);

/// Runs a group end to end. Never returns an error: whatever cannot be
/// finished goes back to the queue (or, failing that, to the outbox) and
/// comes back.
///
/// The group's id (`batch_id` in logs and spans) is its claim token: it is
/// stamped on the tasks it claims and on the hash leases it takes, and every
/// write checks it, so a group whose replica was presumed dead (paused, cut off) and taken over changes
/// nothing its successor holds. Hashes another claim is synthesizing are
/// waited for in rounds: the rest of the group is committed and acknowledged
/// first, then those tasks finish as cache hits once the other claim's audio
/// is indexed (or this group takes the lease over should that claim die).
#[tracing::instrument(skip_all, fields(batch_id, dialect, size = items.len()))]
pub async fn process_group(context: &WorkerContext, items: Vec<Item>) {
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
    let (spent, mut pending): (Vec<&ClaimedTask>, Vec<&ClaimedTask>) = claimed
        .iter()
        .partition(|t| t.attempts > context.max_attempts() || last_delivery.contains(&t.id));
    let _in_flight = InFlight::add(claimed.len());
    for task in &claimed {
        if let Some(span) = jobs.get(&task.id) {
            span.record("voice", task.voice.as_str());
        }
    }

    let mut round = Round::default();
    for task in spent {
        let (code, message) = if last_delivery.contains(&task.id) {
            ("delivery_limit", "the queue gave up redelivering this job")
        } else {
            (
                "attempts_exhausted",
                "every attempt at this job was interrupted",
            )
        };
        round.finished.push(failed(task, code, message));
        round
            .settle
            .insert(task.id, Settle::DeadLetter(code.to_owned()));
    }
    let mut settled_items = vec![false; items.len()];
    let wait_until = Instant::now() + HASH_WAIT;
    let mut wait = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        let results = resolve_hashes(context, batch_id, &pending, &jobs).await;
        let mut waiting = Vec::new();
        for task in pending {
            match results.get(task.content_hash.as_str()) {
                Some(HashResult::Elsewhere) if Instant::now() < wait_until => waiting.push(task),
                Some(HashResult::Elsewhere) => round.retry(context, task, &HashResult::Elsewhere),
                Some(result) => round.resolve(context, task, result),
                // Every hash has a result; should one be missing, the task is
                // still `processing` and comes back through the outbox.
                None => {
                    round.settle.insert(task.id, Settle::Requeue);
                }
            }
        }
        round.made = results
            .into_values()
            .filter_map(|r| match r {
                HashResult::Made(made) => Some(made),
                _ => None,
            })
            .collect();

        // The one commit is a step of every finished job's trace.
        let commit_spans: Vec<Span> = round
            .finished
            .iter()
            .filter_map(|f| jobs.get(&f.task_id))
            .map(
                |job| tracing::info_span!(parent: job, "postgres.commit", db.system = "postgresql"),
            )
            .collect();
        let committed = with_storage_retry(context, "finishing the batch", || {
            context.store.commit_claim(ClaimCommit {
                token: batch_id,
                made: &round.made,
                finished: &round.finished,
                retries: &round.retries,
            })
        })
        .await;
        drop(commit_spans);
        let committed = match committed {
            Ok(committed) => committed,
            Err(err) => {
                tracing::warn!(error = %err, "finishing the batch failed; requeueing it");
                if let Err(err) = context.store.release_leases(batch_id).await {
                    tracing::debug!(error = %err, "releasing the batch's leases failed; they expire");
                }
                let left: Vec<&Item> = items
                    .iter()
                    .zip(&settled_items)
                    .filter(|(_, done)| !**done)
                    .map(|(item, _)| item)
                    .collect();
                requeue(left).await;
                return;
            }
        };
        if !committed.fenced.is_empty() {
            tracing::warn!(
                tasks = committed.fenced.len(),
                "tasks were claimed by another replica meanwhile; left to it"
            );
        }
        report_finished(&claimed, &round.finished, &committed, &jobs);
        // Tasks whose audio lease was lost wait for the new holder's audio.
        let lease_lost: Vec<&ClaimedTask> = claimed
            .iter()
            .filter(|t| committed.lease_lost.contains(&t.id))
            .collect();
        waiting.extend(lease_lost);
        // Only what this claim wrote is settled as it decided; a task taken
        // over by another claim is that claim's to settle.
        let mut settle: HashMap<Uuid, Settle> = HashMap::new();
        for id in &committed.settled {
            settle.insert(*id, round.settle.remove(id).unwrap_or(Settle::Ack));
        }
        for id in &committed.fenced {
            settle.insert(*id, Settle::Ack);
        }
        settle.extend(
            round
                .settle
                .drain()
                .filter(|(_, s)| matches!(s, Settle::Requeue)),
        );
        let now_settled: Vec<(usize, &Item)> = items
            .iter()
            .enumerate()
            .filter(|(i, item)| {
                !settled_items[*i]
                    && (waiting.is_empty() || settle.contains_key(&item.message.task_id))
            })
            .collect();
        for (i, _) in &now_settled {
            settled_items[*i] = true;
        }
        let now_settled: Vec<&Item> = now_settled.into_iter().map(|(_, item)| item).collect();
        settle_deliveries(context, &now_settled, settle).await;
        round = Round::default();
        if waiting.is_empty() {
            break;
        }
        pending = waiting;
        tokio::time::sleep(wait.next_delay()).await;
    }
    metrics
        .batch_duration
        .observe(started.elapsed().as_secs_f64());
    tracing::info!(claimed = claimed.len(), "batch done");
}

/// The outcomes of one round of a group, committed together.
#[derive(Default)]
struct Round {
    made: Vec<MadeAudio>,
    finished: Vec<FinishedTask>,
    retries: Vec<Reschedule>,
    settle: HashMap<Uuid, Settle>,
}

impl Round {
    /// Records what `result` means for `task`.
    fn resolve(&mut self, context: &WorkerContext, task: &ClaimedTask, result: &HashResult) {
        match result {
            HashResult::Stored(object) => {
                self.finished.push(succeeded(context, task, object, true))
            }
            // The store bills the first task it still holds; the rest are hits.
            HashResult::Made(made) => {
                self.finished
                    .push(succeeded(context, task, &made.object, false));
            }
            HashResult::Failed {
                code,
                message,
                exhausted,
            } => {
                self.finished.push(failed(task, code, message));
                if *exhausted {
                    self.settle
                        .insert(task.id, Settle::DeadLetter(code.clone()));
                }
            }
            HashResult::Retry { .. } | HashResult::Elsewhere => self.retry(context, task, result),
        }
    }

    /// Hands `task` back for a later attempt after a back-off.
    fn retry(&mut self, context: &WorkerContext, task: &ClaimedTask, result: &HashResult) {
        let (code, message, refund) = match result {
            HashResult::Retry {
                code,
                message,
                refund,
            } => (code.clone(), message.clone(), *refund),
            // Waited for another claim's audio for too long; no fault of
            // the job, so the attempt is given back.
            _ => (
                SYNTHESIS_IN_PROGRESS.0.to_owned(),
                SYNTHESIS_IN_PROGRESS.1.to_owned(),
                true,
            ),
        };
        let attempts = u32::try_from(task.attempts).unwrap_or(0);
        let (attempt, delay_index) = if refund {
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
        self.retries.push(Reschedule {
            task_id: task.id,
            not_before: chrono::Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default(),
            error_code: code,
            error_message: message,
            refund_attempt: refund,
        });
        self.settle.insert(
            task.id,
            Settle::Retry {
                attempt,
                delay_index,
            },
        );
    }
}

/// Acknowledges, retries or dead-letters every delivery of a group whose
/// tasks are written. Each task's retry is published once, even when the
/// batch held several deliveries of it.
async fn settle_deliveries(
    context: &WorkerContext,
    items: &[&Item],
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
    operation: F,
) -> Result<T, E>
where
    E: std::fmt::Display + Transient,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    retry_transient(context.settings.storage_retry(), what, operation).await
}

/// A job's span in this group: a child of its submit span (through the
/// message's `traceparent`), after a `queue.wait` span covering its time
/// from submission until this group picked it up.
fn job_span(item: &Item, batch_id: Uuid) -> Span {
    let traceparent = item
        .delivery
        .traceparent()
        .or_else(|| item.message.traceparent.clone());
    let submitted = ttsq_core::task::submitted_at(item.message.task_id);
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

/// One log line and the metrics per task a commit settled, with its span's
/// fields.
fn report_finished(
    claimed: &[ClaimedTask],
    finished: &[FinishedTask],
    committed: &ClaimCommitted,
    jobs: &HashMap<Uuid, Span>,
) {
    let metrics = ttsq_telemetry::metrics::get();
    let by_id: HashMap<Uuid, &ClaimedTask> = claimed.iter().map(|t| (t.id, t)).collect();
    for done in finished
        .iter()
        .filter(|f| committed.settled.contains(&f.task_id))
    {
        let Some(task) = by_id.get(&done.task_id) else {
            continue;
        };
        let span = jobs.get(&done.task_id).cloned().unwrap_or_else(Span::none);
        let submitted = ttsq_core::task::submitted_at(task.id);
        if let Some(latency) = submitted.and_then(|at| at.elapsed().ok()) {
            span.record("latency_ms", latency.as_millis() as u64);
        }
        match &done.outcome {
            TaskOutcome::Succeeded { provider, .. } => {
                let cache_hit = &!committed.billed.contains(&done.task_id);
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
    let finished_ids: HashSet<Uuid> = finished.iter().map(|f| f.task_id).collect();
    for id in committed.settled.difference(&finished_ids) {
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
    requeue(items.iter().collect()).await;
}

/// Hands these deliveries back to the broker.
async fn requeue(items: Vec<&Item>) {
    for item in items {
        if let Err(err) = item.delivery.requeue().await {
            tracing::warn!(error = %err, "requeueing failed; the delivery returns when the channel closes");
        }
    }
}

/// What became of one content hash in a round of a group.
enum HashResult {
    /// Indexed already: every task is a cache hit.
    Stored(AudioObject),
    /// Made now under this group's lease: the store bills one task.
    Made(MadeAudio),
    /// Another claim holds the hash's lease: wait for its audio.
    Elsewhere,
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

/// Looks every distinct hash up once, takes the fleet-wide lease of each
/// missing one, and makes those whose lease it got, once each.
async fn resolve_hashes<'a>(
    context: &WorkerContext,
    token: Uuid,
    claimed: &[&'a ClaimedTask],
    jobs: &HashMap<Uuid, Span>,
) -> HashMap<&'a str, HashResult> {
    if claimed.is_empty() {
        return HashMap::new();
    }
    let mut first_task: HashMap<&str, &ClaimedTask> = HashMap::new();
    for &task in claimed {
        first_task.entry(task.content_hash.as_str()).or_insert(task);
    }
    let hashes: Vec<String> = first_task.keys().map(|h| (*h).to_owned()).collect();
    let all_retry = |first_task: HashMap<&'a str, &ClaimedTask>, err: &dyn std::fmt::Display| {
        first_task
            .into_keys()
            .map(|h| (h, HashResult::retry("storage_unavailable", err)))
            .collect()
    };
    let mut stored = match with_storage_retry(context, "the cache lookup", || {
        context.store.find_audio_many(&hashes)
    })
    .await
    {
        Ok(stored) => stored,
        Err(err) => {
            tracing::warn!(error = %err, "cache lookup failed");
            return all_retry(first_task, &err);
        }
    };
    let missing: Vec<String> = hashes
        .iter()
        .filter(|h| !stored.contains_key(*h))
        .cloned()
        .collect();
    let leased = match with_storage_retry(context, "taking hash leases", || {
        context.store.acquire_leases(
            &missing,
            context.replica_id,
            token,
            context.settings.claim_timeout(),
            context.replica_ttl,
        )
    })
    .await
    {
        Ok(leased) => leased,
        Err(err) => {
            tracing::warn!(error = %err, "taking hash leases failed");
            return all_retry(first_task, &err);
        }
    };
    // Indexed by another claim between the lookup and the lease.
    let leased_list: Vec<String> = leased.iter().cloned().collect();
    match with_storage_retry(context, "the cache lookup", || {
        context.store.find_audio_many(&leased_list)
    })
    .await
    {
        Ok(found) => stored.extend(found),
        Err(err) => {
            tracing::warn!(error = %err, "cache lookup failed");
            return all_retry(first_task, &err);
        }
    }

    let mut results = HashMap::new();
    let mut to_make = Vec::new();
    for (hash, task) in first_task {
        if let Some(object) = stored.remove(hash) {
            results.insert(hash, HashResult::Stored(object));
        } else if leased.contains(hash) {
            to_make.push((hash, task));
        } else {
            results.insert(hash, HashResult::Elsewhere);
        }
    }
    // Each distinct text is made once, in the trace of the first job that
    // needs it, at most `syntheses_per_batch` at a time.
    let permits = Semaphore::new(context.settings.syntheses_per_batch);
    let made = join_all(to_make.into_iter().map(|(hash, task)| {
        let span = jobs.get(&task.id).cloned().unwrap_or_else(Span::none);
        let permits = &permits;
        async move {
            let _permit = permits.acquire().await.ok();
            (hash, make(context, task).instrument(span).await)
        }
    }))
    .await;
    results.extend(made);
    results
}

/// Makes the audio of `task`'s hash, whose lease the group holds.
async fn make(context: &WorkerContext, task: &ClaimedTask) -> HashResult {
    let utterance = match Utterance::of_task(task) {
        Ok(utterance) => utterance,
        Err(err) => {
            return HashResult::Failed {
                code: "invalid_task".into(),
                message: err.to_string(),
                exhausted: false,
            };
        }
    };
    let options = MakeOptions {
        storage_retry: context.settings.storage_retry(),
        serve_fallback_audio: context.serve_fallback_audio,
    };
    let made = make_audio(
        &context.audio,
        &context.providers,
        &task.content_hash,
        &utterance.request(),
        options,
    )
    .await;
    match made {
        Ok(made) => HashResult::Made(made.audio),
        // A vendor's quota is never the job's fault: it waits for as long as it takes.
        Err(MakeAudioError::Provider(
            err @ (ProviderError::RateLimited { .. } | ProviderError::CircuitOpen { .. }),
        )) => {
            tracing::warn!(task_id = %task.id, error = %err, "provider not taking requests; retrying later");
            HashResult::Retry {
                code: err.code().into(),
                message: err.to_string(),
                refund: true,
            }
        }
        Err(MakeAudioError::Provider(err))
            if err.is_retryable() && task.attempts < context.max_attempts() =>
        {
            tracing::warn!(task_id = %task.id, attempt = task.attempts, error = %err, "provider failed; will retry");
            HashResult::retry(err.code(), &err)
        }
        Err(MakeAudioError::Provider(err)) => HashResult::Failed {
            code: err.code().into(),
            message: err.to_string(),
            exhausted: err.is_retryable(),
        },
        // The audio may be paid for: keep the task for a later attempt, which
        // finds the object if it was stored after all.
        Err(MakeAudioError::Storage(err)) => {
            tracing::warn!(task_id = %task.id, error = %err, "storing audio failed; will retry");
            HashResult::retry("storage_unavailable", &err)
        }
    }
}
