#![doc = include_str!("../README.md")]

use std::{collections::BTreeMap, fmt, net::SocketAddr, path::PathBuf, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use toml::{Table, Value};

/// The embedded defaults; also the reference for every key.
pub const DEFAULTS_TOML: &str = include_str!("defaults.toml");

/// Prefix of every environment variable this crate reads.
pub const ENV_PREFIX: &str = "TTSQ_";

/// Variables with the prefix that are not settings themselves.
const RESERVED_VARS: &[&str] = &[
    "TTSQ_CONFIG",
    "TTSQ_URL",
    "TTSQ_API_KEY",
    "TTSQ_HOME",
    "TTSQ_PROFILE",
    "TTSQ_SERVICES_TIMEOUT",
];

/// Prefix of variables that configure the test suite, not a process.
const TEST_VAR_PREFIX: &str = "TTSQ_TEST_";

/// Everything a ttsq process can be configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// HTTP API.
    pub server: ServerSettings,
    /// Postgres.
    pub database: DatabaseSettings,
    /// RabbitMQ.
    pub queue: QueueSettings,
    /// S3-compatible audio storage.
    pub s3: S3Settings,
    /// Queue consumers.
    pub worker: WorkerSettings,
    /// Limits on submitted jobs.
    pub limits: LimitSettings,
    /// Batches whose audio is joined (`concatenate: true`).
    pub batches: BatchSettings,
    /// Log output.
    pub log: LogSettings,
    /// Prometheus metrics.
    pub metrics: MetricsSettings,
    /// How replicas share provider quotas.
    pub quota: QuotaSharingSettings,
    /// Per-provider circuit breakers.
    pub breaker: BreakerSettings,
    /// The OpenAI-compatible `POST /v1/audio/speech` endpoint.
    pub speech: SpeechSettings,
    /// Upstream providers by name.
    pub providers: BTreeMap<String, ProviderSettings>,
    /// Dialect patterns to provider chains, first match wins.
    pub routes: Vec<RouteSettings>,
    /// The admin API.
    pub admin: AdminSettings,
    /// The audit log.
    pub audit: AuditSettings,
    /// Webhook delivery.
    pub webhooks: WebhookSettings,
    /// How long tasks and their audio are kept.
    pub retention: RetentionSettings,
    /// What the audio cache serves.
    pub cache: CacheSettings,
    /// Fair dispatch of queued tasks between tenants.
    pub dispatch: DispatchSettings,
}

/// What the audio cache serves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// Serve audio a fallback provider made to later requests for the same
    /// text. Off (the default), such audio answers only the tasks it was
    /// made for, and the dialect's first provider synthesizes the text again
    /// once it is back.
    pub serve_fallback_audio: bool,
}

/// The audit log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// Key of the text fingerprints (a secret): a submission's audit row
    /// holds the HMAC-SHA256 of its text under it, which a plain hash of a
    /// guessed short text cannot match. Empty: no fingerprint, the length only.
    pub text_key: SecretString,
}

impl AuditSettings {
    /// The fingerprint key, when one is set.
    pub fn enabled_text_key(&self) -> Option<&SecretString> {
        (!self.text_key.expose_secret().is_empty()).then_some(&self.text_key)
    }
}

/// Webhook delivery: signing, SSRF guard, timeouts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Key every tenant's signing secret is derived from (a secret); empty
    /// disables webhooks (`callback_url` is then refused).
    pub signing_key: SecretString,
    /// Networks (CIDR, e.g. `127.0.0.1/32`, `::1/128`) a webhook may target
    /// although they are loopback, private, link-local or otherwise internal.
    /// An IPv4-mapped entry (`::ffff:10.1.2.0/120`) is the IPv4 network it
    /// maps (`10.1.2.0/24`); one wider than /96 is refused.
    pub allow_private: Vec<String>,
    /// Longest one delivery attempt may take, in seconds.
    pub timeout_secs: u64,
    /// How long a rotated-out secret keeps signing beside the new one, in seconds.
    pub secret_grace_secs: u64,
    /// Deliveries one worker makes at once.
    pub concurrency: u16,
    /// Most deliveries of one tenant in flight across the fleet (published
    /// and not yet settled, retries waiting included), per unit of the
    /// tenant's weight: a tenant whose endpoint is slow or failing holds at
    /// most this many of the workers' delivery slots per unit, and the other
    /// tenants' webhooks go past it.
    pub per_tenant_in_flight: u16,
}

impl WebhookSettings {
    /// The signing key, when webhooks are enabled.
    pub fn enabled_key(&self) -> Option<&SecretString> {
        (!self.signing_key.expose_secret().is_empty()).then_some(&self.signing_key)
    }

    /// [`Self::allow_private`] parsed as (network address, prefix length).
    pub fn allowed_networks(&self) -> Result<Vec<(std::net::IpAddr, u8)>, String> {
        self.allow_private
            .iter()
            .map(|raw| parse_cidr(raw))
            .collect()
    }
}

/// Parses `addr/len` (or a bare address: one host) into a network, in the
/// canonical form of [`canonical_network`].
pub fn parse_cidr(raw: &str) -> Result<(std::net::IpAddr, u8), String> {
    let (addr, len) = raw.trim().split_once('/').unwrap_or((raw.trim(), ""));
    let addr: std::net::IpAddr = addr
        .parse()
        .map_err(|_| format!("`{raw}` is not an IP network (CIDR)"))?;
    let len = if len.is_empty() {
        if addr.is_ipv4() { 32 } else { 128 }
    } else {
        len.parse::<u8>()
            .map_err(|_| format!("`{raw}` has an invalid prefix length"))?
    };
    canonical_network(addr, len).map_err(|reason| format!("`{raw}` {reason}"))
}

/// A network (address, prefix length) in the form addresses are compared
/// in: an IPv4-mapped IPv6 network (`::ffff:10.1.2.0/120`) is the IPv4
/// network it maps (`10.1.2.0/24`), because connections to mapped addresses
/// are checked as IPv4 ones. Refuses a prefix longer than the address, and a
/// mapped prefix shorter than 96, which would span more than the mapped range.
pub fn canonical_network(
    addr: std::net::IpAddr,
    len: u8,
) -> Result<(std::net::IpAddr, u8), String> {
    use std::net::IpAddr;
    match addr {
        IpAddr::V4(_) if len > 32 => Err("has a prefix length above 32".to_owned()),
        IpAddr::V6(_) if len > 128 => Err("has a prefix length above 128".to_owned()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => match len.checked_sub(96) {
                Some(v4_len) => Ok((IpAddr::V4(v4), v4_len)),
                None => Err(
                    "is an IPv4-mapped network, so its prefix length must be at least 96; \
                     write the IPv4 network instead"
                        .to_owned(),
                ),
            },
            None => Ok((addr, len)),
        },
        IpAddr::V4(_) => Ok((addr, len)),
    }
}

