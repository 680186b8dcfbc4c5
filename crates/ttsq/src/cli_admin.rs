//! Operator commands on tenants, keys and usage: `ttsq tenant …`,
//! `ttsq key …`, `ttsq usage …`. They talk to Postgres directly; `tenant`
//! and `key` migrate it first, and every change is written to the audit log
//! as `cli:<user>`. `usage` only reads the finance views, so a read-only
//! finance role may run it.

use std::str::FromStr;

use chrono::{Datelike as _, NaiveDate, Utc};
use clap::{Args, Subcommand, ValueEnum};
use secrecy::ExposeSecret;
use serde_json::json;
use ttsq_store::{Store, StoreError, TenantLimits, TenantUpdate, UsageFilter, UsagePeriod};

use crate::cli_output::{Output, print};

/// A limit on the command line: a number, or `none` for no limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit<T>(Option<T>);

impl<T: FromStr> FromStr for Limit<T> {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw.trim() {
            "none" | "unlimited" => Ok(Self(None)),
            value => value
                .parse()
                .map(|v| Self(Some(v)))
                .map_err(|_| format!("`{raw}` is neither a number nor `none`")),
        }
    }
}

/// Limits settable on a tenant.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Characters per UTC day (`none`: unlimited).
    #[arg(long, value_name = "N|none")]
    daily_characters: Option<Limit<i64>>,
    /// Spend per UTC month in the tenant's currency (`none`: unlimited).
    #[arg(long, value_name = "AMOUNT|none")]
    monthly_budget: Option<Limit<f64>>,
    /// Jobs queued or processing at once (`none`: unlimited).
    #[arg(long, value_name = "N|none")]
    max_queued_jobs: Option<Limit<i32>>,
    /// Tasks submitted per UTC day, cache hits and failures included
    /// (`none`: unlimited). Bounds what a tenant can make the service store
    /// even when nothing it asks for is billable.
    #[arg(long, value_name = "N|none")]
    daily_requests: Option<Limit<i64>>,
    /// Currency of the budget, an ISO 4217 code (default USD).
    #[arg(long, value_name = "CODE")]
    currency: Option<String>,
    /// Days the tenant's tasks (and audio no other task uses) are kept
    /// (`none`: the deployment's `retention.default_days`).
    #[arg(long, value_name = "DAYS|none")]
    retention_days: Option<Limit<i32>>,
    /// Share the audio cache with the tenants in this named pool (`none`:
    /// the tenant's cache is its own, the default). Tenants in one pool can
    /// tell from cache hits what texts the others synthesized.
    #[arg(long, value_name = "POOL|none")]
    cache_pool: Option<CachePool>,
    /// Share of the workers and of each provider's quota against the other
    /// tenants with work waiting, 1 to 1000 (default 1: equal shares). A
    /// tenant of weight 3 gets three times the turns of a tenant of weight 1
    /// while both have work; a tenant with none takes no share.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..=1000))]
    weight: Option<i32>,
}

/// A cache pool on the command line: a name, or `none` for a private cache.
#[derive(Debug, Clone, PartialEq)]
pub struct CachePool(Option<String>);

impl FromStr for CachePool {
    type Err = std::convert::Infallible;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Ok(Self(match raw.trim() {
            "none" => None,
            name => Some(name.to_owned()),
        }))
    }
}

/// `ttsq tenant …`.
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant and print its first API key on stdout (shown once;
    /// only its hash is stored).
    Create {
        /// Unique tenant name.
        name: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// List tenants with their limits.
    List {
        /// Deprecated spelling of the global `--output`.
        #[arg(long, value_enum, hide = true)]
        format: Option<Output>,
    },
    /// Change a tenant's limits; options left out stay as they are.
    Update {
        /// The tenant's name.
        name: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
}

/// `ttsq key …`.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create another API key for an existing tenant and print it on stdout.
    Create {
        /// The tenant's name.
        tenant: String,
    },
    /// List keys (prefix, id, dates; never the key).
    List {
        /// Only this tenant's keys.
        tenant: Option<String>,
        /// Deprecated spelling of the global `--output`.
        #[arg(long, value_enum, hide = true)]
        format: Option<Output>,
    },
    /// Revoke a key by id or visible prefix; every replica refuses it at once.
    Revoke {
        /// The key's id, or its prefix (`ttsq_` and 8 hex characters).
        key: String,
    },
}

/// Granularity of `ttsq usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum By {
    /// One row per UTC day (the `usage_daily` view).
    Day,
    /// One row per UTC month (the `usage_monthly` view).
    Month,
}

