//! The S3 client from [`S3Settings`]: where the credentials and the region
//! come from, the endpoint and how it addresses buckets, and ttsq's
//! timeouts, retries and checksums, all over one [`Transport`].
//!
//! # Credentials
//!
//! Static keys in the settings win. With both empty, the AWS SDK's default
//! chain looks, in this order, at `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`
//! (`AWS_SESSION_TOKEN`), the profile named by `AWS_PROFILE` in
//! `AWS_SHARED_CREDENTIALS_FILE`/`AWS_CONFIG_FILE` (`credential_process`
//! included; SSO profiles are not compiled in), web identity
//! (`AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE`, as EKS IRSA sets them),
//! the container endpoint (ECS, EKS Pod Identity) and instance metadata.
//! The SDK caches what it finds and refreshes it before it expires. The
//! providers that ask the network (STS, the container endpoint, instance
//! metadata) go through the same [`Transport`] as S3 itself, so no second
//! HTTP or TLS stack is compiled in.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::{
    Client,
    config::{
        Credentials, RequestChecksumCalculation, ResponseChecksumValidation, retry::RetryConfig,
        timeout::TimeoutConfig,
    },
};
use secrecy::ExposeSecret;
use ttsq_config::S3Settings;

use crate::{endpoints::CachedEndpoints, error::AudioStoreError, transport::Transport};

/// Time allowed to open a TCP connection to the S3 server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Time allowed for one attempt, body included; audio objects are at most a
/// few megabytes, so this is generous even on a slow link.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Time allowed for a whole operation, retries and back-off included.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(90);

/// Attempts per operation (the first try included) for transient failures.
const MAX_ATTEMPTS: u32 = 3;

/// Where the static credentials come from, as the SDK reports it.
const STATIC_CREDENTIALS_SOURCE: &str = "ttsq settings (s3.access_key_id)";

/// The S3 client ttsq uses for `settings`: static keys or the AWS default
/// credential chain, the settings' region or the chain's, the settings'
/// endpoint or AWS's regional one.
///
/// Reads the environment and the AWS profile files, but asks no server
/// anything unless `s3.region` is empty and only instance metadata knows
/// the region; credentials are looked up at the first request.
pub async fn s3_client(settings: &S3Settings) -> Result<Client, AudioStoreError> {
    // S3's requests and the credential providers' alike: it acknowledges
    // response data at once (see `transport`).
    let transport = Transport::new()?;
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(transport);
    if let Some((access_key_id, secret)) = settings.static_credentials() {
        loader = loader.credentials_provider(Credentials::new(
            access_key_id,
            secret.expose_secret(),
            None,
            None,
            STATIC_CREDENTIALS_SOURCE,
        ));
    }
    let region = settings.region.trim();
    if !region.is_empty() {
        loader = loader.region(Region::new(region.to_owned()));
    }
    let shared = loader.load().await;
    if shared.region().is_none() {
        return Err(AudioStoreError::InvalidSettings(
            "s3.region is empty and the AWS default chain found no region (AWS_REGION, \
             AWS_DEFAULT_REGION, the profile's `region`, instance metadata): set one of them"
                .to_owned(),
        ));
    }
    let endpoint = settings.endpoint.trim();
    if endpoint.is_empty() && settings.force_path_style {
        tracing::warn!(
            "s3.force_path_style is set while s3.endpoint is empty (AWS S3 itself): AWS \
             addresses buckets by virtual host; set s3.force_path_style = false"
        );
    }
    let mut config = aws_sdk_s3::config::Builder::from(&shared)
        .endpoint_resolver(CachedEndpoints::default())
        .force_path_style(settings.force_path_style)
        // The SDK's default CRC checksums on every request (and the
        // `x-amz-checksum-mode` header on GETs, which would also end up in
        // presigned URLs) are not understood by many S3-compatible servers.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        )
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(MAX_ATTEMPTS)
                .with_initial_backoff(Duration::from_millis(100))
                .with_max_backoff(Duration::from_secs(2)),
        );
    // Empty: AWS itself, the endpoint resolved from the region (or
    // AWS_ENDPOINT_URL_S3, which every AWS SDK honours).
    if !endpoint.is_empty() {
        config = config.endpoint_url(endpoint);
    }
    Ok(Client::from_conf(config.build()))
}
