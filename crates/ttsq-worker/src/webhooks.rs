//! Signed webhooks: the SSRF guard, signing, and the delivery service.
//!
//! - [`TargetGuard`]: a target must resolve only to public addresses
//!   (loopback, private, link-local, shared, unspecified, multicast and
//!   other internal ranges are refused, IPv4 and IPv6, unless allowlisted in
//!   `webhooks.allow_private`). Checked at submit and again at every
//!   attempt, which then connects to the addresses just checked (no second
//!   DNS lookup) and follows no redirects.
//! - [`tenant_secret`] / [`signature_header`]: each tenant's secret is
//!   derived from the deployment's signing key, the tenant id and a version
//!   (so no secret is stored); rotating bumps the version, and during the
//!   grace period both secrets sign: `ttsq-signature: t=<unix>,v1=<hex>,v1=<hex>`,
//!   each `v1` the HMAC-SHA256 of `{t}.{body}`.
//! - [`run`]: relays pending events to `ttsq.webhooks`, consumes it, POSTs,
//!   logs every attempt and retries failures through the delay queues with
//!   growing back-off; it also sweeps batches waiting for joined audio.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::task::JoinSet;
use ttsq_audio::AudioStore;
use ttsq_queue::{
    Broker,
    webhooks::{WebhookDelivery as QueuedDelivery, WebhookMessage},
};
use ttsq_store::{AttemptOutcome, Store, TaskRow, WebhookDelivery};
use uuid::Uuid;

/// How often pending events are relayed and joins swept.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// Most batches one sweep joins; the rest wait for the next sweep.
const JOINS_PER_SWEEP: usize = 16;

/// Most bytes of a receiver's answer kept in the log.
const ERROR_SNIPPET: usize = 200;

/// Most bytes of a receiver's answer read at all: the rest is never taken
/// off the socket (the connection is dropped), so an answer of any size
/// costs a worker this much memory and no more.
const MAX_ANSWER_READ: usize = 4 * 1024;

/// Why a webhook target is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetRefused {
    /// Not an absolute http(s) URL with a host.
    #[error("must be an absolute http(s) URL")]
    Malformed,
    /// The host does not resolve.
    #[error("host `{0}` does not resolve")]
    Unresolvable(String),
    /// The host resolves to an internal address.
    #[error(
        "resolves to {0}, a loopback, private, link-local or otherwise internal address; webhooks only go to public addresses"
    )]
    Internal(IpAddr),
}

/// Decides which webhook targets may be called.
#[derive(Debug, Clone, Default)]
pub struct TargetGuard {
    allow: Vec<(IpAddr, u8)>,
}

/// A target that passed the guard, with the addresses checked.
#[derive(Debug, Clone)]
pub struct CheckedTarget {
    /// The URL.
    pub url: reqwest::Url,
    /// Host name, when not an IP literal.
    pub domain: Option<String>,
    /// Addresses it resolved to, all allowed.
    pub addrs: Vec<SocketAddr>,
}

impl TargetGuard {
    /// A guard allowing the internal networks in `allow` (address, prefix).
    pub fn new(allow: Vec<(IpAddr, u8)>) -> Self {
        Self { allow }
    }

    /// Resolves `raw` and checks every address it resolves to.
    pub async fn check(&self, raw: &str) -> Result<CheckedTarget, TargetRefused> {
        let url = reqwest::Url::parse(raw).map_err(|_| TargetRefused::Malformed)?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(TargetRefused::Malformed);
        }
        let host = url.host_str().ok_or(TargetRefused::Malformed)?.to_owned();
        let port = url
            .port_or_known_default()
            .ok_or(TargetRefused::Malformed)?;
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        let (domain, addrs) = match literal.parse::<IpAddr>() {
            Ok(ip) => (None, vec![SocketAddr::new(ip, port)]),
            Err(_) => {
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
                    .await
                    .map_err(|_| TargetRefused::Unresolvable(host.clone()))?
                    .collect();
                (Some(host.clone()), addrs)
            }
        };
        if addrs.is_empty() {
            return Err(TargetRefused::Unresolvable(host));
        }
        for addr in &addrs {
            let ip = addr.ip().to_canonical();
            if is_internal(ip) && !self.allow.iter().any(|net| in_network(ip, *net)) {
                return Err(TargetRefused::Internal(ip));
            }
        }
        Ok(CheckedTarget { url, domain, addrs })
    }
}

