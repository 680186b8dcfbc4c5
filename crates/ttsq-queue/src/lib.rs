#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`Broker`]: the shared, self-healing connection. lapin does not
//!   reconnect by itself; the broker replaces a dead connection on demand
//!   (single-flight), re-declares the topology on every new one, and
//!   [`Broker::supervise`] keeps trying in the background so `/ready` and
//!   publishers recover without a request having to wait.
//! - [`Publisher`]: confirmed publishes over a cached channel, reopened after
//!   a loss.
//! - [`QueueMessage`]: what a message type tells the broker — its wire
//!   form, headers, queue and delay queues; implemented for
//!   [`JobMessage`](ttsq_core::JobMessage) and [`webhooks::WebhookMessage`].
//! - [`Consumer`] / [`Delivery`]: manual-ack consumption of one message
//!   type's queue; a consumer ends when its channel or connection dies and
//!   the caller re-subscribes ([`Broker::subscribe_with_backoff`]).
//! - [`dlq`]: operator access to the dead-letter queue.
//! - [`webhooks`]: the webhook delivery queue and its delay queues.
//!
//! Internally, `topology` declares every queue, `amqp` holds the confirmed
//! publish, and `headers` the header names and readers.

mod amqp;
mod broker;
mod consumer;
pub mod dlq;
mod error;
mod headers;
mod message;
mod names;
mod publisher;
mod topology;
pub mod webhooks;

pub use crate::{
    broker::Broker,
    consumer::{Consumer, Delivery, JobConsumer, JobDelivery},
    error::QueueError,
    headers::REASON_HEADER,
    message::QueueMessage,
    names::QueueNames,
    publisher::Publisher,
};
