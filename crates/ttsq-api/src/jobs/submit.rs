//! `POST /v1/tts/jobs`: a job queued (normal priority) or synthesized
//! inline (high priority).

use std::{sync::Arc, time::Duration};

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures::StreamExt as _;
use serde_json::json;
use tracing::Instrument as _;
use ttsq_core::{Job, JobChunk, JobRequest, Priority, TaskStatus, backoff::Backoff};
use ttsq_providers::AudioSink;
use ttsq_store::{
    AudioObject, ClaimCommit, FinishedTask, InlineClaim, NewTask, Reschedule, TaskOutcome, TaskRow,
};
use ttsq_synthesis::{
    MakeAudioError, SYNTHESIS_IN_PROGRESS, Utterance, cache_hit, make_audio, make_audio_streaming,
};
use uuid::Uuid;

use crate::{
    ApiContext, ApiError,
    auth::Caller,
    coalescer::{PendingChunk, PendingSubmission},
    error::{
        LimitProblem, Problem,
        responses::{BodyTooLarge, NoApiKey, NotJson, Unavailable},
    },
    extract::{IdempotencyKey, JsonBody},
    long_jobs,
    view::{AcceptedView, AudioBody, TaskView, audio_response, stored_audio},
};

/// `POST /v1/tts/jobs`: submit one job; normal priority is queued (202), high is synthesized now and answers the audio.
#[utoipa::path(
    post,
    path = "/v1/tts/jobs",
    operation_id = "submit_job",
    tag = "jobs",
    request_body = JobRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "The same key from the same tenant returns the first task, never a second one")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Normal priority: accepted (or already done, on a cache hit); a long job (a text longer than one provider request takes) is `processing` from the start", body = AcceptedView),
        (status = 200, description = "High priority: the audio (`X-Task-Id`, `X-Cache: hit|miss`), or the task as JSON with `Accept: application/json`", content(
            (TaskView = "application/json"), (AudioBody = "audio/mpeg"), (AudioBody = "audio/wav"), (AudioBody = "audio/pcm"), (AudioBody = "audio/ogg"), (AudioBody = "audio/flac")
        )),
        (status = 400, description = "Invalid job; `errors` names each field", body = Problem, content_type = "application/problem+json"),
        (status = 401, response = NoApiKey),
        (status = 413, response = BodyTooLarge),
        (status = 415, response = NotJson),
        (status = 422, description = "The text is refused by the content policy (`code: content_rejected`); neither the text nor the pattern is echoed", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over one of the tenant's limits (`code: limit_exceeded`); nothing was written", body = LimitProblem, content_type = "application/problem+json", headers(
            ("Retry-After" = u64, description = "Seconds until the limit's period ends, or a few for a full queue"),
        )),
        (status = 502, description = "High priority: synthesis failed", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = Unavailable),
    )
)]
#[tracing::instrument(
    skip_all,
    fields(tenant = %caller.0.tenant_id, task_id, dialect, voice, priority, provider, cache_hit, latency_ms)
)]
pub async fn submit(
    State(context): State<ApiContext>,
    caller: Caller,
    headers: HeaderMap,
    idempotency_key: Result<IdempotencyKey, ApiError>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let job =
        Job::parse(&body, context.providers.catalog(), &context.limits).map_err(|errors| {
            // Only the marks are wrong: the job is fine but cannot be served as
            // asked (no timings from this dialect's provider), a 422.
            if !errors.0.is_empty() && errors.fields().iter().all(|f| *f == "marks") {
                ApiError::Unprocessable(errors)
            } else {
                ApiError::Validation(errors)
            }
        })?;
    // The cache is the tenant's own (or its pool's): nothing about another
    // scope's texts is observable.
    let mut job = job;
    let scope = caller.0.cache_scope();
    job.scope_cache(&scope);
    // A long job: its chunks, and its hash theirs.
    let chunks = long_jobs::split(
        &mut job,
        context.providers.catalog(),
        &context.limits,
        &scope,
    )?;
    // Shared with the group that writes it (normal priority).
    let job = Arc::new(job);
    if let Some(url) = &job.callback_url {
        context.webhooks.check_target("callback_url", url).await?;
    }
    if context.content_filter.blocks(&job.text) {
        tracing::info!(tenant = %caller.0.tenant_id, "submission refused by the content filter");
        context
            .audit_refusal(&caller.0, &job, "content_rejected", json!({}))
            .await;
        return Err(ApiError::ContentRejected);
    }
    let IdempotencyKey(idempotency_key) = idempotency_key?;
    // The worker continues this request's trace from the task's message.
    let traceparent = ttsq_telemetry::trace_context::current_traceparent();
    let task = context.new_task(
        &caller.0,
        &job,
        idempotency_key.as_deref(),
        traceparent.as_deref(),
    );
    let span = tracing::Span::current();
    span.record("voice", job.voice.as_str());
    span.record("priority", job.priority.as_str());

    let started = std::time::Instant::now();
    let result = match job.priority {
        Priority::Normal => submit_normal(&context, &task, &job, chunks).await,
        Priority::High => {
            let cached = context.store.find_audio(job.hash.as_str()).await?;
            submit_high(&context, &task, cached, wants_json(&headers)).await
        }
    };
    if let Err(ApiError::LimitExceeded(e)) = &result {
        tracing::info!(
            limit = e.limit.as_str(),
            "submission refused by a tenant limit"
        );
        let detail = json!({"limit": e.limit.as_str(), "limit_value": e.max, "usage": e.used});
        context
            .audit_refusal(&caller.0, &job, "limit_exceeded", detail)
            .await;
    }
    span.record("latency_ms", started.elapsed().as_millis() as u64);
    result
}

