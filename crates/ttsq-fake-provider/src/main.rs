//! `ttsq-fake-provider`: the fake TTS vendor as a standalone server, for
//! benchmarks and manual runs. Prints its base URL on stdout, then serves
//! until Ctrl-C or SIGTERM. Every knob can also be changed while it runs with
//! `POST /_fake/config` (a partial JSON `FakeConfig`).

use std::{net::SocketAddr, process::ExitCode};

use clap::Parser;
use ttsq_fake_provider::{
    ApiKeys, FakeConfig, FakeProvider, FakeVoice, Faults, Latency, Quota, Streaming, config,
};

/// A loopback server speaking the ElevenLabs, OpenAI and generic TTS wire
/// formats with synthetic audio, configurable latency, faults and quota.
///
/// Routes: POST /v1/text-to-speech/{voice_id}, GET /v1/voices, GET /v1/user
/// (ElevenLabs); POST /v1/audio/speech, GET /v1/models (OpenAI); POST /tts,
/// GET /voices, GET /health (generic); POST /_fake/config, GET /_fake/stats,
/// POST /_fake/reset (control).
#[derive(Debug, Parser)]
#[command(name = "ttsq-fake-provider", version)]
struct Cli {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "FAKE_PROVIDER_ADDR", default_value = "127.0.0.1:0")]
    addr: SocketAddr,

    /// Key ElevenLabs routes expect in `xi-api-key`; empty accepts any.
    #[arg(long, default_value = config::DEFAULT_ELEVENLABS_KEY)]
    elevenlabs_key: String,

    /// Token OpenAI routes expect after `Authorization: Bearer`; empty accepts any.
    #[arg(long, default_value = config::DEFAULT_OPENAI_KEY)]
    openai_key: String,

    /// Value the generic `POST /tts` expects in `--http-auth-header`; empty accepts any.
    #[arg(long, default_value = config::DEFAULT_HTTP_KEY)]
    http_key: String,

    /// Header the generic `POST /tts` reads its key from.
    #[arg(long, default_value = config::DEFAULT_HTTP_AUTH_HEADER)]
    http_auth_header: String,

    /// Fixed delay before each synthesis answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,

    /// Extra delay drawn uniformly from 0..=N milliseconds, per request.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,

    /// Fraction (0–1) of synthesis requests answered with a vendor-shaped 500 or 503.
    #[arg(long, default_value_t = 0.0)]
    server_error_rate: f64,

    /// Fraction (0–1) of synthesis requests held for --timeout-hold-ms, then 504.
    #[arg(long, default_value_t = 0.0)]
    timeout_rate: f64,

    /// How long a "timeout" request is held, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    timeout_hold_ms: u64,

    /// Fraction (0–1) of synthesis requests answered with garbage audio or a truncated JSON error.
    #[arg(long, default_value_t = 0.0)]
    malformed_rate: f64,

    /// Start down: every vendor request, health checks included, gets a 503.
    #[arg(long)]
    down: bool,

    /// Start with the account's credits exhausted (the vendor's quota_exceeded error).
    #[arg(long)]
    credits_exhausted: bool,

    /// Admitted synthesis requests per sliding second; more get 429 with Retry-After.
    #[arg(long)]
    requests_per_second: Option<u32>,

    /// Characters of admitted synthesis text per sliding minute; more get 429 with Retry-After.
    #[arg(long)]
    characters_per_minute: Option<u64>,

    /// Synthesis requests handled at once; more get 429 with Retry-After.
    #[arg(long)]
    max_concurrent: Option<u32>,

    /// A voice the fake knows, as `id:dialect`; repeat for more. Without any,
    /// the defaults (alloy, nova, default: en-us; rachel: en-gb) apply.
    #[arg(long = "voice", value_parser = parse_voice)]
    voices: Vec<FakeVoice>,

    /// Accept every voice and dialect.
    #[arg(long, conflicts_with = "voices")]
    any_voice: bool,

    /// Audio milliseconds per character of text at speed 1.0.
    #[arg(long, default_value_t = 60)]
    ms_per_char: u32,

    /// Longest audio answered, in milliseconds (at most 30000).
    #[arg(long, default_value_t = 10_000)]
    max_audio_ms: u32,

    /// Recent requests kept in the log served by GET /_fake/stats.
    #[arg(long, default_value_t = 1_000)]
    log_capacity: usize,

    /// Send audio in this many chunks (0 or 1: whole), as a streaming vendor does.
    #[arg(long, default_value_t = 0)]
    stream_chunks: u32,

    /// Milliseconds over which the chunks are spread.
    #[arg(long, default_value_t = 0)]
    stream_spread_ms: u64,

    /// Break the connection after this many chunks (a vendor failing mid-stream).
    #[arg(long)]
    stream_fail_after_chunks: Option<u32>,
}

