//! Routes a dialect to its provider chain: per-provider quota (coordinated
//! across replicas, or this replica's share), circuit breaker and retries,
//! falling back along the chain.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tracing::Instrument as _;
use ttsq_config::{ProviderDialect, ProviderKind, ProviderSettings, RouteSettings, Settings};
use ttsq_core::{AudioFormat, Catalog, DialectInfo};

use crate::{
    Audio, AudioSink, ProviderError, SynthesisRequest, Synthesizer,
    breaker::{Breaker, BreakerState},
    coordinator::{CALL_TIMEOUT, Gate, QuotaCoordinator, SharedLimits, SharedPermit},
    elevenlabs::ElevenLabs,
    espeak::Espeak,
    generic_http::GenericHttp,
    openai::OpenAi,
    quota::{Quota, QuotaPermit},
    upstream::HttpProviderConfig,
};

/// Longest a request waits out a provider's 429s before giving up on it;
/// the worker then requeues the job, so a 429 never fails one.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(120);
/// Pause after a 429 that named no Retry-After.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Retries of a transient failure on the same provider before falling back.
const TRANSIENT_RETRIES: u32 = 2;
/// First back-off of a transient retry; doubled each time, plus jitter.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest back-off between transient retries.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a concurrency lease outlives the provider's request timeout
/// before it expires on its own (its holder died without releasing it).
const LEASE_MARGIN: Duration = Duration::from_secs(15);
/// Request timeout assumed for a provider entry that names none.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// After the quota coordinator failed, how long this replica keeps to its
/// local share before trying the coordinator again.
const COORDINATOR_RETRY: Duration = Duration::from_secs(5);

