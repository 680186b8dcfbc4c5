//! Every Prometheus series of ttsq, in one registry per process.
//!
//! Counters and histograms are updated where things happen (the API, the
//! worker's pipeline, the provider router); gauges that mirror state kept
//! elsewhere (queue depths, breakers, today's usage) are set just before a
//! scrape by whoever serves `/metrics`. Histogram buckets are explicit and
//! the same on every replica, so `histogram_quantile` over the fleet works.
//!
//! Labels are bounded: dialects and voices come from the configured catalog,
//! providers and error codes from configuration and a fixed list, HTTP
//! routes are the router's templates (`/v1/tts/jobs/{id}`, never a raw
//! path), methods a fixed list and statuses their class. No task ids, no
//! tenants.
//!
//! Besides ttsq's own series: the standard `process_*` series and
//! `ttsq_build_info{version,commit,rustc}`, always 1.

use std::{
    sync::LazyLock,
    time::{Duration, SystemTime},
};

use prometheus::{
    Encoder as _, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// End-to-end job latency buckets, seconds: inline jobs take tens of
/// milliseconds, queued ones up to minutes behind a backlog.
const JOB_BUCKETS: &[f64] = &[
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
/// One provider call, seconds.
const PROVIDER_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Waiting for quota, seconds: zero when under the limit, up to the
/// 120 s a 429 storm may hold a request.
const QUOTA_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];
/// Jobs per batch.
const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// Single submissions written by one transaction (group commit); the API
/// gathers at most 512.
const SUBMIT_GROUP_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
/// One HTTP request to the API, seconds: answers in milliseconds, inline
/// synthesis in seconds, long-polls (`?wait=`) up to a minute.
const HTTP_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// The route label of a request no route matched (a 404 of the fallback).
pub const UNMATCHED_ROUTE: &str = "unmatched";
/// The version, commit and compiler `ttsq_build_info` reports. The commit
/// is `TTSQ_BUILD_COMMIT` at build time (the image's build argument).
const BUILD_VERSION: &str = env!("CARGO_PKG_VERSION");
const BUILD_RUSTC: &str = env!("TTSQ_RUSTC_VERSION");
/// One batch end to end, seconds.
const BATCH_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

/// The series; see each field for its name and labels.
pub struct Metrics {
    registry: Registry,
    /// `tts_requests_total{dialect,voice,status}`: jobs that reached a
    /// terminal state (`succeeded`, `failed`), cache hits included.
    pub requests: IntCounterVec,
    /// `tts_request_duration_seconds{dialect}`: submission to terminal state.
    pub request_duration: HistogramVec,
    /// `tts_cache_hits_total`: jobs served from stored audio.
    pub cache_hits: IntCounter,
    /// `tts_cache_hit_ratio`: share of today's (UTC) finished jobs that were
    /// cache hits, fleet-wide, from the usage ledger.
    pub cache_hit_ratio: Gauge,
    /// `tts_daily_usage`: billable characters today (UTC), fleet-wide, from
    /// the usage ledger.
    pub daily_usage: IntGauge,
    /// `tts_daily_usage_limit`: the configured daily character allowance
    /// (`metrics.daily_character_limit`); absent when none is set.
    pub daily_usage_limit: IntGauge,
    /// `tts_provider_requests_total{provider,outcome}`: calls to a provider,
    /// `ok` or `error`.
    pub provider_requests: IntCounterVec,
    /// `tts_provider_request_duration_seconds{provider}`: one call.
    pub provider_duration: HistogramVec,
    /// `tts_provider_errors_total{provider,code}`: failed calls by error code.
    pub provider_errors: IntCounterVec,
    /// `tts_provider_rate_limited_total{provider}`: 429s received.
    pub provider_rate_limited: IntCounterVec,
    /// `tts_provider_circuit_state{provider}`: 0 closed, 1 half-open, 2 open.
    pub circuit_state: IntGaugeVec,
    /// `tts_tenant_limit_usage_max{limit}`: the highest share of a tenant
    /// limit (`daily_characters`, `monthly_budget`, `max_queued_jobs`,
    /// `daily_requests`) used
    /// by any tenant this process admitted a job for; no tenant label.
    pub tenant_limit_usage_max: GaugeVec,
    /// `tts_tenants_near_limit{limit}`: tenants at 80 % or more of that limit.
    pub tenants_near_limit: IntGaugeVec,
    /// `tts_quota_wait_seconds{provider}`: time a call waited for quota.
    pub quota_wait: HistogramVec,
    /// `tts_batch_size`: jobs per worker batch.
    pub batch_size: Histogram,
    /// `tts_batch_duration_seconds`: one batch, claim to commit.
    pub batch_duration: Histogram,
    /// `tts_submit_group_size`: single submissions (`POST /v1/tts/jobs`,
    /// normal priority) written together by one transaction.
    pub submit_group_size: Histogram,
    /// `tts_queue_depth`: messages ready in the job queue (at most the
    /// dispatch windows; the backlog is `tts_tasks_queued`).
    pub queue_depth: IntGauge,
    /// `tts_tasks_queued`: tasks queued fleet-wide, from Postgres: waiting
    /// for their tenant's turn or in the job queue.
    pub tasks_queued: IntGauge,
    /// `tts_dlq_depth`: messages in the dead-letter queue.
    pub dlq_depth: IntGauge,
    /// `tts_tasks_in_flight`: tasks being synthesized by this process now.
    pub in_flight: IntGauge,
    /// `tts_readiness_checks_total`: rounds of readiness checks this process
    /// made against Postgres, RabbitMQ and S3 (public `/ready` answers share
    /// one round per interval, so this grows with time, not with callers).
    pub readiness_checks: IntCounter,
    /// `tts_dispatched_total`: tasks this process's dispatcher published
    /// to the job queue (confirmed).
    pub dispatched: IntCounter,
    /// `tts_dispatch_window{provider}`: the window of published, unfinished
    /// tasks the dispatcher keeps for a provider.
    pub dispatch_window: IntGaugeVec,
    /// `ttsq_http_requests_total{route,method,status}`: requests the API
    /// answered, by route template, method and status class (`2xx` … `5xx`).
    pub http_requests: IntCounterVec,
    /// `ttsq_http_request_duration_seconds{route,method}`: from the request
    /// to its response's head.
    pub http_duration: HistogramVec,
    /// `tts_streamed_responses_total{outcome}`: high-priority answers that
    /// passed the provider's audio on as it came, by how they ended:
    /// `complete`, or `cut_off` (the synthesis failed after the first byte).
    pub streamed_responses: IntCounterVec,
    /// `tts_stream_first_byte_seconds`: from the start of a streamed
    /// synthesis to its first audio byte handed to the client.
    pub stream_first_byte: Histogram,
    /// `tts_long_job_joins_total{outcome}`: joins of a long job's chunks
    /// by how they ended: `joined` (the audio made and the job succeeded),
    /// `reused` (its audio was stored already), `failed` (the job failed
    /// with `join_failed`), `retried` (a failure that may pass: tried again
    /// later) or `lease_lost` (another replica took the join over).
    pub long_job_joins: IntCounterVec,
    /// `tts_hot_cache_requests_total{outcome}`: high-priority audio answers
    /// whose stored object was looked for in the API's in-memory hot cache:
    /// `hit` (answered from memory, no S3 read) or `miss`.
    pub hot_cache_requests: IntCounterVec,
    /// `tts_hot_cache_bytes`: bytes of audio the hot cache holds.
    pub hot_cache_bytes: IntGauge,
    /// `tts_hot_cache_entries`: audio objects the hot cache holds.
    pub hot_cache_entries: IntGauge,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let metric = HistogramVec::new(opts, labels).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let metric = Histogram::with_opts(opts).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

fn int_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

impl Metrics {
    // The names and buckets are constants of this file: a failure here is a
    // programming error caught by the first test that renders them.
    fn new() -> Self {
        let r = Registry::new();
        let cache_hits = IntCounter::new("tts_cache_hits_total", "Jobs served from stored audio.")
            .expect("valid metric");
        r.register(Box::new(cache_hits.clone()))
            .expect("metric registered once");
        let readiness_checks = IntCounter::new(
            "tts_readiness_checks_total",
            "Rounds of readiness checks against Postgres, RabbitMQ and S3.",
        )
        .expect("valid metric");
        r.register(Box::new(readiness_checks.clone()))
            .expect("metric registered once");
        let cache_hit_ratio = Gauge::new(
            "tts_cache_hit_ratio",
            "Share of today's (UTC) finished jobs served from the cache, fleet-wide.",
        )
        .expect("valid metric");
        r.register(Box::new(cache_hit_ratio.clone()))
            .expect("metric registered once");
        let circuit_state = IntGaugeVec::new(
            Opts::new(
                "tts_provider_circuit_state",
                "Circuit breaker of a provider: 0 closed, 1 half-open, 2 open.",
            ),
            &["provider"],
        )
        .expect("valid metric");
        r.register(Box::new(circuit_state.clone()))
            .expect("metric registered once");
        let tenant_limit_usage_max = GaugeVec::new(
            Opts::new(
                "tts_tenant_limit_usage_max",
                "Highest share of a tenant limit used by any tenant, by limit.",
            ),
            &["limit"],
        )
        .expect("valid metric");
        r.register(Box::new(tenant_limit_usage_max.clone()))
            .expect("metric registered once");
        let tenants_near_limit = IntGaugeVec::new(
            Opts::new(
                "tts_tenants_near_limit",
                "Tenants at 80 % or more of a limit, by limit.",
            ),
            &["limit"],
        )
        .expect("valid metric");
        r.register(Box::new(tenants_near_limit.clone()))
            .expect("metric registered once");
        let dispatch_window = IntGaugeVec::new(
            Opts::new(
                "tts_dispatch_window",
                "Published, unfinished tasks the dispatcher keeps for a provider.",
            ),
            &["provider"],
        )
        .expect("valid metric");
        r.register(Box::new(dispatch_window.clone()))
            .expect("metric registered once");
        let dispatched = IntCounter::new(
            "tts_dispatched_total",
            "Tasks published to the job queue by this process's dispatcher.",
        )
        .expect("valid metric");
        r.register(Box::new(dispatched.clone()))
            .expect("metric registered once");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "ttsq_build_info",
                "The ttsq build: version, commit and compiler; always 1.",
            ),
            &["version", "commit", "rustc"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[BUILD_VERSION, build_commit(), BUILD_RUSTC])
            .set(1);
        r.register(Box::new(build_info))
            .expect("metric registered once");
        r.register(Box::new(crate::process::ProcessCollector::new()))
            .expect("metric registered once");
        Self {
            http_requests: counter_vec(
                &r,
                "ttsq_http_requests_total",
                "HTTP requests answered, by route template, method and status class.",
                &["route", "method", "status"],
            ),
            http_duration: histogram_vec(
                &r,
                "ttsq_http_request_duration_seconds",
                "Time from an HTTP request to its response, by route template and method.",
                &["route", "method"],
                HTTP_BUCKETS,
            ),
            streamed_responses: counter_vec(
                &r,
                "tts_streamed_responses_total",
                "High-priority answers streamed as the provider sent them, by outcome (complete, cut_off).",
                &["outcome"],
            ),
            long_job_joins: counter_vec(
                &r,
                "tts_long_job_joins_total",
                "Joins of a long job's chunks, by outcome (joined, reused, failed, retried, lease_lost).",
                &["outcome"],
            ),
            hot_cache_requests: counter_vec(
                &r,
                "tts_hot_cache_requests_total",
                "High-priority audio answers looked for in the in-memory hot cache, by outcome (hit, miss).",
                &["outcome"],
            ),
            hot_cache_bytes: int_gauge(
                &r,
                "tts_hot_cache_bytes",
                "Bytes of audio held in the API's in-memory hot cache.",
            ),
            hot_cache_entries: int_gauge(
                &r,
                "tts_hot_cache_entries",
                "Audio objects held in the API's in-memory hot cache.",
            ),
            stream_first_byte: histogram(
                &r,
                "tts_stream_first_byte_seconds",
                "Time from the start of a streamed synthesis to its first audio byte.",
                HTTP_BUCKETS,
            ),
            dispatch_window,
            dispatched,
            requests: counter_vec(
                &r,
                "tts_requests_total",
                "Jobs that reached a terminal state, by dialect, voice and status.",
                &["dialect", "voice", "status"],
            ),
            request_duration: histogram_vec(
                &r,
                "tts_request_duration_seconds",
                "Submission to terminal state of a job, by dialect.",
                &["dialect"],
                JOB_BUCKETS,
            ),
            cache_hits,
            readiness_checks,
            cache_hit_ratio,
            daily_usage: int_gauge(
                &r,
                "tts_daily_usage",
                "Billable characters synthesized today (UTC), fleet-wide.",
            ),
            daily_usage_limit: IntGauge::new(
                "tts_daily_usage_limit",
                "Configured daily allowance of billable characters.",
            )
            .expect("valid metric"),
            provider_requests: counter_vec(
                &r,
                "tts_provider_requests_total",
                "Synthesis calls to a provider, by outcome (ok, error).",
                &["provider", "outcome"],
            ),
            provider_duration: histogram_vec(
                &r,
                "tts_provider_request_duration_seconds",
                "Duration of one synthesis call to a provider.",
                &["provider"],
                PROVIDER_BUCKETS,
            ),
            provider_errors: counter_vec(
                &r,
                "tts_provider_errors_total",
                "Failed synthesis calls, by provider and error code.",
                &["provider", "code"],
            ),
            provider_rate_limited: counter_vec(
                &r,
                "tts_provider_rate_limited_total",
                "429 answers received from a provider.",
                &["provider"],
            ),
            circuit_state,
            tenant_limit_usage_max,
            tenants_near_limit,
            quota_wait: histogram_vec(
                &r,
                "tts_quota_wait_seconds",
                "Time a synthesis call waited for the provider's quota.",
                &["provider"],
                QUOTA_BUCKETS,
            ),
            batch_size: histogram(
                &r,
                "tts_batch_size",
                "Jobs in one worker batch.",
                BATCH_SIZE_BUCKETS,
            ),
            batch_duration: histogram(
                &r,
                "tts_batch_duration_seconds",
                "One worker batch, claim to commit.",
                BATCH_BUCKETS,
            ),
            submit_group_size: histogram(
                &r,
                "tts_submit_group_size",
                "Single submissions written by one transaction (group commit).",
                SUBMIT_GROUP_BUCKETS,
            ),
            queue_depth: int_gauge(&r, "tts_queue_depth", "Messages ready in the job queue."),
            dlq_depth: int_gauge(&r, "tts_dlq_depth", "Messages in the dead-letter queue."),
            tasks_queued: int_gauge(
                &r,
                "tts_tasks_queued",
                "Tasks queued fleet-wide (waiting for a turn or in the job queue).",
            ),
            in_flight: int_gauge(
                &r,
                "tts_tasks_in_flight",
                "Tasks being synthesized by this process.",
            ),
            registry: r,
        }
    }

    /// Counts a job that reached a terminal state; `submitted` (from its
    /// UUIDv7 id) gives the end-to-end latency when known.
    pub fn job_finished(
        &self,
        dialect: &str,
        voice: &str,
        succeeded: bool,
        cache_hit: bool,
        submitted: Option<SystemTime>,
    ) {
        let status = if succeeded { "succeeded" } else { "failed" };
        self.requests
            .with_label_values(&[dialect, voice, status])
            .inc();
        if cache_hit {
            self.cache_hits.inc();
        }
        if let Some(elapsed) = submitted.and_then(|at| at.elapsed().ok()) {
            self.request_duration
                .with_label_values(&[dialect])
                .observe(elapsed.as_secs_f64());
        }
    }

    /// Counts one answered HTTP request: `route` is the matched route's
    /// template ([`UNMATCHED_ROUTE`] when none matched), methods outside the
    /// standard ones count as `OTHER`.
    pub fn http_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let method = match method {
            "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" => method,
            _ => "OTHER",
        };
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.http_requests
            .with_label_values(&[route, method, class])
            .inc();
        self.http_duration
            .with_label_values(&[route, method])
            .observe(elapsed.as_secs_f64());
    }

    /// Records a streamed answer's first byte, `elapsed` after its
    /// synthesis started.
    pub fn stream_started(&self, elapsed: Duration) {
        self.stream_first_byte.observe(elapsed.as_secs_f64());
    }

    /// Counts a streamed answer that ended: whole, or cut off by a failure.
    pub fn stream_ended(&self, complete: bool) {
        let outcome = if complete { "complete" } else { "cut_off" };
        self.streamed_responses.with_label_values(&[outcome]).inc();
    }

    /// Counts a lookup in the hot cache: answered from memory, or not.
    pub fn hot_cache_lookup(&self, hit: bool) {
        let outcome = if hit { "hit" } else { "miss" };
        self.hot_cache_requests.with_label_values(&[outcome]).inc();
    }

    /// Moves the hot cache gauges by what a change added (or, negative,
    /// took away): every cache of the process adds into the same series.
    pub fn hot_cache_changed(&self, entries: i64, bytes: i64) {
        self.hot_cache_entries.add(entries);
        self.hot_cache_bytes.add(bytes);
    }

    /// Sets the tenant-limit gauges from `(limit, fraction used)` pairs, one
    /// per tenant and limit.
    pub fn set_tenant_limits<'a>(&self, fractions: impl IntoIterator<Item = (&'a str, f64)>) {
        let mut max: std::collections::BTreeMap<&str, (f64, i64)> = Default::default();
        for (limit, fraction) in fractions {
            let entry = max.entry(limit).or_insert((0.0, 0));
            entry.0 = entry.0.max(fraction);
            if fraction >= 0.8 {
                entry.1 += 1;
            }
        }
        for (limit, (highest, near)) in max {
            self.tenant_limit_usage_max
                .with_label_values(&[limit])
                .set(highest);
            self.tenants_near_limit
                .with_label_values(&[limit])
                .set(near);
        }
    }

    /// Sets the allowance behind `tts_daily_usage_limit`; 0 removes the series.
    pub fn set_daily_usage_limit(&self, characters: u64) {
        let limit = &self.daily_usage_limit;
        let _ = self.registry.unregister(Box::new(limit.clone()));
        if characters > 0 {
            limit.set(i64::try_from(characters).unwrap_or(i64::MAX));
            let _ = self.registry.register(Box::new(limit.clone()));
        }
    }
}

