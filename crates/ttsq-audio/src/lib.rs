#![doc = include_str!("../README.md")]

mod client;
mod endpoints;
mod error;
mod signing;
mod streaming;
mod transport;

use std::{fmt, time::Duration};

use aws_sdk_s3::{
    Client,
    config::http::HttpResponse,
    error::{ProvideErrorMetadata, SdkError},
    presigning::PresigningConfig,
    primitives::ByteStream,
    types::{BucketLocationConstraint, CreateBucketConfiguration},
};
use bytes::Bytes;
use ttsq_config::S3Settings;

pub use crate::{
    client::s3_client,
    error::AudioStoreError,
    streaming::{MultipartWriter, ObjectReader},
};
use crate::{
    error::{cause_chain, http_status},
    signing::PrecomputedPayloadSha256,
};

/// The one region where `CreateBucket` must not name a location constraint.
const US_EAST_1: &str = "us-east-1";

/// Longest a presigned URL may live: SigV4 refuses more than seven days.
const MAX_PRESIGN_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Handle to the audio bucket.
///
/// Cheap to clone: the AWS client keeps its configuration and connection
/// pool behind an `Arc`, so every clone shares them.
#[derive(Clone)]
pub struct AudioStore {
    /// Configured S3 client, credentials included.
    client: Client,
    /// Bucket every object lives in.
    bucket: String,
    /// Lifetime of presigned URLs, already checked against SigV4's limit.
    presign_ttl: Duration,
    /// Whether a HeadObject guards every upload (`s3.conditional_writes` off).
    head_before_put: bool,
}

impl fmt::Debug for AudioStore {
    // Written by hand so the client's configuration (credentials) can never
    // reach a log line through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AudioStore")
            .field("bucket", &self.bucket)
            .field("presign_ttl", &self.presign_ttl)
            .finish_non_exhaustive()
    }
}

/// What [`AudioStore::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The key was free; the bytes are now stored under it.
    Stored,
    /// An object already had this key; it was left untouched and the new
    /// bytes were discarded (content addressing makes them equivalent).
    AlreadyExisted,
}

/// What [`AudioStore::head`] learns of a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectHead {
    /// Size in bytes.
    pub bytes: i64,
    /// User metadata given to [`AudioStore::put_with_metadata`], by name
    /// (lower case, without the `x-amz-meta-` prefix).
    pub metadata: std::collections::HashMap<String, String>,
}

impl AudioStore {
    /// Builds the S3 client from `settings` ([`s3_client`]); when
    /// `create_bucket` is set, also creates the bucket if it is missing.
    ///
    /// Without `create_bucket` this sends no S3 request, so a process can
    /// start while S3 is down; [`AudioStore::check`] reports readiness.
    /// Creating is idempotent and safe when several replicas race: a bucket
    /// that another replica created first counts as success.
    pub async fn connect(settings: &S3Settings) -> Result<Self, AudioStoreError> {
        let presign_ttl = Duration::from_secs(settings.presign_ttl_secs);
        if presign_ttl.is_zero() || presign_ttl > MAX_PRESIGN_TTL {
            return Err(AudioStoreError::InvalidSettings(format!(
                "s3.presign_ttl_secs must be between 1 and {} (7 days), got {}",
                MAX_PRESIGN_TTL.as_secs(),
                settings.presign_ttl_secs
            )));
        }
        if settings.bucket.trim().is_empty() {
            return Err(AudioStoreError::InvalidSettings(
                "s3.bucket must not be empty".to_owned(),
            ));
        }
        let store = Self {
            client: s3_client(settings).await?,
            bucket: settings.bucket.clone(),
            presign_ttl,
            head_before_put: !settings.conditional_writes,
        };
        if settings.create_bucket {
            store.ensure_bucket().await?;
        }
        Ok(store)
    }

