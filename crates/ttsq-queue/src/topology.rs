//! ttsq's queues and their arguments, declared the same way every time so
//! replicas of any age agree (RabbitMQ refuses a redeclare with other
//! arguments).

use lapin::{
    Channel,
    options::QueueDeclareOptions,
    types::{AMQPValue, FieldTable},
};

use crate::{amqp::long_string, error::QueueError, names::QueueNames};

/// Redeliveries (a worker dying mid-delivery every time) after which the
/// broker drops a webhook message; the delivery row keeps its last state.
const WEBHOOK_DELIVERY_LIMIT: u32 = 10;

/// Declares every queue of `names` on `channel`; `delivery_limit` is the
/// quorum `x-delivery-limit` of the job queue.
pub(crate) async fn declare(
    channel: &Channel,
    names: &QueueNames,
    delivery_limit: u32,
) -> Result<(), QueueError> {
    let mut dlq_args = FieldTable::default();
    dlq_args.insert("x-queue-type".into(), long_string("quorum"));
    channel
        .queue_declare(names.dlq.as_str().into(), durable(), dlq_args)
        .await?;

    let mut args = quorum_dead_lettering_to(&names.dlq);
    // After this many redeliveries (a worker crashing on the message every
    // time) the broker dead-letters it instead of looping forever.
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongUInt(delivery_limit),
    );
    channel
        .queue_declare(names.jobs.as_str().into(), durable(), args)
        .await?;

    declare_delay_queues(channel, &names.delays, &names.jobs).await?;
    declare_webhooks(channel, names).await
}

/// Declares the webhook queue and its delay queues on `channel`.
async fn declare_webhooks(channel: &Channel, names: &QueueNames) -> Result<(), QueueError> {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_string("quorum"));
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongUInt(WEBHOOK_DELIVERY_LIMIT),
    );
    channel
        .queue_declare(names.webhooks.as_str().into(), durable(), args)
        .await?;
    declare_delay_queues(channel, &names.webhook_delays, &names.webhooks).await
}

/// Declares one delay queue per `(delay, name)`, each dead-lettering into
/// `target`. Nobody consumes a delay queue: every message waits out the
/// queue's TTL and goes back to `target`. One queue per delay keeps expiry
/// in order (expired messages only leave from the head).
async fn declare_delay_queues(
    channel: &Channel,
    delays: &[(std::time::Duration, String)],
    target: &str,
) -> Result<(), QueueError> {
    for (delay, name) in delays {
        let mut args = quorum_dead_lettering_to(target);
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
        );
        channel
            .queue_declare(name.as_str().into(), durable(), args)
            .await?;
    }
    Ok(())
}

/// Options of every ttsq queue: durable, so it survives a broker restart.
fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Quorum queue arguments that dead-letter, losing nothing, into `target`
/// through the default exchange.
fn quorum_dead_lettering_to(target: &str) -> FieldTable {
    let mut args = FieldTable::default();
    // Quorum queues replicate and fsync every message: nothing accepted is
    // lost when a broker node dies, and they count deliveries.
    args.insert("x-queue-type".into(), long_string("quorum"));
    args.insert("x-dead-letter-exchange".into(), long_string(""));
    args.insert("x-dead-letter-routing-key".into(), long_string(target));
    // At-least-once dead-lettering keeps a message until the target confirms
    // it; it requires reject-publish overflow.
    args.insert(
        "x-dead-letter-strategy".into(),
        long_string("at-least-once"),
    );
    args.insert("x-overflow".into(), long_string("reject-publish"));
    args
}