/// `TTSQ_BUILD_COMMIT` as it was at build time, or `unknown`.
fn build_commit() -> &'static str {
    option_env!("TTSQ_BUILD_COMMIT")
        .map(str::trim)
        .filter(|commit| !commit.is_empty())
        .unwrap_or("unknown")
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

/// Every series in the Prometheus text format.
pub fn render() -> String {
    let mut out = Vec::new();
    // Encoding in-memory series into a Vec cannot fail.
    let _ = TextEncoder::new().encode(&METRICS.registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_renders_with_its_labels() {
        let m = get();
        m.job_finished("en-gb", "default", true, true, Some(SystemTime::now()));
        m.provider_errors
            .with_label_values(&["fake", "provider_unavailable"])
            .inc();
        m.set_daily_usage_limit(1_000);
        let text = render();
        for needle in [
            r#"tts_requests_total{dialect="en-gb",status="succeeded",voice="default"} 1"#,
            r#"tts_request_duration_seconds_bucket{dialect="en-gb",le="0.025"} 1"#,
            "tts_cache_hits_total 1",
            r#"tts_provider_errors_total{code="provider_unavailable",provider="fake"} 1"#,
            "tts_daily_usage_limit 1000",
            "# TYPE tts_batch_size histogram",
            "# TYPE tts_submit_group_size histogram",
            "tts_queue_depth 0",
        ] {
            assert!(text.contains(needle), "missing `{needle}` in\n{text}");
        }
        m.set_daily_usage_limit(0);
        assert!(!render().contains("tts_daily_usage_limit"));
    }

    #[test]
    fn http_requests_count_by_route_template_method_and_status_class() {
        let m = get();
        m.http_request("/v1/tts/jobs/{id}", "GET", 404, Duration::from_millis(3));
        m.http_request("/v1/tts/jobs/{id}", "GET", 200, Duration::from_millis(40));
        m.http_request(UNMATCHED_ROUTE, "BREW", 503, Duration::from_millis(1));
        let text = render();
        for needle in [
            r#"ttsq_http_requests_total{method="GET",route="/v1/tts/jobs/{id}",status="4xx"} 1"#,
            r#"ttsq_http_requests_total{method="GET",route="/v1/tts/jobs/{id}",status="2xx"} 1"#,
            r#"ttsq_http_requests_total{method="OTHER",route="unmatched",status="5xx"} 1"#,
            r#"ttsq_http_request_duration_seconds_bucket{method="GET",route="/v1/tts/jobs/{id}",le="0.005"} 1"#,
            r#"ttsq_http_request_duration_seconds_bucket{method="GET",route="/v1/tts/jobs/{id}",le="0.05"} 2"#,
            r#"ttsq_http_request_duration_seconds_count{method="GET",route="/v1/tts/jobs/{id}"} 2"#,
        ] {
            assert!(text.contains(needle), "missing `{needle}` in\n{text}");
        }
    }

    #[test]
    fn build_info_and_the_process_series_render() {
        let text = render();
        let build = text
            .lines()
            .find(|l| l.starts_with("ttsq_build_info{"))
            .unwrap_or_else(|| panic!("no ttsq_build_info in\n{text}"));
        assert!(build.ends_with("} 1"), "{build}");
        assert!(
            build.contains(&format!(r#"version="{BUILD_VERSION}""#)),
            "{build}"
        );
        assert!(build.contains(r#"rustc="1."#), "{build}");
        assert!(build.contains("commit=\""), "{build}");
        if cfg!(target_os = "linux") {
            for family in [
                "# TYPE process_cpu_seconds_total counter",
                "# TYPE process_resident_memory_bytes gauge",
                "# TYPE process_open_fds gauge",
                "# TYPE process_max_fds gauge",
                "# TYPE process_start_time_seconds gauge",
                "# TYPE process_virtual_memory_bytes gauge",
                "# TYPE process_threads gauge",
            ] {
                assert!(text.contains(family), "missing `{family}` in\n{text}");
            }
        }
    }
}