/// Whether `ip` is not a public unicast address.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240 // reserved
}

fn internal_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    // NAT64 (64:ff9b::/96) and IPv4-compatible addresses embed an IPv4 one.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || (segments[..6] == [0; 6] && segments[6] != 0)
    {
        let [.., a, b, c, d] = ip.octets();
        return internal_v4(Ipv4Addr::new(a, b, c, d));
    }
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00 // unique local
        || (segments[0] & 0xffc0) == 0xfe80 // link-local
        || (segments[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
}

/// Whether `ip` lies in the network. A network that is not valid (a prefix
/// longer than its address, an IPv4-mapped one shorter than /96) contains
/// nothing: an allowlist entry never opens more than it names.
fn in_network(ip: IpAddr, (net, len): (IpAddr, u8)) -> bool {
    let Ok((net, len)) = ttsq_config::canonical_network(net, len) else {
        return false;
    };
    // `canonical_network` bounds `len` by the address width, so the
    // subtractions below cannot underflow; a /0 shifts by the full width.
    match (ip.to_canonical(), net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

type HmacSha256 = Hmac<Sha256>;

/// A tenant's signing secret of `version`, as shown to the tenant.
pub fn tenant_secret(signing_key: &SecretString, tenant_id: Uuid, version: i32) -> String {
    // HMAC takes keys of any length.
    let mut mac = HmacSha256::new_from_slice(signing_key.expose_secret().as_bytes())
        .expect("HMAC accepts any key length");
    mac.update(format!("ttsq-webhook-secret:{tenant_id}:{version}").as_bytes());
    format!("whsec_{}", hex::encode(mac.finalize().into_bytes()))
}

/// `t=<timestamp>,v1=<hex>[,v1=<hex>…]`: one signature per secret.
pub fn signature_header(secrets: &[String], timestamp: i64, body: &[u8]) -> String {
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        let mut mac =
            HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        header.push_str(",v1=");
        header.push_str(&hex::encode(mac.finalize().into_bytes()));
    }
    header
}

/// What the delivery service needs; cheap to clone.
#[derive(Clone)]
pub struct WebhookContext {
    /// Postgres.
    pub store: Store,
    /// RabbitMQ.
    pub broker: Arc<Broker>,
    /// S3, for audio links in payloads.
    pub audio: AudioStore,
    /// Joins the audio of batches that asked for it, on the sweeper.
    pub joiner: crate::batches::Joiner,
    /// Base URL of the API, for `status_url` links.
    pub public_url: Arc<str>,
    /// Signing key; `None`: webhooks are off (events stay pending).
    pub signing_key: Option<SecretString>,
    /// The SSRF guard.
    pub guard: TargetGuard,
    /// Longest one attempt may take.
    pub timeout: Duration,
    /// Deliveries at once.
    pub concurrency: u16,
    /// Most deliveries of one tenant published and not yet settled, fleet-wide.
    pub per_tenant_in_flight: u16,
    /// Consumer tag.
    pub name: String,
}

/// Runs the relay, the join sweeper and the delivery consumer until
/// `shutdown`; re-subscribes when the broker ends the consumer.
pub async fn run(context: WebhookContext, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let sweeper = {
        let context = context.clone();
        tokio::spawn(async move { sweep(&context).await })
    };
    let joins = {
        let joiner = context.joiner.clone();
        tokio::spawn(async move { join_batches(&joiner).await })
    };
    let mut backoff =
        ttsq_core::backoff::Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    let mut in_flight = JoinSet::new();
    'outer: loop {
        let consumer = if context.signing_key.is_some() {
            context
                .broker
                .consume_webhooks(context.concurrency, &context.name)
                .await
        } else {
            // Webhooks are off: nothing to deliver; wait for shutdown.
            (&mut shutdown).await;
            break;
        };
        let mut consumer = match consumer {
            Ok(consumer) => {
                backoff.reset();
                consumer
            }
            Err(err) => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %err, retry_in = ?wait, "subscribing to webhooks failed");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(wait) => continue,
                }
            }
        };
        loop {
            tokio::select! {
                () = &mut shutdown => {
                    consumer.close().await;
                    break 'outer;
                }
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let context = context.clone();
                        in_flight.spawn(async move { deliver(&context, delivery).await });
                    }
                    _ => {
                        tracing::warn!("webhook consumer ended; re-subscribing");
                        break;
                    }
                },
            }
        }
    }
    sweeper.abort();
    // A join cut short aborts its upload; its lease expires and another
    // replica takes the batch over (the cut take counts as an attempt).
    joins.abort();
    let _ = tokio::time::timeout(context.timeout, async {
        while in_flight.join_next().await.is_some() {}
    })
    .await;
}

