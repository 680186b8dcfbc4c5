//! `ttsq config check`, `show` and `schema` as a deployment script runs
//! them: the binary itself, on files, with no service running (nothing here
//! may connect to one).

use std::{io::Write, path::Path, process::Output};

use serde_json::Value;

/// `ttsq config ARGS…` with no TTSQ_* variable but those in `env`.
fn ttsq_config(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ttsq"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .arg("config")
        .args(args)
        .envs(env.iter().copied());
    command.output().expect("ttsq ran")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn file_with(dir: &Path, name: &str, content: &str) -> String {
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).expect("a temp file");
    file.write_all(content.as_bytes()).expect("written");
    path.to_str().expect("a UTF-8 temp path").to_owned()
}

/// A provider and a route over it, as a deployment's config file has them.
const GOOD_CONFIG: &str = r#"
[worker]
batch_size = 16

[providers.eleven]
kind = "elevenlabs"
base_url = "https://api.example.test"
dialects = [{ id = "en-gb", voices = ["v1"] }]

[[routes]]
dialects = ["en-*"]
chain = ["eleven", "espeak"]
"#;

#[test]
fn a_valid_file_and_env_file_pass_with_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = file_with(dir.path(), "ttsq.toml", GOOD_CONFIG);
    let env = file_with(
        dir.path(),
        "secret.env",
        "# the Secret\nTTSQ_PROVIDERS_ELEVEN_API_KEY=sk-test\nTTSQ_CONFIG=/etc/ttsq/ttsq.toml\n",
    );

    let checked = ttsq_config(&["check", "--config", &config, "--env-file", &env], &[]);

    assert!(checked.status.success(), "{}", text(&checked.stderr));
    let stdout = text(&checked.stdout);
    assert!(stdout.starts_with("configuration is valid"), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        text(&checked.stderr).contains("TTSQ_CONFIG"),
        "the env file's TTSQ_CONFIG is said to be ignored"
    );
}

#[test]
fn a_bad_provider_fails_naming_its_variable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = file_with(
        dir.path(),
        "ttsq.toml",
        &GOOD_CONFIG.replace("https://api.example.test", "api.example.test"),
    );

    let checked = ttsq_config(&["check", "--config", &config], &[]);

    assert!(!checked.status.success());
    let stderr = text(&checked.stderr);
    assert!(
        stderr.contains("providers.eleven.base_url")
            && stderr.contains("TTSQ_PROVIDERS_ELEVEN_BASE_URL")
            && stderr.contains("must be an http(s) URL"),
        "{stderr}"
    );
}

#[test]
fn the_env_file_overrides_the_config_file_and_alone_is_the_environment() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = file_with(dir.path(), "ttsq.toml", GOOD_CONFIG);
    let bad_env = file_with(dir.path(), "bad.env", "TTSQ_WORKER_BATCH_SIZE=0\n");
    let good_env = file_with(dir.path(), "good.env", "TTSQ_WORKER_BATCH_SIZE=8\n");
    // A variable ttsq does not know, in the process's own environment.
    let shell = [("TTSQ_WROKER_BATCH_SIZE", "1")];

    let refused = ttsq_config(
        &["check", "--config", &config, "--env-file", &bad_env],
        &shell,
    );
    let accepted = ttsq_config(
        &["check", "--config", &config, "--env-file", &good_env],
        &shell,
    );
    let from_the_shell = ttsq_config(&["check", "--config", &config], &shell);

    let stderr = text(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("TTSQ_WORKER_BATCH_SIZE, set in the environment")
            && stderr.contains("must be at least 1"),
        "{stderr}"
    );
    assert!(accepted.status.success(), "{}", text(&accepted.stderr));
    assert!(!from_the_shell.status.success());
    assert!(text(&from_the_shell.stderr).contains("TTSQ_WROKER_BATCH_SIZE"));
}

#[test]
fn show_prints_the_settings_in_effect_without_secrets() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = file_with(dir.path(), "ttsq.toml", GOOD_CONFIG);
    let env = file_with(
        dir.path(),
        "secret.env",
        "TTSQ_PROVIDERS_ELEVEN_API_KEY=sk-test-value\nTTSQ_SERVER_LISTEN=0.0.0.0:9000\n",
    );

    let shown = ttsq_config(&["show", "--config", &config, "--env-file", &env], &[]);

    assert!(shown.status.success(), "{}", text(&shown.stderr));
    let stdout = text(&shown.stdout);
    assert!(!stdout.contains("sk-test-value"), "{stdout}");
    let settings: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(settings["server"]["listen"], "0.0.0.0:9000");
    assert_eq!(settings["worker"]["batch_size"], 16);
    assert_eq!(settings["providers"]["eleven"]["api_key"], "[redacted]");
    assert_eq!(
        settings["admin"]["token"], "",
        "an unset secret shows as empty"
    );
    assert_eq!(settings["database"]["url"], "[redacted]");
}

#[test]
fn schema_lists_every_setting_with_its_variable_default_and_secrecy() {
    let schema = ttsq_config(&["schema"], &[]);

    assert!(schema.status.success(), "{}", text(&schema.stderr));
    let schema: Value = serde_json::from_slice(&schema.stdout).expect("JSON");
    let setting = |key: &str| {
        schema["settings"]
            .as_array()
            .expect("a list of settings")
            .iter()
            .find(|s| s["key"] == key)
            .unwrap_or_else(|| panic!("{key} is listed"))
            .clone()
    };
    let batch_size = setting("worker.batch_size");
    assert_eq!(batch_size["env"], "TTSQ_WORKER_BATCH_SIZE");
    assert_eq!(batch_size["type"], "integer");
    assert_eq!(batch_size["default"], 64);
    assert_eq!(batch_size["secret"], false);
    assert_eq!(batch_size["doc"], "Most jobs in one batch.");
    let api_key = setting("providers.<name>.api_key");
    assert_eq!(api_key["env"], "TTSQ_PROVIDERS_<NAME>_API_KEY");
    assert_eq!(api_key["secret"], true);
    assert_eq!(
        setting("routes")["env"],
        Value::Null,
        "routes are file only"
    );
    assert!(
        schema["reserved_vars"]
            .as_array()
            .expect("a list")
            .contains(&"TTSQ_CONFIG".into())
    );
}
