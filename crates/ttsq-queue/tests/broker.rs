//! Against the real RabbitMQ on loopback (`TTSQ_TEST_AMQP_URL`).

use std::time::Duration;

use secrecy::SecretString;
use ttsq_config::QueueSettings;
use ttsq_core::JobMessage;
use ttsq_queue::{Broker, QueueError};
use uuid::Uuid;

fn settings() -> QueueSettings {
    let url = std::env::var("TTSQ_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    QueueSettings {
        url: SecretString::from(url),
        prefix: format!("ttsq-test-{}.", Uuid::new_v4().simple()),
        prefetch: 16,
        delivery_limit: 3,
    }
}

async fn next_within(consumer: &mut ttsq_queue::JobConsumer) -> ttsq_queue::JobDelivery {
    tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery within 10 s")
        .expect("consumer still open")
        .expect("delivery ok")
}

#[tokio::test]
async fn a_confirmed_message_is_delivered_once_and_acked() {
    let broker = Broker::connect(&settings(), "test").await.unwrap();
    // Declaring twice is idempotent.
    broker.declare_topology().await.unwrap();
    let publisher = broker.publisher().await.unwrap();
    let message = JobMessage::new(Uuid::new_v4(), Uuid::new_v4(), "en-gb");

    publisher.publish(&message).await.unwrap();
    assert_eq!(broker.depths().await.unwrap(), (1, 0));

    let mut consumer = broker.consume(4, "test-consumer").await.unwrap();
    let delivery = next_within(&mut consumer).await;
    assert_eq!(delivery.decode().unwrap(), message);
    assert!(!delivery.redelivered());
    delivery.ack().await.unwrap();
    consumer.close().await;

    assert_eq!(broker.depths().await.unwrap(), (0, 0));
    broker.delete_queues().await.unwrap();
}

#[tokio::test]
async fn a_requeued_message_comes_back_marked_redelivered() {
    let broker = Broker::connect(&settings(), "test").await.unwrap();
    let message = JobMessage::new(Uuid::new_v4(), Uuid::new_v4(), "fr-fr");
    broker
        .publisher()
        .await
        .unwrap()
        .publish(&message)
        .await
        .unwrap();

    let mut consumer = broker.consume(4, "test-consumer").await.unwrap();
    next_within(&mut consumer).await.requeue().await.unwrap();
    let again = next_within(&mut consumer).await;
    assert!(again.redelivered());
    assert_eq!(again.decode().unwrap(), message);
    again.ack().await.unwrap();
    consumer.close().await;
    broker.delete_queues().await.unwrap();
}

#[tokio::test]
async fn an_undecodable_message_goes_to_the_dlq_with_its_reason() {
    let broker = Broker::connect(&settings(), "test").await.unwrap();
    broker.publish_raw(b"\x00 not json").await.unwrap();

    let mut consumer = broker.consume(4, "test-consumer").await.unwrap();
    let delivery = next_within(&mut consumer).await;
    let err = delivery.decode().unwrap_err();
    delivery.dead_letter(err.code()).await.unwrap();
    consumer.close().await;

    let (body, reason) = broker
        .take_dead_letter()
        .await
        .unwrap()
        .expect("one dead letter");
    assert_eq!(body, b"\x00 not json");
    assert_eq!(reason.as_deref(), Some("malformed"));
    assert_eq!(broker.depths().await.unwrap(), (0, 0));
    broker.delete_queues().await.unwrap();
}

#[tokio::test]
async fn publishing_to_a_missing_queue_is_an_error_not_a_silent_loss() {
    let broker = Broker::connect(&settings(), "test").await.unwrap();
    let publisher = broker.publisher().await.unwrap();
    broker.delete_queues().await.unwrap();

    let err = publisher
        .publish(&JobMessage::new(Uuid::new_v4(), Uuid::new_v4(), "en-gb"))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::NotConfirmed(_)), "{err}");
}

#[tokio::test]
async fn a_message_redelivered_past_the_limit_is_dead_lettered_by_the_broker() {
    let broker = Broker::connect(&settings(), "test").await.unwrap();
    let message = JobMessage::new(Uuid::new_v4(), Uuid::new_v4(), "en-us");
    broker
        .publisher()
        .await
        .unwrap()
        .publish(&message)
        .await
        .unwrap();

    let mut consumer = broker.consume(1, "test-consumer").await.unwrap();
    // delivery_limit = 3: the first delivery plus three redeliveries, then the DLQ.
    for _ in 0..4 {
        next_within(&mut consumer).await.requeue().await.unwrap();
    }
    consumer.close().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let dead = loop {
        if let Some(dead) = broker.take_dead_letter().await.unwrap() {
            break dead;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "message never reached the DLQ"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(JobMessage::decode(&dead.0).unwrap(), message);
    broker.delete_queues().await.unwrap();
}
