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
        retry_delays_secs: vec![1, 2],
        webhook_retry_delays_ms: vec![500],
    }
}

async fn next_within(consumer: &mut ttsq_queue::JobConsumer) -> ttsq_queue::JobDelivery {
    tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery within 10 s")
        .expect("consumer still open")
        .expect("delivery ok")
}

async fn depths_become(broker: &Broker, expected: (u32, u32)) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let depths = broker.depths().await.expect("depths readable");
        if depths == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "depths {depths:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

#[tokio::test]
async fn the_delivery_count_counts_earlier_deliveries() {
    let broker = Broker::connect(&settings(), "test").await.unwrap();
    broker
        .publisher()
        .await
        .unwrap()
        .publish(&JobMessage::new(Uuid::new_v4(), Uuid::new_v4(), "en-gb"))
        .await
        .unwrap();
    let mut consumer = broker.consume(1, "test-consumer").await.unwrap();
    let first = next_within(&mut consumer).await;
    assert_eq!(first.delivery_count(), 0);
    first.requeue().await.unwrap();
    let second = next_within(&mut consumer).await;
    assert_eq!(second.delivery_count(), 1);
    second.ack().await.unwrap();
    consumer.close().await;
    broker.delete_queues().await.unwrap();
}

#[tokio::test]
async fn a_retry_waits_out_its_delay_then_returns_to_the_job_queue() {
    let broker = Broker::connect(&settings(), "test").await.unwrap();
    let message = JobMessage::new(Uuid::new_v4(), Uuid::new_v4(), "en-gb");
    broker
        .publisher()
        .await
        .unwrap()
        .publish(&message)
        .await
        .unwrap();
    let mut consumer = broker.consume(1, "test-consumer").await.unwrap();
    let delivery = next_within(&mut consumer).await;

    let mut next = message.clone();
    next.attempt = 2;
    let sent = tokio::time::Instant::now();
    // Index 1 is the 2 s delay queue.
    delivery.retry_later(&next, 1).await.unwrap();
    assert_eq!(broker.depths().await.unwrap(), (0, 0), "waiting elsewhere");

    let back = next_within(&mut consumer).await;
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(1900),
        "came back after {waited:?}"
    );
    assert_eq!(back.decode().unwrap(), next);
    assert_eq!(
        back.delivery_count(),
        0,
        "a fresh message, not a redelivery"
    );
    back.ack().await.unwrap();
    consumer.close().await;
    broker.delete_queues().await.unwrap();
}

#[tokio::test]
async fn dead_letters_can_be_listed_replayed_selectively_and_purged() {
    let broker = Broker::connect(&settings(), "test").await.unwrap();
    let keep = JobMessage::new(Uuid::new_v4(), Uuid::new_v4(), "en-gb");
    let replay = JobMessage::new(Uuid::new_v4(), Uuid::new_v4(), "fr-fr");
    let publisher = broker.publisher().await.unwrap();
    for message in [&keep, &replay] {
        publisher.publish(message).await.unwrap();
    }
    broker.publish_raw(b"garbage").await.unwrap();
    let mut consumer = broker.consume(8, "test-consumer").await.unwrap();
    for _ in 0..3 {
        next_within(&mut consumer)
            .await
            .dead_letter("provider_rejected")
            .await
            .unwrap();
    }
    consumer.close().await;

    let listed = broker.dlq_list(10).await.unwrap();
    assert_eq!(listed.len(), 3);
    assert!(
        listed
            .iter()
            .all(|l| l.reason.as_deref() == Some("provider_rejected"))
    );
    // Listing leaves them unacknowledged; closing its channel returns them.
    depths_become(&broker, (0, 3)).await;

    let outcome = broker
        .dlq_replay(10, |m| m.task_id == replay.task_id)
        .await
        .unwrap();
    assert_eq!((outcome.replayed, outcome.kept), (1, 2));
    depths_become(&broker, (1, 2)).await;
    let mut consumer = broker.consume(8, "test-consumer").await.unwrap();
    let replayed = next_within(&mut consumer).await;
    assert_eq!(replayed.decode().unwrap(), replay);
    replayed.ack().await.unwrap();
    consumer.close().await;

    assert_eq!(broker.dlq_purge().await.unwrap(), 2);
    assert_eq!(broker.depths().await.unwrap(), (0, 0));
    broker.delete_queues().await.unwrap();
}

/// Closes this test's connection from the broker's side, as a broker restart
/// or a network cut would, without touching anyone else's connections.
fn kill_connection(connection_name: &str) {
    // Tab-separated lines: the connection's pid in the form close_connection
    // takes, then its client properties (which hold the connection name).
    let listed = std::process::Command::new("rabbitmqctl")
        .args(["list_connections", "-q", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl runs (the tests need root on the broker's machine)");
    let listed = String::from_utf8_lossy(&listed.stdout);
    let mut killed = 0;
    for line in listed.lines().filter(|l| l.contains(connection_name)) {
        let pid = line.split('\t').next().expect("a pid column");
        let status = std::process::Command::new("rabbitmqctl")
            .args(["close_connection", pid, "test: simulated network cut"])
            .status()
            .expect("rabbitmqctl runs");
        assert!(status.success());
        killed += 1;
    }
    assert_eq!(killed, 1, "exactly this test's connection");
}

#[tokio::test]
async fn a_lost_connection_is_replaced_and_consuming_and_publishing_resume() {
    let name = format!("ttsq-test-{}", Uuid::new_v4().simple());
    let broker = Broker::connect(&settings(), &name).await.unwrap();
    let publisher = broker.publisher().await.unwrap();
    let mut consumer = broker.consume(4, "test-consumer").await.unwrap();

    kill_connection(&name);
    // The consumer ends; the broker reports the gap until it reconnects.
    let ended = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("the consumer notices within 10 s");
    assert!(
        !matches!(ended, Some(Ok(_))),
        "no delivery from a dead channel"
    );
    assert!(!broker.is_connected());

    // The same publisher works again: it reconnects on demand.
    let message = JobMessage::new(Uuid::new_v4(), Uuid::new_v4(), "en-gb");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while let Err(err) = publisher.publish(&message).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never recovered: {err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(broker.is_connected());
    let mut consumer = broker.consume(4, "test-consumer").await.unwrap();
    let delivery = next_within(&mut consumer).await;
    assert_eq!(delivery.decode().unwrap(), message);
    delivery.ack().await.unwrap();
    consumer.close().await;
    broker.delete_queues().await.unwrap();
}