/// Every [`SWEEP_EVERY`]: joins the audio of batches waiting for it. Apart
/// from the relay, so that a long join never holds back webhook events.
async fn join_batches(joiner: &crate::batches::Joiner) {
    let mut ticks = tokio::time::interval(SWEEP_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(err) = joiner.sweep(JOINS_PER_SWEEP).await {
            tracing::warn!(error = %err, "sweeping batches to join failed");
        }
    }
}

/// Every [`SWEEP_EVERY`]: publishes pending events.
async fn sweep(context: &WebhookContext) {
    let mut ticks = tokio::time::interval(SWEEP_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if context.signing_key.is_none() {
            continue;
        }
        // The broker's shared publishing channel, reopened if it was lost.
        let Ok(active) = context.broker.publisher().await else {
            continue;
        };
        let relayed = context
            .store
            .relay_webhooks(500, i64::from(context.per_tenant_in_flight), |event| {
                let active = active.clone();
                async move {
                    let message = WebhookMessage {
                        delivery_id: event.id,
                        attempt: u32::try_from(event.attempts).unwrap_or(0) + 1,
                    };
                    active
                        .publish_webhook(&message)
                        .await
                        .ok()
                        .map(|()| event.id)
                }
            })
            .await;
        if let Err(err) = relayed {
            tracing::warn!(error = %err, "relaying webhook events failed");
        }
    }
}