/// Records a job that finished during its submission (a cache hit, or a
/// high-priority synthesis): metrics, and the submit span's fields.
fn report_finished(row: &TaskRow) {
    let succeeded = row.status() == TaskStatus::Succeeded;
    let span = tracing::Span::current();
    if let Some(provider) = &row.provider {
        span.record("provider", provider.as_str());
    }
    span.record("cache_hit", row.cache_hit);
    ttsq_telemetry::metrics::get().job_finished(
        &row.dialect,
        &row.voice,
        succeeded,
        row.cache_hit,
        ttsq_core::task::submitted_at(row.id),
    );
    if succeeded {
        tracing::info!("task succeeded at submission");
    } else {
        tracing::warn!(
            error_code = row.error_code.as_deref(),
            "task failed at submission"
        );
    }
}

/// Commits the task together with the other submissions waiting (a cache
/// hit finishes at once) and wakes the dispatcher, which publishes it in
/// its tenant's turn; the job is accepted once committed, whether or not
/// RabbitMQ is reachable.
async fn submit_normal(
    context: &ApiContext,
    task: &NewTask<'_>,
    job: &Arc<Job>,
    chunks: Vec<JobChunk>,
) -> Result<Response, ApiError> {
    let chunks = chunks
        .into_iter()
        .map(|chunk| PendingChunk {
            id: Uuid::now_v7(),
            estimate: context
                .estimate_cost(&chunk.job)
                .map(|e| (e.cost, e.currency.to_owned())),
            chunk,
        })
        .collect();
    let (row, created) = context
        .submissions
        .submit(PendingSubmission {
            id: task.id,
            tenant_id: task.tenant_id,
            job: Arc::clone(job),
            idempotency_key: task.idempotency_key.map(str::to_owned),
            key_prefix: task.key_prefix.map(str::to_owned),
            estimate: task.estimate.map(|e| (e.cost, e.currency.to_owned())),
            traceparent: task.traceparent.map(str::to_owned),
            chunks,
        })
        .await?;
    if !created {
        same_request(&row, job)?;
        tracing::debug!("idempotent repeat of an earlier submission");
    } else if row.status().is_terminal() {
        report_finished(&row);
    } else {
        context.dispatch.wake();
        tracing::debug!("task queued");
    }
    Ok(accepted(context, &row))
}

/// Refuses a repeat of an `Idempotency-Key` whose body asks for something
/// else than the task the key names (another text, voice, format, priority
/// or metadata): answering with that task would hand out other audio.
fn same_request(row: &TaskRow, job: &Job) -> Result<(), ApiError> {
    let same = row.content_hash == job.hash.as_str()
        && row.priority == job.priority.as_str()
        && row.metadata == job.metadata;
    if same {
        Ok(())
    } else {
        let mut errors = ttsq_core::ValidationErrors::default();
        errors.push(
            "Idempotency-Key",
            "was already used with a different request; send a new key for a new request",
        );
        Err(ApiError::Unprocessable(errors))
    }
}

