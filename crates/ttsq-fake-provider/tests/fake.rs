//! The fake provider over real HTTP: each vendor's wire format, keys, quota,
//! concurrency, faults and the stats tests rely on.

use std::time::{Duration, Instant};

use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use ttsq_fake_provider::{
    FakeConfig, FakeProvider, Outcome, Vendor,
    config::{DEFAULT_ELEVENLABS_KEY, DEFAULT_HTTP_KEY, DEFAULT_OPENAI_KEY},
};

/// A WAV body read back by a strict reader of its own, not the adapters'.
struct Decoded {
    samples: Vec<i16>,
    sample_rate_hz: u32,
}

impl Decoded {
    /// Playing time, rounded to the nearest millisecond.
    fn duration_ms(&self) -> u64 {
        let rate = u64::from(self.sample_rate_hz);
        (self.samples.len() as u64 * 1000 + rate / 2) / rate
    }
}

fn read_wav(bytes: &[u8]) -> Result<Decoded, hound::Error> {
    let reader = hound::WavReader::new(std::io::Cursor::new(bytes))?;
    let sample_rate_hz = reader.spec().sample_rate;
    let samples = reader.into_samples().collect::<Result<_, _>>()?;
    Ok(Decoded {
        samples,
        sample_rate_hz,
    })
}

async fn start(config: FakeConfig) -> (FakeProvider, reqwest::Client) {
    (
        FakeProvider::start(config).await.expect("the fake starts"),
        reqwest::Client::new(),
    )
}

fn elevenlabs(
    client: &reqwest::Client,
    fake: &FakeProvider,
    voice: &str,
    output_format: &str,
    key: &str,
) -> reqwest::RequestBuilder {
    client
        .post(format!(
            "{}/v1/text-to-speech/{voice}?output_format={output_format}",
            fake.base_url()
        ))
        .header("xi-api-key", key)
        .json(&json!({"text": "Hello there", "model_id": "eleven_multilingual_v2"}))
}

fn openai(
    client: &reqwest::Client,
    fake: &FakeProvider,
    format: &str,
    key: &str,
) -> reqwest::RequestBuilder {
    client
        .post(format!("{}/v1/audio/speech", fake.base_url()))
        .bearer_auth(key)
        .json(&json!({"model": "tts-1", "input": "Hello there", "voice": "alloy", "response_format": format}))
}

fn generic(client: &reqwest::Client, fake: &FakeProvider, key: &str) -> reqwest::RequestBuilder {
    client
        .post(format!("{}/tts", fake.base_url()))
        .header("X-Api-Key", key)
        .json(&json!({"text": "Hello there", "dialect": "en-us", "voice": "nova", "speed": 1.0}))
}

