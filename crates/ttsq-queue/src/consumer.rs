//! Manual-ack consumption of one message type's queue: a [`Consumer`] hands
//! out [`Delivery`]s, each settled exactly once — acknowledged, requeued,
//! retried later through a delay queue, or dead-lettered with a reason.

use std::{future::Future, marker::PhantomData, pin::Pin};

use futures::StreamExt;
use lapin::{
    Channel,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
        BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
    },
    types::FieldTable,
};
use ttsq_core::{JobMessage, backoff::Backoff};

use crate::{
    amqp::{long_string, publish_confirmed},
    broker::Broker,
    error::QueueError,
    headers::{DELIVERY_COUNT_HEADER, REASON_HEADER, header_str, header_u64},
    message::QueueMessage,
    names::QueueNames,
};

/// A consumer of the job queue.
pub type JobConsumer = Consumer<JobMessage>;

/// One delivered job message.
pub type JobDelivery = Delivery<JobMessage>;

impl Broker {
    /// A consumer of the job queue: [`Self::subscribe`] for [`JobMessage`].
    pub async fn consume(&self, prefetch: u16, tag: &str) -> Result<JobConsumer, QueueError> {
        self.subscribe(prefetch, tag).await
    }

    /// A consumer of `M`'s queue holding at most `prefetch` unacknowledged
    /// deliveries (per-consumer QoS: quorum queues refuse global QoS). Its
    /// deliveries are settled on a side channel of its own: retries and dead
    /// letters are published there, with confirms, tied to the consumer's
    /// connection.
    pub async fn subscribe<M: QueueMessage>(
        &self,
        prefetch: u16,
        tag: &str,
    ) -> Result<Consumer<M>, QueueError> {
        let channel = self.channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions { global: false })
            .await?;
        let consumer = channel
            .basic_consume(
                M::queue(self.names()).into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let side = self.channel().await?;
        side.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Consumer {
            channel,
            tag: tag.into(),
            consumer,
            side: SideChannel {
                channel: side,
                names: self.names().clone(),
            },
            message: PhantomData,
        })
    }

    /// [`Self::subscribe`], retried after each failure with `backoff` (reset
    /// on success) until it works, or `None` once `shutdown` resolves. The
    /// long-running consumers use it to come back after the broker ended
    /// their consumer (connection lost, broker restart, queue deleted).
    pub async fn subscribe_with_backoff<M: QueueMessage>(
        &self,
        prefetch: u16,
        tag: &str,
        backoff: &mut Backoff,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Option<Consumer<M>> {
        loop {
            match self.subscribe(prefetch, tag).await {
                Ok(consumer) => {
                    backoff.reset();
                    return Some(consumer);
                }
                Err(err) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(
                        error = %err,
                        queue = M::queue(self.names()),
                        retry_in = ?wait,
                        "subscribing failed"
                    );
                    tokio::select! {
                        () = shutdown.as_mut() => return None,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }
}

/// A consumer's own confirmed publishing channel, for retries and dead letters.
#[derive(Clone)]
struct SideChannel {
    /// Confirms enabled; closed with the consumer.
    channel: Channel,
    /// Where retries and dead letters go.
    names: QueueNames,
}

/// A stream of deliveries of `M` with manual acknowledgement. It ends when
/// its channel or connection dies; the caller re-subscribes.
pub struct Consumer<M> {
    /// The channel consuming the queue; its deliveries are acknowledged on it.
    channel: Channel,
    /// Consumer tag, for cancelling.
    tag: String,
    /// The delivery stream.
    consumer: lapin::Consumer,
    /// Where retries and dead letters are published.
    side: SideChannel,
    /// The message type; `fn() -> M` keeps the consumer `Send` whatever `M`.
    message: PhantomData<fn() -> M>,
}

impl<M: QueueMessage> Consumer<M> {
    /// The next delivery; `None` when the consumer was cancelled or the
    /// channel or connection closed (the caller re-subscribes).
    pub async fn next(&mut self) -> Option<Result<Delivery<M>, QueueError>> {
        let next = self.consumer.next().await?;
        Some(next.map_err(QueueError::from).map(|inner| Delivery {
            inner,
            side: self.side.clone(),
            message: PhantomData,
        }))
    }

    /// Whether the consuming channel is still open.
    pub fn is_connected(&self) -> bool {
        self.channel.status().connected()
    }

    /// Asks the broker to stop sending; deliveries already sent still arrive
    /// and must be settled. Unsettled ones return to the queue when the channel closes.
    pub async fn cancel(&self) -> Result<(), QueueError> {
        self.channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
            .await?;
        Ok(())
    }

    /// Closes the channels; unacknowledged deliveries are redelivered to others.
    pub async fn close(&self) {
        for channel in [&self.channel, &self.side.channel] {
            if channel.status().connected()
                && let Err(err) = channel.close(200, "consumer closed".into()).await
            {
                tracing::debug!(error = %err, "closing a consumer channel");
            }
        }
    }
}

/// One delivered message of `M`'s queue, to be settled exactly once.
pub struct Delivery<M> {
    /// The delivery as lapin hands it over; settled through it.
    inner: lapin::message::Delivery,
    /// The consumer's side channel, for retries and dead letters.
    side: SideChannel,
    /// The message type; `fn() -> M` keeps the delivery `Send` whatever `M`.
    message: PhantomData<fn() -> M>,
}

impl<M: QueueMessage> Delivery<M> {
    /// The body as it arrived.
    pub(crate) fn body(&self) -> &[u8] {
        &self.inner.data
    }

    /// Decodes the body.
    pub fn decode(&self) -> Result<M, M::DecodeError> {
        M::decode(self.body())
    }

    /// Whether the broker delivered it before (a consumer died holding it).
    pub fn redelivered(&self) -> bool {
        self.inner.redelivered
    }

    /// Earlier unsuccessful deliveries of this message (requeues, consumers
    /// that died holding it). When it reaches the queue's delivery limit
    /// ([`Broker::delivery_limit`] for jobs) this delivery is the last before
    /// the broker gives up on the message.
    pub fn delivery_count(&self) -> u64 {
        header_u64(&self.inner.properties, DELIVERY_COUNT_HEADER).unwrap_or(0)
    }

    /// W3C trace context of the request behind the message, if any.
    pub fn traceparent(&self) -> Option<String> {
        header_str(&self.inner.properties, "traceparent")
    }

    /// Done: the broker forgets the message.
    pub async fn ack(&self) -> Result<(), QueueError> {
        self.inner.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    /// Not done: the broker delivers it again at once (counting toward the
    /// delivery limit). For a later retry use [`Self::retry_later`].
    pub async fn requeue(&self) -> Result<(), QueueError> {
        self.inner
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await?;
        Ok(())
    }

    /// Retry after a back-off: publishes `next` (the message for the next
    /// attempt) to the delay queue for `delay_index` (clamped to the longest;
    /// straight to the queue when there is none), whence it returns to the
    /// queue when its delay is over, then acknowledges this delivery. On
    /// error nothing was acknowledged.
    pub async fn retry_later(&self, next: &M, delay_index: usize) -> Result<(), QueueError> {
        let target = retry_queue::<M>(&self.side.names, delay_index);
        publish_confirmed(&self.side.channel, target, &next.encode(), next.headers()).await?;
        self.ack().await
    }

    /// Never processable: a copy goes to the dead-letter queue with `reason`
    /// in a header, then this delivery is acknowledged.
    ///
    /// Should the copy fail, what happens depends on the queue. One that
    /// dead-letters by itself ([`QueueMessage::BROKER_DEAD_LETTERS`], the job
    /// queue) gets the message rejected, so the broker moves it to the DLQ
    /// (without the reason), and this returns `Ok`. Otherwise (the webhook
    /// queue) the error is returned and nothing was acknowledged: the caller
    /// requeues it to try again.
    pub async fn dead_letter(&self, reason: &str) -> Result<(), QueueError> {
        match self.copy_to_dlq(reason).await {
            Ok(()) => self.ack().await,
            Err(err) if M::BROKER_DEAD_LETTERS => {
                tracing::warn!(error = %err, "copy to the DLQ failed; rejecting instead");
                self.inner
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// Publishes a copy of the message, its headers and `reason` (in
    /// [`REASON_HEADER`]) to the dead-letter queue, with a confirm; the
    /// delivery itself is left to settle.
    async fn copy_to_dlq(&self, reason: &str) -> Result<(), QueueError> {
        let mut headers = self.inner.properties.headers().clone().unwrap_or_default();
        headers.insert(REASON_HEADER.into(), long_string(reason));
        publish_confirmed(
            &self.side.channel,
            &self.side.names.dlq,
            self.body(),
            headers,
        )
        .await
    }
}

/// Where a retry of `M` after `delay_index` earlier ones goes: that delay
/// queue, the longest when past the last, `M`'s queue itself when it has none.
fn retry_queue<M: QueueMessage>(names: &QueueNames, delay_index: usize) -> &str {
    let delays = M::delay_queues(names);
    delays
        .get(delay_index)
        .or(delays.last())
        .map_or(M::queue(names), |(_, name)| name.as_str())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ttsq_core::JobMessage;

    use super::*;
    use crate::webhooks::WebhookMessage;

    fn names(delays: &[u64], webhook_delays: &[u64]) -> QueueNames {
        let millis = |ms: &[u64]| {
            ms.iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect::<Vec<_>>()
        };
        QueueNames::new("p.", &millis(delays)).with_webhook_delays("p.", &millis(webhook_delays))
    }

    #[test]
    fn a_retry_goes_to_its_delay_queue_and_past_the_last_to_the_longest() {
        let names = names(&[100, 1000], &[500]);

        assert_eq!(
            retry_queue::<JobMessage>(&names, 0),
            "p.ttsq.jobs.delay.100ms"
        );
        assert_eq!(
            retry_queue::<JobMessage>(&names, 1),
            "p.ttsq.jobs.delay.1000ms"
        );
        assert_eq!(
            retry_queue::<JobMessage>(&names, 7),
            "p.ttsq.jobs.delay.1000ms"
        );
        assert_eq!(
            retry_queue::<WebhookMessage>(&names, 3),
            "p.ttsq.webhooks.delay.500ms"
        );
    }

    #[test]
    fn without_delay_queues_a_retry_goes_straight_back_to_the_queue() {
        let names = names(&[], &[]);

        assert_eq!(retry_queue::<JobMessage>(&names, 0), "p.ttsq.jobs");
        assert_eq!(retry_queue::<WebhookMessage>(&names, 2), "p.ttsq.webhooks");
    }
}