/// The default `s3.secret_access_key`: the secret of the local S3 server
/// that `deploy/local` starts. Anyone can read it here, so it is only
/// accepted for an endpoint on this machine (see [`is_loopback_url`]).
pub const LOCAL_S3_SECRET: &str = "ttsq-local-secret";

/// Whether an http(s) URL's host is this machine: `localhost` or a
/// loopback address (`127.0.0.0/8`, `::1`).
pub fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host_port)| host_port);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// Retention: the sweeper that removes old tasks and the audio only they used.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Days a task is kept for tenants without their own `retention_days`;
    /// 0 keeps them forever.
    pub default_days: u32,
    /// Seconds between sweeps.
    pub sweep_every_secs: u64,
    /// Tasks removed per sweep transaction.
    pub batch_size: u32,
}

impl RetentionSettings {
    /// The default retention, `None` when tasks are kept forever.
    pub fn default_retention_days(&self) -> Option<u32> {
        (self.default_days > 0).then_some(self.default_days)
    }
}

/// The admin API (`/v1/admin/...`): tenants and keys over HTTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Bearer token the admin API demands (a secret); empty disables the
    /// admin API, whose routes then answer 404.
    pub token: SecretString,
}

impl AdminSettings {
    /// The token, when the admin API is enabled.
    pub fn enabled_token(&self) -> Option<&SecretString> {
        (!self.token.expose_secret().is_empty()).then_some(&self.token)
    }
}

/// How replicas share provider quotas.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSharingSettings {
    /// Seconds between replica heartbeats.
    pub heartbeat_secs: u64,
    /// Share of each quota kept for high-priority jobs while an API runs;
    /// used by the static shares a replica falls back on while the quota
    /// coordinator (Postgres) is unreachable.
    pub high_priority_share: f64,
    /// Fraction of each vendor rate limit aimed for (headroom for jitter).
    pub target_utilisation: f64,
}

/// How `POST /v1/audio/speech` maps OpenAI voice names onto dialects.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeechSettings {
    /// Dialect for a `voice` that is neither in `voices` nor a dialect id.
    pub default_dialect: String,
    /// OpenAI voice name → `dialect` or `dialect/voice`.
    pub voices: BTreeMap<String, String>,
}

/// When a provider's circuit breaker opens and for how long.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSettings {
    /// Consecutive failures that open it.
    pub failure_threshold: u32,
    /// Seconds it stays open before one trial request.
    pub cooldown_secs: u64,
}

/// Which adapter a provider uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Local espeak-ng.
    Espeak,
    /// The ElevenLabs REST API.
    Elevenlabs,
    /// Any OpenAI-compatible `/v1/audio/speech` server.
    Openai,
    /// The generic `POST /tts` contract of self-hosted and regional servers.
    Http,
}

/// Limits the vendor account imposes; shared by every replica.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderQuota {
    /// Requests per second, if limited.
    pub requests_per_second: Option<f64>,
    /// Characters per minute, if limited.
    pub characters_per_minute: Option<u32>,
    /// Requests in flight at once, if limited.
    pub max_concurrent: Option<u32>,
}

/// One dialect a provider serves, as configured.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ProviderDialect {
    /// Just the id; capabilities come from the adapter.
    Id(String),
    /// Id with the voices (vendor voice ids) and options it offers.
    Detailed(DialectSettings),
}

/// A dialect with explicit capabilities.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialectSettings {
    /// Dialect id clients send.
    pub id: String,
    /// Human-readable name.
    #[serde(default)]
    pub name: Option<String>,
    /// Voices, first is the default.
    pub voices: Vec<String>,
    /// Vendor language code, where the vendor wants one.
    #[serde(default)]
    pub language_code: Option<String>,
    /// Emotions offered.
    #[serde(default)]
    pub emotions: Vec<String>,
}

impl ProviderDialect {
    /// The dialect id.
    pub fn id(&self) -> &str {
        match self {
            Self::Id(id) => id,
            Self::Detailed(d) => &d.id,
        }
    }
}

fn default_connect_timeout() -> u64 {
    5
}

fn default_timeout() -> u64 {
    30
}

fn default_currency() -> String {
    "USD".to_owned()
}

/// Whether `code` looks like an ISO 4217 currency code (`USD`, `EUR`).
pub fn is_currency_code(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
}

/// One upstream provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    /// Adapter.
    pub kind: ProviderKind,
    /// Base URL of an HTTP provider.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Credential sent to an HTTP provider.
    #[serde(default)]
    pub api_key: Option<SecretString>,
    /// Header carrying the credential (generic `http` kind only).
    #[serde(default)]
    pub auth_header: Option<String>,
    /// Vendor model id.
    #[serde(default)]
    pub model: Option<String>,
    /// The espeak-ng executable (espeak kind).
    #[serde(default)]
    pub binary: Option<PathBuf>,
    /// Connect timeout, in seconds.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Total timeout of one request, in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Price per 1,000 billable characters, in [`Self::currency`].
    #[serde(default)]
    pub price_per_1k_chars: f64,
    /// ISO 4217 code of the price's currency, recorded on each ledger row.
    #[serde(default = "default_currency")]
    pub currency: String,
    /// The vendor account's limits.
    #[serde(default)]
    pub quota: ProviderQuota,
    /// Dialects served.
    pub dialects: Vec<ProviderDialect>,
}

impl ProviderSettings {
    /// The espeak adapter's settings, for an `espeak` provider.
    pub fn espeak(&self) -> EspeakSettings {
        EspeakSettings {
            binary: self
                .binary
                .clone()
                .unwrap_or_else(|| PathBuf::from("espeak-ng")),
            max_concurrent: self.quota.max_concurrent.map_or(2, |n| n as usize),
            timeout_secs: self.timeout_secs,
            dialects: self.dialects.iter().map(|d| d.id().to_owned()).collect(),
        }
    }
}

