//! Why settings could not be loaded.

use std::{fmt, path::PathBuf};

/// Why settings could not be loaded; each names the key and where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// Parser message with line and column.
        message: String,
    },
    /// An environment variable is unknown, unreadable or of the wrong type.
    #[error("{var}: {reason}")]
    Env {
        /// The variable.
        var: String,
        /// Why it was refused.
        reason: String,
    },
    /// A setting has the wrong type or an invalid value.
    #[error("setting `{key}` (env {var}{origin}): {reason}")]
    Invalid {
        /// Dotted key.
        key: String,
        /// The variable that sets it.
        var: String,
        /// Where the bad value came from, when not the defaults.
        origin: Origin,
        /// Why it was refused.
        reason: String,
    },
}

/// Where a setting's value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The embedded defaults or the config file.
    File,
    /// The environment.
    Env,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File => Ok(()),
            Self::Env => f.write_str(", set in the environment"),
        }
    }
}
