//! `ttsq`: parse the command line, load settings, run the chosen command.

mod cli_admin;
mod cli_client;
mod cli_config;
mod cli_output;
mod cli_webhooks;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use cli_output::{EXIT_CODES_HELP, Failure, Output, classified, fail};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use ttsq::{Services, dead_letters};
use ttsq_config::Settings;
use ttsq_providers::quota::ReplicaRole;
use ttsq_queue::Broker;
use ttsq_store::{Regrant, Store};

/// ttsq — queue-driven batch text-to-speech.
///
/// Settings come from built-in defaults (local Postgres, RabbitMQ, an S3
/// server on 127.0.0.1:8014 and the embedded espeak-ng voice), then the
/// optional config file, then TTSQ_* environment variables
/// (`ttsq config env` lists them all, `ttsq config check` validates them).
#[derive(Parser)]
#[command(version, about, long_about, after_help = EXIT_CODES_HELP)]
struct Cli {
    /// TOML config file layered over the defaults.
    #[arg(long, global = true, env = "TTSQ_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// How listings and results are printed on stdout.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,

    /// Deprecated: `--output json`.
    #[arg(long, global = true, hide = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (submit, poll, download) on server.listen, and
    /// /metrics, /health and the detailed /ready on server.ops_listen.
    Api,
    /// Consume queued jobs: batch by dialect, synthesize, store, finish.
    ///
    /// Run as many replicas as the providers' quotas allow. SIGTERM stops
    /// consuming and finishes in-flight batches within
    /// worker.shutdown_grace_secs; the rest is redelivered. /metrics,
    /// /health and /ready are served on worker.metrics_listen.
    Worker,
    /// API and one worker in one process, for a single machine (operations
    /// endpoints on server.ops_listen).
    All,
    /// Apply pending database migrations, then exit.
    ///
    /// Run it as the owner role (TTSQ_DATABASE_URL with the owner's
    /// credentials). With --grant-to, the service role that the api and
    /// worker connect as is then granted what they use: INSERT and SELECT
    /// only on the usage ledger and the audit log, so that it can neither
    /// change nor delete their rows nor disable their triggers. With
    /// --finance-role, a read-only role for finance may then read the usage
    /// views and the ledger, and nothing else. Every run grants the finance
    /// roles of earlier runs again. With --wait it applies nothing and waits
    /// for the schema instead, as the service role (a replica's init
    /// container).
    Migrate(MigrateArgs),
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
    /// Inspect, replay or purge the dead-letter queue.
    ///
    /// Messages land there when they cannot be decoded, when a job ran out
    /// of attempts (a copy, next to its `failed` task), or when RabbitMQ's
    /// delivery limit gave up on them.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Usage per tenant, provider and dialect from the finance views.
    ///
    /// It never migrates, so it runs as a finance role (`ttsq migrate
    /// --finance-role ROLE`) as well as the service role.
    Usage(cli_admin::UsageArgs),
    /// Tenants' webhook URL and signing secret; replay deliveries.
    Webhooks {
        #[command(subcommand)]
        command: cli_webhooks::WebhooksCommand,
    },
    /// List, describe, check or show the settings, connecting to nothing.
    Config {
        #[command(subcommand)]
        command: cli_config::ConfigCommand,
    },
    /// Speak a text through a running API and save the audio:
    /// `ttsq say "Hello" --dialect en-gb -o hello.mp3 [--priority high]`;
    /// `ttsq say - …` reads the text from stdin.
    ///
    /// Long texts: `ttsq say --file chapter.txt -d en-gb -o chapter.mp3`
    /// reads a UTF-8 file (at most 4 MiB) and submits it as a long job, as
    /// is any text longer than the dialect's max_request_chars (see
    /// `ttsq dialects --output json`): the server splits it into chunks
    /// synthesized in parallel and joins their audio into one file; a
    /// progress bar over the chunks shows on a terminal; Ctrl-C cancels the
    /// job. A failed chunk fails the job with its error (exit 1).
    ///
    /// Client commands (say, batch, jobs, dialects) reach the API at
    /// TTSQ_URL (or --url) with the key in TTSQ_API_KEY (or --api-key).
    /// The audio file is `-o/--out`; `--output` is how results are printed.
    #[command(after_help = EXIT_CODES_HELP)]
    Say(cli_client::SayArgs),
    /// Synthesize a JSON Lines file of jobs into a directory:
    /// `ttsq batch jobs.jsonl --out dir/`.
    ///
    /// Each line is one job with an `id` and the job's fields, e.g.
    /// {"id": "intro", "text": "Welcome.", "dialect": "en-gb", "format": "wav"}
    /// (normal priority; no per-line callback_url). Lines go to
    /// POST /v1/tts/batches, up to 1,000 per request, each batch with an
    /// Idempotency-Key of its content; a line the API refuses is recorded
    /// as an error and the rest of its batch is submitted without it.
    /// Writes dir/{id}.{ext}, dir/results.jsonl (one line per job: status,
    /// task id, file, error) and dir/submitted.jsonl (each line's task, as
    /// soon as it has one). Rerunning resumes: finished lines are skipped,
    /// lines submitted before are waited for, not submitted again, and lines
    /// that never became a task (or were edited) run again. Exits 1 if any
    /// job failed.
    #[command(after_help = EXIT_CODES_HELP)]
    Batch(cli_client::BatchArgs),
    /// List, show or cancel your tasks.
    #[command(after_help = EXIT_CODES_HELP)]
    Jobs(cli_client::JobsArgs),
    /// List the dialects the API serves, with voices, formats and providers.
    #[command(after_help = EXIT_CODES_HELP)]
    Dialects(cli_client::DialectsArgs),
    /// Print the API's OpenAPI 3.1 document (as committed in docs/openapi.json).
    Openapi,
    /// Print a shell completion script: `ttsq completions bash >
    /// ~/.local/share/bash-completion/completions/ttsq` (zsh: into a
    /// directory of $fpath as `_ttsq`; fish: ~/.config/fish/completions/ttsq.fish).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(clap::Args)]
struct MigrateArgs {
    /// The service role to grant what the service uses, after migrating
    /// (again on every run, so that new tables get their grants).
    #[arg(long, value_name = "ROLE")]
    grant_to: Option<String>,
    /// Apply nothing: wait until another process (the migration Job) has
    /// applied every migration of this build, then exit 0. Replicas run it
    /// as their init container, as the service role, so that none starts
    /// on an older schema. Exits 1 after --timeout.
    #[arg(long, conflicts_with_all = ["grant_to", "finance_role"])]
    wait: bool,
    /// With --wait: seconds to wait before giving up.
    #[arg(long, value_name = "SECS", default_value_t = 600, requires = "wait")]
    timeout: u64,
    /// A read-only role for finance, created NOLOGIN when missing (make
    /// logins members of it: GRANT ROLE TO alice): SELECT on usage_daily,
    /// usage_monthly, usage_ledger and usage_tenants, nothing else. It is
    /// recorded, and every later run grants it again.
    #[arg(long, value_name = "ROLE")]
    finance_role: Option<String>,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Show dead letters with their reason and their task's state (the
    /// queue is left unchanged).
    List {
        /// Most messages to show (`--output json` prints one JSON object
        /// per line).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Send back to the job queue the dead letters whose task is still
    /// unfinished. Failed tasks stay failed (resubmit those jobs);
    /// undecodable messages stay for inspection.
    Replay {
        /// Most messages to look at.
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
    },
    /// Delete every dead letter.
    Purge {
        /// Confirm: the messages are gone for good.
        #[arg(long)]
        yes: bool,
    },
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
    let mut telemetry = None;
    let result = runtime.block_on(run(cli, &mut telemetry));
    drop(runtime);
    // Flushes the spans still buffered; outside the runtime, as it blocks.
    drop(telemetry);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            cli_output::exit_code(&err)
        }
    }
}

