//! What a call can fail with. A server's refusal keeps every field of its
//! problem+json body, so a program can branch on `type` and show `errors`.

use std::time::Duration;

use reqwest::Response;
use serde::Deserialize;
use uuid::Uuid;

/// One invalid field of a refused request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FieldError {
    /// The field (`text`, `dialect`, …); empty for the body as a whole.
    pub field: String,
    /// Why.
    pub reason: String,
}

/// The server's RFC 7807 problem body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Problem {
    /// `urn:ttsq:problem:{slug}`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The status's reason phrase.
    #[serde(default)]
    pub title: String,
    /// The HTTP status.
    #[serde(default)]
    pub status: u16,
    /// What went wrong.
    #[serde(default)]
    pub detail: String,
    /// Each invalid field, for validation errors.
    #[serde(default)]
    pub errors: Vec<FieldError>,
    /// The task recorded as failed, for inline synthesis failures.
    #[serde(default)]
    pub task_id: Option<Uuid>,
    /// Stable error code, for inline synthesis failures.
    #[serde(default)]
    pub code: Option<String>,
}

impl Problem {
    /// Reads a non-2xx response; a body that is no problem document (a
    /// proxy's error page) becomes one from the status and the start of it.
    pub(crate) async fn from_response(response: Response) -> Self {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        serde_json::from_str::<Problem>(&text)
            .ok()
            .filter(|p| p.status != 0)
            .unwrap_or_else(|| Problem {
                kind: "about:blank".to_owned(),
                title: status.canonical_reason().unwrap_or("Error").to_owned(),
                status: status.as_u16(),
                detail: text.chars().take(200).collect::<String>().trim().to_owned(),
                errors: Vec::new(),
                task_id: None,
                code: None,
            })
    }
}

impl Problem {
    /// The field errors of a refused batch, by item index: an error on
    /// `items[3].text` is item 3's `text`. Errors on the batch as a whole
    /// (`items`, `metadata`, …) are not in it.
    ///
    /// ```
    /// # use ttsq_client::{FieldError, Problem};
    /// let problem: Problem = serde_json::from_str(r#"{"status": 400, "errors": [
    ///     {"field": "items[3].text", "reason": "must not be empty"},
    ///     {"field": "metadata", "reason": "is too large"}]}"#).unwrap();
    /// let items = problem.item_errors();
    /// assert_eq!(items[&3][0].field, "text");
    /// assert_eq!(items.len(), 1);
    /// ```
    pub fn item_errors(&self) -> std::collections::BTreeMap<usize, Vec<FieldError>> {
        let mut items = std::collections::BTreeMap::<usize, Vec<FieldError>>::new();
        for error in &self.errors {
            let Some(rest) = error.field.strip_prefix("items[") else {
                continue;
            };
            let Some((index, field)) = rest.split_once(']') else {
                continue;
            };
            let Ok(index) = index.parse::<usize>() else {
                continue;
            };
            items.entry(index).or_default().push(FieldError {
                field: field.trim_start_matches('.').to_owned(),
                reason: error.reason.clone(),
            });
        }
        items
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.title)?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server refused the request; its problem body says why.
    #[error("{0}")]
    Api(Box<Problem>),
    /// The server could not be reached, or the transfer broke.
    #[error("cannot reach the API")]
    Http(#[source] reqwest::Error),
    /// The server answered something this client does not understand.
    #[error("unexpected response: {0}")]
    Unexpected(String),
    /// The client is misconfigured (URL, key).
    #[error("{0}")]
    Config(String),
    /// A task was not terminal within the time waited.
    #[error("task {task_id} did not finish within {timeout:?}")]
    WaitTimeout {
        /// The task.
        task_id: Uuid,
        /// How long was waited.
        timeout: Duration,
    },
    /// A batch was not completed within the time waited.
    #[error("batch {batch_id} did not complete within {timeout:?}")]
    BatchTimeout {
        /// The batch.
        batch_id: Uuid,
        /// How long was waited.
        timeout: Duration,
    },
}

impl ClientError {
    /// The problem body, when the server refused the request.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Self::Api(problem) => Some(problem),
            _ => None,
        }
    }

    /// The HTTP status, when the server refused the request.
    pub fn status(&self) -> Option<u16> {
        self.problem().map(|p| p.status)
    }

    /// Whether the API could not be reached or was unavailable: no
    /// connection, a broken transfer or a timeout, or a `502`, `503` or
    /// `504` (after the retries the call allows). Trying again later may
    /// succeed.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Http(_) => true,
            Self::Api(problem) => matches!(problem.status, 502..=504),
            _ => false,
        }
    }

    /// Whether the server refused the API key (`401`) or what it may do
    /// (`403`).
    pub fn is_auth(&self) -> bool {
        matches!(self.status(), Some(401 | 403))
    }
}
