//! Which calls the client retries, against a scripted HTTP server: GETs and
//! keyed POSTs through a 503, never an unkeyed POST (it could create a
//! second task).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use ttsq_client::{Client, NewJob, RetryPolicy};
use uuid::Uuid;

const TASK: &str = r#"{"task_id":"0193a0a0-0000-7000-8000-000000000001","status":"queued","created_at":"2026-11-23T12:00:00Z"}"#;

/// Serves `503` to the first `failures` requests, then `200` with a task;
/// returns the base URL and the count of requests seen.
async fn flaky_server(failures: usize) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buffer = vec![0u8; 16 * 1024];
            // One read holds these small test requests whole.
            let _ = socket.read(&mut buffer).await;
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let response = if n < failures {
                let body = r#"{"type":"urn:ttsq:problem:unavailable","title":"Service Unavailable","status":503,"detail":"the database is unavailable; retry later"}"#;
                format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\nretry-after: 0\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{TASK}",
                    TASK.len()
                )
            };
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    });
    (url, seen)
}

fn client(url: &str) -> Client {
    Client::new(url, "test-key")
        .expect("client")
        .with_retry(RetryPolicy {
            retries: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
        })
}

#[tokio::test]
async fn a_get_is_retried_through_503s() {
    let (url, seen) = flaky_server(2).await;

    let task = client(&url)
        .get(Uuid::now_v7())
        .await
        .expect("third time lucky");

    assert_eq!(
        task.task_id.to_string(),
        "0193a0a0-0000-7000-8000-000000000001"
    );
    assert_eq!(seen.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_keyed_post_is_retried_but_an_unkeyed_one_is_not() {
    let (url, seen) = flaky_server(1).await;
    let job = NewJob::new("Hello.", "en-gb");

    let unkeyed = client(&url).submit(&job, None).await;
    let keyed = client(&url).submit(&job, Some("key-1")).await;

    let problem = unkeyed
        .expect_err("not retried")
        .problem()
        .cloned()
        .expect("problem");
    assert_eq!(
        (problem.status, problem.kind.as_str()),
        (503, "urn:ttsq:problem:unavailable")
    );
    assert!(keyed.is_ok(), "{keyed:?}");
    assert_eq!(seen.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn retries_give_up_with_the_last_error() {
    let (url, seen) = flaky_server(100).await;

    let err = client(&url)
        .get(Uuid::now_v7())
        .await
        .expect_err("always 503");

    assert_eq!(err.status(), Some(503));
    assert_eq!(seen.load(Ordering::SeqCst), 4, "one try and three retries");
}