fn parse_voice(value: &str) -> Result<FakeVoice, String> {
    match value.split_once(':') {
        Some((id, dialect)) if !id.is_empty() && !dialect.is_empty() => {
            Ok(FakeVoice::new(id, dialect))
        }
        _ => Err(format!("expected `id:dialect`, got `{value}`")),
    }
}

impl Cli {
    fn into_config(self) -> FakeConfig {
        let key = |k: String| (!k.is_empty()).then_some(k);
        let defaults = FakeConfig::default();
        FakeConfig {
            keys: ApiKeys {
                elevenlabs: key(self.elevenlabs_key),
                openai: key(self.openai_key),
                http: key(self.http_key),
            },
            http_auth_header: self.http_auth_header,
            latency: Latency {
                fixed_ms: self.latency_ms,
                jitter_ms: self.jitter_ms,
            },
            faults: Faults {
                server_error_rate: self.server_error_rate,
                timeout_rate: self.timeout_rate,
                timeout_hold_ms: self.timeout_hold_ms,
                malformed_rate: self.malformed_rate,
            },
            down: self.down,
            credits_exhausted: self.credits_exhausted,
            quota: Quota {
                requests_per_second: self.requests_per_second,
                characters_per_minute: self.characters_per_minute,
                max_concurrent: self.max_concurrent,
            },
            voices: if self.any_voice {
                Vec::new()
            } else if self.voices.is_empty() {
                defaults.voices
            } else {
                self.voices
            },
            log_capacity: self.log_capacity,
            ms_per_char: self.ms_per_char,
            max_audio_ms: self.max_audio_ms,
            streaming: Streaming {
                chunks: self.stream_chunks,
                spread_ms: self.stream_spread_ms,
                fail_after_chunks: self.stream_fail_after_chunks,
            },
            refuse_texts_containing: defaults.refuse_texts_containing,
            slow_texts_containing: defaults.slow_texts_containing,
            slow_texts_latency_ms: defaults.slow_texts_latency_ms,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
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
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

#[expect(
    clippy::print_stdout,
    reason = "the base URL on stdout is how scripts find the fake"
)]
async fn run(cli: Cli) -> std::io::Result<()> {
    let addr = cli.addr;
    let fake = FakeProvider::start_on(addr, cli.into_config()).await?;
    println!("{}", fake.base_url());
    tracing::info!(base_url = %fake.base_url(), "fake provider listening");
    shutdown_signal().await;
    tracing::info!("shutting down");
    fake.shutdown().await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_become_the_configuration() {
        let cli = Cli::parse_from([
            "ttsq-fake-provider",
            "--openai-key",
            "",
            "--max-concurrent",
            "4",
            "--voice",
            "a:en-us",
            "--latency-ms",
            "5",
        ]);

        let config = cli.into_config();

        assert_eq!(config.keys.openai, None);
        assert!(config.keys.elevenlabs.is_some());
        assert_eq!(config.quota.max_concurrent, Some(4));
        assert_eq!(config.voices, vec![FakeVoice::new("a", "en-us")]);
        assert_eq!(config.latency.fixed_ms, 5);
    }
}
