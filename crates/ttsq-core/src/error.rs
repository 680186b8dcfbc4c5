//! Field-level validation errors, collected so a client sees every problem
//! with its request at once instead of fixing them one round trip at a time.

use serde::Serialize;

/// One problem with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// JSON path of the offending field (`text`, `speed`, `metadata`, …);
    /// empty when the problem is with the body as a whole.
    pub field: String,
    /// Human-readable reason, safe to show to the client.
    pub reason: String,
}

impl FieldError {
    /// A problem with `field`, explained by `reason`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Every problem found in one request; never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq, Default, thiserror::Error)]
#[error("invalid request: {}", summary(.0))]
pub struct ValidationErrors(pub Vec<FieldError>);

fn summary(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| {
            if e.field.is_empty() {
                e.reason.clone()
            } else {
                format!("{}: {}", e.field, e.reason)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl ValidationErrors {
    /// Records one more problem.
    pub fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError::new(field, reason));
    }

    /// `Ok(value)` when nothing was recorded, otherwise the collected errors.
    pub fn into_result<T>(self, value: T) -> Result<T, Self> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    /// The fields named, in order; handy for tests and logs.
    pub fn fields(&self) -> Vec<&str> {
        self.0.iter().map(|e| e.field.as_str()).collect()
    }
}
