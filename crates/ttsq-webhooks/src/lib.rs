//! Signed webhooks: the SSRF guard, signing, and the delivery service.
//!
//! - [`TargetGuard`]: a target must resolve only to public addresses
//!   (loopback, private, link-local, shared, unspecified, multicast and
//!   other internal ranges are refused, IPv4 and IPv6, unless allowlisted in
//!   `webhooks.allow_private`). Checked at submit and again at every
//!   attempt, which then connects to the addresses just checked (no second
//!   DNS lookup) and follows no redirects.
//! - [`TenantSecret`] / [`signature_header`]: Standard Webhooks signatures
//!   (<https://www.standardwebhooks.com>), so any of its libraries verifies
//!   a delivery. Each tenant's secret is derived from the deployment's
//!   signing key, the tenant id and a version (so no secret is stored) and
//!   shown as `whsec_<base64 of the key>`. A delivery carries `webhook-id`
//!   (the event's id, the same at every attempt), `webhook-timestamp` (the
//!   attempt's unix seconds) and `webhook-signature: v1,<base64>`, the
//!   HMAC-SHA256 of `{id}.{timestamp}.{body}`; rotating bumps the version,
//!   and during the grace period both secrets sign, space-separated.
//! - [`run`]: relays pending events to `ttsq.webhooks`, consumes it, POSTs
//!   the task's or batch's view (the same `ttsq-views` the API answers
//!   with), logs every attempt and retries failures through the delay
//!   queues with growing back-off.
//!
//! It does not own the events' rows and attempt log (`ttsq-store`), the
//! queues (`ttsq-queue`), the views (`ttsq-views`), or joining a batch's
//! audio before its `batch.completed` event (`ttsq-worker`).

mod delivery;
mod guard;
mod signing;
mod trace;

pub use delivery::{MALFORMED_WEBHOOK, WebhookContext, run};
pub use guard::{CheckedTarget, TargetGuard, TargetRefused, is_internal};
pub use signing::{TenantSecret, secrets, signature_header, tenant_secret};