async fn run(
    cli: Cli,
    telemetry: &mut Option<ttsq_telemetry::TelemetryGuard>,
) -> anyhow::Result<()> {
    let output = if cli.json {
        eprintln!("warning: --json is deprecated; use --output json");
        Output::Json
    } else {
        cli.output
    };
    // Client commands talk to a running API; they need no server settings,
    // and the config commands load them their own way.
    let command = match cli.command {
        Command::Config { command } => return cli_config::run(cli.config.as_deref(), command),
        Command::Say(args) => return cli_client::say(args, output).await,
        Command::Batch(args) => return cli_client::batch(args, output).await,
        Command::Jobs(args) => return cli_client::jobs(args, output).await,
        Command::Dialects(args) => return cli_client::dialects(args, output).await,
        Command::Openapi => return cli_client::openapi(),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "ttsq", &mut std::io::stdout());
            return Ok(());
        }
        other => other,
    };
    let settings = Settings::load(cli.config.as_deref(), std::env::vars())
        .context(classified(Failure::Usage, "invalid configuration"))?;
    let service = match command {
        Command::Api => "ttsq-api",
        Command::Worker => "ttsq-worker",
        Command::All => "ttsq-all",
        _ => "ttsq",
    };
    *telemetry = Some(ttsq_telemetry::init(
        settings.log.format,
        &ttsq::observability::trace_settings(service),
    ));

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
            let ops = services.bind_ops(role).await?;
            services
                .run(role, listener, ops, shutdown_on_signal())
                .await
        }
        Command::Migrate(args) if args.wait => {
            ttsq::wait_for_schema(&settings.database, Duration::from_secs(args.timeout)).await?;
            eprintln!("database is up to date");
            Ok(())
        }
        Command::Migrate(args) => {
            let store = ttsq::migrate(&settings.database, args.grant_to.as_deref()).await?;
            eprintln!("database is up to date");
            if let Some(role) = &args.grant_to {
                eprintln!("role {role} has the service's privileges");
            }
            let finance = ttsq::grant_finance(&store, args.finance_role.as_deref()).await?;
            if let Some(role) = &args.finance_role {
                let created = if finance.created {
                    " (created NOLOGIN)"
                } else {
                    ""
                };
                eprintln!(
                    "role {role}{created} may read the usage views and the ledger, nothing else"
                );
            }
            for outcome in finance.others {
                match outcome {
                    Regrant::Granted(role) => eprintln!("finance role {role} granted again"),
                    Regrant::Missing(role) => {
                        eprintln!("warning: finance role {role} no longer exists; not granted");
                    }
                    Regrant::Refused(role, why) => {
                        eprintln!("warning: finance role {role} not granted again: {why}");
                    }
                }
            }
            Ok(())
        }
        Command::Tenant { command } => {
            cli_admin::tenant(&migrated_store(&settings).await?, command, output).await
        }
        Command::Key { command } => {
            cli_admin::key(&migrated_store(&settings).await?, command, output).await
        }
        Command::Dlq { command } => dlq(&settings, command, output).await,
        Command::Usage(args) => {
            cli_admin::usage(
                &ttsq::finance_store(&settings.database).await?,
                args,
                output,
            )
            .await
        }
        Command::Webhooks { command } => {
            cli_webhooks::run(&settings, &migrated_store(&settings).await?, command).await
        }
        Command::Config { .. }
        | Command::Say(_)
        | Command::Batch(_)
        | Command::Jobs(_)
        | Command::Dialects(_)
        | Command::Openapi
        | Command::Completions { .. } => unreachable!("handled before settings are loaded"),
    }
}