/// Dialect patterns served by a chain of providers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSettings {
    /// Glob patterns over dialect ids (`*` matches any run of characters).
    pub dialects: Vec<String>,
    /// Provider names, tried in order.
    pub chain: Vec<String>,
}

impl RouteSettings {
    /// Whether this route covers `dialect`.
    pub fn matches(&self, dialect: &str) -> bool {
        self.dialects.iter().any(|p| glob_match(p, dialect))
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(tail) = text.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len())
                .filter(|i| tail.is_char_boundary(*i))
                .any(|i| glob_match(rest, &tail[i..]))
        }
    }
}

/// HTTP API settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address the API listens on.
    pub listen: SocketAddr,
    /// Where an API process (`ttsq api`, `ttsq all`) serves its operations
    /// endpoints: `/metrics`, `/health` and the detailed `/ready`. Kept off
    /// the public address because they show dependency hosts and errors.
    pub ops_listen: SocketAddr,
    /// Base URL clients reach the API at, without a trailing slash.
    pub public_url: String,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Longest long-poll a client may ask for, in seconds.
    pub max_wait_secs: u64,
    /// How often a long-poll re-reads its task even without a notification
    /// (notifications are lost while the listener reconnects), in ms.
    pub wait_poll_ms: u64,
}

/// Postgres settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Connection URL; secret because it may carry a password.
    pub url: SecretString,
    /// Pool size per process.
    pub max_connections: u32,
    /// Transactions an API process runs at once to write single submissions,
    /// each holding one pooled connection; every submission that arrives
    /// meanwhile joins the next group (group commit).
    pub submit_committers: u32,
    /// Apply pending migrations at start.
    pub run_migrations: bool,
}

/// RabbitMQ settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// AMQP URL; secret because it carries a password.
    pub url: SecretString,
    /// Prefix of every queue name.
    pub prefix: String,
    /// Unacknowledged deliveries a worker holds at once.
    pub prefetch: u16,
    /// Redeliveries before RabbitMQ dead-letters a message.
    pub delivery_limit: u32,
    /// Back-off before each retry of a job whose provider call failed, in
    /// seconds; one delay queue each. A job gets `len + 1` attempts.
    pub retry_delays_secs: Vec<u64>,
    /// Back-off before each retry of a webhook delivery, in milliseconds;
    /// one delay queue each. A delivery gets `len + 1` attempts.
    pub webhook_retry_delays_ms: Vec<u64>,
}

impl QueueSettings {
    /// [`Self::retry_delays_secs`] as durations.
    pub fn retry_delays(&self) -> Vec<Duration> {
        self.retry_delays_secs
            .iter()
            .map(|s| Duration::from_secs(*s))
            .collect()
    }

    /// [`Self::webhook_retry_delays_ms`] as durations.
    pub fn webhook_retry_delays(&self) -> Vec<Duration> {
        self.webhook_retry_delays_ms
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect()
    }

    /// Attempts a job gets before a passing failure fails it.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.retry_delays_secs.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1)
    }
}

/// S3 settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// Endpoint URL of the S3-compatible server.
    pub endpoint: String,
    /// Signing region.
    pub region: String,
    /// Bucket holding the audio.
    pub bucket: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key. The default ([`LOCAL_S3_SECRET`]) is refused
    /// unless the endpoint is on this machine.
    pub secret_access_key: SecretString,
    /// Create the bucket at start when missing.
    pub create_bucket: bool,
    /// Lifetime of presigned URLs, in seconds.
    pub presign_ttl_secs: u64,
    /// The server honours `If-None-Match: *` on PutObject, so no HeadObject
    /// needs to guard an upload against overwriting stored audio.
    pub conditional_writes: bool,
}

/// Worker settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Most jobs in one batch.
    pub batch_size: usize,
    /// Longest a batch waits to fill, in milliseconds.
    pub batch_window_ms: u64,
    /// Batches processed at once.
    pub concurrent_batches: usize,
    /// Provider calls one batch makes at once; with `concurrent_batches` it
    /// bounds how much audio a worker holds.
    pub syntheses_per_batch: usize,
    /// Drain deadline on shutdown, in seconds.
    pub shutdown_grace_secs: u64,
    /// How long a batch keeps retrying Postgres and S3 through an outage
    /// (holding its deliveries and synthesized audio) before giving up, in seconds.
    pub storage_retry_secs: u64,
    /// A task `processing` for longer than this is presumed abandoned and
    /// queued again, even if its replica still heartbeats, in seconds.
    pub claim_timeout_secs: u64,
    /// Where a `ttsq worker` serves `/metrics`, `/health` and `/ready`
    /// (port 0 picks a free one); `ttsq all` serves them on
    /// `server.ops_listen` instead.
    pub metrics_listen: SocketAddr,
}

impl WorkerSettings {
    /// [`Self::batch_window_ms`] as a duration.
    pub fn batch_window(&self) -> Duration {
        Duration::from_millis(self.batch_window_ms)
    }

    /// [`Self::shutdown_grace_secs`] as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// [`Self::storage_retry_secs`] as a duration.
    pub fn storage_retry(&self) -> Duration {
        Duration::from_secs(self.storage_retry_secs)
    }

    /// [`Self::claim_timeout_secs`] as a duration.
    pub fn claim_timeout(&self) -> Duration {
        Duration::from_secs(self.claim_timeout_secs)
    }
}

/// How queued tasks are dispatched to the workers: a provider's window of
/// published, unfinished tasks is kept just deep enough to keep the workers
/// (or the provider's quota) busy, and its free slots go to the tenants in
/// weighted fair order; the rest waits in Postgres.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchSettings {
    /// Window of a provider without a request rate quota, per live worker
    /// replica: a couple of full batches (`worker.batch_size`), enough to
    /// keep a worker busy while the next tasks are published.
    pub window_per_worker: u32,
    /// A provider with a requests-per-second quota gets a window of this
    /// many milliseconds of its rate: enough to keep the quota busy, short
    /// enough that a newcomer's job waits about this long at most.
    pub quota_horizon_ms: u64,
    /// The smallest window, whatever the quota.
    pub min_window: u32,
    /// How often a replica dispatches without being woken (a back-off that
    /// ended, a replica that died), in milliseconds.
    pub poll_ms: u64,
}