/// `ttsq usage`: the finance views for a tenant (or all) and a date range.
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Tenant name; all tenants when left out.
    #[arg(long)]
    tenant: Option<String>,
    /// First UTC day, YYYY-MM-DD (default: the first of this month).
    #[arg(long)]
    from: Option<NaiveDate>,
    /// Last UTC day, inclusive, YYYY-MM-DD (default: today).
    #[arg(long)]
    to: Option<NaiveDate>,
    /// One row per day or per month.
    #[arg(long, value_enum, default_value_t = By::Day)]
    by: By,
    /// Deprecated spelling of the global `--output`.
    #[arg(long, value_enum, hide = true)]
    format: Option<Output>,
}

/// Rows per query of `ttsq usage`: all tenants' usage is read a page at a
/// time, so no one statement sorts it all.
const USAGE_PAGE: u32 = 10_000;

/// Who the audit log records for changes made here.
fn actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    format!("cli:{user}")
}

fn explain(err: StoreError) -> anyhow::Error {
    match err {
        StoreError::Conflict(_)
        | StoreError::NotFound(_)
        | StoreError::Invalid(_)
        | StoreError::Schema(_) => {
            anyhow::anyhow!("{err}")
        }
        other => anyhow::Error::new(other),
    }
}

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// Runs `ttsq tenant …`.
#[expect(clippy::print_stdout, reason = "command output belongs on stdout")]
pub async fn tenant(store: &Store, command: TenantCommand, output: Output) -> anyhow::Result<()> {
    match command {
        TenantCommand::Create { name, limits } => {
            let set = TenantLimits {
                daily_characters: limits.daily_characters.and_then(|l| l.0),
                monthly_budget: limits.monthly_budget.and_then(|l| l.0),
                max_queued_jobs: limits.max_queued_jobs.and_then(|l| l.0),
                daily_requests: limits.daily_requests.and_then(|l| l.0),
            };
            let (tenant, key) = store
                .create_tenant_with(&name, &set, limits.currency.as_deref(), &actor())
                .await
                .map_err(explain)?;
            if limits.retention_days.is_some()
                || limits.cache_pool.is_some()
                || limits.weight.is_some()
            {
                let update = TenantUpdate {
                    retention_days: limits.retention_days.map(|d| d.0),
                    cache_pool: limits.cache_pool.map(|p| p.0),
                    weight: limits.weight,
                    ..TenantUpdate::default()
                };
                store
                    .update_tenant(&name, &update, &actor())
                    .await
                    .map_err(explain)?;
            }
            eprintln!(
                "created tenant `{}` ({}); its API key, shown only now:",
                tenant.name, tenant.id
            );
            println!("{}", key.key.expose_secret());
        }
        TenantCommand::List { format } => {
            let tenants = store.list_tenants().await.map_err(explain)?;
            let headers = [
                "name",
                "id",
                "currency",
                "daily_characters",
                "monthly_budget",
                "max_queued_jobs",
                "daily_requests",
                "retention_days",
                "cache_pool",
                "weight",
                "active_keys",
                "created_at",
            ];
            let rows: Vec<Vec<String>> = tenants
                .iter()
                .map(|t| {
                    vec![
                        t.name.clone(),
                        t.id.to_string(),
                        t.currency.clone(),
                        opt(t.daily_characters),
                        opt(t.monthly_budget),
                        opt(t.max_queued_jobs),
                        opt(t.daily_requests),
                        opt(t.retention_days),
                        t.cache_pool.clone().unwrap_or_else(|| "-".to_owned()),
                        t.weight.to_string(),
                        t.active_keys.to_string(),
                        t.created_at.to_rfc3339(),
                    ]
                })
                .collect();
            print(chosen(output, format), &headers, &rows, &json!(tenants))?;
        }
        TenantCommand::Update { name, limits } => {
            let update = TenantUpdate {
                daily_characters: limits.daily_characters.map(|l| l.0),
                monthly_budget: limits.monthly_budget.map(|l| l.0),
                max_queued_jobs: limits.max_queued_jobs.map(|l| l.0),
                daily_requests: limits.daily_requests.map(|l| l.0),
                currency: limits.currency,
                retention_days: limits.retention_days.map(|l| l.0),
                cache_pool: limits.cache_pool.map(|p| p.0),
                weight: limits.weight,
            };
            anyhow::ensure!(
                update != TenantUpdate::default(),
                "nothing to change: give --daily-characters, --monthly-budget, --max-queued-jobs, --daily-requests, --currency, --retention-days, --cache-pool or --weight"
            );
            let t = store
                .update_tenant(&name, &update, &actor())
                .await
                .map_err(explain)?;
            eprintln!(
                "updated tenant `{}`: daily_characters {}, monthly_budget {} {}, max_queued_jobs {}, daily_requests {}, retention_days {}, cache_pool {}, weight {}",
                t.name,
                opt(t.daily_characters),
                opt(t.monthly_budget),
                t.currency,
                opt(t.max_queued_jobs),
                opt(t.daily_requests),
                opt(t.retention_days),
                t.cache_pool.as_deref().unwrap_or("-"),
                t.weight
            );
        }
    }
    Ok(())
}