/// Why the router could not be built from settings.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// A provider's settings cannot work.
    #[error("provider `{name}`: {reason}")]
    Provider {
        /// Provider name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// One configured provider with its quota, breaker and counters.
struct Slot {
    synthesizer: Arc<dyn Synthesizer>,
    /// What the provider declared it serves, by dialect id; read once at
    /// start so requests need not ask the adapter again.
    dialects: HashMap<String, DialectInfo>,
    /// This replica's share of the quota: used for local engines, and for
    /// vendors while the coordinator is unreachable.
    quota: Quota,
    /// The fleet-wide quota, when a coordinator is set and the provider's
    /// quota is a vendor account's with some limit.
    gate: Option<Gate>,
    /// The provider's name, shared with the leases that name it.
    name: Arc<str>,
    breaker: Breaker,
    price_per_1k: f64,
    currency: String,
    shared_quota: bool,
    /// The adapter's whole-request timeout: leases outlive it by a margin.
    request_timeout: Duration,
    calls: AtomicU64,
}

/// What a call holds while it is in flight: a lease of the fleet-wide quota
/// or a slot of this replica's share. Dropping it gives the slot back.
struct Permit {
    _shared: Option<SharedPermit>,
    _local: Option<QuotaPermit>,
}

/// A provider to put behind the router, with its limits and price.
pub struct ProviderEntry {
    /// The adapter.
    pub synthesizer: Arc<dyn Synthesizer>,
    /// The account's limits.
    pub quota: ttsq_config::ProviderQuota,
    /// Price per 1,000 billable characters.
    pub price_per_1k: f64,
    /// ISO 4217 code of the price's currency.
    pub currency: String,
    /// Whether the quota belongs to a vendor account shared by all replicas
    /// (true), or to this machine, as a local engine's concurrency does (false).
    pub shared_quota: bool,
    /// Longest one request to the provider may take (its adapter's timeout);
    /// a coordinated lease expires this long plus a margin after it was taken.
    pub request_timeout: Duration,
}

/// Routes requests to providers and builds the catalog of what they serve.
/// Shared behind an `Arc` by the API and the worker of a process.
pub struct Router {
    providers: HashMap<String, Slot>,
    /// Fraction of every shared vendor limit aimed for.
    utilisation: f64,
    /// The limiter shared by all replicas, when one is set.
    coordinator: Option<Arc<dyn QuotaCoordinator>>,
    /// Until when the coordinator is skipped after a failure.
    coordinator_down_until: Mutex<Option<Instant>>,
    /// Whether the last try of the coordinator failed; logs the switch to
    /// the local share, and back, once each.
    coordinator_degraded: AtomicBool,
    catalog: Catalog,
    health: std::sync::RwLock<Option<BTreeMap<String, Result<(), String>>>>,
}

/// Builds the adapter for one configured provider.
fn build(name: &str, settings: &ProviderSettings) -> Result<Arc<dyn Synthesizer>, RouterError> {
    let invalid = |reason: String| RouterError::Provider {
        name: name.to_owned(),
        reason,
    };
    let (default_model, sample_rate_hz) = match settings.kind {
        ProviderKind::Espeak => return Ok(Arc::new(Espeak::new(&settings.espeak()))),
        ProviderKind::Elevenlabs => ("eleven_multilingual_v2", 22_050),
        ProviderKind::Openai => ("tts-1", 24_000),
        ProviderKind::Http => (name, 22_050),
    };
    let model = settings
        .model
        .clone()
        .unwrap_or_else(|| default_model.to_owned());
    let dialects = settings
        .dialects
        .iter()
        .map(|dialect| {
            let (id, display, voices, emotions) = match dialect {
                ProviderDialect::Id(id) => {
                    (id.clone(), None, vec!["default".to_owned()], Vec::new())
                }
                ProviderDialect::Detailed(d) => (
                    d.id.clone(),
                    d.name.clone(),
                    d.voices.clone(),
                    d.emotions.clone(),
                ),
            };
            DialectInfo {
                name: display.unwrap_or_else(|| id.clone()),
                id,
                voices,
                // Opus and FLAC are encoded here from the vendor's PCM.
                formats: AudioFormat::ALL.to_vec(),
                emotions,
                provider_chain: vec![name.to_owned()],
                model: model.clone(),
                sample_rate_hz,
                // Only ElevenLabs (`/with-timestamps`) reports timings.
                marks: if settings.kind == ProviderKind::Elevenlabs {
                    crate::elevenlabs::MARKS.to_vec()
                } else {
                    Vec::new()
                },
                // Replaced by the adapter's own (or the configured) limit.
                max_request_chars: crate::generic_http::MAX_REQUEST_CHARS,
            }
        })
        .collect();
    let base_url = settings
        .base_url
        .clone()
        .ok_or_else(|| invalid("base_url is required".into()))?;
    let mut config = HttpProviderConfig::new(name, base_url, dialects);
    config.max_text_chars = settings.max_text_chars.map(|n| n as usize);
    config.api_key = settings.api_key.clone();
    config.auth_header = settings.auth_header.clone();
    config.model = Some(model);
    config.connect_timeout = Duration::from_secs(settings.connect_timeout_secs);
    config.timeout = Duration::from_secs(settings.timeout_secs);
    let built: Result<Arc<dyn Synthesizer>, _> = match settings.kind {
        ProviderKind::Elevenlabs => {
            let language_codes = settings
                .dialects
                .iter()
                .any(|d| matches!(d, ProviderDialect::Detailed(d) if d.language_code.is_some()));
            ElevenLabs::new(config).map(|a| Arc::new(a.with_language_code(language_codes)) as _)
        }
        ProviderKind::Openai => OpenAi::new(config).map(|a| Arc::new(a) as _),
        ProviderKind::Http | ProviderKind::Espeak => {
            GenericHttp::new(config).map(|a| Arc::new(a) as _)
        }
    };
    built.map_err(|e| invalid(e.to_string()))
}

impl Router {
    /// The providers and routes configured in `settings`.
    pub fn from_settings(settings: &Settings) -> Result<Self, RouterError> {
        let mut entries = Vec::new();
        for (name, provider) in &settings.providers {
            entries.push((
                name.clone(),
                ProviderEntry {
                    synthesizer: build(name, provider)?,
                    quota: provider.quota.clone(),
                    price_per_1k: provider.price_per_1k_chars,
                    currency: provider.currency.clone(),
                    shared_quota: provider.kind != ProviderKind::Espeak,
                    request_timeout: Duration::from_secs(provider.timeout_secs),
                },
            ));
        }
        let breaker = (
            settings.breaker.failure_threshold,
            Duration::from_secs(settings.breaker.cooldown_secs),
        );
        let mut router = Self::new(entries, &settings.routes, breaker);
        router.utilisation = settings.quota.target_utilisation;
        router.set_quota_share(1.0);
        Ok(router)
    }

    /// A router over named providers; each dialect a provider declares is
    /// served by the chain of the first route matching it, restricted to the
    /// providers that declare the dialect. `breaker` is (consecutive
    /// failures that open a provider's breaker, its cooldown).
    pub fn new(
        providers: impl IntoIterator<Item = (String, ProviderEntry)>,
        routes: &[RouteSettings],
        breaker: (u32, Duration),
    ) -> Self {
        let mut declared: BTreeMap<String, Vec<(String, DialectInfo)>> = BTreeMap::new();
        let mut slots = HashMap::new();
        for (name, entry) in providers {
            let served: HashMap<String, DialectInfo> = entry
                .synthesizer
                .dialects()
                .into_iter()
                .map(|d| (d.id.clone(), d))
                .collect();
            for dialect in served.values() {
                declared
                    .entry(dialect.id.clone())
                    .or_default()
                    .push((name.clone(), dialect.clone()));
            }
            let request_timeout = if entry.request_timeout.is_zero() {
                DEFAULT_REQUEST_TIMEOUT
            } else {
                entry.request_timeout
            };
            slots.insert(
                name.clone(),
                Slot {
                    synthesizer: entry.synthesizer,
                    dialects: served,
                    quota: Quota::new(entry.quota),
                    gate: None,
                    name: Arc::from(name.as_str()),
                    breaker: Breaker::new(breaker.0, breaker.1),
                    price_per_1k: entry.price_per_1k,
                    currency: entry.currency,
                    shared_quota: entry.shared_quota,
                    request_timeout,
                    calls: AtomicU64::new(0),
                },
            );
        }
        let mut dialects = Vec::new();
        for (id, by_provider) in declared {
            let Some(route) = routes.iter().find(|r| r.matches(&id)) else {
                continue;
            };
            let chain: Vec<&(String, DialectInfo)> = route
                .chain
                .iter()
                .filter_map(|p| by_provider.iter().find(|(name, _)| name == p))
                .collect();
            let Some((_, primary)) = chain.first() else {
                continue;
            };
            let mut info = primary.clone();
            info.provider_chain = chain.iter().map(|(name, _)| name.clone()).collect();
            info.max_request_chars = chain
                .iter()
                .map(|(_, d)| d.max_request_chars)
                .min()
                .unwrap_or(info.max_request_chars);
            dialects.push(info);
        }
        Self {
            providers: slots,
            utilisation: 1.0,
            coordinator: None,
            coordinator_down_until: Mutex::new(None),
            coordinator_degraded: AtomicBool::new(false),
            catalog: Catalog::new(dialects),
            health: std::sync::RwLock::new(None),
        }
    }

    /// Takes every vendor quota (`shared_quota` providers with some limit)
    /// from `coordinator`, shared by all replicas, instead of this replica's
    /// static share; the share stays as the fallback while the coordinator
    /// is unreachable. Local engines keep their local limiter.
    pub fn with_quota_coordinator(mut self, coordinator: Arc<dyn QuotaCoordinator>) -> Self {
        let utilisation = self.utilisation;
        for slot in self.providers.values_mut().filter(|s| s.shared_quota) {
            let limits = SharedLimits::new(
                slot.quota.limits(),
                utilisation,
                slot.request_timeout + LEASE_MARGIN,
            );
            slot.gate = limits.is_limited().then(|| Gate::new(limits));
        }
        self.coordinator = Some(coordinator);
        self
    }

    /// Whether `provider`'s quota is taken from the coordinator (rather than
    /// from this replica's share).
    pub fn is_coordinated(&self, provider: &str) -> bool {
        self.coordinator.is_some()
            && self
                .providers
                .get(provider)
                .is_some_and(|slot| slot.gate.is_some())
    }

    /// The coordinator, unless it failed within the last few seconds.
    fn live_coordinator(&self) -> Option<&Arc<dyn QuotaCoordinator>> {
        let coordinator = self.coordinator.as_ref()?;
        let down = self
            .coordinator_down_until
            .lock()
            .ok()
            .and_then(|until| *until)
            .is_some_and(|until| until > Instant::now());
        (!down).then_some(coordinator)
    }

    /// Notes that the coordinator answered (or not); logs only changes.
    fn coordinator_answered(&self, failure: Option<&dyn std::fmt::Display>) {
        match failure {
            None => {
                if self.coordinator_degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        "quota coordinator reachable again; provider quotas are shared by all replicas"
                    );
                }
            }
            Some(err) => {
                if let Ok(mut until) = self.coordinator_down_until.lock() {
                    *until = Some(Instant::now() + COORDINATOR_RETRY);
                }
                if !self.coordinator_degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %err, "quota coordinator unavailable; using this replica's static share of provider quotas");
                }
            }
        }
    }

    /// Waits until `slot`'s quota lets a request of `characters` go: from
    /// the coordinator when the provider has one and it answers, else from
    /// this replica's share. Never fails.
    async fn acquire(&self, slot: &Slot, characters: u32) -> Permit {
        // A 429 seen here holds this replica at once, before any round trip.
        slot.quota.wait_out_pause().await;
        if let (Some(gate), Some(_)) = (&slot.gate, self.live_coordinator()) {
            let turn = gate.turn().await;
            // Asked again after the wait for the turn: when the coordinator
            // failed meanwhile, the callers queued here fall back at once
            // instead of trying it one after another.
            let answer = match self.live_coordinator() {
                Some(coordinator) => Some(
                    gate.acquire(&turn, coordinator, &slot.name, characters)
                        .await,
                ),
                None => None,
            };
            drop(turn);
            match answer {
                None => {}
                Some(Ok(permit)) => {
                    self.coordinator_answered(None);
                    return Permit {
                        _shared: Some(permit),
                        _local: None,
                    };
                }
                Some(Err(err)) => self.coordinator_answered(Some(&err)),
            }
        }
        Permit {
            _shared: None,
            _local: Some(slot.quota.acquire(characters).await),
        }
    }

    /// Pauses `slot`'s provider after a 429: here at once, and for every
    /// replica through the coordinator.
    async fn pause(&self, slot: &Slot, pause: Duration) {
        slot.quota.pause(pause);
        if slot.gate.is_none() {
            return;
        }
        let Some(coordinator) = self.live_coordinator() else {
            return;
        };
        match tokio::time::timeout(CALL_TIMEOUT, coordinator.pause(&slot.name, pause)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => self.coordinator_answered(Some(&err)),
            Err(_) => self.coordinator_answered(Some(&"pausing timed out")),
        }
    }

    /// Every dialect served, with voices, formats and provider chain.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Synthesizes through the dialect's chain; returns the audio and the
    /// name of the provider that made it. A provider whose breaker is open is
    /// skipped; transient failures are retried with back-off, then the next
    /// provider is tried; a final failure (bad voice, bad key) ends at once.
    pub async fn synthesize(
        &self,
        request: &SynthesisRequest<'_>,
    ) -> Result<(Audio, String), ProviderError> {
        self.synthesize_into(request, None).await
    }

    /// As [`Router::synthesize`], handing the bytes to `sink` as they arrive
    /// when the provider streams the request's format (see
    /// [`Synthesizer::synthesize_streaming`]). Once a byte went to `sink`,
    /// a failure is final: no retry and no fallback, whose audio would not
    /// continue the bytes already passed on.
    pub async fn synthesize_streaming(
        &self,
        request: &SynthesisRequest<'_>,
        sink: &AudioSink,
    ) -> Result<(Audio, String), ProviderError> {
        self.synthesize_into(request, Some(sink)).await
    }

    async fn synthesize_into(
        &self,
        request: &SynthesisRequest<'_>,
        sink: Option<&AudioSink>,
    ) -> Result<(Audio, String), ProviderError> {
        let dialect = self
            .catalog
            .get(request.dialect)
            .ok_or_else(|| ProviderError::NoRoute(request.dialect.to_owned()))?;
        let characters = u32::try_from(request.text.chars().count()).unwrap_or(u32::MAX);
        let mut last_error = None;
        for name in &dialect.provider_chain {
            let Some(slot) = self.providers.get(name) else {
                continue;
            };
            if !slot.breaker.allow() {
                tracing::debug!(provider = %name, "breaker open; skipping");
                continue;
            }
            // Marks are stored with the audio: a provider that cannot time
            // them cannot stand in.
            if !request.marks.is_empty()
                && slot
                    .dialects
                    .get(request.dialect)
                    .is_some_and(|info| request.marks.iter().any(|m| !info.marks.contains(m)))
            {
                tracing::debug!(provider = %name, "cannot time the marks asked for; skipping");
                continue;
            }
            let voice_owned;
            let mut request = *request;
            if let Some(info) = slot.dialects.get(request.dialect)
                && !info.voices.iter().any(|v| v == request.voice)
            {
                // A fallback provider may not know the primary's voice:
                // its default voice beats failing the job.
                voice_owned = info.default_voice().to_owned();
                request.voice = &voice_owned;
            }
            match self.call(name, slot, &request, characters, sink).await {
                Ok(audio) => return Ok((audio, name.clone())),
                Err(err) if err.is_retryable() && !sink.is_some_and(AudioSink::started) => {
                    last_error = Some(err);
                }
                Err(err) => return Err(err),
            }
        }
        Err(last_error.unwrap_or_else(|| ProviderError::CircuitOpen {
            chain: dialect.provider_chain.join(">"),
        }))
    }

    /// One provider, with quota, retries and breaker bookkeeping.
    async fn call(
        &self,
        name: &str,
        slot: &Slot,
        request: &SynthesisRequest<'_>,
        characters: u32,
        sink: Option<&AudioSink>,
    ) -> Result<Audio, ProviderError> {
        let metrics = ttsq_telemetry::metrics::get();
        let mut attempt = 0;
        let mut rate_limited_for = Duration::ZERO;
        loop {
            let waiting = Instant::now();
            let permit = self.acquire(slot, characters).await;
            metrics
                .quota_wait
                .with_label_values(&[name])
                .observe(waiting.elapsed().as_secs_f64());
            slot.calls.fetch_add(1, Ordering::Relaxed);
            let span = tracing::info_span!(
                "provider.call",
                provider = name,
                attempt,
                characters,
                latency_ms = tracing::field::Empty,
                error_code = tracing::field::Empty,
            );
            let started = Instant::now();
            let result = match sink {
                Some(sink) => slot.synthesizer.synthesize_streaming(request, sink),
                None => slot.synthesizer.synthesize(request),
            }
            .instrument(span.clone())
            .await;
            drop(permit);
            let latency = started.elapsed();
            span.record("latency_ms", latency.as_millis() as u64);
            metrics
                .provider_duration
                .with_label_values(&[name])
                .observe(latency.as_secs_f64());
            let err = match result {
                Ok(audio) => {
                    metrics
                        .provider_requests
                        .with_label_values(&[name, "ok"])
                        .inc();
                    slot.breaker.record_success();
                    return Ok(audio);
                }
                Err(err) => err,
            };
            span.record("error_code", err.code());
            metrics
                .provider_requests
                .with_label_values(&[name, "error"])
                .inc();
            metrics
                .provider_errors
                .with_label_values(&[name, err.code()])
                .inc();
            if sink.is_some_and(AudioSink::started) {
                // Bytes were passed on: the caller's stream ends in error.
                if err.is_retryable() {
                    slot.breaker.record_failure();
                }
                tracing::warn!(provider = %name, error = %err, "provider failed mid-stream");
                return Err(err);
            }
            if let ProviderError::RateLimited { retry_after, .. } = &err {
                metrics
                    .provider_rate_limited
                    .with_label_values(&[name])
                    .inc();
                // The vendor's quota, not its health: pause this provider for
                // every request of every replica, then try it again.
                let pause = retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
                self.pause(slot, pause).await;
                rate_limited_for += pause;
                tracing::info!(provider = %name, pause_ms = pause.as_millis() as u64, "provider rate-limited us; pausing");
                if rate_limited_for <= MAX_RATE_LIMIT_WAIT {
                    continue;
                }
                return Err(err);
            }
            if !err.is_retryable() {
                return Err(err);
            }
            slot.breaker.record_failure();
            tracing::warn!(provider = %name, attempt, error = %err, "provider failed");
            if attempt >= TRANSIENT_RETRIES || !slot.breaker.allow() {
                return Err(err);
            }
            attempt += 1;
            tokio::time::sleep(backoff(attempt)).await;
        }
    }

    /// Whether the first provider of `dialect`'s route passes
    /// [`SynthesisRequest::instructions`] on: only then do they belong in
    /// the job (and its content hash).
    pub fn takes_instructions(&self, dialect: &str) -> bool {
        self.catalog
            .get(dialect)
            .and_then(|d| d.provider_chain.first())
            .and_then(|name| self.providers.get(name))
            .is_some_and(|slot| slot.synthesizer.takes_instructions())
    }

    /// How many synthesis calls this router has sent to `provider`.
    pub fn calls(&self, provider: &str) -> u64 {
        self.providers
            .get(provider)
            .map_or(0, |s| s.calls.load(Ordering::Relaxed))
    }

    /// Price per 1,000 characters of `provider`, for the ledger's cost.
    pub fn price_per_1k(&self, provider: &str) -> f64 {
        self.providers.get(provider).map_or(0.0, |s| s.price_per_1k)
    }

    /// Currency of `provider`'s price (ISO 4217); `USD` for an unknown name.
    pub fn currency(&self, provider: &str) -> &str {
        self.providers
            .get(provider)
            .map_or("USD", |s| s.currency.as_str())
    }

    /// Sets every shared provider quota to `share` of the account's limits
    /// (times the target utilisation). With a coordinator this share is
    /// only the fallback for when the coordinator is unreachable.
    pub fn set_quota_share(&self, share: f64) {
        for slot in self.providers.values().filter(|s| s.shared_quota) {
            slot.quota.set_share(share * self.utilisation);
        }
    }

    /// Breaker state of every provider, by name.
    pub fn breaker_states(&self) -> BTreeMap<String, BreakerState> {
        self.providers
            .iter()
            .map(|(name, slot)| (name.clone(), slot.breaker.state()))
            .collect()
    }

    /// Copies every provider's breaker position into the
    /// `tts_provider_circuit_state` gauge, just before a scrape.
    pub fn export_breaker_states(&self) {
        let gauge = &ttsq_telemetry::metrics::get().circuit_state;
        for (name, state) in self.breaker_states() {
            let value = match state {
                BreakerState::Closed => 0,
                BreakerState::HalfOpen => 1,
                BreakerState::Open => 2,
            };
            gauge.with_label_values(&[name.as_str()]).set(value);
        }
    }

    /// Asks every provider for its health now and caches the answers, for
    /// [`Router::health`]; run in the background so probes stay cheap.
    pub async fn refresh_health(&self) {
        let mut fresh = BTreeMap::new();
        for (name, slot) in &self.providers {
            let result = slot.synthesizer.health().await.map_err(|e| e.to_string());
            let result = match (result, slot.breaker.state()) {
                (Ok(()), BreakerState::Open) => {
                    Err("circuit open after repeated failures".to_owned())
                }
                (other, _) => other,
            };
            fresh.insert(name.clone(), result);
        }
        if let Ok(mut cached) = self.health.write() {
            *cached = Some(fresh);
        }
    }

    /// The last health of every provider, by name; refreshed first when
    /// nothing has been checked yet.
    pub async fn health(&self) -> BTreeMap<String, Result<(), String>> {
        let cached = self.health.read().ok().and_then(|h| h.clone());
        match cached {
            Some(health) => health,
            None => {
                self.refresh_health().await;
                self.health
                    .read()
                    .ok()
                    .and_then(|h| h.clone())
                    .unwrap_or_default()
            }
        }
    }
}