impl DispatchSettings {
    /// [`Self::quota_horizon_ms`] as a duration.
    pub fn quota_horizon(&self) -> Duration {
        Duration::from_millis(self.quota_horizon_ms)
    }

    /// [`Self::poll_ms`] as a duration.
    pub fn poll(&self) -> Duration {
        Duration::from_millis(self.poll_ms)
    }
}

/// Limits on submitted jobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Most characters of text in one job.
    pub max_text_chars: usize,
    /// Most bytes of metadata as JSON.
    pub max_metadata_bytes: usize,
    /// Regular expressions (regex-lite syntax) a job's normalised text must
    /// not match; a match is refused with 422 `content_rejected`.
    pub blocked_patterns: Vec<String>,
}

/// S3's smallest part of a multipart upload but the last, in bytes (5 MiB).
pub const MIN_JOIN_PART_BYTES: u64 = 5 * 1024 * 1024;

/// S3's largest part of a multipart upload, in bytes (5 GiB).
const MAX_JOIN_PART_BYTES: u64 = 5 * 1024 * 1024 * 1024;

/// S3's most parts in one multipart upload.
const MAX_JOIN_PARTS: u64 = 10_000;

/// What bounds a batch whose audio is joined (`concatenate: true`): its
/// estimated length at submit, its size and the memory while joining, and
/// how replicas share and retry the join.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSettings {
    /// Longest joined audio a batch may ask for, in seconds, as estimated at
    /// submit ([`Self::estimated_ms`]); a batch over it is refused whole.
    pub max_joined_duration_secs: u64,
    /// Speaking time of one character at speed 1.0, in milliseconds, for
    /// that estimate.
    pub estimated_ms_per_char: u32,
    /// Largest joined file, in bytes, checked while joining: the estimate
    /// can be wrong, the bytes cannot.
    pub max_joined_bytes: u64,
    /// Size of the multipart upload's parts, in bytes; a join holds about
    /// one in memory. S3 requires at least [`MIN_JOIN_PART_BYTES`].
    pub join_part_bytes: u64,
    /// Times replicas may take a batch to join it, interrupted attempts
    /// included, before it completes with `concatenate_error`.
    pub join_attempts: u32,
    /// How long a replica's hold on a batch it is joining lasts unrenewed,
    /// in seconds; a dead holder's batch is taken over after this long.
    pub join_lease_secs: u64,
}

impl BatchSettings {
    /// Estimated playing time, in milliseconds, of `characters` spoken at
    /// `speed` (a factor, 1.0 normal): the unit of the submit-time cap.
    pub fn estimated_ms(&self, characters: u32, speed: f64) -> f64 {
        let speed = if speed.is_finite() && speed > 0.0 {
            speed
        } else {
            1.0
        };
        f64::from(characters) * f64::from(self.estimated_ms_per_char) / speed
    }

    /// [`Self::join_lease_secs`] as a duration.
    pub fn join_lease(&self) -> Duration {
        Duration::from_secs(self.join_lease_secs)
    }

    /// The first setting that cannot work, with the reason.
    fn problem(&self) -> Option<(&'static str, String)> {
        if self.max_joined_duration_secs == 0 {
            return Some((
                "batches.max_joined_duration_secs",
                "must be at least 1".into(),
            ));
        }
        if self.estimated_ms_per_char == 0 {
            return Some(("batches.estimated_ms_per_char", "must be at least 1".into()));
        }
        if !(MIN_JOIN_PART_BYTES..=MAX_JOIN_PART_BYTES).contains(&self.join_part_bytes) {
            return Some((
                "batches.join_part_bytes",
                format!(
                    "must be between {MIN_JOIN_PART_BYTES} (5 MiB) and {MAX_JOIN_PART_BYTES} \
                     (5 GiB), the part sizes S3 accepts"
                ),
            ));
        }
        if self.max_joined_bytes == 0
            || self.max_joined_bytes.div_ceil(self.join_part_bytes) > MAX_JOIN_PARTS
        {
            return Some((
                "batches.max_joined_bytes",
                format!(
                    "must be at least 1 and fit in {MAX_JOIN_PARTS} parts of \
                     batches.join_part_bytes (S3's most parts in one upload)"
                ),
            ));
        }
        if self.join_attempts == 0 {
            return Some(("batches.join_attempts", "must be at least 1".into()));
        }
        if self.join_lease_secs < 3 {
            return Some(("batches.join_lease_secs", "must be at least 3".into()));
        }
        None
    }
}

/// Log output settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// Line format.
    pub format: LogFormat,
}

/// Prometheus metrics settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Billable characters per UTC day the fleet should stay under (a
    /// vendor plan's allowance), exported as `tts_daily_usage_limit` for the
    /// "daily usage near limit" alert; 0 exports no limit.
    pub daily_character_limit: u64,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Coloured, multi-field lines for a terminal.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// The embedded espeak-ng provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EspeakSettings {
    /// Executable name or path.
    pub binary: PathBuf,
    /// Syntheses at once per process.
    pub max_concurrent: usize,
    /// Longest one synthesis may take, in seconds.
    pub timeout_secs: u64,
    /// Dialects offered, as espeak-ng voice names.
    pub dialects: Vec<String>,
}

/// Why settings could not be loaded; each names the key and where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// Parser message with line and column.
        message: String,
    },
    /// An environment variable is unknown, unreadable or of the wrong type.
    #[error("{var}: {reason}")]
    Env {
        /// The variable.
        var: String,
        /// Why it was refused.
        reason: String,
    },
    /// A setting has the wrong type or an invalid value.
    #[error("setting `{key}` (env {var}{origin}): {reason}")]
    Invalid {
        /// Dotted key.
        key: String,
        /// The variable that sets it.
        var: String,
        /// Where the bad value came from, when not the defaults.
        origin: Origin,
        /// Why it was refused.
        reason: String,
    },
}

/// Where a setting's value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The embedded defaults or the config file.
    File,
    /// The environment.
    Env,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File => Ok(()),
            Self::Env => f.write_str(", set in the environment"),
        }
    }
}

/// The variable name of a dotted key: `worker.batch_size` → `TTSQ_WORKER_BATCH_SIZE`.
pub fn env_var_for(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_uppercase())
}

