//! What every request leaves behind for operators: its span, which
//! continues the caller's trace when the request carries a W3C
//! `traceparent`, and its count and duration in the per-route HTTP metrics.
//! Both name the route by its template (`/v1/tts/jobs/{id}`), so neither a
//! trace name nor a metric label ever holds an id.

use std::time::{Duration, Instant};

use axum::{
    body::Body,
    extract::{MatchedPath, Request},
    http::Response,
    middleware::Next,
};
use tower_http::trace::{DefaultOnResponse, OnResponse as _};
use tracing::{Span, field::Empty};
use ttsq_telemetry::metrics::UNMATCHED_ROUTE;

/// Routes that load balancers and probes call all the time: their spans are
/// at debug level, so they neither start traces nor flood the exporter.
const PROBES: &[&str] = &["/health", "/ready"];

fn route(request: &Request) -> &str {
    request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED_ROUTE, MatchedPath::as_str)
}

/// The span of one request (`tower_http`'s `make_span_with`): named
/// `METHOD /route/{template}` in traces, a child of the caller's span when a
/// valid `traceparent` came with it (a malformed one starts a new trace).
pub(crate) fn request_span(request: &Request) -> Span {
    let route = route(request);
    let method = request.method().as_str();
    let span = if PROBES.contains(&route) {
        tracing::debug_span!("request", %method, route, http_status = Empty)
    } else {
        tracing::info_span!(
            "request",
            otel.name = %format!("{method} {route}"),
            otel.kind = "server",
            otel.status_code = Empty,
            %method,
            route,
            http_status = Empty,
        )
    };
    let traceparent = request
        .headers()
        .get("traceparent")
        .and_then(|value| value.to_str().ok());
    ttsq_telemetry::trace_context::adopt(&span, traceparent);
    span
}

/// Records the answer's status on the request span (a 5xx marks the trace
/// span as failed), then logs it as `tower_http` does by default.
pub(crate) fn record_response(response: &Response<Body>, latency: Duration, span: &Span) {
    let status = response.status();
    span.record("http_status", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    DefaultOnResponse::default().on_response(response, latency, span);
}

/// Counts the request in `ttsq_http_requests_total` and times it in
/// `ttsq_http_request_duration_seconds` (until the response's head: a
/// streamed body is not waited for).
pub(crate) async fn count_request(request: Request, next: Next) -> axum::response::Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    ttsq_telemetry::metrics::get().http_request(
        route.as_ref().map_or(UNMATCHED_ROUTE, MatchedPath::as_str),
        method.as_str(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}