#[expect(clippy::print_stdout, reason = "the listing is the command's output")]
async fn dlq(settings: &Settings, command: DlqCommand, output: Output) -> anyhow::Result<()> {
    if let DlqCommand::Purge { yes: false } = command {
        return Err(fail(
            Failure::Usage,
            "purging deletes every dead letter for good; add --yes to confirm",
        ));
    }
    let store = migrated_store(settings).await?;
    let broker = Broker::connect(&settings.queue, "ttsq-dlq")
        .await
        .context("Failed to connect to RabbitMQ (TTSQ_QUEUE_URL)")?;
    match command {
        DlqCommand::List { limit } => {
            let letters = dead_letters::list(&broker, &store, limit).await?;
            if output == Output::Json {
                for letter in &letters {
                    println!("{}", serde_json::to_string(letter)?);
                }
            } else {
                let rows: Vec<Vec<String>> = letters
                    .iter()
                    .map(|letter| {
                        vec![
                            letter
                                .task_id
                                .map_or_else(|| "(undecodable)".to_owned(), |id| id.to_string()),
                            letter.dialect.clone().unwrap_or_else(|| "-".to_owned()),
                            letter
                                .attempt
                                .map_or_else(|| "-".to_owned(), |a| a.to_string()),
                            letter.task_status.map_or("-", |s| s.as_str()).to_owned(),
                            if letter.replayable { "yes" } else { "no" }.to_owned(),
                            letter.reason.clone(),
                        ]
                    })
                    .collect();
                cli_output::print(
                    output,
                    &[
                        "TASK",
                        "DIALECT",
                        "ATTEMPT",
                        "TASK STATUS",
                        "REPLAYABLE",
                        "REASON",
                    ],
                    &rows,
                    &serde_json::Value::Null,
                )?;
                eprintln!("{} dead letter(s) shown", letters.len());
            }
        }
        DlqCommand::Replay { limit } => {
            let outcome = dead_letters::replay(&broker, &store, limit).await?;
            eprintln!(
                "replayed {} dead letter(s); {} kept (task finished, unknown or undecodable)",
                outcome.replayed, outcome.kept
            );
        }
        DlqCommand::Purge { .. } => {
            let purged = broker.dlq_purge().await?;
            eprintln!("purged {purged} dead letter(s)");
        }
    }
    broker.close().await;
    Ok(())
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
/// run against a new one (as the service role, on an up-to-date database
/// migrating only reads what is applied).
async fn migrated_store(settings: &Settings) -> anyhow::Result<Store> {
    ttsq::migrate(&settings.database, None).await
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
