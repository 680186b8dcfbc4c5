//! The delivery service: relays pending events to `ttsq.webhooks`, consumes
//! it, POSTs each event signed and settles its message.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use secrecy::SecretString;
use tokio::task::JoinSet;
use tracing::Instrument as _;
use ttsq_audio::AudioStore;
use ttsq_core::backoff::Backoff;
use ttsq_queue::{
    Broker,
    webhooks::{WebhookDelivery as QueuedDelivery, WebhookMessage},
};
use ttsq_store::{AttemptOutcome, Store, WebhookDelivery};
use ttsq_views::{
    BatchCompletedEvent, BatchEventType, BatchView, TaskCompletedEvent, TaskEventType, TaskView,
};

use crate::{
    guard::{TargetGuard, TargetRefused},
    signing::{secrets, signature_header},
};

/// How often pending events are relayed.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// Most bytes of a receiver's answer kept in the log.
const ERROR_SNIPPET: usize = 200;

/// Most bytes of a receiver's answer read at all: the rest is never taken
/// off the socket (the connection is dropped), so an answer of any size
/// costs a worker this much memory and no more.
const MAX_ANSWER_READ: usize = 4 * 1024;

/// What the delivery service needs; cheap to clone.
#[derive(Clone)]
pub struct WebhookContext {
    /// Postgres.
    pub store: Store,
    /// RabbitMQ.
    pub broker: Arc<Broker>,
    /// S3, for audio links in payloads.
    pub audio: AudioStore,
    /// Base URL of the API, for `status_url` links.
    pub public_url: Arc<str>,
    /// Signing key; `None`: webhooks are off (events stay pending).
    pub signing_key: Option<SecretString>,
    /// The SSRF guard.
    pub guard: TargetGuard,
    /// Longest one attempt may take.
    pub timeout: Duration,
    /// Deliveries at once.
    pub concurrency: u16,
    /// Most deliveries of one tenant published and not yet settled, fleet-wide.
    pub per_tenant_in_flight: u16,
    /// Consumer tag.
    pub name: String,
}

/// Runs the relay, the join sweeper and the delivery consumer until
/// `shutdown`; re-subscribes when the broker ends the consumer.
pub async fn run(context: WebhookContext, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let sweeper = {
        let context = context.clone();
        tokio::spawn(async move { sweep(&context).await })
    };
    let mut in_flight = JoinSet::new();
    if context.signing_key.is_some() {
        consume(&context, &mut in_flight, shutdown.as_mut()).await;
    } else {
        // Webhooks are off: nothing to deliver; wait for shutdown.
        shutdown.as_mut().await;
    }
    sweeper.abort();
    let _ = tokio::time::timeout(context.timeout, async {
        while in_flight.join_next().await.is_some() {}
    })
    .await;
}

/// Consumes `ttsq.webhooks` until `shutdown`, each delivery in a task of
/// `in_flight`; re-subscribes with back-off when the broker ends the consumer.
async fn consume(
    context: &WebhookContext,
    in_flight: &mut JoinSet<()>,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    while let Some(mut consumer) = context
        .broker
        .subscribe_with_backoff::<WebhookMessage>(
            context.concurrency,
            &context.name,
            &mut backoff,
            shutdown.as_mut(),
        )
        .await
    {
        loop {
            tokio::select! {
                () = shutdown.as_mut() => {
                    consumer.close().await;
                    return;
                }
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let context = context.clone();
                        in_flight.spawn(async move { deliver(&context, delivery).await });
                    }
                    _ => {
                        tracing::warn!("webhook consumer ended; re-subscribing");
                        break;
                    }
                },
            }
        }
    }
}

/// Every [`SWEEP_EVERY`]: publishes pending events.
async fn sweep(context: &WebhookContext) {
    let mut ticks = tokio::time::interval(SWEEP_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if context.signing_key.is_none() {
            continue;
        }
        // The broker's shared publishing channel, reopened if it was lost.
        let Ok(active) = context.broker.publisher().await else {
            continue;
        };
        let relayed = context
            .store
            .relay_webhooks(500, i64::from(context.per_tenant_in_flight), |event| {
                let active = active.clone();
                async move {
                    let message = WebhookMessage {
                        delivery_id: event.id,
                        attempt: u32::try_from(event.attempts).unwrap_or(0) + 1,
                    };
                    active.publish(&message).await.ok().map(|()| event.id)
                }
            })
            .await;
        if let Err(err) = relayed {
            tracing::warn!(error = %err, "relaying webhook events failed");
        }
    }
}