impl Settings {
    /// Loads the defaults, then `file` if given, then `env` (the variables of
    /// the process, as name/value pairs; only `TTSQ_` ones are looked at).
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        // The embedded defaults are checked by a unit test, so parsing cannot fail.
        let mut table: Table =
            toml::from_str(DEFAULTS_TOML).expect("embedded defaults are valid TOML");
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
                path: path.to_owned(),
                source,
            })?;
            let overlay: Table = toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
            merge(&mut table, overlay);
        }
        let from_env = apply_env(&mut table, env)?;
        let settings: Settings =
            serde_path_to_error::deserialize(Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                ConfigError::Invalid {
                    var: env_var_for(&key),
                    origin: if from_env.contains_key(&key) {
                        Origin::Env
                    } else {
                        Origin::File
                    },
                    key,
                    reason: e.into_inner().to_string(),
                }
            })?;
        settings.check(&from_env)?;
        Ok(settings)
    }

    /// Range checks serde cannot express.
    fn check(&self, from_env: &BTreeMap<String, ()>) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: &str| ConfigError::Invalid {
            key: key.to_owned(),
            var: env_var_for(key),
            origin: if from_env.contains_key(key) {
                Origin::Env
            } else {
                Origin::File
            },
            reason: reason.to_owned(),
        };
        let url_ok = |u: &str| u.starts_with("http://") || u.starts_with("https://");
        let database_url = self.database.url.expose_secret();
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(invalid(
                "database.url",
                "must be a postgres:// or postgresql:// URL",
            ));
        }
        let queue_url = self.queue.url.expose_secret();
        if !(queue_url.starts_with("amqp://") || queue_url.starts_with("amqps://")) {
            return Err(invalid("queue.url", "must be an amqp:// or amqps:// URL"));
        }
        if !url_ok(&self.server.public_url) {
            return Err(invalid("server.public_url", "must be an http(s) URL"));
        }
        if !url_ok(&self.s3.endpoint) {
            return Err(invalid("s3.endpoint", "must be an http(s) URL"));
        }
        if self.s3.bucket.is_empty() {
            return Err(invalid("s3.bucket", "must not be empty"));
        }
        if self.s3.secret_access_key.expose_secret() == LOCAL_S3_SECRET
            && !is_loopback_url(&self.s3.endpoint)
        {
            return Err(invalid(
                "s3.secret_access_key",
                "is the published default of the local S3 server, but s3.endpoint is not on \
                 this machine: set the secret of that S3 server",
            ));
        }
        if let Err(reason) = self.webhooks.allowed_networks() {
            return Err(invalid("webhooks.allow_private", &reason));
        }
        let positive = [
            ("server.max_body_bytes", self.server.max_body_bytes),
            (
                "database.max_connections",
                self.database.max_connections as usize,
            ),
            (
                "database.submit_committers",
                self.database.submit_committers as usize,
            ),
            ("queue.prefetch", self.queue.prefetch as usize),
            ("worker.batch_size", self.worker.batch_size),
            (
                "server.wait_poll_ms",
                usize::try_from(self.server.wait_poll_ms).unwrap_or(usize::MAX),
            ),
            (
                "retention.sweep_every_secs",
                usize::try_from(self.retention.sweep_every_secs).unwrap_or(usize::MAX),
            ),
            ("retention.batch_size", self.retention.batch_size as usize),
            ("worker.concurrent_batches", self.worker.concurrent_batches),
            (
                "worker.syntheses_per_batch",
                self.worker.syntheses_per_batch,
            ),
            (
                "worker.claim_timeout_secs",
                usize::try_from(self.worker.claim_timeout_secs).unwrap_or(usize::MAX),
            ),
            ("limits.max_text_chars", self.limits.max_text_chars),
            ("webhooks.concurrency", self.webhooks.concurrency as usize),
            (
                "webhooks.per_tenant_in_flight",
                self.webhooks.per_tenant_in_flight as usize,
            ),
            ("quota.heartbeat_secs", self.quota.heartbeat_secs as usize),
            (
                "dispatch.window_per_worker",
                self.dispatch.window_per_worker as usize,
            ),
            ("dispatch.min_window", self.dispatch.min_window as usize),
            (
                "dispatch.quota_horizon_ms",
                usize::try_from(self.dispatch.quota_horizon_ms).unwrap_or(usize::MAX),
            ),
            (
                "dispatch.poll_ms",
                usize::try_from(self.dispatch.poll_ms).unwrap_or(usize::MAX),
            ),
            (
                "breaker.failure_threshold",
                self.breaker.failure_threshold as usize,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if let Some((key, reason)) = self.batches.problem() {
            return Err(invalid(key, &reason));
        }
        if !(self.quota.target_utilisation > 0.0 && self.quota.target_utilisation <= 1.0) {
            return Err(invalid(
                "quota.target_utilisation",
                "must be above 0 and at most 1",
            ));
        }
        if !(0.0..1.0).contains(&self.quota.high_priority_share) {
            return Err(invalid(
                "quota.high_priority_share",
                "must be at least 0 and below 1",
            ));
        }
        for (name, provider) in &self.providers {
            let key = |field: &str| format!("providers.{name}.{field}");
            if provider.dialects.is_empty() {
                return Err(invalid(&key("dialects"), "must list at least one dialect"));
            }
            if provider.kind != ProviderKind::Espeak {
                match provider.base_url.as_deref() {
                    Some(u) if url_ok(u) => {}
                    _ => return Err(invalid(&key("base_url"), "must be an http(s) URL")),
                }
            }
            if provider.timeout_secs == 0 || provider.connect_timeout_secs == 0 {
                return Err(invalid(
                    &key("timeout_secs"),
                    "timeouts must be at least 1 second",
                ));
            }
            let q = &provider.quota;
            if q.requests_per_second
                .is_some_and(|r| !(r > 0.0 && r.is_finite()))
                || q.characters_per_minute == Some(0)
                || q.max_concurrent == Some(0)
            {
                return Err(invalid(&key("quota"), "limits must be positive when set"));
            }
            if !is_currency_code(&provider.currency) {
                return Err(invalid(
                    &key("currency"),
                    "must be a three-letter ISO 4217 code such as USD",
                ));
            }
            if !(provider.price_per_1k_chars >= 0.0 && provider.price_per_1k_chars.is_finite()) {
                return Err(invalid(
                    &key("price_per_1k_chars"),
                    "must be a non-negative number",
                ));
            }
        }
        for (i, pattern) in self.limits.blocked_patterns.iter().enumerate() {
            if let Err(err) = regex_lite::Regex::new(pattern) {
                return Err(invalid(
                    &format!("limits.blocked_patterns.{i}"),
                    &format!("not a valid regular expression: {err}"),
                ));
            }
        }
        if self.routes.is_empty() {
            return Err(invalid("routes", "must have at least one route"));
        }
        for (i, route) in self.routes.iter().enumerate() {
            if route.chain.is_empty() {
                return Err(invalid(
                    &format!("routes.{i}.chain"),
                    "must name at least one provider",
                ));
            }
            if let Some(unknown) = route
                .chain
                .iter()
                .find(|p| !self.providers.contains_key(*p))
            {
                return Err(invalid(
                    &format!("routes.{i}.chain"),
                    &format!("names provider `{unknown}`, which is not configured"),
                ));
            }
        }
        Ok(())
    }

    /// Every settable variable with its default, for `.env.example` and `--help`.
    pub fn env_reference() -> Vec<(String, String)> {
        // Same embedded defaults as in `load`, checked by a unit test.
        let table: Table = toml::from_str(DEFAULTS_TOML).expect("embedded defaults are valid TOML");
        let mut out = Vec::new();
        collect_scalars(&table, "", &mut out);
        out
    }
}