fn content_type(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn each_vendor_answers_audio_with_its_content_type() {
    let (fake, client) = start(FakeConfig::default()).await;

    let mp3 = elevenlabs(
        &client,
        &fake,
        "rachel",
        "mp3_44100_128",
        DEFAULT_ELEVENLABS_KEY,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(mp3.status(), StatusCode::OK);
    assert_eq!(content_type(&mp3), "audio/mpeg");
    let mp3 = mp3.bytes().await.unwrap();
    assert!(
        mp3[0] == 0xff && mp3[1] & 0xe0 == 0xe0,
        "{:02x?}",
        &mp3[..4]
    );

    let pcm = elevenlabs(
        &client,
        &fake,
        "rachel",
        "pcm_22050",
        DEFAULT_ELEVENLABS_KEY,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(content_type(&pcm), "audio/pcm");
    // 11 characters × 60 ms = 660 ms, rounded to a 50 ms bucket: 650 ms at
    // 22.05 kHz, 2 bytes a sample.
    assert_eq!(pcm.bytes().await.unwrap().len(), 22_050 * 650 / 1000 * 2);

    let wav = openai(&client, &fake, "wav", DEFAULT_OPENAI_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(wav.status(), StatusCode::OK);
    assert_eq!(content_type(&wav), "audio/wav");
    let wav = wav.bytes().await.unwrap();
    assert_eq!(&wav[..4], b"RIFF");
    assert_eq!(
        &wav[4..8],
        &[0xff; 4],
        "OpenAI streams WAV with placeholder sizes"
    );
    assert_eq!(
        u32::from_le_bytes([wav[24], wav[25], wav[26], wav[27]]),
        24_000
    );

    let openai_mp3 = openai(&client, &fake, "mp3", DEFAULT_OPENAI_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(content_type(&openai_mp3), "audio/mpeg");

    let generic_wav = generic(&client, &fake, DEFAULT_HTTP_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(content_type(&generic_wav), "audio/wav");
    let decoded = read_wav(&generic_wav.bytes().await.unwrap()).unwrap();
    assert_eq!(decoded.sample_rate_hz, 22_050);
    assert_eq!(decoded.duration_ms(), 650);

    let stats = fake.stats();
    assert_eq!(stats.audio_responses, 5);
    assert_eq!(stats.by_vendor[&Vendor::ElevenLabs], 2);
    assert_eq!(stats.by_vendor[&Vendor::OpenAi], 2);
    assert_eq!(stats.by_vendor[&Vendor::Http], 1);
    assert_eq!(stats.by_route["POST /v1/text-to-speech/{voice_id}"], 2);
    assert_eq!(stats.characters_synthesized, 5 * 11);
}

#[tokio::test]
async fn a_wrong_key_gets_each_vendors_401_and_is_never_stored() {
    let (fake, client) = start(FakeConfig::default()).await;
    let wrong = "sk-wrong-key-1234";

    let eleven = elevenlabs(&client, &fake, "rachel", "mp3_44100_128", wrong)
        .send()
        .await
        .unwrap();
    assert_eq!(eleven.status(), StatusCode::UNAUTHORIZED);
    let body: Value = eleven.json().await.unwrap();
    assert_eq!(body["detail"]["status"], "invalid_api_key");

    let oai = openai(&client, &fake, "mp3", wrong).send().await.unwrap();
    assert_eq!(oai.status(), StatusCode::UNAUTHORIZED);
    let body: Value = oai.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let http = generic(&client, &fake, wrong).send().await.unwrap();
    assert_eq!(http.status(), StatusCode::UNAUTHORIZED);
    let body: Value = http.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");

    let missing = client
        .post(format!("{}/tts", fake.base_url()))
        .json(&json!({"text": "hi", "dialect": "en-us", "voice": "nova"}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);

    let stats = fake.stats();
    assert_eq!(stats.unauthorized, 4);
    assert_eq!(stats.audio_responses, 0);
    let first = &stats.recent[0];
    assert_eq!(first.auth_header.as_deref(), Some("xi-api-key"));
    assert!(!first.auth_matched);
    assert_eq!(stats.recent[3].auth_header, None);
    let logged = serde_json::to_string(&stats).unwrap();
    assert!(
        !logged.contains(wrong),
        "the key value leaked into the stats"
    );
}

#[tokio::test]
async fn exceeding_the_request_rate_answers_429_with_retry_after_and_counts_it() {
    let mut config = FakeConfig::default();
    config.quota.requests_per_second = Some(1);
    let (fake, client) = start(config).await;

    let first = openai(&client, &fake, "mp3", DEFAULT_OPENAI_KEY)
        .send()
        .await
        .unwrap();
    let second = openai(&client, &fake, "mp3", DEFAULT_OPENAI_KEY)
        .send()
        .await
        .unwrap();
    let third = elevenlabs(
        &client,
        &fake,
        "rachel",
        "pcm_24000",
        DEFAULT_ELEVENLABS_KEY,
    )
    .send()
    .await
    .unwrap();

    assert_eq!(first.status(), StatusCode::OK);
    for response in [&second, &third] {
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry_after: u64 = response.headers()[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry_after >= 1);
    }
    let body: Value = second.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    let body: Value = third.json().await.unwrap();
    assert_eq!(body["detail"]["status"], "rate_limit_exceeded");
    let stats = fake.stats();
    assert_eq!(stats.rate_limited, 2);
    assert_eq!(stats.rate_limited_requests, 2);
    assert_eq!(stats.recent[1].outcome, Outcome::RateLimited);
    assert_eq!(stats.recent[1].status, Some(429));
}

#[tokio::test]
async fn characters_per_minute_is_enforced_with_the_generic_body() {
    let mut config = FakeConfig::default();
    config.quota.characters_per_minute = Some(15);
    let (fake, client) = start(config).await;

    let first = generic(&client, &fake, DEFAULT_HTTP_KEY)
        .send()
        .await
        .unwrap();
    let second = generic(&client, &fake, DEFAULT_HTTP_KEY)
        .send()
        .await
        .unwrap();

    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(second.headers().contains_key(header::RETRY_AFTER));
    let body: Value = second.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(fake.stats().rate_limited_characters, 1);
}

#[tokio::test]
async fn peak_concurrency_is_measured_and_max_concurrent_enforced() {
    let mut config = FakeConfig::default();
    config.latency.fixed_ms = 300;
    let (fake, client) = start(config).await;

    let requests = (0..5).map(|_| {
        elevenlabs(
            &client,
            &fake,
            "rachel",
            "pcm_16000",
            DEFAULT_ELEVENLABS_KEY,
        )
        .send()
    });
    let responses = futures_join_all(requests).await;
    assert!(responses.iter().all(|r| r.status() == StatusCode::OK));
    assert_eq!(fake.stats().peak_concurrency, 5);
    assert_eq!(fake.stats().in_flight, 0);

    fake.reset_stats();
    fake.update(|c| c.quota.max_concurrent = Some(2));
    let requests = (0..5).map(|_| {
        elevenlabs(
            &client,
            &fake,
            "rachel",
            "pcm_16000",
            DEFAULT_ELEVENLABS_KEY,
        )
        .send()
    });
    let responses = futures_join_all(requests).await;

    let ok = responses
        .iter()
        .filter(|r| r.status() == StatusCode::OK)
        .count();
    assert_eq!(ok, 2);
    let stats = fake.stats();
    assert_eq!(stats.rate_limited_concurrency, 3);
    let throttled = responses
        .into_iter()
        .find(|r| r.status() == StatusCode::TOO_MANY_REQUESTS)
        .unwrap();
    let body: Value = throttled.json().await.unwrap();
    assert_eq!(body["detail"]["status"], "too_many_concurrent_requests");
}

/// Runs the requests concurrently and unwraps each response.
async fn futures_join_all(
    requests: impl Iterator<
        Item = impl std::future::Future<Output = reqwest::Result<reqwest::Response>> + Send + 'static,
    >,
) -> Vec<reqwest::Response> {
    let handles: Vec<_> = requests.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        let response = handle.await.expect("the request task ends");
        out.push(response.expect("the fake answers"));
    }
    out
}

#[tokio::test]
async fn down_answers_503_everywhere_but_the_control_routes() {
    let (fake, client) = start(FakeConfig::default()).await;
    let health = client
        .get(format!("{}/health", fake.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(health.json::<Value>().await.unwrap()["status"], "ok");

    let set = client
        .post(format!("{}/_fake/config", fake.base_url()))
        .json(&json!({"down": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), StatusCode::OK);

    let health = client
        .get(format!("{}/health", fake.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::SERVICE_UNAVAILABLE);
    let speech = openai(&client, &fake, "mp3", DEFAULT_OPENAI_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(speech.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        speech.json::<Value>().await.unwrap()["error"]["type"],
        "server_error"
    );
    let models = client
        .get(format!("{}/v1/models", fake.base_url()))
        .bearer_auth(DEFAULT_OPENAI_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), StatusCode::SERVICE_UNAVAILABLE);
    let stats: Value = client
        .get(format!("{}/_fake/stats", fake.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["unavailable"], 3);
    assert_eq!(stats["by_vendor"]["openai"], 2);
    assert_eq!(stats["by_vendor"]["http"], 2);
    assert!(fake.config().down);
}

#[tokio::test]
async fn stats_count_per_voice_and_log_the_parsed_body() {
    let (fake, client) = start(FakeConfig::default()).await;

    for voice in ["rachel", "rachel", "nobody"] {
        elevenlabs(
            &client,
            &fake,
            voice,
            "mp3_22050_32",
            DEFAULT_ELEVENLABS_KEY,
        )
        .header("X-Request-Id", "req-1")
        .send()
        .await
        .unwrap();
    }
    let stats = fake.stats();

    assert_eq!(stats.by_voice["rachel"], 2);
    assert_eq!(stats.by_voice["nobody"], 1);
    assert_eq!(stats.rejected, 1);
    let unknown = stats.last().unwrap();
    assert_eq!(unknown.status, Some(400));
    assert_eq!(unknown.path, "/v1/text-to-speech/nobody");
    assert_eq!(unknown.query.as_deref(), Some("output_format=mp3_22050_32"));
    assert_eq!(unknown.request_id.as_deref(), Some("req-1"));
    let body = unknown.body.as_ref().unwrap();
    assert_eq!(body["model_id"], "eleven_multilingual_v2");
    assert_eq!(stats.characters_received, 33);
    assert_eq!(stats.characters_synthesized, 22);

    let reset = client
        .post(format!("{}/_fake/reset", fake.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), StatusCode::OK);
    assert_eq!(fake.stats().total_requests, 0);
    assert!(fake.stats().recent.is_empty());
}

#[tokio::test]
async fn elevenlabs_validation_errors_use_fastapis_422_list() {
    let (fake, client) = start(FakeConfig::default()).await;

    let response = client
        .post(format!("{}/v1/text-to-speech/rachel", fake.base_url()))
        .header("xi-api-key", DEFAULT_ELEVENLABS_KEY)
        .json(&json!({"model_id": "m"}))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["detail"][0]["loc"], json!(["body", "text"]));
}

#[tokio::test]
async fn credits_exhausted_uses_each_vendors_quota_error() {
    let (fake, client) = start(FakeConfig {
        credits_exhausted: true,
        ..FakeConfig::default()
    })
    .await;

    let eleven = elevenlabs(
        &client,
        &fake,
        "rachel",
        "mp3_44100_128",
        DEFAULT_ELEVENLABS_KEY,
    )
    .send()
    .await
    .unwrap();
    let oai = openai(&client, &fake, "mp3", DEFAULT_OPENAI_KEY)
        .send()
        .await
        .unwrap();

    assert_eq!(eleven.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        eleven.json::<Value>().await.unwrap()["detail"]["status"],
        "quota_exceeded"
    );
    assert_eq!(oai.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        oai.json::<Value>().await.unwrap()["error"]["code"],
        "insufficient_quota"
    );
    assert_eq!(fake.stats().credits_exhausted, 2);
}

#[tokio::test]
async fn server_errors_and_malformed_bodies_are_injected_at_the_configured_rate() {
    let mut config = FakeConfig::default();
    config.faults.server_error_rate = 1.0;
    let (fake, client) = start(config).await;

    let response = openai(&client, &fake, "mp3", DEFAULT_OPENAI_KEY)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_server_error());
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"]["type"],
        "server_error"
    );
    assert_eq!(fake.stats().server_errors, 1);

    fake.update(|c| {
        c.faults.server_error_rate = 0.0;
        c.faults.malformed_rate = 1.0;
    });
    for _ in 0..10 {
        let response = generic(&client, &fake, DEFAULT_HTTP_KEY)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.bytes().await.unwrap();
        if status == StatusCode::OK {
            assert!(read_wav(&bytes).is_err());
            assert_eq!(bytes.len() % 2, 1);
        } else {
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
            assert!(serde_json::from_slice::<Value>(&bytes).is_err());
        }
    }
    assert_eq!(fake.stats().malformed, 10);
}

#[tokio::test]
async fn a_timeout_holds_the_request_until_the_client_gives_up() {
    let mut config = FakeConfig::default();
    config.faults.timeout_rate = 1.0;
    let (fake, _) = start(config).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();

    let err = openai(&client, &fake, "mp3", DEFAULT_OPENAI_KEY)
        .send()
        .await
        .unwrap_err();

    assert!(err.is_timeout(), "{err:?}");
    let stats = fake.stats();
    assert_eq!(stats.timeouts, 1);
    assert_eq!(stats.last().unwrap().status, None);
    // The client hung up: hyper drops the held handler, so it stops counting as in flight.
    let deadline = Instant::now() + Duration::from_secs(2);
    while fake.stats().in_flight > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fake.stats().in_flight, 0);

    // A held request does not hold up shutdown.
    let (held, _) = start(FakeConfig {
        faults: ttsq_fake_provider::Faults {
            timeout_rate: 1.0,
            ..Default::default()
        },
        ..FakeConfig::default()
    })
    .await;
    let pending =
        tokio::spawn(openai(&reqwest::Client::new(), &held, "mp3", DEFAULT_OPENAI_KEY).send());
    while held.stats().timeouts == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    held.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let response = pending.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test]
async fn listings_serve_voices_models_and_user() {
    let (fake, client) = start(FakeConfig::default()).await;

    let voices: Value = client
        .get(format!("{}/voices", fake.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let eleven = client
        .get(format!("{}/v1/voices", fake.base_url()))
        .header("xi-api-key", DEFAULT_ELEVENLABS_KEY)
        .send()
        .await
        .unwrap();
    let user = client
        .get(format!("{}/v1/user", fake.base_url()))
        .header("xi-api-key", "wrong")
        .send()
        .await
        .unwrap();
    let models = client
        .get(format!("{}/v1/models", fake.base_url()))
        .bearer_auth(DEFAULT_OPENAI_KEY)
        .send()
        .await
        .unwrap();

    assert!(
        voices["voices"]
            .as_array()
            .unwrap()
            .contains(&json!({"id": "rachel", "dialect": "en-gb"}))
    );
    assert_eq!(eleven.status(), StatusCode::OK);
    assert_eq!(user.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(models.status(), StatusCode::OK);
    assert_eq!(models.json::<Value>().await.unwrap()["object"], "list");
    let stats = fake.stats();
    assert_eq!(stats.total_requests, 4);
    assert_eq!(stats.synthesis_requests, 0);
}

#[tokio::test]
async fn an_invalid_config_patch_is_refused_and_changes_nothing() {
    let (fake, client) = start(FakeConfig::default()).await;

    let response = client
        .post(format!("{}/_fake/config", fake.base_url()))
        .json(&json!({"quota": {"max_concurent": 3}}))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(fake.config(), FakeConfig::default());
}

#[tokio::test]
async fn only_texts_named_slow_wait_the_slow_latency() {
    let config = FakeConfig {
        slow_texts_containing: vec!["Hello".to_owned()],
        slow_texts_latency_ms: 2_000,
        ..FakeConfig::default()
    };
    let (fake, client) = start(config).await;

    let started = Instant::now();
    let slow = generic(&client, &fake, DEFAULT_HTTP_KEY)
        .send()
        .await
        .unwrap();
    let slow_took = started.elapsed();
    let started = Instant::now();
    let fast = client
        .post(format!("{}/tts", fake.base_url()))
        .header("X-Api-Key", DEFAULT_HTTP_KEY)
        .json(&json!({"text": "Goodbye", "dialect": "en-us", "voice": "nova", "speed": 1.0}))
        .send()
        .await
        .unwrap();
    let fast_took = started.elapsed();

    assert_eq!(slow.status(), StatusCode::OK);
    assert_eq!(fast.status(), StatusCode::OK);
    assert!(
        slow_took >= Duration::from_millis(2_000),
        "a slow text answered in {slow_took:?}"
    );
    assert!(
        fast_took < Duration::from_millis(2_000),
        "another text waited {fast_took:?}"
    );
}
