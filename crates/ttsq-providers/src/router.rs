//! Maps a dialect to its provider chain and counts calls per provider.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use ttsq_config::Settings;
use ttsq_core::Catalog;

use crate::{Audio, ProviderError, SynthesisRequest, Synthesizer, espeak::Espeak};

/// One configured provider with its call counter.
struct Entry {
    synthesizer: Arc<dyn Synthesizer>,
    calls: AtomicU64,
}

/// Routes requests to providers and builds the catalog of what they serve.
/// Cheap to share behind an `Arc`; the API and the worker each hold one.
pub struct Router {
    providers: HashMap<String, Entry>,
    catalog: Catalog,
}

impl Router {
    /// The providers configured in `settings`.
    pub fn from_settings(settings: &Settings) -> Self {
        Self::new([Arc::new(Espeak::new(&settings.espeak)) as Arc<dyn Synthesizer>])
    }

    /// A router over these providers; each dialect is served by the providers
    /// that declare it, in the order given.
    pub fn new(providers: impl IntoIterator<Item = Arc<dyn Synthesizer>>) -> Self {
        let mut dialects: BTreeMap<String, ttsq_core::DialectInfo> = BTreeMap::new();
        let mut entries = HashMap::new();
        for provider in providers {
            for dialect in provider.dialects() {
                dialects
                    .entry(dialect.id.clone())
                    .and_modify(|d| d.provider_chain.push(provider.name().to_owned()))
                    .or_insert(dialect);
            }
            entries.insert(
                provider.name().to_owned(),
                Entry {
                    synthesizer: provider,
                    calls: AtomicU64::new(0),
                },
            );
        }
        Self {
            providers: entries,
            catalog: Catalog::new(dialects.into_values()),
        }
    }

    /// Every dialect served, with voices, formats and provider chain.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Synthesizes through the dialect's chain; returns the audio and the
    /// name of the provider that made it.
    pub async fn synthesize(
        &self,
        request: &SynthesisRequest<'_>,
    ) -> Result<(Audio, String), ProviderError> {
        let dialect = self
            .catalog
            .get(request.dialect)
            .ok_or_else(|| ProviderError::NoRoute(request.dialect.to_owned()))?;
        let mut last_error = ProviderError::NoRoute(request.dialect.to_owned());
        for name in &dialect.provider_chain {
            let Some(entry) = self.providers.get(name) else {
                continue;
            };
            entry.calls.fetch_add(1, Ordering::Relaxed);
            match entry.synthesizer.synthesize(request).await {
                Ok(audio) => return Ok((audio, name.clone())),
                Err(err) => {
                    tracing::warn!(provider = %name, error = %err, "provider failed");
                    let retryable = err.is_retryable();
                    last_error = err;
                    if !retryable {
                        break;
                    }
                }
            }
        }
        Err(last_error)
    }

    /// How many synthesis calls this router has sent to `provider`.
    pub fn calls(&self, provider: &str) -> u64 {
        self.providers
            .get(provider)
            .map_or(0, |e| e.calls.load(Ordering::Relaxed))
    }

    /// Health of every provider, by name.
    pub async fn health(&self) -> BTreeMap<String, Result<(), ProviderError>> {
        let mut out = BTreeMap::new();
        for (name, entry) in &self.providers {
            out.insert(name.clone(), entry.synthesizer.health().await);
        }
        out
    }
}
