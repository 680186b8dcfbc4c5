//! `ttsq`: parse the command line, load settings, run the chosen command.

mod cli_admin;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use ttsq::Services;
use ttsq_config::Settings;
use ttsq_providers::quota::ReplicaRole;
use ttsq_store::Store;

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
    /// Manage tenants (customer accounts) and their limits.
    Tenant {
        #[command(subcommand)]
        command: cli_admin::TenantCommand,
    },
    /// Manage API keys.
    Key {
        #[command(subcommand)]
        command: cli_admin::KeyCommand,
    },
    /// Usage per tenant, provider and dialect from the finance views.
    Usage(cli_admin::UsageArgs),
    /// Inspect configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
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
    let settings =
        Settings::load(cli.config.as_deref(), std::env::vars()).context("invalid configuration")?;
    ttsq_telemetry::init(settings.log.format);

    match cli.command {
        Command::Api | Command::Worker | Command::All => {
            let role = match cli.command {
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
        Command::Tenant { command } => {
            cli_admin::tenant(&migrated_store(&settings).await?, command).await
        }
        Command::Key { command } => {
            cli_admin::key(&migrated_store(&settings).await?, command).await
        }
        Command::Usage(args) => cli_admin::usage(&migrated_store(&settings).await?, args).await,
        Command::Config { .. } => unreachable!("handled before settings are loaded"),
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
