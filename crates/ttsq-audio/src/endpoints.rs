//! S3's endpoint rules, evaluated once per bucket instead of per request.
//!
//! The SDK resolves every request's endpoint from its rule set: a few
//! hundred rules, regular expressions on the bucket name and the region, the
//! endpoint URL parsed again. The answer depends on the client's settings
//! and the bucket, never on the object key, and ttsq's client talks to one
//! bucket: [`CachedEndpoints`] keeps the last answer and reuses it while
//! the inputs other than the key are the same.

use std::sync::Mutex;

use aws_sdk_s3::config::endpoint::{
    DefaultResolver, Endpoint, EndpointFuture, Params, ResolveEndpoint,
};

/// The SDK's rules, with the last endpoint they gave.
#[derive(Debug)]
pub(crate) struct CachedEndpoints {
    /// The SDK's own resolver, asked on a miss.
    rules: DefaultResolver,
    /// The inputs and the answer of the last miss.
    last: Mutex<Option<(Params, Endpoint)>>,
}

impl Default for CachedEndpoints {
    fn default() -> Self {
        Self {
            // `new`, not `default`: only `new` loads the partitions (AWS
            // regions) that the rules look a region up in.
            rules: DefaultResolver::new(),
            last: Mutex::new(None),
        }
    }
}

impl CachedEndpoints {
    fn cached(&self, params: &Params) -> Option<Endpoint> {
        let last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        last.as_ref()
            .filter(|(inputs, _)| same_endpoint_inputs(inputs, params))
            .map(|(_, endpoint)| endpoint.clone())
    }
}

impl ResolveEndpoint for CachedEndpoints {
    fn resolve_endpoint<'a>(&'a self, params: &'a Params) -> EndpointFuture<'a> {
        if let Some(endpoint) = self.cached(params) {
            return EndpointFuture::ready(Ok(endpoint));
        }
        EndpointFuture::new(async move {
            let endpoint = self.rules.resolve_endpoint(params).await?;
            *self
                .last
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) =
                Some((params.clone(), endpoint.clone()));
            Ok(endpoint)
        })
    }
}

/// Whether the rules answer `a` and `b` alike: every input but the object
/// key, the list prefix and the copy source is equal. The rule set of the
/// SDK version in Cargo.lock reads none of those three (see
/// `aws-sdk-s3/src/config/endpoint/internals.rs`); an input a later version
/// adds is compared only once it is listed here, so an upgrade of
/// aws-sdk-s3 should check this list.
fn same_endpoint_inputs(a: &Params, b: &Params) -> bool {
    a.bucket() == b.bucket()
        && a.region() == b.region()
        && a.use_fips() == b.use_fips()
        && a.use_dual_stack() == b.use_dual_stack()
        && a.endpoint() == b.endpoint()
        && a.force_path_style() == b.force_path_style()
        && a.accelerate() == b.accelerate()
        && a.use_global_endpoint() == b.use_global_endpoint()
        && a.use_object_lambda_endpoint() == b.use_object_lambda_endpoint()
        && a.disable_access_points() == b.disable_access_points()
        && a.disable_multi_region_access_points() == b.disable_multi_region_access_points()
        && a.use_arn_region() == b.use_arn_region()
        && a.use_s3_express_control_endpoint() == b.use_s3_express_control_endpoint()
        && a.disable_s3_express_session_auth() == b.disable_s3_express_session_auth()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(bucket: &str, key: &str, endpoint: Option<&str>) -> Params {
        Params::builder()
            .bucket(bucket)
            .key(key)
            .region("us-east-1")
            .force_path_style(true)
            .set_endpoint(endpoint.map(str::to_owned))
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn a_cached_endpoint_is_what_the_rules_give_for_every_key() {
        let cache = CachedEndpoints::default();
        let rules = DefaultResolver::new();
        let local = Some("http://127.0.0.1:8014");
        let cases = [
            params("audio", "audio/ab/one.wav", local),
            params("audio", "audio/cd/two.wav", local),
            params("other", "audio/cd/two.wav", local),
            params("audio", "audio/cd/two.wav", None),
            params("audio", "x", local),
        ];

        for case in &cases {
            let cached = cache.resolve_endpoint(case).await.unwrap();
            let again = cache.resolve_endpoint(case).await.unwrap();
            let expected = rules.resolve_endpoint(case).await.unwrap();

            assert_eq!(cached, expected, "{case:?}");
            assert_eq!(again, expected, "{case:?}");
        }
        let first = cache.resolve_endpoint(&cases[0]).await.unwrap();
        assert_eq!(first.url(), "http://127.0.0.1:8014/audio");
    }

    #[test]
    fn only_the_object_inputs_are_ignored() {
        let local = Some("http://127.0.0.1:8014");

        assert!(same_endpoint_inputs(
            &params("audio", "a", local),
            &params("audio", "b", local)
        ));
        assert!(!same_endpoint_inputs(
            &params("audio", "a", local),
            &params("other", "a", local)
        ));
        assert!(!same_endpoint_inputs(
            &params("audio", "a", local),
            &params("audio", "a", None)
        ));
    }
}
