//! What the broker needs to know of a message type to carry it: its wire
//! form, its headers and the queues it travels through.

use std::time::Duration;

use lapin::types::FieldTable;
use ttsq_core::{JobMessage, MessageDecodeError};

use crate::{amqp::long_string, names::QueueNames};

/// A message type with a queue of its own: [`JobMessage`] on the job queue,
/// [`WebhookMessage`](crate::webhooks::WebhookMessage) on the webhook
/// queue. [`Consumer`](crate::Consumer), [`Delivery`](crate::Delivery) and
/// [`Publisher::publish`](crate::Publisher::publish) are generic over it.
pub trait QueueMessage: Sized {
    /// Why a body is not a message of this type.
    type DecodeError;

    /// Whether the queue dead-letters a rejected message into the DLQ by
    /// itself (a broker dead-letter exchange). When it does, a delivery
    /// whose copy to the DLQ failed can still be rejected into it; when it
    /// does not, a reject would lose the message.
    const BROKER_DEAD_LETTERS: bool;

    /// The message a body carries.
    fn decode(body: &[u8]) -> Result<Self, Self::DecodeError>;

    /// The body to publish.
    fn encode(&self) -> Vec<u8>;

    /// AMQP headers published with the message.
    fn headers(&self) -> FieldTable {
        FieldTable::default()
    }

    /// The queue consumed for this type, among `names`.
    fn queue(names: &QueueNames) -> &str;

    /// The retry delay queues of this type, shortest first, among `names`:
    /// each dead-letters back into [`Self::queue`].
    fn delay_queues(names: &QueueNames) -> &[(Duration, String)];
}

impl QueueMessage for JobMessage {
    type DecodeError = MessageDecodeError;

    // The job queue dead-letters into the DLQ past its delivery limit and on
    // a reject.
    const BROKER_DEAD_LETTERS: bool = true;

    fn decode(body: &[u8]) -> Result<Self, MessageDecodeError> {
        JobMessage::decode(body)
    }

    fn encode(&self) -> Vec<u8> {
        JobMessage::encode(self)
    }

    /// The submitting request's trace context, so the worker's spans join it.
    fn headers(&self) -> FieldTable {
        let mut headers = FieldTable::default();
        if let Some(traceparent) = &self.traceparent {
            headers.insert("traceparent".into(), long_string(traceparent));
        }
        headers
    }

    fn queue(names: &QueueNames) -> &str {
        &names.jobs
    }

    fn delay_queues(names: &QueueNames) -> &[(Duration, String)] {
        &names.delays
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::webhooks::WebhookMessage;

    #[test]
    fn a_job_round_trips_and_carries_its_trace_context_in_a_header() {
        let mut job = JobMessage::new(Uuid::new_v4(), Uuid::new_v4(), "en-gb");
        job.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());

        let decoded = <JobMessage as QueueMessage>::decode(&QueueMessage::encode(&job));
        let headers = QueueMessage::headers(&job);

        assert_eq!(decoded.ok(), Some(job.clone()));
        assert_eq!(
            headers.inner().get("traceparent"),
            Some(&long_string(job.traceparent.as_deref().unwrap_or_default()))
        );
    }

    #[test]
    fn a_webhook_message_round_trips_without_headers() {
        let message = WebhookMessage {
            delivery_id: Uuid::new_v4(),
            attempt: 3,
        };

        let decoded = WebhookMessage::decode(&message.encode());

        assert_eq!(decoded.ok(), Some(message.clone()));
        assert!(message.headers().inner().is_empty());
    }
}
