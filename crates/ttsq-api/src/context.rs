//! What the handlers share: [`ApiContext`], built once from the settings
//! and the connected dependencies, with the few steps several handlers take
//! on it (pricing a job, auditing a refusal).

use std::{sync::Arc, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use ttsq_audio::AudioStore;
use ttsq_config::Settings;
use ttsq_core::{Job, JobLimits};
use ttsq_providers::quota::ReplicaRole;
use ttsq_queue::Broker;
use ttsq_store::{CostEstimate, NewTask, Principal, Store};

use crate::{coalescer, content, hot_cache::HotCache, ops, webhooks};

/// What the handlers share; cheap to clone.
#[derive(Clone)]
pub struct ApiContext {
    /// Postgres.
    pub store: Store,
    /// RabbitMQ connection, for readiness.
    pub broker: Arc<Broker>,
    /// Wakes the dispatcher, which publishes queued tasks in their turn.
    pub dispatch: ttsq_dispatch::Waker,
    /// Writes normal-priority single submissions, many per transaction.
    pub submissions: coalescer::SubmitCoalescer,
    /// S3 audio.
    pub audio: AudioStore,
    /// Providers and the dialect catalog.
    pub providers: Arc<ttsq_providers::Router>,
    /// Job validation limits.
    pub limits: JobLimits,
    /// What bounds a batch whose audio is joined: its estimated length.
    pub batches: Arc<ttsq_config::BatchSettings>,
    /// Base URL for links in responses, without a trailing slash.
    pub public_url: Arc<str>,
    /// Longest long-poll allowed.
    pub max_wait: Duration,
    /// Largest body accepted.
    pub max_body_bytes: usize,
    /// SHA-256 of the admin token; `None` disables the admin API.
    pub admin_token: Option<Arc<TokenDigest>>,
    /// Patterns a job's text must not match.
    pub content_filter: Arc<content::ContentFilter>,
    /// OpenAI voice names to dialects, for `/v1/audio/speech`.
    pub speech: Arc<ttsq_config::SpeechSettings>,
    /// Webhook targets: enabled or not, the SSRF guard, secrets.
    pub webhooks: Arc<webhooks::WebhookApi>,
    /// Long-polls waiting for tasks to finish, woken by LISTEN/NOTIFY.
    pub waiters: ttsq_store::TaskWaiters,
    /// How high-priority requests take part in the fleet-wide single flight.
    pub inline: InlineClaims,
    /// The public `/ready`'s answer, checked at most once per interval
    /// however many callers ask.
    pub readiness: Arc<ops::ReadinessCache>,
    /// Syntheses running apart from their request (streamed ones, which go
    /// on when the client hangs up): [`run`](crate::run) waits for them at
    /// shutdown, so the audio the vendor bills is stored and billed too.
    pub syntheses: tokio_util::task::TaskTracker,
    /// Audio this replica served lately, by scoped content hash, so that a
    /// repeated high-priority request answers without an S3 read.
    pub hot_cache: Arc<HotCache>,
}

impl ApiContext {
    /// A context from settings and connected dependencies.
    pub async fn new(
        settings: &Settings,
        store: Store,
        broker: Arc<Broker>,
        audio: AudioStore,
        providers: Arc<ttsq_providers::Router>,
        replica_id: uuid::Uuid,
        dispatch: ttsq_dispatch::Waker,
    ) -> Self {
        if providers
            .catalog()
            .get(&settings.speech.default_dialect)
            .is_none()
        {
            tracing::warn!(
                dialect = %settings.speech.default_dialect,
                "speech.default_dialect (TTSQ_SPEECH_DEFAULT_DIALECT) is not served by any provider; \
                 /v1/audio/speech refuses voices that fall back to it"
            );
        }
        let waiters = ttsq_store::TaskWaiters::start(
            store.pool().clone(),
            Duration::from_millis(settings.server.wait_poll_ms),
        );
        let readiness = Arc::new(ops::ReadinessCache::new(ops::Probes {
            store: store.clone(),
            broker: Arc::clone(&broker),
            audio: audio.clone(),
            providers: Arc::clone(&providers),
            role: ReplicaRole::Api,
        }));
        Self {
            hot_cache: Arc::new(HotCache::new(
                usize::try_from(settings.api.hot_cache_bytes).unwrap_or(usize::MAX),
            )),
            readiness,
            syntheses: tokio_util::task::TaskTracker::new(),
            waiters,
            inline: InlineClaims {
                replica_id,
                replica_ttl: Duration::from_secs(settings.quota.heartbeat_secs * 3),
                lease_ttl: settings.worker.claim_timeout(),
                make: ttsq_synthesis::MakeOptions {
                    storage_retry: settings.worker.storage_retry(),
                    serve_fallback_audio: settings.cache.serve_fallback_audio,
                },
                hash_wait: Duration::from_secs(settings.server.max_wait_secs.clamp(1, 30)),
            },
            submissions: coalescer::SubmitCoalescer::start(
                store.clone(),
                Arc::clone(&providers),
                settings.database.submit_committers as usize,
            ),
            store,
            broker,
            dispatch,
            audio,
            providers,
            limits: JobLimits {
                max_text_chars: settings.limits.max_text_chars,
                max_long_text_chars: settings.limits.max_long_text_chars,
                max_metadata_bytes: settings.limits.max_metadata_bytes,
                audit_key: settings
                    .audit
                    .enabled_text_key()
                    .map(|key| ttsq_core::AuditKey::new(secrecy::ExposeSecret::expose_secret(key))),
            },
            batches: Arc::new(settings.batches.clone()),
            public_url: settings.server.public_url.trim_end_matches('/').into(),
            max_wait: Duration::from_secs(settings.server.max_wait_secs),
            max_body_bytes: settings.server.max_body_bytes,
            admin_token: settings
                .admin
                .enabled_token()
                .map(|token| Arc::new(TokenDigest::of(token))),
            // Settings::load has compiled every pattern once already.
            content_filter: Arc::new(
                content::ContentFilter::new(&settings.limits.blocked_patterns)
                    .expect("blocked patterns were validated with the settings"),
            ),
            speech: Arc::new(settings.speech.clone()),
            webhooks: Arc::new(webhooks::WebhookApi::new(settings)),
        }
    }
}

/// What a high-priority request needs to claim its task and its hash's
/// lease like a worker batch does.
#[derive(Debug, Clone, Copy)]
pub struct InlineClaims {
    /// This replica's id (its heartbeat row): its claims' holder.
    pub replica_id: uuid::Uuid,
    /// A replica silent for this long is presumed dead; its leases are taken over.
    pub replica_ttl: Duration,
    /// Longest a hash lease lasts, whatever the holder's heartbeat.
    pub lease_ttl: Duration,
    /// How the audio is stored.
    pub make: ttsq_synthesis::MakeOptions,
    /// How long a request waits for a hash another claim is synthesizing
    /// before it hands its task to the queue.
    pub hash_wait: Duration,
}

impl ApiContext {
    /// The dependencies the operations endpoints look at, this replica's
    /// publishing channel among them.
    pub fn probes(&self) -> ops::Probes {
        self.readiness.probes().clone()
    }
}

impl ApiContext {
    /// The task row `principal`'s `job` becomes: a fresh id, priced with
    /// [`Self::estimate_cost`], carrying the request's `traceparent`; and
    /// the current span records its id and dialect.
    pub fn new_task<'a>(
        &'a self,
        principal: &'a Principal,
        job: &'a Job,
        idempotency_key: Option<&'a str>,
        traceparent: Option<&'a str>,
    ) -> NewTask<'a> {
        let task = NewTask {
            id: uuid::Uuid::now_v7(),
            tenant_id: principal.tenant_id,
            job,
            idempotency_key,
            key_prefix: Some(&principal.key_prefix),
            estimate: self.estimate_cost(job),
            traceparent,
        };
        let span = tracing::Span::current();
        span.record("task_id", tracing::field::display(task.id));
        span.record("dialect", job.dialect.as_str());
        task
    }

    /// What `job` is expected to cost: its characters at the price of its
    /// dialect's first provider, in that provider's currency. Reserved
    /// against the tenant's budget while the task is open.
    pub fn estimate_cost(&self, job: &Job) -> Option<CostEstimate<'_>> {
        let provider = self
            .providers
            .catalog()
            .get(&job.dialect)
            .and_then(|d| d.provider_chain.first())?;
        Some(CostEstimate {
            cost: f64::from(job.characters) * self.providers.price_per_1k(provider) / 1000.0,
            currency: self.providers.currency(provider),
        })
    }

    /// Records a refused submission in the audit log; a failure to do so is
    /// logged and does not change the answer.
    pub async fn audit_refusal(
        &self,
        caller: &Principal,
        job: &Job,
        reason: &str,
        detail: serde_json::Value,
    ) {
        if let Err(err) = self
            .store
            .audit_refusal(
                caller.tenant_id,
                Some(&caller.key_prefix),
                job,
                reason,
                detail,
            )
            .await
        {
            tracing::warn!(error = %err, "could not record a refused submission in the audit log");
        }
    }
}

/// SHA-256 of the admin token: what a replica keeps of it.
#[derive(Debug)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// The digest of `token`.
    pub fn of(token: &SecretString) -> Self {
        Self(digest(token.expose_secret()))
    }

    /// Whether `presented` is the token; hashing first makes the time taken
    /// independent of where, and of whether the lengths, differ.
    pub fn matches(&self, presented: &str) -> bool {
        digest(presented).ct_eq(&self.0).into()
    }
}

fn digest(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}
