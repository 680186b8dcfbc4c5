//! A task to create and what it is expected to cost: what submissions,
//! batches, admission and the audit log all take, so it lives apart from
//! the queries of any of them.

use ttsq_core::Job;
use uuid::Uuid;

/// A task to create.
#[derive(Debug, Clone, Copy)]
pub struct NewTask<'a> {
    /// Id to give it.
    pub id: Uuid,
    /// Owner.
    pub tenant_id: Uuid,
    /// The validated job.
    pub job: &'a Job,
    /// Client's `Idempotency-Key`, if sent.
    pub idempotency_key: Option<&'a str>,
    /// Visible prefix of the API key that submitted it, for ledger and audit.
    pub key_prefix: Option<&'a str>,
    /// What it is expected to cost, reserved against the tenant's monthly
    /// budget while it is queued or processing; `None`: nothing to reserve
    /// (a cache hit, or a route without a price).
    pub estimate: Option<CostEstimate<'a>>,
    /// W3C `traceparent` of the submitting request, carried by the message
    /// the dispatcher publishes later.
    pub traceparent: Option<&'a str>,
}

/// What a task is expected to cost: its characters at the price of the
/// first provider of its dialect's route, in that provider's currency.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostEstimate<'a> {
    /// The amount.
    pub cost: f64,
    /// ISO 4217 code of the amount.
    pub currency: &'a str,
}