/// Makes one attempt and settles the message.
#[tracing::instrument(skip_all, fields(delivery_id, attempt))]
async fn deliver(context: &WebhookContext, queued: QueuedDelivery) {
    let Some(message) = queued.message() else {
        undecodable(context, &queued).await;
        return;
    };
    let span = tracing::Span::current();
    span.record("delivery_id", tracing::field::display(message.delivery_id));
    span.record("attempt", message.attempt);
    let event = match context.store.webhook_delivery(message.delivery_id).await {
        Ok(Some(event)) if event.status == "pending" => event,
        Ok(_) => {
            // Delivered or given up already (a duplicate message), or gone.
            let _ = queued.ack().await;
            return;
        }
        Err(err) => {
            tracing::warn!(error = %err, "reading a webhook event failed; requeueing");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = queued.requeue().await;
            return;
        }
    };
    let started = chrono::Utc::now();
    let attempt = i32::try_from(message.attempt).unwrap_or(i32::MAX);
    let result = attempt_once(context, &event).await;
    let max_attempts = context.broker.webhook_delays().len() + 1;
    let (code, error, outcome) = match result {
        Ok(code) if (200..300).contains(&code) => (Some(code), None, AttemptOutcome::Delivered),
        Ok(code) => (
            Some(code),
            Some(format!("the receiver answered {code}")),
            AttemptOutcome::Retrying,
        ),
        Err(AttemptError::Refused(reason)) => (
            None,
            Some(format!("target refused: {reason}")),
            AttemptOutcome::Failed,
        ),
        Err(AttemptError::Failed(reason)) => (None, Some(reason), AttemptOutcome::Retrying),
    };
    let outcome = if outcome == AttemptOutcome::Retrying && message.attempt as usize >= max_attempts
    {
        AttemptOutcome::Failed
    } else {
        outcome
    };
    if let Err(err) = context
        .store
        .record_webhook_attempt(&event, attempt, started, code, error.as_deref(), outcome)
        .await
    {
        tracing::warn!(error = %err, "logging a webhook attempt failed; it will be redelivered");
        let _ = queued.requeue().await;
        return;
    }
    match outcome {
        AttemptOutcome::Delivered => tracing::info!(status = code, "webhook delivered"),
        AttemptOutcome::Failed => tracing::warn!(error = error.as_deref(), "webhook given up"),
        AttemptOutcome::Retrying => {
            tracing::info!(
                error = error.as_deref(),
                "webhook attempt failed; retrying later"
            );
            let next = WebhookMessage {
                delivery_id: event.id,
                attempt: message.attempt + 1,
            };
            let delay_index = message.attempt.saturating_sub(1) as usize;
            if let Err(err) = queued.retry_later(&next, delay_index).await {
                tracing::warn!(error = %err, "queueing a webhook retry failed; the relay will");
                let _ = context.store.unpublish_webhook(event.id).await;
                let _ = queued.ack().await;
            }
            return;
        }
    }
    let _ = queued.ack().await;
}

/// Reason header of an undecodable webhook message in the dead-letter queue.
pub const MALFORMED_WEBHOOK: &str = "malformed-webhook";

/// Settles a message that is no [`WebhookMessage`]: the event it still
/// names, if pending, is failed (nothing else would ever settle it: its
/// message is out of the relay's hands), and the message goes to the
/// dead-letter queue for an operator to look at. Whatever cannot be done now
/// is requeued, to be tried again.
async fn undecodable(context: &WebhookContext, queued: &QueuedDelivery) {
    if let Some(id) = queued.named_delivery_id() {
        tracing::Span::current().record("delivery_id", tracing::field::display(id));
        let failed = match context.store.webhook_delivery(id).await {
            Ok(Some(event)) if event.status == "pending" => {
                let attempt = event.attempts.saturating_add(1);
                context
                    .store
                    .record_webhook_attempt(
                        &event,
                        attempt,
                        chrono::Utc::now(),
                        None,
                        Some("its queue message could not be decoded (dead-lettered); replay the event to send it again"),
                        AttemptOutcome::Failed,
                    )
                    .await
            }
            Ok(_) => Ok(()),
            Err(err) => Err(err),
        };
        if let Err(err) = failed {
            tracing::warn!(error = %err, "failing the event of an undecodable webhook message failed; requeueing");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = queued.requeue().await;
            return;
        }
    }
    match queued.dead_letter(MALFORMED_WEBHOOK).await {
        Ok(()) => tracing::warn!("undecodable webhook message dead-lettered"),
        Err(err) => {
            tracing::warn!(error = %err, "dead-lettering an undecodable webhook message failed; requeueing");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = queued.requeue().await;
        }
    }
}

enum AttemptError {
    /// The target may not be called.
    Refused(TargetRefused),
    /// The call failed (connection, timeout, payload).
    Failed(String),
}