fn collect_scalars(table: &Table, prefix: &str, out: &mut Vec<(String, String)>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Table(t) => collect_scalars(t, &key, out),
            // Lists of numbers are settable as comma-separated values; other
            // lists (dialects, routes) belong in the config file.
            Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_integer) => {
                let joined: Vec<String> = items.iter().map(ToString::to_string).collect();
                out.push((env_var_for(&key), joined.join(",")));
            }
            Value::Array(_) => {}
            Value::String(s) => out.push((env_var_for(&key), s.clone())),
            other => out.push((env_var_for(&key), other.to_string())),
        }
    }
}

fn merge(base: &mut Table, overlay: Table) {
    for (k, v) in overlay {
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Applies `TTSQ_*` variables onto the table; returns the dotted keys they set.
fn apply_env(
    table: &mut Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, ()>, ConfigError> {
    let mut set = BTreeMap::new();
    let mut vars: Vec<_> = env
        .into_iter()
        .filter(|(k, _)| {
            k.starts_with(ENV_PREFIX)
                && !k.starts_with(TEST_VAR_PREFIX)
                && !RESERVED_VARS.contains(&k.as_str())
        })
        .collect();
    // Plain variables win over their `_FILE` twin, so apply `_FILE` ones first.
    vars.sort_by_key(|(k, _)| !k.ends_with("_FILE"));
    for (var, raw) in vars {
        let (name, value) = match resolve_key(table, &var[ENV_PREFIX.len()..])
            .or_else(|| add_optional_provider_key(table, &var[ENV_PREFIX.len()..]))
        {
            Some(key) => (key, raw),
            None => match var.strip_suffix("_FILE").and_then(|v| {
                resolve_key(table, &v[ENV_PREFIX.len()..])
                    .or_else(|| add_optional_provider_key(table, &v[ENV_PREFIX.len()..]))
            }) {
                Some(key) => {
                    let content = std::fs::read_to_string(&raw).map_err(|e| ConfigError::Env {
                        var: var.clone(),
                        reason: format!("cannot read file {raw}: {e}"),
                    })?;
                    (key, content.trim_end_matches(['\n', '\r']).to_owned())
                }
                None => {
                    return Err(ConfigError::Env {
                        var,
                        reason: "unknown setting; see .env.example for every variable".into(),
                    });
                }
            },
        };
        let slot = lookup_mut(table, &name).expect("resolve_key returned an existing key");
        *slot = typed_like(slot, &value).map_err(|reason| ConfigError::Env {
            var: var.clone(),
            reason,
        })?;
        set.insert(name, ());
    }
    Ok(set)
}

/// Finds the scalar key a variable suffix (`WORKER_BATCH_SIZE`) names.
fn resolve_key(table: &Table, suffix: &str) -> Option<String> {
    for (k, v) in table {
        let upper = k.to_uppercase();
        match v {
            Value::Table(inner) => {
                if let Some(rest) = suffix
                    .strip_prefix(&upper)
                    .and_then(|r| r.strip_prefix('_'))
                    && let Some(found) = resolve_key(inner, rest)
                {
                    return Some(format!("{k}.{found}"));
                }
            }
            _ if upper == suffix => return Some(k.clone()),
            _ => {}
        }
    }
    None
}

/// Provider settings that have no default and may be set from the
/// environment alone, chiefly secrets: `PROVIDERS_ELEVEN_API_KEY`.
const OPTIONAL_PROVIDER_KEYS: &[&str] = &["api_key", "base_url", "model", "auth_header"];

/// For a variable naming an optional key of a configured provider, adds the
/// key (empty) to the table and returns its dotted name.
fn add_optional_provider_key(table: &mut Table, suffix: &str) -> Option<String> {
    let rest = suffix.strip_prefix("PROVIDERS_")?;
    let providers = table.get_mut("providers")?.as_table_mut()?;
    let (name, field) = providers.keys().find_map(|name| {
        let upper = name.to_uppercase().replace('-', "_");
        let field = rest.strip_prefix(&upper)?.strip_prefix('_')?;
        OPTIONAL_PROVIDER_KEYS
            .iter()
            .find(|k| k.to_uppercase() == field)
            .map(|k| (name.clone(), *k))
    })?;
    providers
        .get_mut(&name)?
        .as_table_mut()?
        .insert(field.to_owned(), Value::String(String::new()));
    Some(format!("providers.{name}.{field}"))
}

fn lookup_mut<'a>(table: &'a mut Table, key: &str) -> Option<&'a mut Value> {
    let mut parts = key.split('.').peekable();
    let mut current = table;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            return current.get_mut(part);
        }
        current = current.get_mut(part)?.as_table_mut()?;
    }
    None
}

