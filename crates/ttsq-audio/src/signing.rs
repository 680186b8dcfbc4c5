//! Signing an upload with a SHA-256 the caller already has.
//!
//! SigV4 signs a hash of the body (`x-amz-content-sha256`); the S3 client
//! computes it for every `PutObject`. ttsq hashes every audio object anyway
//! (its index records the SHA-256), so that work is done twice per upload
//! unless the signer is handed the hash: the SDK reads a
//! [`PayloadSigningOverride`] from the request's configuration when it
//! signs, and this interceptor puts one there.

use aws_runtime::auth::PayloadSigningOverride;
use aws_smithy_runtime_api::{
    box_error::BoxError,
    client::{
        interceptors::{Intercept, context::BeforeTransmitInterceptorContextMut},
        runtime_components::RuntimeComponents,
    },
};
use aws_smithy_types::config_bag::ConfigBag;

/// Length of a SHA-256 in hex.
const SHA256_HEX_LEN: usize = 64;

/// Signs one request with a precomputed body SHA-256 (lower-case hex).
#[derive(Debug, Clone)]
pub(crate) struct PrecomputedPayloadSha256(String);

impl PrecomputedPayloadSha256 {
    /// The override for `sha256_hex`, when it is a SHA-256 in hex (upper
    /// case is lowered, as SigV4 wants); `None` otherwise, and the client
    /// hashes the body itself.
    pub(crate) fn new(sha256_hex: &str) -> Option<Self> {
        (sha256_hex.len() == SHA256_HEX_LEN && sha256_hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Self(sha256_hex.to_ascii_lowercase()))
    }
}

impl Intercept for PrecomputedPayloadSha256 {
    fn name(&self) -> &'static str {
        "PrecomputedPayloadSha256"
    }

    fn modify_before_signing(
        &self,
        _context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state()
            .store_put(PayloadSigningOverride::Precomputed(self.0.clone()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_sha256_in_hex_overrides_the_signer() {
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

        assert_eq!(PrecomputedPayloadSha256::new(empty).unwrap().0, empty);
        assert_eq!(
            PrecomputedPayloadSha256::new(&empty.to_ascii_uppercase())
                .unwrap()
                .0,
            empty
        );
        assert!(PrecomputedPayloadSha256::new(&empty[1..]).is_none());
        assert!(PrecomputedPayloadSha256::new(&empty.replace('e', "g")).is_none());
        assert!(PrecomputedPayloadSha256::new("").is_none());
    }
}