/// Checks the target, builds, signs and POSTs the payload; the status code.
async fn attempt_once(
    context: &WebhookContext,
    event: &WebhookDelivery,
) -> Result<u16, AttemptError> {
    let target = context
        .guard
        .check(&event.target_url)
        .await
        .map_err(AttemptError::Refused)?;
    let data = payload(context, event)
        .await
        .map_err(|e| AttemptError::Failed(format!("building the payload failed: {e}")))?;
    let body = serde_json::to_vec(&json!({
        "id": event.id,
        "type": event.event,
        "created_at": chrono::Utc::now(),
        "data": data,
    }))
    .map_err(|e| AttemptError::Failed(e.to_string()))?;
    let secrets = secrets(context, event.tenant_id)
        .await
        .map_err(|e| AttemptError::Failed(e.to_string()))?;
    let timestamp = chrono::Utc::now().timestamp();
    let signature = signature_header(&secrets, timestamp, &body);

    let mut client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(context.timeout);
    if let Some(domain) = &target.domain {
        // Connect to the addresses the guard checked, not a second lookup's.
        client = client.resolve_to_addrs(domain, &target.addrs);
    }
    let client = client
        .build()
        .map_err(|e| AttemptError::Failed(e.to_string()))?;
    let response = client
        .post(target.url)
        .header("content-type", "application/json")
        .header("user-agent", "ttsq-webhooks/1")
        .header("ttsq-webhook-id", event.id.to_string())
        .header("ttsq-event", &event.event)
        .header("ttsq-signature", signature)
        .body(body)
        .send()
        .await
        .map_err(|e| AttemptError::Failed(format!("request failed: {}", without_url(&e))))?;
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        let answer = read_prefix(response, MAX_ANSWER_READ).await;
        let text = String::from_utf8_lossy(&answer);
        tracing::debug!(status, body = %text.chars().take(ERROR_SNIPPET).collect::<String>(), "receiver refused");
    }
    Ok(status)
}

/// The first `limit` bytes of `response`'s body (fewer if it is shorter or
/// breaks off); the rest is left unread and dropped with the response.
async fn read_prefix(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    while kept.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - kept.len();
                kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    kept
}

/// A reqwest error's description without the URL (which may carry tokens).
fn without_url(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else {
        "transport error"
    };
    kind.to_owned()
}

/// The secrets that sign a tenant's events now: current first, then the
/// previous one during its grace period.
pub async fn secrets(
    context: &WebhookContext,
    tenant_id: Uuid,
) -> Result<Vec<String>, ttsq_store::StoreError> {
    let Some(key) = &context.signing_key else {
        return Ok(Vec::new());
    };
    let settings = context.store.tenant_webhook(tenant_id).await?;
    let mut secrets = vec![tenant_secret(key, tenant_id, settings.secret_version)];
    if let Some(previous) = settings.previous_version {
        secrets.push(tenant_secret(key, tenant_id, previous));
    }
    Ok(secrets)
}

