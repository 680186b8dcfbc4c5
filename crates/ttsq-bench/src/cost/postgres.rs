//! What a phase costs Postgres in the stack's database: transactions, rows
//! written and WAL from the statistics views, statements from
//! `pg_stat_statements` where the server preloads it.
//!
//! Postgres 15 flushes a backend's counters to `pg_stat_database` and
//! `pg_stat_user_tables` at most once a second, and an idle backend's last
//! ones only after 10 s (`PGSTAT_IDLE_INTERVAL`), so those are read
//! [`stats_delay`] after the phase. `pg_stat_statements` and the WAL
//! position are current at once and are read when the phase ends.

use std::time::Duration;

use sqlx::PgPool;

use crate::stack::DRIVER_SQL_TAG;

/// How long after a phase the flushed counters are read: 10.5 s, past the
/// idle flush of every backend; 1.1 s in smoke mode, whose figures only
/// need to be there (an idle backend's last second may be missing).
pub fn stats_delay(smoke: bool) -> Duration {
    Duration::from_millis(if smoke { 1_100 } else { 10_500 })
}

/// The flushed counters of the database at one instant.
#[derive(Debug, Clone, Copy)]
struct Counters {
    transactions: i64,
    inserted: i64,
    updated: i64,
    deleted: i64,
}

/// The readings taken when a phase starts.
pub struct Start {
    dbid: i64,
    counters: Option<Counters>,
    /// The WAL position, as `pg_lsn` text.
    lsn: Option<String>,
    /// Why `pg_stat_statements` is not used, when it is not.
    statements_missing: Option<String>,
}

/// What a phase cost Postgres.
#[derive(Debug, Clone)]
pub struct PhaseCost {
    /// Transactions committed or rolled back in the database, less the
    /// driver's own statements where they are known.
    pub transactions: Option<f64>,
    /// Whether `transactions` has the driver's statements taken out.
    pub transactions_net: bool,
    /// Rows inserted, updated and deleted in the database's tables.
    pub rows: Option<(i64, i64, i64)>,
    /// WAL bytes the whole server wrote.
    pub wal_bytes: Option<f64>,
    /// What `pg_stat_statements` saw, or why it is n/a.
    pub statements: Result<Statements, String>,
    /// How long after the phase the flushed counters were read.
    pub delay: Duration,
    /// Readings that failed.
    pub errors: Vec<String>,
}

/// `pg_stat_statements` of the database over the phase.
#[derive(Debug, Clone, Default)]
pub struct Statements {
    /// The stack's statements (the driver's own left out), busiest first.
    pub rows: Vec<Statement>,
    /// Calls of all the stack's statements.
    pub calls: i64,
    /// WAL bytes written by the stack's statements.
    pub wal_bytes: f64,
    /// Calls of the driver's own statements (polling, these readings).
    pub driver_calls: i64,
}

/// One normalised statement.
#[derive(Debug, Clone)]
pub struct Statement {
    /// Times it ran.
    pub calls: i64,
    /// Execution time of all its calls, ms.
    pub total_ms: f64,
    /// Its normalised text.
    pub query: String,
}

impl Default for PhaseCost {
    fn default() -> Self {
        Self {
            transactions: None,
            transactions_net: false,
            rows: None,
            wal_bytes: None,
            statements: Err("not measured".to_owned()),
            delay: Duration::ZERO,
            errors: Vec::new(),
        }
    }
}

/// Prepares `pg_stat_statements` in the database (once per stack is
/// enough, more is harmless) and takes the phase's first readings; only
/// the database's own `pg_stat_statements` entries are reset.
pub async fn start(db: &PgPool) -> anyhow::Result<Start> {
    let dbid: i64 = sqlx::query_scalar(&format!(
        "SELECT oid::int8 FROM pg_database WHERE datname = current_database() {DRIVER_SQL_TAG}"
    ))
    .fetch_one(db)
    .await?;
    let statements_missing = prepare_statements(db, dbid).await.err();
    let counters = counters(db).await.ok();
    let lsn = sqlx::query_scalar(&format!(
        "SELECT pg_current_wal_lsn()::text {DRIVER_SQL_TAG}"
    ))
    .fetch_one(db)
    .await
    .ok();
    Ok(Start {
        dbid,
        counters,
        lsn,
        statements_missing,
    })
}