/// Parses an environment string as the type of the value it replaces.
fn typed_like(existing: &Value, raw: &str) -> Result<Value, String> {
    match existing {
        Value::String(_) => Ok(Value::String(raw.to_owned())),
        Value::Integer(_) => raw
            .trim()
            .parse::<i64>()
            .map(Value::Integer)
            .map_err(|_| format!("expected a whole number, got `{raw}`")),
        Value::Float(_) => raw
            .trim()
            .parse::<f64>()
            .map(Value::Float)
            .map_err(|_| format!("expected a number, got `{raw}`")),
        Value::Boolean(_) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Value::Boolean(true)),
            "false" | "0" | "no" | "off" => Ok(Value::Boolean(false)),
            _ => Err(format!("expected true or false, got `{raw}`")),
        },
        // A comma-separated list, each item typed like the default's items.
        Value::Array(items) => {
            let like = items
                .first()
                .cloned()
                .unwrap_or_else(|| Value::String(String::new()));
            raw.split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| typed_like(&like, s.trim()))
                .collect::<Result<Vec<_>, String>>()
                .map(Value::Array)
        }
        _ => Err("this setting cannot be set from the environment".into()),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use secrecy::ExposeSecret;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_load_and_point_at_local_services() {
        let s = Settings::load(None, env(&[])).unwrap();
        assert_eq!(s.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.s3.endpoint, "http://127.0.0.1:8014");
        assert!(
            s.providers["espeak"]
                .espeak()
                .dialects
                .contains(&"en-gb".to_owned())
        );
        assert!(s.routes[0].matches("en-gb"));
    }

    #[test]
    fn environment_overrides_file_which_overrides_defaults() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "[worker]\nbatch_size = 8\nbatch_window_ms = 5").unwrap();
        let s = Settings::load(
            Some(file.path()),
            env(&[
                ("TTSQ_WORKER_BATCH_SIZE", "16"),
                ("TTSQ_S3_CREATE_BUCKET", "false"),
            ]),
        )
        .unwrap();
        assert_eq!(s.worker.batch_size, 16);
        assert_eq!(s.worker.batch_window_ms, 5);
        assert!(!s.s3.create_bucket);
    }

    #[test]
    fn secrets_come_from_files_and_never_print() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "s3cr3t-value").unwrap();
        let path = file.path().to_str().unwrap();
        let s = Settings::load(None, env(&[("TTSQ_S3_SECRET_ACCESS_KEY_FILE", path)])).unwrap();
        assert_eq!(s.s3.secret_access_key.expose_secret(), "s3cr3t-value");
        assert!(!format!("{s:?}").contains("s3cr3t-value"));
        assert!(!format!("{s:?}").contains("guest:guest"));
    }

    #[test]
    fn errors_name_the_variable() {
        let err = Settings::load(None, env(&[("TTSQ_WORKER_BATCH_SIZE", "many")])).unwrap_err();
        assert!(
            err.to_string().starts_with("TTSQ_WORKER_BATCH_SIZE:"),
            "{err}"
        );

        let err = Settings::load(None, env(&[("TTSQ_WORKER_BATCH_SIZE", "0")])).unwrap_err();
        assert!(err.to_string().contains("TTSQ_WORKER_BATCH_SIZE"), "{err}");

        let err = Settings::load(None, env(&[("TTSQ_DATABASE_URL", "invalid://")])).unwrap_err();
        assert!(err.to_string().contains("TTSQ_DATABASE_URL"), "{err}");
        assert!(
            !err.to_string().contains("invalid://"),
            "a URL may hold a password: {err}"
        );

        let err = Settings::load(None, env(&[("TTSQ_SERVER_LISTEN", "nowhere")])).unwrap_err();
        assert!(err.to_string().contains("TTSQ_SERVER_LISTEN"), "{err}");

        let err = Settings::load(None, env(&[("TTSQ_WROKER_BATCH_SIZE", "1")])).unwrap_err();
        assert!(err.to_string().contains("TTSQ_WROKER_BATCH_SIZE"), "{err}");

        let err = Settings::load(
            None,
            env(&[("TTSQ_S3_SECRET_ACCESS_KEY_FILE", "/nonexistent")]),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("TTSQ_S3_SECRET_ACCESS_KEY_FILE"),
            "{err}"
        );
    }

    #[test]
    fn file_errors_name_the_key() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "[worker]\nbatch_sise = 8").unwrap();
        let err = Settings::load(Some(file.path()), env(&[])).unwrap_err();
        assert!(err.to_string().contains("batch_sise"), "{err}");
    }

    #[test]
    fn providers_and_routes_load_with_secrets_from_the_environment() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            r#"
[providers.eleven]
kind = "elevenlabs"
base_url = "https://api.example.test"
price_per_1k_chars = 0.3
quota = {{ requests_per_second = 10, max_concurrent = 4 }}
dialects = [{{ id = "en-gb", voices = ["v1", "v2"], language_code = "en" }}]