/// Runs `ttsq key …`.
#[expect(clippy::print_stdout, reason = "command output belongs on stdout")]
pub async fn key(store: &Store, command: KeyCommand, output: Output) -> anyhow::Result<()> {
    match command {
        KeyCommand::Create { tenant } => {
            let key = store
                .create_key_as(&tenant, &actor())
                .await
                .map_err(explain)?;
            eprintln!(
                "new API key for `{tenant}` (prefix {}), shown only now:",
                key.prefix
            );
            println!("{}", key.key.expose_secret());
        }
        KeyCommand::List { tenant, format } => {
            let keys = store.list_keys(tenant.as_deref()).await.map_err(explain)?;
            let headers = ["tenant", "prefix", "id", "created_at", "revoked_at"];
            let rows: Vec<Vec<String>> = keys
                .iter()
                .map(|k| {
                    vec![
                        k.tenant.clone(),
                        k.prefix.clone(),
                        k.id.to_string(),
                        k.created_at.to_rfc3339(),
                        opt(k.revoked_at.map(|r| r.to_rfc3339())),
                    ]
                })
                .collect();
            print(chosen(output, format), &headers, &rows, &json!(keys))?;
        }
        KeyCommand::Revoke { key } => {
            let key = store.revoke_key(&key, &actor()).await.map_err(explain)?;
            eprintln!(
                "key {} ({}) of `{}` is revoked since {}",
                key.prefix,
                key.id,
                key.tenant,
                opt(key.revoked_at.map(|r| r.to_rfc3339()))
            );
        }
    }
    Ok(())
}

/// Runs `ttsq usage`.
pub async fn usage(store: &Store, args: UsageArgs, output: Output) -> anyhow::Result<()> {
    let today = Utc::now().date_naive();
    let to = args.to.unwrap_or(today);
    let from = args.from.unwrap_or_else(|| to.with_day0(0).unwrap_or(to));
    anyhow::ensure!(from <= to, "--from must not be after --to");
    let tenant_id = match &args.tenant {
        Some(name) => Some(store.usage_tenant(name).await.map_err(explain)?),
        None => None,
    };
    let period = match args.by {
        By::Day => UsagePeriod::Day,
        By::Month => UsagePeriod::Month,
    };
    let filter = UsageFilter {
        tenant_id,
        ..UsageFilter::default()
    };
    let mut rows = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .usage_page(&filter, from, to, period, after.as_ref(), USAGE_PAGE)
            .await
            .map_err(|err| match err {
                StoreError::Schema(_) => explain(err),
                other => anyhow::Error::new(other).context("Failed to read the usage views"),
            })?;
        rows.extend(page.rows);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let first = match args.by {
        By::Day => "day",
        By::Month => "month",
    };
    let headers = ttsq_store::UsageRow::columns(first);
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.tenant.clone(),
                r.period.to_string(),
                r.provider.clone().unwrap_or_default(),
                r.dialect.clone(),
                r.currency.clone().unwrap_or_default(),
                r.tasks.to_string(),
                r.succeeded.to_string(),
                r.failed.to_string(),
                r.cache_hits.to_string(),
                r.characters.to_string(),
                r.billable_characters.to_string(),
                r.cost.clone(),
            ]
        })
        .collect();
    print(chosen(output, args.format), &headers, &table, &json!(rows))?;
    Ok(())
}

/// The output asked for: `--output`, or the deprecated `--format` of the
/// listings (with a warning).
fn chosen(output: Output, deprecated: Option<Output>) -> Output {
    match deprecated {
        Some(format) => {
            eprintln!("warning: --format is deprecated here; use --output (table, json or csv)");
            format
        }
        None => output,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_numbers_and_none() {
        assert_eq!("12".parse::<Limit<i64>>().unwrap(), Limit(Some(12)));
        assert_eq!("none".parse::<Limit<f64>>().unwrap(), Limit(None));
        assert!("lots".parse::<Limit<i32>>().is_err());
    }
}