async fn prepare_statements(db: &PgPool, dbid: i64) -> Result<(), String> {
    sqlx::query(&format!(
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements {DRIVER_SQL_TAG}"
    ))
    .execute(db)
    .await
    .map_err(|err| format!("CREATE EXTENSION pg_stat_statements: {err}"))?;
    sqlx::query(&format!(
        "SELECT pg_stat_statements_reset(0, $1::oid, 0) {DRIVER_SQL_TAG}"
    ))
    .bind(dbid)
    .execute(db)
    .await
    .map_err(|err| format!("pg_stat_statements_reset: {err}"))?;
    Ok(())
}

async fn counters(db: &PgPool) -> anyhow::Result<Counters> {
    let (transactions, inserted, updated, deleted): (i64, i64, i64, i64) =
        sqlx::query_as(&format!(
            "SELECT (SELECT xact_commit + xact_rollback FROM pg_stat_database
                      WHERE datname = current_database())::int8,
                    coalesce(sum(n_tup_ins), 0)::int8,
                    coalesce(sum(n_tup_upd), 0)::int8,
                    coalesce(sum(n_tup_del), 0)::int8
               FROM pg_stat_user_tables {DRIVER_SQL_TAG}"
        ))
        .fetch_one(db)
        .await?;
    Ok(Counters {
        transactions,
        inserted,
        updated,
        deleted,
    })
}

impl Start {
    /// Reads the phase's end: statements and WAL now, then, after
    /// `delay`, the flushed counters. Never fails: what cannot be read is
    /// left out with its reason.
    pub async fn finish(self, db: &PgPool, delay: Duration) -> PhaseCost {
        let mut cost = PhaseCost {
            delay,
            ..PhaseCost::default()
        };
        cost.statements = match self.statements_missing {
            Some(reason) => Err(reason),
            None => read_statements(db, self.dbid)
                .await
                .map_err(|err| format!("reading pg_stat_statements: {err}")),
        };
        if let Some(lsn) = &self.lsn {
            match sqlx::query_scalar::<_, f64>(&format!(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::float8 {DRIVER_SQL_TAG}"
            ))
            .bind(lsn)
            .fetch_one(db)
            .await
            {
                Ok(bytes) => cost.wal_bytes = Some(bytes),
                Err(err) => cost.errors.push(format!("WAL position: {err}")),
            }
        }
        tokio::time::sleep(delay).await;
        match (self.counters, counters(db).await) {
            (Some(start), Ok(end)) => {
                let driver = cost.statements.as_ref().map(|s| s.driver_calls).ok();
                let transactions = end.transactions - start.transactions;
                cost.transactions_net = driver.is_some();
                cost.transactions = Some((transactions - driver.unwrap_or(0)).max(0) as f64);
                cost.rows = Some((
                    end.inserted - start.inserted,
                    end.updated - start.updated,
                    end.deleted - start.deleted,
                ));
            }
            (None, _) => cost
                .errors
                .push("statistics counters: not readable at the start".to_owned()),
            (_, Err(err)) => cost.errors.push(format!("statistics counters: {err}")),
        }
        cost
    }
}

async fn read_statements(db: &PgPool, dbid: i64) -> anyhow::Result<Statements> {
    let rows: Vec<(i64, f64, f64, String)> = sqlx::query_as(&format!(
        "SELECT sum(calls)::int8, sum(total_exec_time)::float8, sum(wal_bytes)::float8, query
           FROM pg_stat_statements
          WHERE dbid = $1::oid
          GROUP BY queryid, query {DRIVER_SQL_TAG}"
    ))
    .bind(dbid)
    .fetch_all(db)
    .await?;
    let mut statements = Statements::default();
    for (calls, total_ms, wal_bytes, query) in rows {
        if query.contains(DRIVER_SQL_TAG) {
            statements.driver_calls += calls;
            continue;
        }
        statements.calls += calls;
        statements.wal_bytes += wal_bytes;
        statements.rows.push(Statement {
            calls,
            total_ms,
            query,
        });
    }
    statements.rows.sort_by(|a, b| {
        b.calls
            .cmp(&a.calls)
            .then(b.total_ms.total_cmp(&a.total_ms))
    });
    Ok(statements)
}