    /// The bucket this store writes to, for logs and diagnostics.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Creates the bucket, in the client's region, unless it exists already.
    async fn ensure_bucket(&self) -> Result<(), AudioStoreError> {
        match self.check().await {
            Ok(()) => return Ok(()),
            Err(AudioStoreError::BucketNotFound { .. }) => {}
            Err(err) => return Err(err),
        }
        let mut request = self.client.create_bucket().bucket(&self.bucket);
        let region = self
            .client
            .config()
            .region()
            .map_or(US_EAST_1, |region| region.as_ref());
        // us-east-1 is the one region that must not be named explicitly.
        if region != US_EAST_1 {
            request = request.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region))
                    .build(),
            );
        }
        match request.send().await {
            Ok(_) => {
                tracing::info!(bucket = %self.bucket, "created S3 bucket");
                Ok(())
            }
            // Another replica won the race: the bucket is there, and ours.
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_bucket_already_owned_by_you()) =>
            {
                Ok(())
            }
            // Some S3-compatible servers answer this even for the caller's own
            // bucket, while on AWS it means another account owns the name:
            // a HeadBucket tells the two apart.
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_bucket_already_exists()) =>
            {
                self.check().await
            }
            Err(err) => Err(AudioStoreError::from_sdk("CreateBucket", &err)),
        }
    }

    /// Stores `bytes` under `key` unless an object already has that key.
    ///
    /// Keys are content hashes, so an object never changes once written;
    /// this method never overwrites one. Two guards enforce that:
    ///
    /// 1. the `PutObject` carries `If-None-Match: *`, so a server that
    ///    supports conditional writes refuses when the key is taken; its
    ///    `412 Precondition Failed` means [`PutOutcome::AlreadyExisted`].
    ///    AWS S3 checks this atomically. s3s-fs 0.14.1 honours it too, but
    ///    checks before it writes, so it is not atomic there;
    /// 2. unless `s3.conditional_writes` says the server honours guard 1, a
    ///    `HeadObject` runs first, because some S3-compatible servers
    ///    ignore conditional writes. An existing key returns
    ///    [`PutOutcome::AlreadyExisted`] without uploading anything. That
    ///    keeps the object immutable on those servers, and it costs one small
    ///    round trip per store.
    ///
    /// On a server without atomic conditional writes, two writers that race
    /// on one key can both upload, and the last one wins. Both hold audio for
    /// the same content hash, so either result is correct. No write after
    /// the first one has finished can replace it.
    pub async fn put(
        &self,
        key: &str,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<PutOutcome, AudioStoreError> {
        self.put_with_metadata(key, bytes, content_type, &[]).await
    }

    /// [`AudioStore::put`] with user metadata (`x-amz-meta-*`) stored
    /// atomically with the bytes, so that whoever finds the object later
    /// ([`AudioStore::head`]) learns facts about exactly these bytes.
    pub async fn put_with_metadata(
        &self,
        key: &str,
        bytes: Bytes,
        content_type: &str,
        metadata: &[(&str, &str)],
    ) -> Result<PutOutcome, AudioStoreError> {
        self.put_object(key, bytes, None, content_type, metadata)
            .await
    }

    /// [`AudioStore::put_with_metadata`] for bytes whose SHA-256 the caller
    /// has already computed (`sha256_hex`, lower-case hex): the upload is
    /// signed with it instead of the S3 client hashing the body a second
    /// time for SigV4's `x-amz-content-sha256`. The server still checks the
    /// body against it (AWS S3 and s3s-fs refuse a mismatch), so a wrong hash
    /// fails the upload and never stores other bytes. A `sha256_hex` that is
    /// not 64 hex digits is ignored.
    pub async fn put_hashed(
        &self,
        key: &str,
        bytes: Bytes,
        sha256_hex: &str,
        content_type: &str,
        metadata: &[(&str, &str)],
    ) -> Result<PutOutcome, AudioStoreError> {
        let signed_with = PrecomputedPayloadSha256::new(sha256_hex);
        self.put_object(key, bytes, signed_with, content_type, metadata)
            .await
    }

    async fn put_object(
        &self,
        key: &str,
        bytes: Bytes,
        signed_with: Option<PrecomputedPayloadSha256>,
        content_type: &str,
        metadata: &[(&str, &str)],
    ) -> Result<PutOutcome, AudioStoreError> {
        if self.head_before_put && self.exists(key).await? {
            tracing::debug!(key, "audio object already stored");
            return Ok(PutOutcome::AlreadyExisted);
        }
        let size = bytes.len();
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .if_none_match("*");
        for (name, value) in metadata {
            request = request.metadata(*name, *value);
        }
        let request = request.body(ByteStream::from(bytes));
        let result = match signed_with {
            Some(signed_with) => request.customize().interceptor(signed_with).send().await,
            None => request.send().await,
        };
        match result {
            Ok(_) => {
                tracing::debug!(key, size, "stored audio object");
                Ok(PutOutcome::Stored)
            }
            // 412: the conditional write found the key taken (possibly by our
            // own earlier attempt whose response was lost, then retried).
            Err(err) if http_status(&err) == Some(412) => {
                tracing::debug!(key, "audio object stored concurrently");
                Ok(PutOutcome::AlreadyExisted)
            }
            Err(err) => Err(AudioStoreError::from_sdk("PutObject", &err)),
        }
    }

    /// The size and user metadata of the object under `key`, or `None` when
    /// no object has that key.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectHead>, AudioStoreError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(head) => Ok(Some(ObjectHead {
                bytes: head.content_length().unwrap_or(0),
                metadata: head.metadata().cloned().unwrap_or_default(),
            })),
            Err(err) if http_status(&err) == Some(404) => Ok(None),
            Err(err) => Err(AudioStoreError::from_sdk("HeadObject", &err)),
        }
    }

    /// Whether an object has `key`.
    async fn exists(&self, key: &str) -> Result<bool, AudioStoreError> {
        Ok(self.head(key).await?.is_some())
    }

    /// Reads the whole object stored under `key`.
    ///
    /// A missing key is [`AudioStoreError::NotFound`]
    /// ([`AudioStoreError::is_not_found`]).
    pub async fn get(&self, key: &str) -> Result<Bytes, AudioStoreError> {
        let response = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(response) => response,
            Err(err) => return Err(self.not_found_or("GetObject", key, &err)),
        };
        let body = response
            .body
            .collect()
            .await
            .map_err(|err| AudioStoreError::Unavailable {
                operation: "GetObject",
                detail: format!("reading the body of `{key}`: {}", cause_chain(&err)),
            })?;
        Ok(body.into_bytes())
    }

    /// A presigned URL that downloads `key` with a plain `GET`, valid for
    /// `presign_ttl_secs`; lets clients fetch audio from S3 directly instead
    /// of through the API. Signing is local: it neither checks that the
    /// object exists nor contacts the server.
    pub async fn presign_get(&self, key: &str) -> Result<String, AudioStoreError> {
        let presigning = PresigningConfig::expires_in(self.presign_ttl)
            .map_err(|err| AudioStoreError::InvalidSettings(err.to_string()))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(presigning)
            .await
            .map_err(|err| AudioStoreError::from_sdk("GetObject (presign)", &err))?;
        Ok(request.uri().to_owned())
    }

    /// Deletes the object under `key`; a key that is already gone is fine.
    /// Only the retention sweeper deletes, and only once no task refers to
    /// the object any more.
    pub async fn delete(&self, key: &str) -> Result<(), AudioStoreError> {
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(err) => match self.not_found_or("DeleteObject", key, &err) {
                AudioStoreError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Deletes every object of the bucket, then the bucket itself; a bucket
    /// that is not there is fine. For buckets made for one test or one
    /// benchmark run, never the service's own: the service only ever
    /// deletes objects no task refers to ([`AudioStore::delete`]).
    pub async fn delete_bucket(&self) -> Result<(), AudioStoreError> {
        loop {
            let listed = match self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .send()
                .await
            {
                Ok(listed) => listed,
                Err(err)
                    if err.code() == Some("NoSuchBucket") || http_status(&err) == Some(404) =>
                {
                    return Ok(());
                }
                Err(err) => return Err(AudioStoreError::from_sdk("ListObjectsV2", &err)),
            };
            if listed.contents().is_empty() {
                break;
            }
            for key in listed.contents().iter().filter_map(|object| object.key()) {
                self.delete(key).await?;
            }
        }
        match self
            .client
            .delete_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if err.code() == Some("NoSuchBucket") || http_status(&err) == Some(404) => {
                Ok(())
            }
            Err(err) => Err(AudioStoreError::from_sdk("DeleteBucket", &err)),
        }
    }

    /// Checks that the bucket is reachable with these credentials
    /// (`HeadBucket`), for readiness probes.
    pub async fn check(&self) -> Result<(), AudioStoreError> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(err) if http_status(&err) == Some(404) => Err(AudioStoreError::BucketNotFound {
                bucket: self.bucket.clone(),
            }),
            Err(err) => Err(AudioStoreError::from_sdk("HeadBucket", &err)),
        }
    }

    /// Maps a failed object read: a missing key or bucket gets its own
    /// variant, anything else goes through [`AudioStoreError::from_sdk`].
    fn not_found_or<E>(
        &self,
        operation: &'static str,
        key: &str,
        err: &SdkError<E, HttpResponse>,
    ) -> AudioStoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match (err.code(), http_status(err)) {
            (Some("NoSuchBucket"), _) => AudioStoreError::BucketNotFound {
                bucket: self.bucket.clone(),
            },
            (Some("NoSuchKey"), _) | (_, Some(404)) => AudioStoreError::NotFound {
                key: key.to_owned(),
            },
            _ => AudioStoreError::from_sdk(operation, err),
        }
    }
}