fn backoff(attempt: u32) -> Duration {
    ttsq_core::backoff::backoff_delay(BACKOFF_BASE, BACKOFF_MAX, attempt)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use async_trait::async_trait;
    use bytes::Bytes;
    use ttsq_config::ProviderQuota;

    use super::*;
    use crate::coordinator::{Acquired, CoordinatorError, Lease, WaitReason};

    /// A vendor that answers after `latency`.
    struct Slow {
        latency: Duration,
    }

    #[async_trait]
    impl Synthesizer for Slow {
        fn name(&self) -> &str {
            "vendor"
        }

        fn dialects(&self) -> Vec<DialectInfo> {
            vec![DialectInfo {
                id: "en".into(),
                name: "English".into(),
                voices: vec!["v".into()],
                formats: vec![AudioFormat::Pcm],
                emotions: Vec::new(),
                provider_chain: vec!["vendor".into()],
                model: "m".into(),
                sample_rate_hz: 16_000,
                marks: Vec::new(),
                max_request_chars: 5_000,
            }]
        }

        async fn synthesize(&self, _: &SynthesisRequest<'_>) -> Result<Audio, ProviderError> {
            tokio::time::sleep(self.latency).await;
            Ok(Audio {
                bytes: Bytes::new(),
                format: AudioFormat::Pcm,
                duration_ms: 0,
                marks: Vec::new(),
            })
        }

        async fn health(&self) -> Result<(), ProviderError> {
            Ok(())
        }
    }

    fn router(max_concurrent: u32, latency: Duration) -> Router {
        let entry = ProviderEntry {
            synthesizer: Arc::new(Slow { latency }),
            quota: ProviderQuota {
                max_concurrent: Some(max_concurrent),
                ..ProviderQuota::default()
            },
            price_per_1k: 0.0,
            currency: "USD".into(),
            shared_quota: true,
            request_timeout: Duration::from_secs(5),
        };
        let routes = [RouteSettings {
            dialects: vec!["*".into()],
            chain: vec!["vendor".into()],
        }];
        Router::new(
            [("vendor".to_owned(), entry)],
            &routes,
            (5, Duration::from_secs(1)),
        )
    }

    #[test]
    fn each_provider_declares_its_request_limit_and_a_route_takes_its_chains_smallest() {
        use std::io::Write as _;

        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            r#"
[providers.oa]
kind = "openai"
base_url = "http://127.0.0.1:9"
dialects = ["en-us", "en-gb", "yue"]

[providers.eleven]
kind = "elevenlabs"
base_url = "http://127.0.0.1:9"
dialects = ["en-us", "en-gb", "it"]

[providers.regional]
kind = "http"
base_url = "http://127.0.0.1:9"
max_text_chars = 1200
dialects = ["yue", "cmn"]

[[routes]]
dialects = ["en-us"]
chain = ["eleven", "oa"]

[[routes]]
dialects = ["en-gb", "it"]
chain = ["eleven", "espeak"]

[[routes]]
dialects = ["yue"]
chain = ["oa", "regional", "espeak"]

[[routes]]
dialects = ["*"]
chain = ["espeak"]
"#
        )
        .unwrap();
        let settings = Settings::load(
            Some(file.path()),
            [(
                "TTSQ_PROVIDERS_ESPEAK_MAX_TEXT_CHARS".to_owned(),
                "3000".to_owned(),
            )],
        )
        .unwrap();

        let router = Router::from_settings(&settings).unwrap();

        let limit = |id: &str| router.catalog().get(id).map(|d| d.max_request_chars);
        assert_eq!(
            limit("en-us"),
            Some(4_096),
            "ElevenLabs' 5,000 and OpenAI's 4,096"
        );
        assert_eq!(
            limit("it"),
            Some(5_000),
            "ElevenLabs alone: espeak does not serve it"
        );
        assert_eq!(
            limit("en-gb"),
            Some(3_000),
            "ElevenLabs' 5,000 and espeak's configured 3,000"
        );
        assert_eq!(
            limit("yue"),
            Some(1_200),
            "the configured limit of `regional`"
        );
        assert_eq!(
            limit("cmn"),
            Some(3_000),
            "the route of cmn is espeak's alone"
        );
    }

    fn request(text: &str) -> SynthesisRequest<'_> {
        SynthesisRequest {
            text,
            dialect: "en",
            voice: "v",
            speed: 1.0,
            emotion: None,
            format: AudioFormat::Pcm,
            marks: &[],
            instructions: None,
            sample_rate_hz: None,
        }
    }

    /// Slots in memory, counting how many tries run at once.
    #[derive(Default)]
    struct Slots {
        held: Mutex<u32>,
        polling: AtomicUsize,
        peak_polling: AtomicUsize,
        peak_held: AtomicUsize,
        tries: AtomicUsize,
        down: bool,
    }

    #[async_trait]
    impl QuotaCoordinator for Slots {
        async fn try_acquire(
            &self,
            _: &str,
            _: u32,
            limits: &SharedLimits,
        ) -> Result<Acquired, CoordinatorError> {
            self.tries.fetch_add(1, Ordering::SeqCst);
            if self.down {
                return Err(CoordinatorError("connection refused".into()));
            }
            let polling = self.polling.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak_polling.fetch_max(polling, Ordering::SeqCst);
            // A round trip.
            tokio::time::sleep(Duration::from_millis(2)).await;
            self.polling.fetch_sub(1, Ordering::SeqCst);
            let mut held = self
                .held
                .lock()
                .map_err(|_| CoordinatorError("poisoned".into()))?;
            if *held < limits.max_concurrent.unwrap_or(u32::MAX) {
                *held += 1;
                self.peak_held.fetch_max(*held as usize, Ordering::SeqCst);
                return Ok(Acquired::Granted(Lease {
                    slot: Some(*held),
                    token: uuid::Uuid::new_v4(),
                }));
            }
            Ok(Acquired::Wait {
                wait: Duration::from_secs(1),
                reason: WaitReason::Concurrency,
            })
        }

        async fn release(&self, _: &str, _: &Lease) -> Result<(), CoordinatorError> {
            let mut held = self
                .held
                .lock()
                .map_err(|_| CoordinatorError("poisoned".into()))?;
            *held -= 1;
            Ok(())
        }

        async fn pause(&self, _: &str, _: Duration) -> Result<(), CoordinatorError> {
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_task_per_provider_polls_and_every_slot_is_used() {
        let slots = Arc::new(Slots::default());
        let router =
            Arc::new(router(3, Duration::from_millis(40)).with_quota_coordinator(slots.clone()));
        assert!(router.is_coordinated("vendor"));
        let start = Instant::now();
        let calls: Vec<_> = (0..12)
            .map(|i| {
                let router = Arc::clone(&router);
                tokio::spawn(async move {
                    let text = format!("text {i}");
                    router.synthesize(&request(&text)).await.map(|_| ())
                })
            })
            .collect();
        for call in calls {
            call.await
                .expect("call finished")
                .expect("synthesized through the coordinator");
        }
        let elapsed = start.elapsed();
        assert_eq!(slots.peak_polling.load(Ordering::SeqCst), 1);
        assert_eq!(slots.peak_held.load(Ordering::SeqCst), 3);
        // Four rounds of 40 ms over three slots; a slot released here wakes
        // the poller instead of waiting out the 1 s hint.
        assert!(elapsed < Duration::from_millis(600), "{elapsed:?}");
        // Releases run in the background.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(slots.held.lock().map(|h| *h).unwrap_or(99), 0);
    }

    #[tokio::test]
    async fn an_unreachable_coordinator_falls_back_to_the_local_share() {
        let slots = Arc::new(Slots {
            down: true,
            ..Slots::default()
        });
        let router =
            Arc::new(router(2, Duration::from_millis(10)).with_quota_coordinator(slots.clone()));
        let calls: Vec<_> = (0..6)
            .map(|i| {
                let router = Arc::clone(&router);
                tokio::spawn(async move {
                    let text = format!("text {i}");
                    router.synthesize(&request(&text)).await.map(|_| ())
                })
            })
            .collect();
        for call in calls {
            call.await
                .expect("call finished")
                .expect("no job fails because the coordinator is down");
        }
        assert_eq!(router.calls("vendor"), 6);
        assert_eq!(
            slots.tries.load(Ordering::SeqCst),
            1,
            "after a failure the coordinator is left alone for a while, \
             also by the calls that queued for it meanwhile"
        );
    }
}
