//! Verifying a webhook delivery as the Standard Webhooks specification
//! (<https://www.standardwebhooks.com>, version 1.0.0, "Verifying
//! signatures") has a receiver do it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD as BASE64};
use hmac::{Hmac, Mac};
use reqwest::header::HeaderMap;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a delivery did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// The secret is not `whsec_<base64>` (or the base64 alone), or is empty.
    #[error("the webhook secret is not whsec_ followed by base64")]
    InvalidSecret,
    /// A `webhook-*` header is absent, or not visible ASCII.
    #[error("the {0} header is missing")]
    MissingHeader(&'static str),
    /// `webhook-timestamp` is not whole unix seconds.
    #[error("the webhook-timestamp header is not unix seconds")]
    InvalidTimestamp,
    /// `webhook-timestamp` is further from now than the tolerance: a
    /// replayed (or far-delayed) request, or a clock that is off.
    #[error("the webhook-timestamp is {seconds} s from now, more than the tolerance")]
    OutsideTolerance {
        /// How far the timestamp is from now (negative: in the past).
        seconds: i64,
    },
    /// No `v1` signature matches the body under this secret.
    #[error("no signature matches")]
    NoMatchingSignature,
}

/// Verifies ttsq's webhook deliveries with a tenant's secret, as any
/// Standard Webhooks library does:
///
/// - the signed content is `{webhook-id}.{webhook-timestamp}.{body}`, the
///   body exactly as received (not re-serialized);
/// - `webhook-signature` is a space-separated list (two entries while a
///   rotated secret is in its grace period); any one `v1` entry that
///   matches verifies, compared in constant time;
/// - `webhook-timestamp` must be within the tolerance of now (5 minutes by
///   default, as the specification's libraries), past or future.
///
/// Dedupe on `webhook-id`: a retried or replayed event keeps its id.
///
/// ```
/// use ttsq_client::WebhookVerifier;
/// # fn demo(headers: &reqwest::header::HeaderMap, body: &[u8]) -> Result<(), ttsq_client::WebhookError> {
/// let verifier = WebhookVerifier::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
/// verifier.verify(headers, body)?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct WebhookVerifier {
    key: Vec<u8>,
    tolerance: Duration,
}

impl std::fmt::Debug for WebhookVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret: never in logs or error output.
        f.debug_struct("WebhookVerifier")
            .field("tolerance", &self.tolerance)
            .finish_non_exhaustive()
    }
}

impl WebhookVerifier {
    /// How far `webhook-timestamp` may be from now by default.
    pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

    /// A verifier for `secret`, as `ttsq webhooks secret` prints it
    /// (`whsec_<base64>`); the base64 alone is taken too, with or without
    /// padding. The HMAC key is the decoded bytes.
    pub fn new(secret: &str) -> Result<Self, WebhookError> {
        let encoded = secret.trim();
        let encoded = encoded.strip_prefix("whsec_").unwrap_or(encoded);
        let key = BASE64
            .decode(encoded.trim_end_matches('='))
            .map_err(|_| WebhookError::InvalidSecret)?;
        if key.is_empty() {
            return Err(WebhookError::InvalidSecret);
        }
        Ok(Self {
            key,
            tolerance: Self::DEFAULT_TOLERANCE,
        })
    }

