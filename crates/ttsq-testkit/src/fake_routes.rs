//! The config file of a stack whose provider is the fake vendor
//! (`ttsq-fake-provider`): one provider `fake`, speaking OpenAI's wire
//! format, and the routes to it.

use std::fmt::Display;

/// Builds [`TestOptions::config_toml`](crate::TestOptions::config_toml) for
/// a provider `fake` (`kind = "openai"`) at the fake's base URL, serving
/// `en-gb` with the voice `rachel`. Its key is the variable
/// `TTSQ_PROVIDERS_FAKE_API_KEY`, which the test sets.
#[derive(Debug, Clone)]
pub struct FakeRoutes {
    /// The fake's `http://…` base URL.
    base_url: String,
    /// More lines of the provider's table, as written.
    settings: Vec<String>,
    /// espeak serves `en-gb` when the fake fails.
    espeak_after_fake: bool,
    /// The fake serves `en-gb` only; espeak every other dialect.
    espeak_for_other_dialects: bool,
}

impl FakeRoutes {
    /// Every dialect routed to the fake alone: when it fails, the job
    /// fails.
    pub fn new(base_url: impl Display) -> Self {
        Self {
            base_url: base_url.to_string(),
            settings: Vec::new(),
            espeak_after_fake: false,
            espeak_for_other_dialects: false,
        }
    }

    /// Adds a line to the provider's table, e.g. `model = "tts-1"` or
    /// `quota = { max_concurrent = 8 }`.
    pub fn with(mut self, setting: &str) -> Self {
        self.settings.push(setting.to_owned());
        self
    }

    /// Routes `en-gb` to the fake and every other dialect to espeak.
    pub fn espeak_for_other_dialects(mut self) -> Self {
        self.espeak_for_other_dialects = true;
        self
    }

    /// Routes `en-gb` to the fake, then espeak, and every other dialect to
    /// espeak.
    pub fn espeak_fallback(mut self) -> Self {
        self.espeak_after_fake = true;
        self.espeak_for_other_dialects()
    }

    /// The config file's contents.
    pub fn toml(&self) -> String {
        let base_url = &self.base_url;
        let settings: String = self
            .settings
            .iter()
            .map(|line| format!("{line}\n"))
            .collect();
        let chain = if self.espeak_after_fake {
            r#"["fake", "espeak"]"#
        } else {
            r#"["fake"]"#
        };
        let routes = if self.espeak_for_other_dialects {
            format!(
                r#"
[[routes]]
dialects = ["en-gb"]
chain = {chain}

[[routes]]
dialects = ["*"]
chain = ["espeak"]
"#
            )
        } else {
            format!(
                r#"
[[routes]]
dialects = ["*"]
chain = {chain}
"#
            )
        };
        format!(
            r#"[providers.fake]
kind = "openai"
base_url = "{base_url}"
{settings}dialects = [{{ id = "en-gb", voices = ["rachel"] }}]
{routes}"#
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fake_with_espeak_behind_it() {
        let toml = FakeRoutes::new("http://127.0.0.1:9")
            .with("quota = { max_concurrent = 8 }")
            .espeak_fallback()
            .toml();
        assert_eq!(
            toml,
            r#"[providers.fake]
kind = "openai"
base_url = "http://127.0.0.1:9"
quota = { max_concurrent = 8 }
dialects = [{ id = "en-gb", voices = ["rachel"] }]

[[routes]]
dialects = ["en-gb"]
chain = ["fake", "espeak"]

[[routes]]
dialects = ["*"]
chain = ["espeak"]
"#
        );
        let alone = FakeRoutes::new("http://127.0.0.1:9").toml();
        assert!(
            alone.ends_with("\n[[routes]]\ndialects = [\"*\"]\nchain = [\"fake\"]\n"),
            "{alone}"
        );
    }
}
