//! A ttsq stack whose bench dialect is routed to the in-process fake
//! provider.

use ttsq_fake_provider::{FakeConfig, FakeProvider};

use crate::{
    env::Env,
    load::{DIALECT, VOICE},
    stack::{Stack, StackOptions},
};

/// Key the stack sends to the fake (which accepts any).
pub(super) const FAKE_KEY: &str = "bench-fake-key";
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

/// ttsq's config routing `en-gb` to the fake with `quota`.
fn config_toml(fake: &FakeProvider, quota: &str) -> String {
    format!(
        r#"
[providers.fake]
kind = "openai"
base_url = "{}"
model = "tts-1"
price_per_1k_chars = 15.0
quota = {{ {quota} }}
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
    let mut options = StackOptions {
        env: vec![(
            "TTSQ_PROVIDERS_FAKE_API_KEY".to_owned(),
            FAKE_KEY.to_owned(),
        )],
        config_toml: config_toml(fake, quota),
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
