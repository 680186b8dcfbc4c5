//! One trace per job, across processes: the API continues the caller's
//! W3C `traceparent` in its request span, writes the `traceparent` of its
//! submit span into the job message (and so the AMQP headers), and the
//! worker makes that the parent of the job's spans; provider calls and
//! webhook deliveries send the current span's on. Without an OpenTelemetry
//! layer every function here is a cheap no-op.

use std::{collections::HashMap, time::SystemTime};

use opentelemetry::{
    Context, KeyValue, global,
    propagation::TextMapPropagator,
    trace::{Span as _, SpanKind, TraceContextExt, Tracer as _},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `traceparent` of the current span, when it is being traced.
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}

/// The remote context a `traceparent` names; an empty one when it is
/// missing or malformed (a bad header never fails a job).
pub fn remote_context(traceparent: Option<&str>) -> Context {
    let mut carrier = HashMap::new();
    if let Some(traceparent) = traceparent {
        carrier.insert("traceparent".to_owned(), traceparent.to_owned());
    }
    TraceContextPropagator::new().extract(&carrier)
}

/// Makes `span` a child of the remote span `traceparent` names (a caller's,
/// or the submitting request's). Call it right after creating `span`,
/// before it is entered: a started span keeps its parent.
pub fn adopt(span: &tracing::Span, traceparent: Option<&str>) {
    if traceparent.is_none() {
        return;
    }
    let context = remote_context(traceparent);
    if context.span().span_context().is_valid() {
        // Fails only when no OpenTelemetry layer is installed or the span is
        // disabled: then there is no trace to join.
        let _ = span.set_parent(context);
    }
}

/// Records the time a job waited in the queue — from `since` (its
/// submission) until now — as a `queue.wait` span of the job's trace.
pub fn record_queue_wait(traceparent: Option<&str>, since: SystemTime, queue: &str) {
    if traceparent.is_none() {
        return;
    }
    let parent = remote_context(traceparent);
    if !parent.span().span_context().is_valid() {
        return;
    }
    let tracer = global::tracer("ttsq");
    let mut span = tracer
        .span_builder("queue.wait")
        .with_kind(SpanKind::Consumer)
        .with_start_time(since)
        .with_attributes([
            KeyValue::new("messaging.system", "rabbitmq"),
            KeyValue::new("messaging.destination.name", queue.to_owned()),
        ])
        .start_with_context(&tracer, &parent);
    span.end();
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt;

    use super::*;

    #[test]
    fn a_traceparent_round_trips_through_the_remote_context() {
        let header = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let context = remote_context(Some(header));
        let span = context.span();
        let parsed = span.span_context();
        assert!(parsed.is_valid());
        assert_eq!(
            parsed.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert!(parsed.is_remote());
    }

    #[test]
    fn missing_or_malformed_headers_give_no_parent() {
        for header in [None, Some(""), Some("00-zz-yy-01"), Some("garbage")] {
            assert!(
                !remote_context(header).span().span_context().is_valid(),
                "{header:?}"
            );
        }
        assert_eq!(current_traceparent(), None, "no layer, no trace");
    }
}
