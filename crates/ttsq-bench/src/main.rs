//! `ttsq-bench`: runs ttsq on a live stack (RabbitMQ, Postgres, S3) with the
//! in-process fake provider, measures the raw limits of those parts in the
//! same run, and prints one Markdown table per scenario on stdout. Progress
//! goes to stderr. See `docs/benchmarks.md`.

mod baseline;
mod cli;
mod cost;
mod env;
mod load;
mod report;
mod scenarios;
mod stack;

use std::{path::PathBuf, process::ExitCode, time::Instant};

use clap::Parser;

use crate::{cli::Args, env::Env};

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let ttsq_bin = match &args.ttsq_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(|dir| dir.join("ttsq"))
            .unwrap_or_else(|| PathBuf::from("ttsq")),
    };
    anyhow::ensure!(
        ttsq_bin.exists(),
        "the ttsq binary {} does not exist (build it, or pass --ttsq-bin)",
        ttsq_bin.display()
    );
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let work_dir = std::env::temp_dir().join(format!("ttsq-bench-{}", &run_id[..8]));
    std::fs::create_dir_all(&work_dir)?;
    let env = Env {
        ttsq_bin,
        admin_url: args.database_url.clone(),
        amqp_url: args.amqp_url.clone(),
        s3_endpoint: args.s3_endpoint.clone(),
        s3_key: args.s3_access_key.clone(),
        s3_secret: args.s3_secret_key.clone(),
        bucket: format!("ttsq-bench-{}", &run_id[..12]),
        settings: args.settings.clone(),
        work_dir,
    };
    eprintln!(
        "ttsq-bench: {} run, binary {}, bucket {}, logs in {}",
        if args.smoke { "smoke" } else { "full" },
        env.ttsq_bin.display(),
        env.bucket,
        env.work_dir.display()
    );
    let started = Instant::now();
    let result = scenarios::run_all(&args, &env).await;
    if !args.keep_bucket
        && let Err(err) = baseline::empty_bucket(&env).await
    {
        eprintln!("(could not empty bucket {}: {err:#})", env.bucket);
    }
    eprintln!(
        "ttsq-bench: finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    result
}
