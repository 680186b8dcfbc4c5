//! The message headers ttsq reads and writes, and readers of header values
//! whatever AMQP type the sender chose.

use lapin::{BasicProperties, types::AMQPValue};

/// Header naming why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-ttsq-reason";

/// Header quorum queues set on a redelivery: earlier unsuccessful deliveries.
pub(crate) const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

fn header(properties: &BasicProperties, name: &str) -> Option<AMQPValue> {
    properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name).cloned())
}

pub(crate) fn header_str(properties: &BasicProperties, name: &str) -> Option<String> {
    match header(properties, name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

pub(crate) fn header_u64(properties: &BasicProperties, name: &str) -> Option<u64> {
    match header(properties, name)? {
        AMQPValue::ShortShortUInt(n) => Some(n.into()),
        AMQPValue::ShortUInt(n) => Some(n.into()),
        AMQPValue::LongUInt(n) => Some(n.into()),
        AMQPValue::ShortShortInt(n) => u64::try_from(n).ok(),
        AMQPValue::ShortInt(n) => u64::try_from(n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(n).ok(),
        AMQPValue::LongLongInt(n) => u64::try_from(n).ok(),
        _ => None,
    }
}
