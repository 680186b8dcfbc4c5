//! What every command shares about its results: how they are printed
//! (`--output table|json|csv`) and which exit code a failure gives.

use std::{fmt::Write as _, io::Write as _, process::ExitCode};

use anyhow::Context;
use clap::ValueEnum;
use ttsq_client::ClientError;

/// How a command prints its results on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Output {
    /// Aligned columns (or a sentence on stderr) for people.
    #[default]
    Table,
    /// JSON, for programs.
    Json,
    /// RFC 4180 CSV with a header row, for spreadsheets.
    Csv,
}

/// The exit codes, as `ttsq --help` lists them.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  the work failed: a job failed or was cancelled, the API refused a
     request (4xx other than auth), or the command failed otherwise
  2  usage or configuration error: bad arguments, no API key, a bad input
     file, invalid settings (nothing was submitted)
  3  the API cannot be reached or is unavailable (connection refused,
     timeout, 502/503/504 after retries): try again later
  4  the API refused the key (401) or the action (403)";

/// A failure classified for its exit code; other errors exit 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Some jobs failed or were cancelled (exit 1).
    JobsFailed,
    /// The command line, its input or the settings are wrong (exit 2).
    Usage,
    /// The API could not be reached or was unavailable (exit 3).
    Unavailable,
    /// The API refused the key or the action (exit 4).
    Auth,
}

impl Failure {
    /// The process's exit code for it.
    fn code(self) -> u8 {
        match self {
            Self::JobsFailed => 1,
            Self::Usage => 2,
            Self::Unavailable => 3,
            Self::Auth => 4,
        }
    }
}

/// An error that carries its [`Failure`] class.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Classified {
    /// Why.
    pub message: String,
    /// Which exit code.
    pub failure: Failure,
}

/// An error of this class with this message.
pub fn fail(failure: Failure, message: impl Into<String>) -> anyhow::Error {
    classified(failure, message).into()
}

/// A context that gives the error under it this class:
/// `.context(classified(Failure::Usage, "invalid configuration"))`.
pub fn classified(failure: Failure, message: impl Into<String>) -> Classified {
    Classified {
        message: message.into(),
        failure,
    }
}

/// The exit code of a command's error: the first classified cause in its
/// chain decides; an API client error is classified by what the server
/// (or the network) said; anything else is 1.
pub fn exit_code(error: &anyhow::Error) -> ExitCode {
    // A context is found only this way, not among the chain's causes.
    if let Some(classified) = error.downcast_ref::<Classified>() {
        return ExitCode::from(classified.failure.code());
    }
    for cause in error.chain() {
        if let Some(classified) = cause.downcast_ref::<Classified>() {
            return ExitCode::from(classified.failure.code());
        }
        if let Some(client) = cause.downcast_ref::<ClientError>() {
            let failure = match client {
                ClientError::Config(_) => Some(Failure::Usage),
                e if e.is_unavailable() => Some(Failure::Unavailable),
                e if e.is_auth() => Some(Failure::Auth),
                _ => None,
            };
            return ExitCode::from(failure.map_or(1, Failure::code));
        }
    }
    ExitCode::FAILURE
}

/// Prints a line on stdout: command output, as opposed to stderr progress.
pub fn out(line: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").context("Failed to write to stdout")
}

/// Prints `value` as pretty JSON on stdout.
pub fn out_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    out(&serde_json::to_string_pretty(value)?)
}

/// Renders rows as a table, CSV, or (from `as_json`) JSON; ends with a
/// line break.
pub fn render(
    output: Output,
    headers: &[&str],
    rows: &[Vec<String>],
    as_json: &serde_json::Value,
) -> String {
    let mut text = String::new();
    match output {
        Output::Json => {
            text = serde_json::to_string_pretty(as_json).unwrap_or_else(|_| "null".to_owned());
            text.push('\n');
        }
        Output::Csv => {
            let line = |cells: &mut dyn Iterator<Item = &str>| {
                cells.map(csv_field).collect::<Vec<_>>().join(",") + "\r\n"
            };
            text.push_str(&line(&mut headers.iter().copied()));
            for row in rows {
                text.push_str(&line(&mut row.iter().map(String::as_str)));
            }
        }
        Output::Table => {
            let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
            for row in rows {
                for (w, cell) in widths.iter_mut().zip(row) {
                    *w = (*w).max(cell.chars().count());
                }
            }
            let mut line = |cells: &mut dyn Iterator<Item = &str>| {
                let mut cols = String::new();
                for (cell, w) in cells.zip(&widths) {
                    // Writing into a String cannot fail.
                    let _ = write!(cols, "{cell:<w$}  ");
                }
                text.push_str(cols.trim_end());
                text.push('\n');
            };
            line(&mut headers.iter().copied());
            for row in rows {
                line(&mut row.iter().map(String::as_str));
            }
        }
    }
    text
}

/// Prints [`render`]'s text on stdout.
pub fn print(
    output: Output,
    headers: &[&str],
    rows: &[Vec<String>],
    as_json: &serde_json::Value,
) -> anyhow::Result<()> {
    std::io::stdout()
        .lock()
        .write_all(render(output, headers, rows, as_json).as_bytes())
        .context("Failed to write to stdout")
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn csv_quotes_only_what_needs_it() {
        let text = render(
            Output::Csv,
            &["a", "b"],
            &[
                vec!["x,y".into(), "say \"hi\"".into()],
                vec!["1".into(), "2".into()],
            ],
            &json!([]),
        );
        assert_eq!(text, "a,b\r\n\"x,y\",\"say \"\"hi\"\"\"\r\n1,2\r\n");
    }

    #[test]
    fn tables_align_their_columns() {
        let text = render(
            Output::Table,
            &["A", "BB"],
            &[vec!["xxx".into(), "y".into()]],
            &json!([]),
        );
        assert_eq!(text, "A    BB\nxxx  y\n");
    }

    #[test]
    fn failures_map_to_their_exit_codes() {
        let code = |e: anyhow::Error| format!("{:?}", exit_code(&e));
        assert_eq!(
            code(fail(Failure::Usage, "bad").context("while reading")),
            format!("{:?}", ExitCode::from(2))
        );
        assert_eq!(
            code(
                anyhow::Error::new(std::io::Error::other("bad file"))
                    .context(classified(Failure::Usage, "invalid configuration"))
                    .context("while starting")
            ),
            format!("{:?}", ExitCode::from(2))
        );
        assert_eq!(
            code(ClientError::Config("no key".into()).into()),
            format!("{:?}", ExitCode::from(2))
        );
        assert_eq!(
            code(anyhow::anyhow!("other")),
            format!("{:?}", ExitCode::FAILURE)
        );
    }
}
