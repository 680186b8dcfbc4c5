//! The vocabulary of a tenant's limits: which limit, how much of it is in
//! use, and the refusal of a submission past one. The store's error and
//! its handle name these, and admission computes them, so they depend on
//! neither.

use std::{fmt, time::Duration};

/// One of a tenant's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    /// Characters per UTC day.
    DailyCharacters,
    /// Cost per UTC calendar month, in the tenant's currency.
    MonthlyBudget,
    /// Jobs queued or processing at once.
    MaxQueuedJobs,
    /// Tasks submitted per UTC day, cache hits included.
    DailyRequests,
}

impl LimitKind {
    /// The snake_case name used in responses, logs and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DailyCharacters => "daily_characters",
            Self::MonthlyBudget => "monthly_budget",
            Self::MaxQueuedJobs => "max_queued_jobs",
            Self::DailyRequests => "daily_requests",
        }
    }
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much of one limit is in use.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct LimitUsage {
    /// Which limit.
    pub limit: LimitKind,
    /// The limit.
    pub max: f64,
    /// In use, this submission included when it was admitted.
    pub used: f64,
}

impl LimitUsage {
    /// `used / max`; 1 or more means exhausted (a zero budget is always 1).
    pub fn fraction(&self) -> f64 {
        if self.max > 0.0 {
            self.used / self.max
        } else {
            1.0
        }
    }
}

/// A submission refused because it would go over a limit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the tenant's {limit} limit of {max} is reached: {used} used, {requested} more requested")]
pub struct LimitExceeded {
    /// Which limit.
    pub limit: LimitKind,
    /// The limit.
    pub max: f64,
    /// In use before this submission.
    pub used: f64,
    /// What this submission would add.
    pub requested: f64,
    /// Currency of a budget.
    pub currency: Option<String>,
    /// Until the limit's period ends (next UTC day or month), or a few
    /// seconds for a full queue.
    pub retry_after: Duration,
}