[[routes]]
dialects = ["en-*"]
chain = ["eleven", "espeak"]
"#
        )
        .unwrap();
        let mut key_file = tempfile::NamedTempFile::new().unwrap();
        writeln!(key_file, "sk-secret").unwrap();
        let key_path = key_file.path().to_str().unwrap();
        let s = Settings::load(
            Some(file.path()),
            env(&[("TTSQ_PROVIDERS_ELEVEN_API_KEY_FILE", key_path)]),
        )
        .unwrap();
        let plain = Settings::load(
            Some(file.path()),
            env(&[("TTSQ_PROVIDERS_ELEVEN_API_KEY", "sk-plain")]),
        )
        .unwrap();
        assert_eq!(
            plain.providers["eleven"]
                .api_key
                .as_ref()
                .unwrap()
                .expose_secret(),
            "sk-plain"
        );
        let eleven = &s.providers["eleven"];
        assert_eq!(eleven.kind, ProviderKind::Elevenlabs);
        assert_eq!(
            eleven.api_key.as_ref().unwrap().expose_secret(),
            "sk-secret"
        );
        assert_eq!(eleven.quota.max_concurrent, Some(4));
        assert_eq!(eleven.dialects[0].id(), "en-gb");
        assert!(!format!("{s:?}").contains("sk-secret"));
        // A file's array replaces the default one.
        assert_eq!(s.routes.len(), 1);
        assert!(s.routes[0].matches("en-gb") && !s.routes[0].matches("fr-fr"));
    }

    #[test]
    fn a_route_to_an_unknown_provider_is_refused_by_name() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "[[routes]]\ndialects = [\"*\"]\nchain = [\"nobody\"]").unwrap();
        let err = Settings::load(Some(file.path()), env(&[])).unwrap_err();
        assert!(err.to_string().contains("nobody"), "{err}");
    }

    #[test]
    fn env_example_lists_every_variable() {
        let example = include_str!("../../../.env.example");
        for (var, _) in Settings::env_reference() {
            assert!(
                example
                    .lines()
                    .any(|l| l.trim_start_matches("# ").starts_with(&format!("{var}="))),
                ".env.example lacks {var}"
            );
        }
    }

    #[test]
    fn the_admin_api_is_off_until_a_token_is_set() {
        let off = Settings::load(None, env(&[])).unwrap();
        assert!(off.admin.enabled_token().is_none());
        let on = Settings::load(None, env(&[("TTSQ_ADMIN_TOKEN", "t0ken-value")])).unwrap();
        assert_eq!(
            on.admin
                .enabled_token()
                .map(|t| t.expose_secret().to_owned()),
            Some("t0ken-value".to_owned())
        );
        assert!(!format!("{on:?}").contains("t0ken-value"));
    }

    #[test]
    fn bad_blocked_patterns_and_currencies_are_refused_by_name() {
        let err = Settings::load(
            None,
            env(&[("TTSQ_LIMITS_BLOCKED_PATTERNS", "ok,(unclosed")]),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("limits.blocked_patterns.1"),
            "{err}"
        );
        let err =
            Settings::load(None, env(&[("TTSQ_PROVIDERS_ESPEAK_CURRENCY", "usd")])).unwrap_err();
        assert!(
            err.to_string().contains("TTSQ_PROVIDERS_ESPEAK_CURRENCY"),
            "{err}"
        );
        let s = Settings::load(
            None,
            env(&[("TTSQ_LIMITS_BLOCKED_PATTERNS", "(?i)bad words")]),
        )
        .unwrap();
        assert_eq!(s.limits.blocked_patterns, ["(?i)bad words"]);
        assert_eq!(s.providers["espeak"].currency, "USD");
    }

    #[test]
    fn an_ipv4_mapped_allowlist_entry_is_the_ipv4_network_it_names() {
        let s = Settings::load(
            None,
            env(&[(
                "TTSQ_WEBHOOKS_ALLOW_PRIVATE",
                "::ffff:10.1.2.0/120,::ffff:127.0.0.1",
            )]),
        )
        .unwrap();
        assert_eq!(
            s.webhooks.allowed_networks().unwrap(),
            [
                ("10.1.2.0".parse().unwrap(), 24),
                ("127.0.0.1".parse().unwrap(), 32)
            ]
        );
    }

    #[test]
    fn an_ipv4_mapped_prefix_wider_than_the_mapped_range_is_refused_by_name() {
        for raw in ["::ffff:0.0.0.0/64", "::ffff:10.0.0.0/95"] {
            let err =
                Settings::load(None, env(&[("TTSQ_WEBHOOKS_ALLOW_PRIVATE", raw)])).unwrap_err();
            assert!(
                err.to_string().contains("TTSQ_WEBHOOKS_ALLOW_PRIVATE"),
                "{raw}: {err}"
            );
        }
    }

    #[test]
    fn batch_join_settings_s3_cannot_honour_are_refused_by_name() {
        for (var, value) in [
            ("TTSQ_BATCHES_JOIN_PART_BYTES", "1048576"),
            ("TTSQ_BATCHES_MAX_JOINED_BYTES", "0"),
            ("TTSQ_BATCHES_MAX_JOINED_BYTES", "52428800000000"),
            ("TTSQ_BATCHES_JOIN_ATTEMPTS", "0"),
            ("TTSQ_BATCHES_MAX_JOINED_DURATION_SECS", "0"),
        ] {
            let err = Settings::load(None, env(&[(var, value)])).unwrap_err();
            assert!(err.to_string().contains(var), "{var}={value}: {err}");
        }
        let s = Settings::load(None, env(&[])).unwrap();
        // 1,000 characters at half speed, 60 ms each: two minutes.
        assert_eq!(s.batches.estimated_ms(1000, 0.5), 120_000.0);
    }

    #[test]
    fn the_local_s3_secret_is_the_default_one() {
        let s = Settings::load(None, env(&[])).unwrap();
        assert_eq!(s.s3.secret_access_key.expose_secret(), LOCAL_S3_SECRET);
    }

    #[test]
    fn the_published_s3_secret_is_refused_for_a_server_off_this_machine() {
        for endpoint in [
            "https://s3.example.com",
            "http://10.0.0.5:8014",
            "http://s3:8014",
            "http://127.0.0.1.example.com:8014",
        ] {
            let err = Settings::load(None, env(&[("TTSQ_S3_ENDPOINT", endpoint)])).unwrap_err();
            assert!(
                err.to_string().contains("TTSQ_S3_SECRET_ACCESS_KEY"),
                "{endpoint}: {err}"
            );
            Settings::load(
                None,
                env(&[
                    ("TTSQ_S3_ENDPOINT", endpoint),
                    ("TTSQ_S3_SECRET_ACCESS_KEY", "a-secret-of-our-own"),
                ]),
            )
            .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
        }
        for endpoint in [
            "http://127.0.0.1:8014",
            "http://localhost:8014/",
            "http://[::1]:8014",
            "https://127.8.9.10",
        ] {
            Settings::load(None, env(&[("TTSQ_S3_ENDPOINT", endpoint)]))
                .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
        }
    }

    #[test]
    fn glob_patterns_match_whole_ids() {
        assert!(glob_match("*", "yue"));
        assert!(glob_match("en-*", "en-gb-scotland"));
        assert!(!glob_match("en-*", "fr-fr"));
        assert!(glob_match("*-419", "es-419"));
        assert!(glob_match("cmn", "cmn"));
        assert!(!glob_match("cmn", "cmn-x"));
    }

    #[test]
    fn env_reference_lists_every_scalar_setting() {
        let vars: Vec<_> = Settings::env_reference()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert!(vars.contains(&"TTSQ_DATABASE_URL".to_owned()));
        assert!(vars.contains(&"TTSQ_S3_SECRET_ACCESS_KEY".to_owned()));
        assert!(vars.contains(&"TTSQ_WORKER_BATCH_WINDOW_MS".to_owned()));
        for var in &vars {
            let (_, default) = Settings::env_reference()
                .into_iter()
                .find(|(k, _)| k == var)
                .unwrap();
            Settings::load(None, env(&[(var, &default)])).unwrap_or_else(|e| panic!("{var}: {e}"));
        }
    }
}
