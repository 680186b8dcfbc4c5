//! Routes a dialect to its provider chain: per-provider quota share, circuit
//! breaker and retries, falling back along the chain.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tracing::Instrument as _;
use ttsq_config::{ProviderDialect, ProviderKind, ProviderSettings, RouteSettings, Settings};
use ttsq_core::{AudioFormat, Catalog, DialectInfo};

use crate::{
    Audio, ProviderError, SynthesisRequest, Synthesizer,
    breaker::{Breaker, BreakerState},
    elevenlabs::ElevenLabs,
    espeak::Espeak,
    generic_http::GenericHttp,
    openai::OpenAi,
    quota::Quota,
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
    quota: Quota,
    breaker: Breaker,
    price_per_1k: f64,
    currency: String,
    shared_quota: bool,
    calls: AtomicU64,
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
}

/// Routes requests to providers and builds the catalog of what they serve.
/// Shared behind an `Arc` by the API and the worker of a process.
pub struct Router {
    providers: HashMap<String, Slot>,
    /// Fraction of every shared vendor limit aimed for.
    utilisation: f64,
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
                formats: vec![AudioFormat::Mp3, AudioFormat::Wav, AudioFormat::Pcm],
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
            }
        })
        .collect();
    let base_url = settings
        .base_url
        .clone()
        .ok_or_else(|| invalid("base_url is required".into()))?;
    let mut config = HttpProviderConfig::new(name, base_url, dialects);
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
            slots.insert(
                name,
                Slot {
                    synthesizer: entry.synthesizer,
                    dialects: served,
                    quota: Quota::new(entry.quota),
                    breaker: Breaker::new(breaker.0, breaker.1),
                    price_per_1k: entry.price_per_1k,
                    currency: entry.currency,
                    shared_quota: entry.shared_quota,
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
            dialects.push(info);
        }
        Self {
            providers: slots,
            utilisation: 1.0,
            catalog: Catalog::new(dialects),
            health: std::sync::RwLock::new(None),
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
            match self.call(name, slot, &request, characters).await {
                Ok(audio) => return Ok((audio, name.clone())),
                Err(err) if err.is_retryable() => last_error = Some(err),
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
    ) -> Result<Audio, ProviderError> {
        let metrics = ttsq_telemetry::metrics::get();
        let mut attempt = 0;
        let mut rate_limited_for = Duration::ZERO;
        loop {
            let waiting = Instant::now();
            let permit = slot.quota.acquire(characters).await;
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
            let result = slot
                .synthesizer
                .synthesize(request)
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
            if let ProviderError::RateLimited { retry_after, .. } = &err {
                metrics
                    .provider_rate_limited
                    .with_label_values(&[name])
                    .inc();
                // The vendor's quota, not its health: pause this provider for
                // every request of this replica, then try it again.
                let pause = retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
                slot.quota.pause(pause);
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
    /// (times the target utilisation).
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
