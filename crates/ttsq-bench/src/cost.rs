//! What a measured phase costs per job: CPU seconds of every process it
//! keeps busy (the stack's API and workers, Postgres, RabbitMQ, the S3
//! server, the driver) and, in the stack's database, transactions, rows
//! written, WAL and statements. A [`Meter`] is started before the phase
//! and finished after it, while the stack still runs; its [`Cost`] prints
//! as three tables. Nothing here fails a scenario: what cannot be read is
//! printed as n/a.

mod cpu;
mod postgres;

use std::time::Instant;

pub use self::cpu::Part;
use self::{
    cpu::{Snapshot, Targets, clock_ticks},
    postgres::{PhaseCost, stats_delay},
};
use crate::{
    report::{Table, f1, int},
    stack::Stack,
};

/// Statements listed in a phase's top table.
const TOP_STATEMENTS: usize = 12;
/// Characters of a statement's text shown.
const QUERY_CHARS: usize = 90;

/// Readings taken when a phase started.
pub struct Meter {
    started: Instant,
    targets: Targets,
    cpu: Snapshot,
    postgres: Option<Result<postgres::Start, String>>,
}

impl Meter {
    /// Starts metering `stack` now: its processes' CPU, and its database
    /// when `with_postgres` (a phase that does not use ttsq leaves it out).
    pub async fn start(stack: &Stack, with_postgres: bool) -> Self {
        let targets = Targets {
            api: stack.api_pids(),
            workers: stack.worker_pids(),
            database: stack.database().to_owned(),
        };
        let postgres = if with_postgres {
            Some(
                postgres::start(&stack.db)
                    .await
                    .map_err(|err| format!("{err:#}")),
            )
        } else {
            None
        };
        Self {
            started: Instant::now(),
            cpu: Snapshot::take(&targets),
            targets,
            postgres,
        }
    }

    /// Ends the phase, which did `jobs` jobs: CPU now, Postgres's counters
    /// a little later (see [`postgres`]), so call it before the stack
    /// stops. `smoke` shortens that wait.
    pub async fn finish(self, stack: &Stack, jobs: usize, smoke: bool) -> Cost {
        let end = Snapshot::take(&self.targets);
        let seconds = self.started.elapsed().as_secs_f64();
        let cpu = Part::ALL
            .iter()
            .map(|part| (*part, end.seconds_since(&self.cpu, *part)))
            .collect();
        let postgres = match self.postgres {
            Some(Ok(start)) => Some(start.finish(&stack.db, stats_delay(smoke)).await),
            Some(Err(err)) => Some(PhaseCost {
                errors: vec![format!("first readings: {err}")],
                ..PhaseCost::default()
            }),
            None => None,
        };
        Cost {
            jobs,
            seconds,
            cpu,
            postgres,
        }
    }
}

/// What one phase cost.
pub struct Cost {
    jobs: usize,
    seconds: f64,
    cpu: Vec<(Part, Option<f64>)>,
    postgres: Option<PhaseCost>,
}

/// `value` ÷ `jobs`, `None` without jobs.
fn per_job(value: f64, jobs: usize) -> Option<f64> {
    (jobs > 0).then(|| value / jobs as f64)
}

/// `value` with `decimals`, or n/a.
fn or_na(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.decimals$}"))
}

impl Cost {
    /// CPU milliseconds per job of `part`, when it was found.
    pub fn cpu_ms_per_job(&self, part: Part) -> Option<f64> {
        let seconds = self.cpu.iter().find(|(p, _)| *p == part)?.1?;
        per_job(seconds * 1000.0, self.jobs)
    }

    /// The stack's statements per job, when `pg_stat_statements` counted.
    pub fn statements_per_job(&self) -> Option<f64> {
        let statements = self.postgres.as_ref()?.statements.as_ref().ok()?;
        per_job(statements.calls as f64, self.jobs)
    }

    /// Transactions per job in the stack's database, when counted.
    pub fn transactions_per_job(&self) -> Option<f64> {
        per_job(self.postgres.as_ref()?.transactions?, self.jobs)
    }

    /// Prints the phase's tables, titled `title` (e.g. "1. Throughput").
    pub fn print(&self, title: &str) {
        self.cpu_table(title).print();
        if let Some(postgres) = &self.postgres {
            self.postgres_table(title, postgres).print();
            if let Ok(statements) = &postgres.statements {
                self.statements_table(title, statements).print();
            }
        }
    }

