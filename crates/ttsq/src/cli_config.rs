//! `ttsq config …`: list, describe, check and show the settings. Nothing
//! here connects to Postgres, RabbitMQ or S3, so a deployment's settings can
//! be checked on any machine before they reach one.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use ttsq_config::{ENV_PREFIX, Settings};

use crate::cli_output::{Failure, classified};

/// What `ttsq config` does.
#[derive(Subcommand)]
pub(crate) enum ConfigCommand {
    /// Print every TTSQ_* variable with its default, as a .env file.
    Env,
    /// Check the settings as a start would, connecting to nothing.
    ///
    /// Loads them as `ttsq api` and `ttsq worker` would and runs every check
    /// of a start, but connects to nothing. Prints one line and exits 0 when
    /// they are valid; exits 1 with the setting, its variable and the reason
    /// when not.
    ///
    /// The layers are those of a start: the defaults, the file of --config
    /// (or TTSQ_CONFIG), then the environment, which is this process's
    /// unless --env-file is given.
    ///
    /// Example, a Kubernetes deployment's ConfigMap file and Secret:
    /// `ttsq config check --config ttsq.toml --env-file ttsq.secret.env`
    Check(SourceArgs),
    /// Print the settings in effect as JSON, secrets redacted.
    ///
    /// Every secret shows only as "[redacted]" (or "" when unset). Loads and
    /// checks the settings as `check` does, and fails the same way.
    Show(SourceArgs),
    /// Print every setting as JSON: key, variable, type, default, doc.
    ///
    /// Each entry also says whether the setting is a secret.
    /// The list is derived from the settings' own types, so it is what
    /// `check` accepts. `<name>` stands for a name the file chooses
    /// (`providers.<name>.api_key` is TTSQ_PROVIDERS_<NAME>_API_KEY).
    Schema {
        /// Print the JSON Schema (draft 2020-12) of the config file instead,
        /// e.g. for an editor that checks TOML against one.
        #[arg(long)]
        json_schema: bool,
    },
}

/// Where `check` and `show` take the environment from.
#[derive(clap::Args)]
pub(crate) struct SourceArgs {
    /// Take the environment from this file alone: the process's own TTSQ_*
    /// variables are then ignored, so that the shell cannot change the
    /// verdict on a deployment's settings. One NAME=VALUE a line, as in
    /// .env, a compose env_file or `kubectl create secret --from-env-file`;
    /// blank lines and lines starting with # are skipped, `export ` and
    /// quotes around the value are dropped. Its TTSQ_CONFIG is not followed
    /// (it names a path where the service runs): give the file with
    /// --config. A relative path in a VAR_FILE variable is read from the
    /// current directory.
    #[arg(long, value_name = "FILE")]
    env_file: Option<PathBuf>,
}

/// Runs a `ttsq config` command; `config` is the --config file, if any.
#[expect(
    clippy::print_stdout,
    reason = "the listing, the verdict and the documents are the commands' output"
)]
pub(crate) fn run(config: Option<&Path>, command: ConfigCommand) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Env => {
            for (var, default) in Settings::env_reference() {
                println!("{var}={default}");
            }
        }
        ConfigCommand::Check(source) => {
            let (env, from) = environment(&source)?;
            let count = env
                .iter()
                .filter(|(name, _)| name.starts_with(ENV_PREFIX))
                .count();
            Settings::load(config, env)
                .context(classified(Failure::Usage, "invalid configuration"))?;
            let file = config.map_or_else(
                || "no config file".to_owned(),
                |path| path.display().to_string(),
            );
            println!(
                "configuration is valid: the defaults, {file}, {count} {ENV_PREFIX}* \
                 variable(s) from {from}"
            );
        }
        ConfigCommand::Show(source) => {
            let (env, _) = environment(&source)?;
            let settings = Settings::load(config, env)
                .context(classified(Failure::Usage, "invalid configuration"))?;
            println!("{}", serde_json::to_string_pretty(&settings)?);
        }
        ConfigCommand::Schema { json_schema } => {
            let document = if json_schema {
                serde_json::to_string_pretty(&Settings::json_schema())?
            } else {
                serde_json::to_string_pretty(&Settings::schema())?
            };
            println!("{document}");
        }
    }
    Ok(())
}

/// The variables to load with, and where they came from in words.
fn environment(source: &SourceArgs) -> anyhow::Result<(Vec<(String, String)>, String)> {
    let Some(path) = &source.env_file else {
        return Ok((std::env::vars().collect(), "the environment".to_owned()));
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("Failed to read the env file {}", path.display()))?;
    let vars = parse_env_file(&text)
        .with_context(|| format!("Failed to parse the env file {}", path.display()))?;
    if vars.iter().any(|(name, _)| name == "TTSQ_CONFIG") {
        eprintln!(
            "note: {} sets TTSQ_CONFIG, which names the file where the service runs and is \
             not followed here; give the file with --config",
            path.display()
        );
    }
    Ok((vars, path.display().to_string()))
}

/// `NAME=VALUE` lines; blank and `#` lines skipped, `export ` and one pair
/// of quotes around the value dropped.
fn parse_env_file(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut vars = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, value)) = line.split_once('=') else {
            anyhow::bail!("line {}: expected NAME=VALUE", number + 1);
        };
        let value = value.trim();
        let value = ['"', '\'']
            .iter()
            .find_map(|quote| {
                value
                    .strip_prefix(*quote)
                    .and_then(|v| v.strip_suffix(*quote))
            })
            .unwrap_or(value);
        vars.push((name.trim().to_owned(), value.to_owned()));
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::parse_env_file;

    #[test]
    fn env_files_read_like_dotenv_files() {
        let vars = parse_env_file(
            "# a comment\n\nTTSQ_A=1\nexport TTSQ_B = \"two words\"\nTTSQ_C='x=y'\nTTSQ_D=\n",
        )
        .unwrap();
        let expected = [
            ("TTSQ_A", "1"),
            ("TTSQ_B", "two words"),
            ("TTSQ_C", "x=y"),
            ("TTSQ_D", ""),
        ];
        assert_eq!(
            vars,
            expected.map(|(k, v)| (k.to_owned(), v.to_owned())).to_vec()
        );
        assert!(parse_env_file("no equals sign").is_err());
    }
}