/// Makes one attempt and settles the message.
#[tracing::instrument(skip_all, fields(delivery_id, attempt))]
async fn deliver(context: &WebhookContext, queued: QueuedDelivery) {
    let Ok(message) = queued.decode() else {
        undecodable(context, &queued).await;
        return;
    };
    let span = tracing::Span::current();
    span.record("delivery_id", tracing::field::display(message.delivery_id));
    span.record("attempt", message.attempt);
    let event = match context.store.webhook_delivery(message.delivery_id).await {
        Ok(Some(event)) if event.status == "pending" => event,
        Ok(_) => {
            // Delivered or given up already (a duplicate message), or gone.
            let _ = queued.ack().await;
            return;
        }
        Err(err) => {
            tracing::warn!(error = %err, "reading a webhook event failed; requeueing");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = queued.requeue().await;
            return;
        }
    };
    let started = chrono::Utc::now();
    let attempt = i32::try_from(message.attempt).unwrap_or(i32::MAX);
    let result = attempt_once(context, &event)
        .instrument(crate::trace::post_span(&context.store, &event).await)
        .await;
    let max_attempts = context.broker.webhook_delays().len() + 1;
    let (code, error, outcome) = match result {
        Ok(code) if (200..300).contains(&code) => (Some(code), None, AttemptOutcome::Delivered),
        Ok(code) => (
            Some(code),
            Some(format!("the receiver answered {code}")),
            AttemptOutcome::Retrying,
        ),
        Err(AttemptError::Refused(reason)) => (
            None,
            Some(format!("target refused: {reason}")),
            AttemptOutcome::Failed,
        ),
        Err(AttemptError::Failed(reason)) => (None, Some(reason), AttemptOutcome::Retrying),
    };
    let outcome = if outcome == AttemptOutcome::Retrying && message.attempt as usize >= max_attempts
    {
        AttemptOutcome::Failed
    } else {
        outcome
    };
    if let Err(err) = context
        .store
        .record_webhook_attempt(&event, attempt, started, code, error.as_deref(), outcome)
        .await
    {
        tracing::warn!(error = %err, "logging a webhook attempt failed; it will be redelivered");
        let _ = queued.requeue().await;
        return;
    }
    match outcome {
        AttemptOutcome::Delivered => tracing::info!(status = code, "webhook delivered"),
        AttemptOutcome::Failed => tracing::warn!(error = error.as_deref(), "webhook given up"),
        AttemptOutcome::Retrying => {
            tracing::info!(
                error = error.as_deref(),
                "webhook attempt failed; retrying later"
            );
            let next = WebhookMessage {
                delivery_id: event.id,
                attempt: message.attempt + 1,
            };
            let delay_index = message.attempt.saturating_sub(1) as usize;
            if let Err(err) = queued.retry_later(&next, delay_index).await {
                tracing::warn!(error = %err, "queueing a webhook retry failed; the relay will");
                let _ = context.store.unpublish_webhook(event.id).await;
                let _ = queued.ack().await;
            }
            return;
        }
    }
    let _ = queued.ack().await;
}

/// Reason header of an undecodable webhook message in the dead-letter queue.
pub const MALFORMED_WEBHOOK: &str = "malformed-webhook";

/// Settles a message that is no [`WebhookMessage`]: the event it still
/// names, if pending, is failed (nothing else would ever settle it: its
/// message is out of the relay's hands), and the message goes to the
/// dead-letter queue for an operator to look at. Whatever cannot be done now
/// is requeued, to be tried again.
async fn undecodable(context: &WebhookContext, queued: &QueuedDelivery) {
    if let Some(id) = queued.named_delivery_id() {
        tracing::Span::current().record("delivery_id", tracing::field::display(id));
        let failed = match context.store.webhook_delivery(id).await {
            Ok(Some(event)) if event.status == "pending" => {
                let attempt = event.attempts.saturating_add(1);
                context
                    .store
                    .record_webhook_attempt(
                        &event,
                        attempt,
                        chrono::Utc::now(),
                        None,
                        Some("its queue message could not be decoded (dead-lettered); replay the event to send it again"),
                        AttemptOutcome::Failed,
                    )
                    .await
            }
            Ok(_) => Ok(()),
            Err(err) => Err(err),
        };
        if let Err(err) = failed {
            tracing::warn!(error = %err, "failing the event of an undecodable webhook message failed; requeueing");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = queued.requeue().await;
            return;
        }
    }
    match queued.dead_letter(MALFORMED_WEBHOOK).await {
        Ok(()) => tracing::warn!("undecodable webhook message dead-lettered"),
        Err(err) => {
            tracing::warn!(error = %err, "dead-lettering an undecodable webhook message failed; requeueing");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = queued.requeue().await;
        }
    }
}