    fn cpu_table(&self, title: &str) -> Table {
        let mut table = Table::new(
            format!(
                "{title}: CPU per process ({} jobs in {:.1} s)",
                int(self.jobs as f64),
                self.seconds
            ),
            &["process", "CPU s", "CPU ms per job", "% of one core"],
        );
        for (part, seconds) in &self.cpu {
            table.row(vec![
                part.label().to_owned(),
                or_na(*seconds, 2),
                or_na(seconds.and_then(|s| per_job(s * 1000.0, self.jobs)), 3),
                seconds.filter(|_| self.seconds > 0.0).map_or_else(
                    || "n/a".to_owned(),
                    |s| format!("{:.0} %", 100.0 * s / self.seconds),
                ),
            ]);
        }
        let (ticks, source) = clock_ticks();
        table.note(format!(
            "utime + stime from /proc/<pid>/stat between the phase's start and end; {ticks:.0} clock ticks a second ({source}). \
             The whole-server rows count everything else the server did meanwhile (on a shared machine, other sessions too); \
             postgres, whole server adds the postmaster's reaped-children time, so backends that exited are in it. \
             The bench database's backends are those alive at the end."
        ));
        table
    }

    fn postgres_table(&self, title: &str, cost: &PhaseCost) -> Table {
        let mut table = Table::new(
            format!("{title}: Postgres per job (the stack's database)"),
            &["measure", "per job", "whole phase"],
        );
        let jobs = self.jobs;
        let mut row = |label: &str, total: Option<f64>, decimals: usize| {
            table.row(vec![
                label.to_owned(),
                or_na(total.and_then(|t| per_job(t, jobs)), decimals),
                total.map_or_else(|| "n/a".to_owned(), int),
            ]);
        };
        let statements = cost.statements.as_ref().ok();
        row(
            "statements (pg_stat_statements calls, top level)",
            statements.map(|s| s.calls as f64),
            2,
        );
        row("transactions (commits + rollbacks)", cost.transactions, 2);
        let rows = cost.rows;
        row(
            "rows written (inserted + updated + deleted)",
            rows.map(|(i, u, d)| (i + u + d) as f64),
            2,
        );
        row("  rows inserted", rows.map(|r| r.0 as f64), 2);
        row("  rows updated", rows.map(|r| r.1 as f64), 2);
        row("  rows deleted", rows.map(|r| r.2 as f64), 2);
        row(
            "WAL bytes, the stack's statements (pg_stat_statements)",
            statements.map(|s| s.wal_bytes),
            0,
        );
        row(
            "WAL bytes, whole server (pg_current_wal_lsn)",
            cost.wal_bytes,
            0,
        );
        match &cost.statements {
            Ok(statements) => table.note(format!(
                "Statements: pg_stat_statements of this database only (reset with pg_stat_statements_reset(0, dbid, 0) at the start, read at the end), \
                 BEGIN and COMMIT included; the driver's own {} statements (polling, these readings) are left out{}.",
                int(statements.driver_calls as f64),
                if cost.transactions_net {
                    ", of the transactions too"
                } else {
                    ""
                }
            )),
            Err(reason) => table.note(format!("Statements: n/a ({reason}).")),
        }
        table.note(format!(
            "Transactions and rows: pg_stat_database and pg_stat_user_tables, read {:.1} s after the phase \
             (Postgres 15 flushes a backend's counters at most once a second, an idle backend's last ones up to 10 s late), \
             so they include the stack's background work (heartbeats, sweeps) meanwhile. \
             WAL of the whole server counts every database on it; that of the statements leaves out commit records.",
            cost.delay.as_secs_f64()
        ));
        for error in &cost.errors {
            table.note(format!("(not read: {error})"));
        }
        table
    }

    fn statements_table(&self, title: &str, statements: &postgres::Statements) -> Table {
        let mut table = Table::new(
            format!(
                "{title}: the {TOP_STATEMENTS} most frequent statements (of {} distinct)",
                statements.rows.len()
            ),
            &["calls per job", "mean µs", "total ms", "statement"],
        );
        for statement in statements.rows.iter().take(TOP_STATEMENTS) {
            let mean_us = 1000.0 * statement.total_ms / statement.calls.max(1) as f64;
            table.row(vec![
                or_na(per_job(statement.calls as f64, self.jobs), 2),
                f1(mean_us),
                f1(statement.total_ms),
                format!("`{}`", one_line(&statement.query)),
            ]);
        }
        table
    }
}

/// The first [`QUERY_CHARS`] characters of `query` on one line, safe in a
/// Markdown table cell.
fn one_line(query: &str) -> String {
    let mut line = query.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some((cut, _)) = line.char_indices().nth(QUERY_CHARS) {
        line.truncate(cut);
        line.push('…');
    }
    line.replace('|', "\\|").replace('`', "'")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_is_cut_to_one_line_that_cannot_break_the_table() {
        let query = "SELECT a ||\n    b\tFROM `t` WHERE x = $1";
        assert_eq!(one_line(query), "SELECT a \\|\\| b FROM 't' WHERE x = $1");
        let long = "x ".repeat(100);
        let cut = one_line(&long);
        assert_eq!(cut.chars().count(), QUERY_CHARS + 1);
        assert!(cut.ends_with('…'));
    }
}