fn accepted(context: &ApiContext, row: &TaskRow) -> Response {
    let url = context.task_url(row.id);
    let mut response = (
        StatusCode::ACCEPTED,
        Json(AcceptedView {
            task_id: row.id,
            status: row.status(),
            status_url: url.clone(),
        }),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&url) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// Synthesizes inline (or serves the cache) and answers with the audio.
pub(crate) async fn submit_high(
    context: &ApiContext,
    task: &NewTask<'_>,
    cached: Option<AudioObject>,
    json: bool,
) -> Result<Response, ApiError> {
    let job = task.job;
    // The task's audio when this request already holds it — synthesized
    // just now, or read from S3 while a hit's task row committed — answered
    // as it is instead of read (again) from S3 afterwards.
    let mut held = None;
    // Whether `held` came from the hot cache, which need not keep it again.
    let mut from_memory = false;
    // A hit never hands out a dead URL: its object is looked at (read, when
    // the audio is the answer) before the task is written. One found
    // missing is marked lost and synthesized again for this request. The
    // object is looked up in the index even when the hot cache holds its
    // audio: an object removed or found lost is never answered from memory.
    let cached = match cached {
        Some(object) => {
            let present = if json {
                context.audio.head(&object.s3_key).await?.map(|_| None)
            } else if let Some(bytes) = context.hot_cache.get(job.hash.as_str(), &object) {
                from_memory = true;
                Some(Some(bytes))
            } else {
                match context.audio.get(&object.s3_key).await {
                    Ok(bytes) => Some(Some(bytes)),
                    Err(err) if err.is_not_found() => None,
                    Err(err) => return Err(err.into()),
                }
            };
            match present {
                Some(bytes) => Some((object, bytes)),
                None => {
                    context.hot_cache.remove(job.hash.as_str());
                    context.store.mark_audio_lost(&object.hash).await?;
                    None
                }
            }
        }
        None => {
            // Never made, removed by retention or found lost: nothing to keep.
            context.hot_cache.remove(job.hash.as_str());
            if !json {
                context.hot_cache.count_miss();
            }
            None
        }
    };
    let (row, created) = match cached {
        Some((object, bytes)) => {
            let outcome = cache_hit(&context.providers, &object);
            let (row, created) = context.store.insert_finished(task, &outcome).await?;
            // The bytes answer only for the object the task row names now.
            if row.s3_key.as_deref() == Some(object.s3_key.as_str())
                && row.audio_sha256.as_deref() == Some(object.sha256.as_str())
            {
                held = bytes;
            }
            (row, created)
        }
        None => {
            // Admitted durably before the provider is paid, with the task's
            // estimate reserved; the ledger row written with the audio
            // carries the actual cost.
            let token = Uuid::now_v7();
            let claim = InlineClaim {
                replica_id: context.inline.replica_id,
                token,
            };
            let (row, created) = context.store.insert_claimed(task, claim).await?;
            if !created {
                (row, false)
            } else if json {
                let (row, bytes) =
                    synthesize_claimed(context, job, (task.id, task.tenant_id), token, None)
                        .await?;
                held = bytes;
                (row, true)
            } else {
                match synthesize_streamed(context, task, token).await? {
                    Streamed::Started(response) => return Ok(response),
                    Streamed::Whole(row, bytes) => {
                        held = bytes;
                        (*row, true)
                    }
                }
            }
        }
    };
    if created {
        report_finished(&row);
        if !from_memory && let Some(bytes) = &held {
            keep_hot(context, job, &row, bytes);
        }
    } else {
        same_request(&row, job)?;
        // An earlier task's answer, whose audio may be other bytes.
        held = None;
        tracing::debug!("idempotent repeat of an earlier submission");
    }
    respond_with_audio(context, row, json, held).await
}

/// Keeps `bytes`, the audio of the succeeded task `row` of `job`, in the
/// hot cache under the job's scoped content hash.
fn keep_hot(context: &ApiContext, job: &Job, row: &TaskRow, bytes: &Bytes) {
    if let (TaskStatus::Succeeded, Some(s3_key), Some(sha256)) =
        (row.status(), &row.s3_key, &row.audio_sha256)
    {
        context
            .hot_cache
            .insert(job.hash.as_str(), s3_key, sha256, bytes.clone());
    }
}

/// How a claimed task's synthesis answered.
enum Streamed {
    /// The provider streamed: the answer passes the audio on as it comes.
    Started(Response),
    /// Nothing was streamed (the provider does not stream this format, the
    /// audio was found made, or the synthesis failed before its first
    /// byte): the task as it ended, and its bytes when held.
    Whole(Box<TaskRow>, Option<Bytes>),
}

/// Makes a claimed task's audio in a task of its own, and answers with the
/// bytes as the provider sends them when it streams: the first bytes reach
/// the client before the synthesis ends. The audio is still stored once,
/// whole, and the task finished and billed once, after the last byte, also
/// when the client hangs up midway (the vendor bills the call all the
/// same). A failure after the first byte cannot become an error status: the
/// body is cut off instead (no final chunk), and the task fails.
async fn synthesize_streamed(
    context: &ApiContext,
    task: &NewTask<'_>,
    token: Uuid,
) -> Result<Streamed, ApiError> {
    let started = std::time::Instant::now();
    let (sink, mut chunks) = AudioSink::new();
    let job = task.job.clone();
    let ids = (task.id, task.tenant_id);
    let owned = context.clone();
    let synthesis = context.syntheses.spawn(
        async move {
            let result = synthesize_claimed(&owned, &job, ids, token, Some(&sink)).await;
            if let Ok((row, Some(bytes))) = &result {
                keep_hot(&owned, &job, row, bytes);
            }
            if sink.started() {
                let complete =
                    matches!(&result, Ok((row, _)) if row.status() == TaskStatus::Succeeded);
                ttsq_telemetry::metrics::get().stream_ended(complete);
                match &result {
                    Ok((row, _)) => report_finished(row),
                    Err(err) => {
                        tracing::warn!(error = %err, "streamed synthesis did not finish its task")
                    }
                }
            }
            result
        }
        .instrument(tracing::Span::current()),
    );
    let Some(first) = chunks.recv().await else {
        // The sink is gone unused: the synthesis is over.
        let (row, bytes) = synthesis.await.map_err(ApiError::internal)??;
        return Ok(Streamed::Whole(Box::new(row), bytes));
    };
    ttsq_telemetry::metrics::get().stream_started(started.elapsed());
    tracing::debug!("streaming the provider's audio");
    let rest = futures::stream::unfold(Some((chunks, synthesis)), |state| async move {
        let (mut chunks, synthesis) = state?;
        match chunks.recv().await {
            Some(chunk) => Some((Ok(chunk), Some((chunks, synthesis)))),
            None => {
                let failure = match synthesis.await {
                    Ok(Ok((row, _))) if row.status() == TaskStatus::Succeeded => return None,
                    Ok(Ok((row, _))) => format!(
                        "synthesis {}: {}",
                        row.error_code.as_deref().unwrap_or("did not finish"),
                        row.error_message.as_deref().unwrap_or_default()
                    ),
                    Ok(Err(err)) => format!("synthesis failed: {err}"),
                    Err(err) => format!("synthesis failed: {err}"),
                };
                Some((Err(std::io::Error::other(failure)), None))
            }
        }
    });
    let body = futures::stream::once(async move { Ok(first) }).chain(rest);
    let mut response = (
        [(header::CONTENT_TYPE, task.job.format.content_type())],
        axum::body::Body::from_stream(body),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(
        "x-task-id",
        HeaderValue::from_str(&task.id.to_string()).map_err(ApiError::internal)?,
    );
    headers.insert("x-cache", HeaderValue::from_static("miss"));
    Ok(Streamed::Started(response))
}

/// Makes the audio of a task this request has just claimed, under the
/// hash's fleet-wide lease, and ends the task with it (billed when the audio
/// was made for it). Another claim synthesizing the same hash is waited for
/// and its audio taken as a cache hit; should that take longer than
/// [`InlineClaims::hash_wait`](crate::InlineClaims), or S3 fail after the
/// provider was paid, the task goes to the queue and a worker finishes it.
/// Returns the task as it ended, and the audio bytes when this request
/// stored them.
async fn synthesize_claimed(
    context: &ApiContext,
    job: &Job,
    (task_id, tenant_id): (Uuid, Uuid),
    token: Uuid,
    sink: Option<&AudioSink>,
) -> Result<(TaskRow, Option<Bytes>), ApiError> {
    let hash = job.hash.as_str().to_owned();
    let inline = context.inline;
    let deadline = std::time::Instant::now() + inline.hash_wait;
    let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
    let mut held = None;
    let mut forget_key = false;
    loop {
        let leased = context
            .store
            .acquire_leases(
                std::slice::from_ref(&hash),
                inline.replica_id,
                token,
                inline.lease_ttl,
                inline.replica_ttl,
            )
            .await?
            .contains(&hash);
        let found = context.store.find_audio(&hash).await?;
        let mut made = Vec::new();
        let mut finished = Vec::new();
        let mut retries = Vec::new();
        match found {
            Some(object) => finished.push(cache_hit(&context.providers, &object)),
            None if leased => {
                let utterance = Utterance::of_job(job);
                let request = utterance.request();
                let outcome = match sink {
                    Some(sink) => {
                        make_audio_streaming(
                            &context.audio,
                            &context.providers,
                            &hash,
                            &request,
                            inline.make,
                            sink,
                        )
                        .await
                    }
                    None => {
                        make_audio(
                            &context.audio,
                            &context.providers,
                            &hash,
                            &request,
                            inline.make,
                        )
                        .await
                    }
                };
                match outcome {
                    Ok(done) => {
                        let object = &done.audio.object;
                        finished.push(TaskOutcome::Succeeded {
                            audio_hash: object.hash.clone(),
                            cache_hit: false,
                            price_per_1k: context.providers.price_per_1k(&object.provider),
                            currency: context.providers.currency(&object.provider).to_owned(),
                            provider: object.provider.clone(),
                        });
                        held = done.bytes;
                        made.push(done.audio);
                    }
                    Err(MakeAudioError::Provider(err)) => {
                        // A passing failure answered now must not be answered
                        // again to a retry with the same key once it is over.
                        forget_key = err.is_retryable();
                        finished.push(TaskOutcome::Failed {
                            code: err.code().to_owned(),
                            message: err.to_string(),
                        });
                    }
                    Err(MakeAudioError::Storage(err)) => {
                        tracing::warn!(error = %err, "storing inline audio failed; the queue takes the task");
                        retries.push(hand_to_queue(task_id, "storage_unavailable", &err));
                    }
                }
            }
            None if std::time::Instant::now() < deadline => {
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
            None => retries.push(hand_to_queue(
                task_id,
                SYNTHESIS_IN_PROGRESS.0,
                SYNTHESIS_IN_PROGRESS.1,
            )),
        }
        let finished: Vec<FinishedTask> = finished
            .into_iter()
            .map(|outcome| FinishedTask { task_id, outcome })
            .collect();
        let committed = context
            .store
            .commit_claim(ClaimCommit {
                token,
                made: &made,
                finished: &finished,
                retries: &retries,
            })
            .instrument(tracing::info_span!(
                "postgres.commit",
                db.system = "postgresql"
            ))
            .await;
        let committed = match committed {
            Ok(committed) => committed,
            Err(err) => {
                // Waiters for the hash take over at once instead of after
                // the lease expires; the task returns to the queue through
                // orphan recovery (claim timeout).
                if let Err(release) = context.store.release_leases(token).await {
                    tracing::debug!(error = %release, "releasing the request's lease failed; it expires");
                }
                return Err(err.into());
            }
        };
        if committed.lease_lost.contains(&task_id) {
            // Presumed dead while it synthesized: the new holder's audio is
            // the one indexed; wait for it.
            held = None;
            continue;
        }
        if forget_key {
            context.store.forget_idempotency_key(task_id).await?;
        }
        let row = context
            .store
            .get_task(tenant_id, task_id)
            .await?
            .ok_or(ApiError::NotFound("task"))?;
        // Bytes are answered only when they are the task's own audio.
        if row.audio_sha256.is_none() || !committed.billed.contains(&task_id) {
            held = None;
        }
        return Ok((row, held));
    }
}

/// A claimed task handed to the queue: the dispatcher publishes it in its turn.
fn hand_to_queue(task_id: Uuid, code: &str, message: impl ToString) -> Reschedule {
    Reschedule {
        task_id,
        not_before: chrono::Utc::now(),
        error_code: code.to_owned(),
        error_message: message.to_string(),
        refund_attempt: true,
    }
}

/// Answers with a finished task's audio: `held` when given (the bytes of
/// the task's own audio object), otherwise read from S3.
async fn respond_with_audio(
    context: &ApiContext,
    row: TaskRow,
    json: bool,
    held: Option<Bytes>,
) -> Result<Response, ApiError> {
    match row.status() {
        TaskStatus::Succeeded => {}
        TaskStatus::Failed => {
            let code = match row.error_code.as_deref() {
                Some("provider_unavailable") => "provider_unavailable",
                Some("provider_timeout") => "provider_timeout",
                _ => "synthesis_failed",
            };
            return Err(ApiError::Synthesis {
                task_id: row.id,
                code,
                retryable: code != "synthesis_failed",
                message: row.error_message.unwrap_or_default(),
            });
        }
        // An idempotent repeat of a job that is still queued.
        _ => {
            return Ok((StatusCode::ACCEPTED, Json(context.task_view(row).await?)).into_response());
        }
    }
    if json {
        return Ok(Json(context.task_view(row).await?).into_response());
    }
    let cache = if row.cache_hit { "hit" } else { "miss" };
    let task_id = row.id;
    let mut response = match held {
        Some(bytes) => audio_response(&row, bytes),
        None => stored_audio(context, &row).await?,
    };
    let headers = response.headers_mut();
    headers.insert(
        "x-task-id",
        HeaderValue::from_str(&task_id.to_string()).map_err(ApiError::internal)?,
    );
    headers.insert("x-cache", HeaderValue::from_static(cache));
    Ok(response)
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/json"))
}
