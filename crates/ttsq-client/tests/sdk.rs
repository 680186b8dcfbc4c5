//! The SDK's construction and vocabulary, against a scripted HTTP server:
//! a caller's own `reqwest::Client` carries the requests, the builder's
//! user agent and the environment's URL and key are used, and formats and
//! priorities a newer server sends do not break reading a task.

use std::sync::{Arc, Mutex};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use ttsq_client::{AudioFormat, Client, ClientBuilder, ClientError, NewJob, Priority, Task};

const TASK: &str = r#"{"task_id":"0193a0a0-0000-7000-8000-000000000001","status":"succeeded","priority":"urgent","format":"speex","created_at":"2026-11-23T12:00:00Z"}"#;

/// Answers every request with [`TASK`]; returns the base URL and the heads
/// of the requests seen.
async fn recording_server() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let heads = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buffer = vec![0u8; 16 * 1024];
            // One read holds these small test requests whole.
            let n = socket.read(&mut buffer).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buffer[..n]).to_ascii_lowercase();
            heads.lock().expect("not poisoned").push(head);
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{TASK}",
                TASK.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    });
    (url, seen)
}

fn task_id() -> uuid::Uuid {
    "0193a0a0-0000-7000-8000-000000000001"
        .parse()
        .expect("a UUID")
}

#[tokio::test]
async fn a_callers_own_http_client_carries_the_requests_with_the_builders_user_agent() {
    let (url, seen) = recording_server().await;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-caller", "mine".parse().expect("a header value"));
    let own = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("a reqwest client");
    let client = Client::builder()
        .base_url(format!("{url}/"))
        .api_key("ttsq_key")
        .user_agent("my-app/1.0")
        .http_client(own)
        .build()
        .expect("a client");

    let task = client.get(task_id()).await.expect("a task");

    assert_eq!(task.task_id, task_id());
    let heads = seen.lock().expect("not poisoned").clone();
    assert_eq!(heads.len(), 1);
    assert!(heads[0].starts_with("get /v1/tts/jobs/"), "{}", heads[0]);
    assert!(heads[0].contains("x-caller: mine"), "{}", heads[0]);
    assert!(heads[0].contains("user-agent: my-app/1.0"), "{}", heads[0]);
    assert!(
        heads[0].contains("authorization: bearer ttsq_key"),
        "{}",
        heads[0]
    );
}

#[tokio::test]
async fn the_environment_names_the_url_and_the_key_as_the_command_line_reads_them() {
    let (url, seen) = recording_server().await;
    let vars = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<Vec<_>>()
    };

    let client = ClientBuilder::from_vars(vars(&[
        ("TTSQ_URL", &url),
        ("TTSQ_API_KEY", "ttsq_env_key"),
        ("UNRELATED", "x"),
    ]))
    .and_then(ClientBuilder::build)
    .expect("a client");
    let keyless = ClientBuilder::from_vars(vars(&[("TTSQ_URL", &url)]));
    let local = ClientBuilder::from_vars(vars(&[("TTSQ_API_KEY", "k")]))
        .and_then(ClientBuilder::build)
        .expect("a client");
    client.get(task_id()).await.expect("a task");

    assert!(seen.lock().expect("not poisoned")[0].contains("authorization: bearer ttsq_env_key"));
    assert!(
        matches!(&keyless, Err(ClientError::Config(why)) if why.contains("TTSQ_API_KEY")),
        "{keyless:?}"
    );
    assert_eq!(local.base_url(), "http://127.0.0.1:8080");
}

#[test]
fn formats_and_priorities_round_trip_and_unknown_ones_are_kept() {
    for name in ["mp3", "wav", "pcm", "opus", "flac", "ogg_opus"] {
        let format: AudioFormat = serde_json::from_str(&format!("\"{name}\"")).expect("decodes");
        assert!(!matches!(format, AudioFormat::Other(_)), "{name} is known");
        assert_eq!(
            serde_json::to_string(&format).expect("encodes"),
            format!("\"{name}\"")
        );
    }
    assert_eq!(AudioFormat::default(), AudioFormat::Mp3);
    // ttsq refuses AAC (no patent licence for its encoder): not a variant.
    assert_eq!(
        AudioFormat::from("aac"),
        AudioFormat::Other("aac".to_owned())
    );
    assert_eq!(Priority::from("high"), Priority::High);

    let task: Task = serde_json::from_str(TASK).expect("a task from a newer server");
    assert_eq!(task.format, AudioFormat::Other("speex".to_owned()));
    assert_eq!(task.priority.as_str(), "urgent");

    let job = NewJob {
        format: Some(AudioFormat::Flac),
        priority: Some(Priority::High),
        ..NewJob::new("Hi.", "en-gb")
    };
    let body = serde_json::to_value(&job).expect("encodes");
    assert_eq!(body["format"], "flac");
    assert_eq!(body["priority"], "high");
    assert!(body.get("voice").is_none(), "unset fields are left out");
}

#[test]
fn a_builder_without_a_url_or_key_names_what_is_missing() {
    let no_url = Client::builder().api_key("k").build();
    let no_key = Client::builder().base_url("http://127.0.0.1:1").build();
    let not_http = Client::new("ftp://example.com", "k");

    assert!(matches!(no_url, Err(ClientError::Config(why)) if why.contains("URL")));
    assert!(matches!(no_key, Err(ClientError::Config(why)) if why.contains("key")));
    assert!(matches!(not_http, Err(ClientError::Config(why)) if why.contains("http://")));
}
