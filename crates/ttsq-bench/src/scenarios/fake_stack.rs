//! A ttsq stack whose bench dialect is routed to the in-process fake
//! provider.

use std::time::{Duration, Instant};

use serde_json::json;
use ttsq_fake_provider::{FakeConfig, FakeProvider};

use crate::{
    cli::Args,
    env::Env,
    load::{DIALECT, VOICE},
    stack::{Stack, StackOptions},
};

/// Key the stack sends to the fake (which accepts any).
pub(super) const FAKE_KEY: &str = "bench-fake-key";
/// Postgres connections per process in the multi-replica scenarios: five
/// processes at the default 16 would take most of a stock server's 100.
pub(super) const SHARED_PG_CONNECTIONS: &str = "8";

/// Time for every replica to see the others' heartbeats and split the
/// quotas (heartbeats run every second in the bench).
pub(super) fn settle_time(args: &Args) -> Duration {
    Duration::from_millis(if args.smoke { 1_500 } else { 3_500 })
}

/// Audio per character the fake answers: about 14 KB of WAV for a
/// 30-character sentence, the size of a short prompt's audio.
const MS_PER_CHAR: u32 = 15;

/// The fake every scenario starts: permissive, with the bench's audio
/// length per character and no request log.
pub(super) fn fake_config() -> FakeConfig {
    FakeConfig {
        ms_per_char: MS_PER_CHAR,
        log_capacity: 0,
        ..FakeConfig::permissive()
    }
}

/// ttsq's config routing `en-gb` to the fake, with `provider` (settings
/// such as `quota = { … }`, one a line) in the fake's provider table.
fn config_toml(fake: &FakeProvider, provider: &str) -> String {
    format!(
        r#"
[providers.fake]
kind = "openai"
base_url = "{}"
model = "tts-1"
price_per_1k_chars = 15.0
{provider}
dialects = [{{ id = "{DIALECT}", voices = ["{VOICE}"] }}]

[[routes]]
dialects = ["{DIALECT}"]
chain = ["fake"]

[[routes]]
dialects = ["*"]
chain = ["espeak"]
"#,
        fake.base_url()
    )
}

/// A stack of ttsq processes named `name`, routing the bench dialect to
/// `fake` with `quota`, with `extra` and the run's `--set` settings in
/// their environment.
pub(super) async fn start(
    env: &Env,
    name: &str,
    fake: &FakeProvider,
    quota: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<Stack> {
    start_with(env, name, fake, &format!("quota = {{ {quota} }}"), extra).await
}

/// [`start`] with `provider` as the fake's provider settings (one a line,
/// e.g. a quota and a request limit) instead of a quota alone.
pub(super) async fn start_with(
    env: &Env,
    name: &str,
    fake: &FakeProvider,
    provider: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<Stack> {
    let mut options = StackOptions {
        env: vec![(
            "TTSQ_PROVIDERS_FAKE_API_KEY".to_owned(),
            FAKE_KEY.to_owned(),
        )],
        config_toml: config_toml(fake, provider),
    };
    options.env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    options.env.extend(env.settings.iter().cloned());
    eprintln!("  starting a stack ({name})");
    Stack::start(env, name, options).await
}

/// One synthesis of `input` in `format` straight at the fake, as ttsq's
/// OpenAI adapter sends it: the answer's size and its time to the last byte.
pub(super) async fn direct_call(
    http: &reqwest::Client,
    fake: &FakeProvider,
    input: &str,
    format: &str,
) -> anyhow::Result<(usize, Duration)> {
    let started = Instant::now();
    let response = http
        .post(format!("{}/v1/audio/speech", fake.base_url()))
        .bearer_auth(FAKE_KEY)
        .json(&json!({"model": "tts-1", "input": input, "voice": VOICE, "response_format": format, "speed": 1.0}))
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "the fake answered {}",
        response.status()
    );
    let bytes = response.bytes().await?.len();
    Ok((bytes, started.elapsed()))
}
