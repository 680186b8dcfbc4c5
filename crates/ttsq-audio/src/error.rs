//! Why an audio store operation failed, with texts that name the operation
//! and never the credentials.

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::{
    config::http::HttpResponse,
    error::{ProvideErrorMetadata, SdkError},
};

/// Why an audio store operation failed.
///
/// Messages name the operation, the bucket or key and what the server said;
/// they never contain credentials.
#[derive(Debug, thiserror::Error)]
pub enum AudioStoreError {
    /// The settings cannot work (e.g. an out-of-range presign lifetime).
    #[error("invalid S3 settings: {0}")]
    InvalidSettings(String),
    /// No object has this key.
    #[error("audio object `{key}` not found")]
    NotFound {
        /// The missing key.
        key: String,
    },
    /// The bucket does not exist (and was not to be created).
    #[error("S3 bucket `{bucket}` does not exist")]
    BucketNotFound {
        /// The missing bucket.
        bucket: String,
    },
    /// The server refused the credentials or the permission (401/403), or
    /// no credentials could be had at all.
    #[error("S3 {operation} denied: {detail}")]
    Denied {
        /// The S3 operation, e.g. `HeadBucket`.
        operation: &'static str,
        /// Status and error code from the server.
        detail: String,
    },
    /// The server could not be reached or failed transiently (network,
    /// timeout, 5xx, throttling); retrying later may succeed.
    #[error("S3 unavailable during {operation}: {detail}")]
    Unavailable {
        /// The S3 operation, e.g. `PutObject`.
        operation: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// The server rejected the request for another reason.
    #[error("S3 {operation} failed: {detail}")]
    Failed {
        /// The S3 operation, e.g. `GetObject`.
        operation: &'static str,
        /// Status and error code from the server.
        detail: String,
    },
}

impl AudioStoreError {
    /// True when the object (or bucket) does not exist, so callers can map it
    /// to a `404` or a cache miss instead of an outage.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. } | Self::BucketNotFound { .. })
    }

    /// True when the failure is likely temporary (network, timeout, 5xx,
    /// throttling), so a worker should retry the job later, not fail it.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }

    /// Maps an SDK failure that no operation-specific rule handled.
    pub(crate) fn from_sdk<E>(operation: &'static str, err: &SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        if let Some(credentials) = find_source::<CredentialsError>(err) {
            return Self::from_credentials(operation, credentials);
        }
        let status = http_status(err);
        let detail = match status {
            // Only the status, the S3 error code and the server's message go
            // into the text; the request (and its signature) never does.
            Some(status) => {
                let mut detail = format!("HTTP {status}");
                if let Some(code) = err.code() {
                    detail.push(' ');
                    detail.push_str(code);
                }
                if let Some(message) = err.message() {
                    detail.push_str(": ");
                    detail.push_str(message);
                }
                detail
            }
            // No response: construction, dispatch or timeout failures, whose
            // cause chains describe the connection, not the credentials.
            None => cause_chain(err),
        };
        match (err, status) {
            (_, Some(401 | 403)) => Self::Denied { operation, detail },
            (_, Some(408 | 429 | 500..=599))
            | (
                SdkError::TimeoutError(_)
                | SdkError::DispatchFailure(_)
                | SdkError::ResponseError(_),
                _,
            ) => Self::Unavailable { operation, detail },
            _ => Self::Failed { operation, detail },
        }
    }

    /// Maps a failure to get credentials, which happens before any request
    /// is sent: none found is [`AudioStoreError::Denied`], as is a
    /// provider set up wrong; a provider that timed out or failed (STS or
    /// instance metadata unreachable, say) may work on the next try.
    fn from_credentials(operation: &'static str, err: &CredentialsError) -> Self {
        let detail = match err {
            CredentialsError::CredentialsNotLoaded(_) => format!(
                "no credentials: s3.access_key_id and s3.secret_access_key are empty and the \
                 AWS default chain found none (AWS_ACCESS_KEY_ID, AWS_PROFILE, web identity, \
                 the container endpoint, instance metadata): {}",
                cause_chain(err)
            ),
            _ => format!("getting credentials: {}", cause_chain(err)),
        };
        match err {
            CredentialsError::ProviderTimedOut(_) | CredentialsError::ProviderError(_) => {
                Self::Unavailable { operation, detail }
            }
            _ => Self::Denied { operation, detail },
        }
    }
}

/// The first error of type `E` in `err`'s source chain, `err` included.
pub(crate) fn find_source<'a, E: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(found) = err.downcast_ref::<E>() {
            return Some(found);
        }
        next = err.source();
    }
    None
}

/// An error's `Display` and those of its sources, joined by `: `, skipping
/// a source that repeats its parent's text.
///
/// The SDK's own `DisplayErrorContext` appends the `Debug` form as well,
/// which is noisy in logs and would show whatever internals a future error
/// type keeps; `Display` texts stay short and free of credentials.
pub(crate) fn cause_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = err.to_string();
    let mut previous = chain.clone();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !previous.contains(&text) {
            chain.push_str(": ");
            chain.push_str(&text);
        }
        previous = text;
        source = cause.source();
    }
    chain
}

/// The HTTP status of a failed call, when a response came back at all.
pub(crate) fn http_status<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    err.raw_response()
        .map(|response| response.status().as_u16())
}
