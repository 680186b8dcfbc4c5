//! JSON lines with the fields of every enclosing span flattened into the
//! line, innermost last so it wins: a line logged inside a task's span says
//! which task, tenant, dialect and provider without the call site repeating
//! them, and log pipelines index plain top-level keys. A line logged inside
//! a traced span carries its `trace_id` and `span_id`, so logs and traces
//! (ours, or the caller's that sent a `traceparent`) link up.

use std::fmt;

use opentelemetry::trace::TraceContextExt as _;
use serde_json::{Map, Value};
use tracing::{Event, Subscriber, field::Field};
use tracing_subscriber::{
    fmt::{
        FmtContext, FormatEvent, FormatFields, FormattedFields,
        format::Writer,
        time::{FormatTime, SystemTime},
    },
    registry::LookupSpan,
};

/// The event format of `log.format = "json"`; spans' fields must be recorded
/// with `JsonFields` so they can be merged back.
pub struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Map::new();
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        line.insert("timestamp".into(), Value::String(timestamp));
        line.insert(
            "level".into(),
            Value::String(event.metadata().level().to_string()),
        );
        line.insert(
            "target".into(),
            Value::String(event.metadata().target().to_owned()),
        );
        if let Some(scope) = ctx.event_scope() {
            let mut innermost = None;
            for span in scope.from_root() {
                innermost = Some(span.name());
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(fields) {
                    // `otel.*` fields steer the exported span (its name, kind,
                    // status); they say nothing a reader of the line needs.
                    line.extend(fields.into_iter().filter(|(k, _)| !k.starts_with("otel.")));
                }
            }
            if let Some(name) = innermost {
                line.insert("span".into(), Value::String(name.to_owned()));
            }
        }
        let ids = if event.is_contextual() {
            span_ids(&opentelemetry::Context::current())
        } else {
            event.parent().and_then(|parent| {
                tracing::dispatcher::get_default(|dispatch| {
                    ctx.span_scope(parent)?.find_map(|span| {
                        tracing_opentelemetry::get_otel_context(&span.id(), dispatch)
                            .and_then(|context| span_ids(&context))
                    })
                })
            })
        };
        if let Some((trace_id, span_id)) = ids {
            line.insert("trace_id".into(), Value::String(trace_id));
            line.insert("span_id".into(), Value::String(span_id));
        }
        event.record(&mut Fields(&mut line));
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// The trace and span ids of `context`'s span, when it is traced. A
/// contextual event finds its span's context as the current one (the
/// OpenTelemetry layer makes it current while the span is entered); an
/// event with an explicit parent asks the layer for that span's.
fn span_ids(context: &opentelemetry::Context) -> Option<(String, String)> {
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| {
        (
            span_context.trace_id().to_string(),
            span_context.span_id().to_string(),
        )
    })
}

/// Collects an event's fields as JSON values.
struct Fields<'a>(&'a mut Map<String, Value>);

impl tracing::field::Visit for Fields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().into(), Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        sync::{Arc, Mutex},
    };

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::{fmt, prelude::*};

    use super::*;
    use crate::trace_context;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .expect("capture lock")
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_carries_the_fields_of_every_enclosing_span_innermost_winning() {
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::registry().with(
            fmt::layer()
                .fmt_fields(fmt::format::JsonFields::new())
                .event_format(FlatJson)
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            let job = tracing::info_span!(
                "job",
                task_id = "t-1",
                tenant = "acme",
                provider = tracing::field::Empty,
                attempt = 1
            );
            let _job = job.enter();
            job.record("provider", "eleven");
            let call = tracing::info_span!("provider.call", attempt = 2, latency_ms = 35_u64);
            let _call = call.enter();
            tracing::info!(cache_hit = false, "task succeeded");
        });
        let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["message"], "task succeeded");
        assert_eq!(line["task_id"], "t-1");
        assert_eq!(line["tenant"], "acme");
        assert_eq!(line["provider"], "eleven", "recorded after creation");
        assert_eq!(line["latency_ms"], 35);
        assert_eq!(line["attempt"], 2, "the innermost span wins");
        assert_eq!(line["cache_hit"], false);
        assert_eq!(line["span"], "provider.call");
        assert_eq!(line["level"], "INFO");
        assert!(line["timestamp"].is_string());
    }

    fn lines(capture: &Capture) -> Vec<Value> {
        let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn a_line_in_a_span_continuing_a_traceparent_carries_its_trace_id() {
        let capture = Capture::default();
        let writer = capture.clone();
        // As `init` installs it without an OTLP endpoint: ids, no export.
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(
                fmt::layer()
                    .fmt_fields(fmt::format::JsonFields::new())
                    .event_format(FlatJson)
                    .with_writer(move || writer.clone()),
            )
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let request =
                tracing::info_span!("request", otel.kind = "server", route = "/v1/tts/jobs");
            trace_context::adopt(
                &request,
                Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            );
            let _request = request.enter();
            tracing::info!("inside the request");
            let submit = tracing::info_span!("submit", task_id = "t-1");
            let _submit = submit.enter();
            tracing::info!("inside the submit span");
            tracing::info!(parent: None, "outside any span");
        });
        let lines = lines(&capture);
        let [request, submit, outside] = lines.as_slice() else {
            panic!("three lines expected: {lines:?}");
        };
        for line in [request, submit] {
            assert_eq!(
                line["trace_id"], "0af7651916cd43dd8448eb211c80319c",
                "{line}"
            );
            let span_id = line["span_id"].as_str().expect("a span id");
            assert_eq!(span_id.len(), 16, "{line}");
            assert_ne!(
                span_id, "b7ad6b7169203331",
                "the caller's span is the parent"
            );
        }
        assert_ne!(
            request["span_id"], submit["span_id"],
            "the innermost span's id"
        );
        assert_eq!(request["route"], "/v1/tts/jobs");
        assert!(request.get("otel.kind").is_none(), "{request}");
        assert!(outside.get("trace_id").is_none(), "{outside}");
    }
}