enum AttemptError {
    /// The target may not be called.
    Refused(TargetRefused),
    /// The call failed (connection, timeout, payload).
    Failed(String),
}

/// Checks the target, builds, signs and POSTs the payload; the status code.
async fn attempt_once(
    context: &WebhookContext,
    event: &WebhookDelivery,
) -> Result<u16, AttemptError> {
    let target = context
        .guard
        .check(&event.target_url)
        .await
        .map_err(AttemptError::Refused)?;
    let body = payload(context, event)
        .await
        .map_err(|e| AttemptError::Failed(format!("building the payload failed: {e}")))?;
    let secrets = secrets(
        &context.store,
        context.signing_key.as_ref(),
        event.tenant_id,
    )
    .await
    .map_err(|e| AttemptError::Failed(e.to_string()))?;
    let id = event.id.to_string();
    let timestamp = chrono::Utc::now().timestamp();
    let signature = signature_header(&secrets, &id, timestamp, &body);

    let mut client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(context.timeout);
    if let Some(domain) = &target.domain {
        // Connect to the addresses the guard checked, not a second lookup's.
        client = client.resolve_to_addrs(domain, &target.addrs);
    }
    let client = client
        .build()
        .map_err(|e| AttemptError::Failed(e.to_string()))?;
    let response = client
        .post(target.url)
        .headers(crate::trace::headers())
        .header("content-type", "application/json")
        .header("user-agent", "ttsq-webhooks/1")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .header("ttsq-event", &event.event)
        .body(body)
        .send()
        .await
        .map_err(|e| AttemptError::Failed(format!("request failed: {}", without_url(&e))))?;
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        let answer = read_prefix(response, MAX_ANSWER_READ).await;
        let text = String::from_utf8_lossy(&answer);
        tracing::debug!(status, body = %text.chars().take(ERROR_SNIPPET).collect::<String>(), "receiver refused");
    }
    Ok(status)
}

/// The first `limit` bytes of `response`'s body (fewer if it is shorter or
/// breaks off); the rest is left unread and dropped with the response.
async fn read_prefix(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    while kept.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - kept.len();
                kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    kept
}

/// A reqwest error's description without the URL (which may carry tokens).
fn without_url(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else {
        "transport error"
    };
    kind.to_owned()
}

/// The event's body: a [`TaskCompletedEvent`] or [`BatchCompletedEvent`]
/// around the task's or the batch's view as it is now, rendered as
/// `GET /v1/tts/jobs/{id}` and `GET /v1/tts/batches/{id}` render it. These
/// types are the document's webhook schemas, so the two cannot drift.
async fn payload(context: &WebhookContext, event: &WebhookDelivery) -> Result<Vec<u8>, String> {
    let created_at = chrono::Utc::now();
    if let Some(batch_id) = event.batch_id {
        let batch = context
            .store
            .get_batch(event.tenant_id, batch_id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the batch no longer exists")?;
        let data = BatchView::render(&context.store, &context.audio, &context.public_url, batch)
            .await
            .map_err(|e| e.to_string())?;
        let body = BatchCompletedEvent {
            id: event.id,
            kind: BatchEventType::Completed,
            created_at,
            data,
        };
        return serde_json::to_vec(&body).map_err(|e| e.to_string());
    }
    let task_id = event.task_id.ok_or("the event names no task")?;
    let row = context
        .store
        .get_task(event.tenant_id, task_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the task no longer exists")?;
    let data = TaskView::render(&context.audio, &context.public_url, row)
        .await
        .map_err(|e| e.to_string())?;
    let body = TaskCompletedEvent {
        id: event.id,
        kind: TaskEventType::Completed,
        created_at,
        data,
    };
    serde_json::to_vec(&body).map_err(|e| e.to_string())
}
