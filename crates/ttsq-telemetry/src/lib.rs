#![doc = include_str!("../README.md")]

use tracing_subscriber::{EnvFilter, fmt, prelude::*};
use ttsq_config::LogFormat;

/// Filter used when `RUST_LOG` is unset: our crates at info, noisy
/// dependencies at warn.
const DEFAULT_FILTER: &str =
    "info,sqlx=warn,lapin=warn,aws_config=warn,aws_smithy_runtime=warn,tower_http=info";

/// Installs the subscriber; logs go to stderr so stdout stays for command
/// output (a new API key, say). Calling it twice is harmless.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Pretty => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    if result.is_err() {
        tracing::debug!("a tracing subscriber was already installed");
    }
}
