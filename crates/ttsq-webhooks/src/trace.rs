//! A delivery in the trace of the job it reports on: each POST runs in a
//! `webhook.post` span whose parent is the span that submitted the task (or
//! the batch), and sends that span's W3C `traceparent`, so a receiver that
//! traces continues the job's trace.

use reqwest::header::{HeaderMap, HeaderValue};
use tracing::Span;
use ttsq_store::{Store, WebhookDelivery};

/// The span of one attempt at `event`; a fresh trace when the task was
/// submitted untraced or its `traceparent` cannot be read.
pub(crate) async fn post_span(store: &Store, event: &WebhookDelivery) -> Span {
    let span = tracing::info_span!(
        "webhook.post",
        otel.kind = "client",
        event = %event.event,
    );
    match store
        .submitted_traceparent(event.task_id, event.batch_id)
        .await
    {
        Ok(traceparent) => ttsq_telemetry::trace_context::adopt(&span, traceparent.as_deref()),
        Err(err) => tracing::debug!(error = %err, "the event's trace is unknown"),
    }
    span
}

/// `traceparent` of the current span, when it is traced.
pub(crate) fn headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(value) = ttsq_telemetry::trace_context::current_traceparent()
        .and_then(|traceparent| HeaderValue::from_str(&traceparent).ok())
    {
        headers.insert("traceparent", value);
    }
    headers
}