    /// The same verifier with another timestamp tolerance.
    #[must_use]
    pub fn with_tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Verifies a delivery's `webhook-*` headers against its raw `body`, now.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), WebhookError> {
        self.verify_at(headers, body, SystemTime::now())
    }

    /// Verifies a delivery as if it were received at `now`.
    pub fn verify_at(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), WebhookError> {
        let header = |name: &'static str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .filter(|value| !value.is_empty())
                .ok_or(WebhookError::MissingHeader(name))
        };
        let id = header("webhook-id")?;
        let timestamp = header("webhook-timestamp")?;
        let signatures = header("webhook-signature")?;

        let sent: i64 = timestamp
            .parse()
            .map_err(|_| WebhookError::InvalidTimestamp)?;
        let now = match now.duration_since(UNIX_EPOCH) {
            Ok(since) => i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
            Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
        };
        let seconds = sent.saturating_sub(now);
        if seconds.unsigned_abs() > self.tolerance.as_secs() {
            return Err(WebhookError::OutsideTolerance { seconds });
        }

        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC accepts any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        let matches = signatures
            .split(' ')
            .filter_map(|entry| entry.split_once(','))
            .filter(|(version, _)| *version == "v1")
            .filter_map(|(_, signature)| BASE64.decode(signature.trim_end_matches('=')).ok())
            // `verify_slice` compares in constant time.
            .any(|signature| mac.clone().verify_slice(&signature).is_ok());
        if matches {
            Ok(())
        } else {
            Err(WebhookError::NoMatchingSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    /// The vector of the reference library's tests
    /// (standard-webhooks/standard-webhooks,
    /// `libraries/python/tests/test_webhooks.py`, `test_sign_function`).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: u64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn headers(signature: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", HeaderValue::from_static(ID));
        headers.insert("webhook-timestamp", TIMESTAMP.into());
        headers.insert(
            "webhook-signature",
            HeaderValue::from_str(signature).expect("ASCII"),
        );
        headers
    }

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn verifier() -> WebhookVerifier {
        WebhookVerifier::new(SECRET).expect("a valid secret")
    }

    #[test]
    fn the_reference_vector_verifies_with_or_without_the_prefix() {
        let headers = headers(SIGNATURE);
        assert_eq!(verifier().verify_at(&headers, BODY, at(TIMESTAMP)), Ok(()));
        let bare = WebhookVerifier::new("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("valid");
        assert_eq!(bare.verify_at(&headers, BODY, at(TIMESTAMP)), Ok(()));
    }

    #[test]
    fn a_changed_body_id_timestamp_or_secret_does_not_verify() {
        let now = at(TIMESTAMP);
        assert_eq!(
            verifier().verify_at(&headers(SIGNATURE), br#"{"test": 2432232315}"#, now),
            Err(WebhookError::NoMatchingSignature)
        );
        let mut other_id = headers(SIGNATURE);
        other_id.insert("webhook-id", HeaderValue::from_static("msg_other"));
        assert_eq!(
            verifier().verify_at(&other_id, BODY, now),
            Err(WebhookError::NoMatchingSignature)
        );
        let mut other_time = headers(SIGNATURE);
        other_time.insert("webhook-timestamp", (TIMESTAMP + 1).into());
        assert_eq!(
            verifier().verify_at(&other_time, BODY, now),
            Err(WebhookError::NoMatchingSignature)
        );
        let other_secret =
            WebhookVerifier::new("whsec_c2VjcmV0LW9mLWFub3RoZXItdGVuYW50").expect("ok");
        assert_eq!(
            other_secret.verify_at(&headers(SIGNATURE), BODY, now),
            Err(WebhookError::NoMatchingSignature)
        );
    }

    #[test]
    fn any_one_matching_v1_entry_of_the_list_verifies() {
        // As the reference library's `test_multi_sig_payload_is_valid`:
        // wrong signatures and other versions around the right one.
        let wrong = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=";
        let listed =
            format!("{wrong} v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= {SIGNATURE} {wrong}");
        assert_eq!(
            verifier().verify_at(&headers(&listed), BODY, at(TIMESTAMP)),
            Ok(())
        );
        // The right bytes under another version, or malformed entries, never verify.
        let bytes = SIGNATURE.trim_start_matches("v1,");
        for header in [
            format!("v1a,{bytes}"),
            bytes.to_owned(),
            format!("{wrong} v1,not-base64!"),
        ] {
            assert_eq!(
                verifier().verify_at(&headers(&header), BODY, at(TIMESTAMP)),
                Err(WebhookError::NoMatchingSignature),
                "{header}"
            );
        }
    }

    #[test]
    fn a_timestamp_outside_the_tolerance_is_refused_either_way() {
        let headers = headers(SIGNATURE);
        let five_minutes = 5 * 60;
        for now in [TIMESTAMP - five_minutes, TIMESTAMP + five_minutes] {
            assert_eq!(verifier().verify_at(&headers, BODY, at(now)), Ok(()));
        }
        assert_eq!(
            verifier().verify_at(&headers, BODY, at(TIMESTAMP + five_minutes + 1)),
            Err(WebhookError::OutsideTolerance { seconds: -301 })
        );
        assert_eq!(
            verifier().verify_at(&headers, BODY, at(TIMESTAMP - five_minutes - 1)),
            Err(WebhookError::OutsideTolerance { seconds: 301 })
        );
        let lenient = verifier().with_tolerance(Duration::from_secs(3600));
        assert_eq!(
            lenient.verify_at(&headers, BODY, at(TIMESTAMP + 3000)),
            Ok(())
        );
    }

    #[test]
    fn missing_headers_and_bad_secrets_are_named() {
        for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            let mut headers = headers(SIGNATURE);
            headers.remove(name);
            assert_eq!(
                verifier().verify_at(&headers, BODY, at(TIMESTAMP)),
                Err(WebhookError::MissingHeader(name))
            );
        }
        let mut headers = headers(SIGNATURE);
        headers.insert("webhook-timestamp", HeaderValue::from_static("soon"));
        assert_eq!(
            verifier().verify_at(&headers, BODY, at(TIMESTAMP)),
            Err(WebhookError::InvalidTimestamp)
        );
        for secret in ["", "whsec_", "whsec_not base64!"] {
            assert_eq!(
                WebhookVerifier::new(secret).map(|_| ()),
                Err(WebhookError::InvalidSecret),
                "{secret:?}"
            );
        }
        assert!(!format!("{:?}", verifier()).contains("MfKQ"));
    }
}