/// The event's data: the task's or the batch's view as it is now.
async fn payload(context: &WebhookContext, event: &WebhookDelivery) -> Result<Value, String> {
    if let Some(batch_id) = event.batch_id {
        let batch = context
            .store
            .get_batch(event.tenant_id, batch_id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the batch no longer exists")?;
        return crate::batches::batch_summary(
            &context.store,
            &context.audio,
            &context.public_url,
            &batch,
        )
        .await
        .map_err(|e| e.to_string());
    }
    let task_id = event.task_id.ok_or("the event names no task")?;
    let row = context
        .store
        .get_task(event.tenant_id, task_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the task no longer exists")?;
    task_view(context, row).await
}

/// A task as `GET /v1/tts/jobs/{id}` shows it.
async fn task_view(context: &WebhookContext, row: TaskRow) -> Result<Value, String> {
    let status = row.status();
    let audio_url = match (&row.s3_key, status) {
        (Some(key), ttsq_core::TaskStatus::Succeeded) => Some(
            context
                .audio
                .presign_get(key)
                .await
                .map_err(|e| e.to_string())?,
        ),
        _ => None,
    };
    let error = row.error_code.as_ref().map(
        |code| json!({"code": code, "message": row.error_message.clone().unwrap_or_default()}),
    );
    Ok(json!({
        "task_id": row.id,
        "status": status,
        "priority": row.priority,
        "dialect": row.dialect,
        "voice": row.voice,
        "format": row.format,
        "characters": row.characters,
        "cache_hit": row.cache_hit,
        "audio_url": audio_url,
        "audio_sha256": row.audio_sha256,
        "audio_bytes": row.audio_bytes,
        "duration_ms": row.duration_ms,
        "error": error,
        "attempts": row.attempts,
        "metadata": row.metadata,
        "status_url": format!("{}/v1/tts/jobs/{}", context.public_url, row.id),
        "created_at": row.created_at,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip} should be internal");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip} should be public");
        }
    }

    #[test]
    fn allowlisted_networks_match_by_prefix() {
        let net = ("127.0.0.0".parse().unwrap(), 8);
        assert!(in_network("127.1.2.3".parse().unwrap(), net));
        assert!(!in_network("128.0.0.1".parse().unwrap(), net));
        let v6 = ("::1".parse().unwrap(), 128);
        assert!(in_network("::1".parse().unwrap(), v6));
        assert!(!in_network("::2".parse().unwrap(), v6));
        assert!(in_network(
            "10.0.0.1".parse().unwrap(),
            ("0.0.0.0".parse().unwrap(), 0)
        ));
    }

    #[tokio::test]
    async fn an_ipv4_mapped_allowlist_entry_opens_only_its_own_network() {
        let net = ttsq_config::parse_cidr("::ffff:10.1.2.0/120").unwrap();
        let guard = TargetGuard::new(vec![net]);
        assert!(guard.check("http://10.1.2.7/h").await.is_ok());
        for url in [
            "http://169.254.169.254/latest",
            "http://10.1.3.1/h",
            "http://127.0.0.1/h",
        ] {
            assert!(
                matches!(guard.check(url).await, Err(TargetRefused::Internal(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn a_network_given_unparsed_never_panics_nor_widens() {
        let metadata: IpAddr = "169.254.169.254".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.1.2.0".parse().unwrap();
        assert!(in_network("10.1.2.9".parse().unwrap(), (mapped, 120)));
        assert!(!in_network(metadata, (mapped, 120)));
        assert!(!in_network(metadata, (mapped, 64)));
        assert!(!in_network(metadata, ("10.0.0.0".parse().unwrap(), 200)));
        assert!(!in_network(
            "fd00::1".parse().unwrap(),
            ("fd00::".parse().unwrap(), 200)
        ));
    }

    #[test]
    fn signatures_cover_timestamp_and_body_with_every_secret() {
        let header = signature_header(&["a".into(), "b".into()], 1_700_000_000, b"{}");
        let parts: Vec<&str> = header.split(',').collect();
        assert_eq!(parts[0], "t=1700000000");
        assert_eq!(parts.len(), 3);
        let mut mac = HmacSha256::new_from_slice(b"a").unwrap();
        mac.update(b"1700000000.{}");
        assert_eq!(
            parts[1],
            format!("v1={}", hex::encode(mac.finalize().into_bytes()))
        );
        assert_ne!(parts[1], parts[2]);
    }

    #[test]
    fn tenant_secrets_differ_by_version_and_tenant() {
        let key = SecretString::from("k");
        let t = Uuid::nil();
        assert_ne!(tenant_secret(&key, t, 1), tenant_secret(&key, t, 2));
        assert_ne!(
            tenant_secret(&key, t, 1),
            tenant_secret(&key, Uuid::max(), 1)
        );
        assert!(tenant_secret(&key, t, 1).starts_with("whsec_"));
    }

    #[tokio::test]
    async fn the_guard_refuses_internal_literals_unless_allowlisted() {
        let guard = TargetGuard::default();
        for url in [
            "http://10.0.0.1/h",
            "http://169.254.169.254/latest",
            "http://[::1]:8080/h",
        ] {
            assert!(
                matches!(guard.check(url).await, Err(TargetRefused::Internal(_))),
                "{url}"
            );
        }
        assert_eq!(
            guard.check("ftp://x/").await.unwrap_err(),
            TargetRefused::Malformed
        );
        let open = TargetGuard::new(vec![("::1".parse().unwrap(), 128)]);
        assert!(open.check("http://[::1]:8080/h").await.is_ok());
    }
}
