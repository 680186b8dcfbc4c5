//! `ttsq`: parse the command line, load settings, run the chosen command.

mod cli_client;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use ttsq::Services;
use ttsq_config::Settings;
use ttsq_providers::quota::ReplicaRole;
use ttsq_store::{Store, StoreError};

/// ttsq — queue-driven batch text-to-speech.
///
/// Settings come from built-in defaults (local Postgres, RabbitMQ, an S3
/// server on 127.0.0.1:8014 and the embedded espeak-ng voice), then the
/// optional config file, then TTSQ_* environment variables
/// (`ttsq config env` lists them all).
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// TOML config file layered over the defaults.
    #[arg(long, global = true, env = "TTSQ_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (submit, poll, download) on server.listen.
    Api,
    /// Consume queued jobs: batch by dialect, synthesize, store, finish.
    ///
    /// Run as many replicas as the providers' quotas allow. SIGTERM stops
    /// consuming and finishes in-flight batches within
    /// worker.shutdown_grace_secs; the rest is redelivered.
    Worker,
    /// API and one worker in one process, for a single machine.
    All,
    /// Apply pending database migrations, then exit.
    Migrate,
    /// Manage tenants (customer accounts).
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Manage API keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Inspect configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Speak a text through a running API and save the audio:
    /// `ttsq say "Hello" --dialect en-gb -o hello.mp3 [--priority high]`.
    ///
    /// Client commands (say, batch, jobs, dialects) reach the API at
    /// TTSQ_URL (or --url) with the key in TTSQ_API_KEY (or --api-key).
    Say(cli_client::SayArgs),
    /// Synthesize a JSON Lines file of jobs into a directory:
    /// `ttsq batch jobs.jsonl --out dir/`.
    ///
    /// Each line is one job with an `id` and the job's fields, e.g.
    /// {"id": "intro", "text": "Welcome.", "dialect": "en-gb", "format": "wav"}.
    /// Writes dir/{id}.{ext} and dir/results.jsonl (one line per job: status,
    /// task id, file, error). Rerunning resumes: finished lines are skipped,
    /// and every submission carries an Idempotency-Key derived from the
    /// line's id and content, so nothing is synthesized twice. Exits non-zero
    /// if any job failed.
    Batch(cli_client::BatchArgs),
    /// List, show or cancel your tasks.
    Jobs(cli_client::JobsArgs),
    /// List the dialects the API serves, with voices, formats and providers.
    Dialects(cli_client::DialectsArgs),
    /// Print the API's OpenAPI 3.1 document (as committed in docs/openapi.json).
    Openapi,
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant and print its first API key on stdout (shown once;
    /// only its hash is stored).
    Create {
        /// Unique tenant name.
        name: String,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create another API key for an existing tenant and print it on stdout.
    Create {
        /// The tenant's name.
        tenant: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print every TTSQ_* variable with its default, as a .env file.
    Env,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[expect(
    clippy::print_stdout,
    reason = "command output (a new key, the variable listing) belongs on stdout"
)]
async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Config {
        command: ConfigCommand::Env,
    } = cli.command
    {
        for (var, default) in Settings::env_reference() {
            println!("{var}={default}");
        }
        return Ok(());
    }
    // Client commands talk to a running API; they need no server settings.
    let command = match cli.command {
        Command::Say(args) => return cli_client::say(args).await,
        Command::Batch(args) => return cli_client::batch(args).await,
        Command::Jobs(args) => return cli_client::jobs(args).await,
        Command::Dialects(args) => return cli_client::dialects(args).await,
        Command::Openapi => return cli_client::openapi(),
        other => other,
    };
    let settings =
        Settings::load(cli.config.as_deref(), std::env::vars()).context("invalid configuration")?;
    ttsq_telemetry::init(settings.log.format);

    match command {
        Command::Api | Command::Worker | Command::All => {
            let role = match command {
                Command::Api => ReplicaRole::Api,
                Command::Worker => ReplicaRole::Worker,
                _ => ReplicaRole::All,
            };
            let listener = match role {
                ReplicaRole::Worker => None,
                ReplicaRole::Api | ReplicaRole::All => Some(bind(&settings).await?),
            };
            let services = Services::connect(settings, role.as_str()).await?;
            services.run(role, listener, shutdown_on_signal()).await
        }
        Command::Migrate => {
            migrated_store(&settings).await?;
            eprintln!("database is up to date");
            Ok(())
        }
        Command::Tenant {
            command: TenantCommand::Create { name },
        } => {
            let store = migrated_store(&settings).await?;
            let (tenant, key) = store.create_tenant(&name).await.map_err(explain)?;
            eprintln!(
                "created tenant `{}` ({}); its API key, shown only now:",
                tenant.name, tenant.id
            );
            println!("{}", key.key.expose_secret());
            Ok(())
        }
        Command::Key {
            command: KeyCommand::Create { tenant },
        } => {
            let store = migrated_store(&settings).await?;
            let key = store.create_key(&tenant).await.map_err(explain)?;
            eprintln!(
                "new API key for `{tenant}` (prefix {}), shown only now:",
                key.prefix
            );
            println!("{}", key.key.expose_secret());
            Ok(())
        }
        Command::Config { .. }
        | Command::Say(_)
        | Command::Batch(_)
        | Command::Jobs(_)
        | Command::Dialects(_)
        | Command::Openapi => unreachable!("handled before settings are loaded"),
    }
}

async fn bind(settings: &Settings) -> anyhow::Result<TcpListener> {
    TcpListener::bind(settings.server.listen)
        .await
        .with_context(|| {
            format!(
                "Failed to listen on {} (TTSQ_SERVER_LISTEN)",
                settings.server.listen
            )
        })
}

/// A store on a migrated database: admin commands may be the first thing
/// run against a new one.
async fn migrated_store(settings: &Settings) -> anyhow::Result<Store> {
    let store = Store::connect(&settings.database)
        .await
        .context("Failed to connect to Postgres (TTSQ_DATABASE_URL)")?;
    store
        .migrate()
        .await
        .context("Failed to migrate the database")?;
    Ok(store)
}

fn explain(err: StoreError) -> anyhow::Error {
    match err {
        StoreError::Conflict(_) | StoreError::NotFound(_) => anyhow::anyhow!("{err}"),
        other => anyhow::Error::new(other),
    }
}

/// A token cancelled on SIGINT (Ctrl-C) or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(err) => {
                        tracing::error!(error = %err, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        trigger.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        trigger.cancel();
    });
    token
}
