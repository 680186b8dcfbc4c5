//! Restarts of the real local servers, for the chaos cases that must survive
//! a server going down and coming back (not just a cut link): every
//! connection is closed by the server, state lives only in what the server
//! persisted, and clients must reconnect from scratch.
//!
//! These stop the servers every test shares, so only tests that run alone
//! may call them (nextest's `threads-required` in `.config/nextest.toml`).
//! They need root, directly or through passwordless `sudo`, as
//! `deploy/local/services.sh` does; without it they fail with the command
//! that was refused rather than skip, so a chaos run can never pass without
//! the outage it claims to survive.

use std::{
    path::PathBuf,
    process::{Command, Output},
    time::{Duration, Instant},
};

/// Why a restart could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    /// A needed program is not installed.
    #[error("`{0}` is not installed (looked in PATH and the sbin directories)")]
    Missing(&'static str),
    /// A command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr, trimmed.
        stderr: String,
    },
    /// A command could not be started.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The error.
        source: std::io::Error,
    },
    /// No PostgreSQL cluster listens on the port the tests use.
    #[error("no PostgreSQL cluster listed by pg_lsclusters runs on port {0}")]
    NoCluster(u16),
    /// The server did not come back in time.
    #[error("{0} did not come back within {1:?}")]
    NotBack(&'static str, Duration),
}

/// Stops RabbitMQ's application (every connection is closed, listeners go
/// away), keeps it down for `down_for`, starts it again and waits until it
/// accepts connections. Quorum queues and their messages survive, as in a
/// real broker restart.
pub fn rabbitmq(down_for: Duration) -> Result<(), RestartError> {
    let ctl = program("rabbitmqctl")?;
    as_root(&ctl, &["-q", "stop_app"])?;
    std::thread::sleep(down_for);
    as_root(&ctl, &["-q", "start_app"])?;
    as_root(&ctl, &["-q", "await_startup", "--timeout", "60"])?;
    wait_for_port(5672, "RabbitMQ")
}

/// Stops the PostgreSQL cluster the tests use (the port of
/// `TTSQ_TEST_DATABASE_URL`) with a fast shutdown (open transactions are
/// rolled back, every connection is closed), keeps it down for `down_for`,
/// and starts it again (Debian's `pg_ctlcluster`, which waits until the
/// server accepts connections).
pub fn postgres(down_for: Duration) -> Result<(), RestartError> {
    let port = postgres_port(&ttsq_test_db::admin_url());
    let lsclusters = program("pg_lsclusters")?;
    let ctlcluster = program("pg_ctlcluster")?;
    let listing = run(Command::new(&lsclusters).arg("--no-header"))?;
    let clusters = String::from_utf8_lossy(&listing.stdout);
    let (version, name) = clusters
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.get(2).and_then(|p| p.parse().ok()) == Some(port))
        .and_then(|fields| Some((fields.first()?.to_string(), fields.get(1)?.to_string())))
        .ok_or(RestartError::NoCluster(port))?;
    let control = |action: &str, extra: &[&str]| {
        let mut args = vec!["--skip-systemctl-redirect", &version, &name, action];
        args.extend_from_slice(extra);
        as_root(&ctlcluster, &args)
    };
    control("stop", &["-m", "fast"])?;
    std::thread::sleep(down_for);
    control("start", &[])?;
    wait_for_port(port, "PostgreSQL")
}

/// The port of a `postgres://` URL, 5432 when it names none.
fn postgres_port(url: &str) -> u16 {
    url.split_once("://")
        .map(|(_, rest)| rest)
        .and_then(|rest| rest.split(['/', '?']).next())
        .and_then(|authority| authority.rsplit('@').next())
        .and_then(|host| host.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or(5432)
}

/// `name` from PATH or the sbin directories Debian keeps server tools in.
fn program(name: &'static str) -> Result<PathBuf, RestartError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or(RestartError::Missing(name))
}

/// Runs `program args` as root: directly when this process is root (or the
/// command works without it), else through `sudo -n`.
fn as_root(program: &PathBuf, args: &[&str]) -> Result<(), RestartError> {
    match run(Command::new(program).args(args)) {
        Ok(_) => Ok(()),
        Err(direct) => {
            let sudo = match self::program("sudo") {
                Ok(sudo) => sudo,
                Err(_) => return Err(direct),
            };
            run(Command::new(sudo).arg("-n").arg(program).args(args)).map(drop)
        }
    }
}

fn run(command: &mut Command) -> Result<Output, RestartError> {
    let line = format!("{command:?}").replace('"', "");
    let output = command.output().map_err(|source| RestartError::Spawn {
        command: line.clone(),
        source,
    })?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(RestartError::Failed {
            command: line,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

fn wait_for_port(port: u16, what: &'static str) -> Result<(), RestartError> {
    let within = Duration::from_secs(60);
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(RestartError::NotBack(what, within));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::postgres_port;

    #[test]
    fn the_port_is_read_from_the_url() {
        assert_eq!(
            postgres_port("postgres://postgres@127.0.0.1:5433/postgres"),
            5433
        );
        assert_eq!(postgres_port("postgres://u:p@localhost/db"), 5432);
        assert_eq!(postgres_port("postgres://u:p:x@[::1]:6000/db?x=1"), 6000);
    }
}
