//! Making the audio of one content hash while holding its fleet-wide lease.
//!
//! Every object is uploaded with its facts (SHA-256, playing time, provider)
//! in its S3 metadata, atomically with the bytes. A holder that finds an
//! object under its key but no index row (a crashed claim uploaded it and
//! died before its commit) indexes that object, and so bills the one call
//! that made it, instead of paying the provider again. When the upload finds
//! the key taken, the index records the object actually stored, never the
//! discarded bytes.

use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tracing::Instrument as _;
use ttsq_audio::{AudioStore, AudioStoreError, ObjectHead, PutOutcome};
use ttsq_core::{AudioFormat, ContentHash};
use ttsq_providers::{AudioSink, ProviderError, Router, SynthesisRequest};
use ttsq_store::{AudioObject, MadeAudio};

use crate::retry::retry_transient;

/// S3 metadata names of the facts an object carries about its own bytes.
const META_SHA256: &str = "ttsq-sha256";
const META_DURATION_MS: &str = "ttsq-duration-ms";
const META_PROVIDER: &str = "ttsq-provider";

/// The error code and message of a task handed back because another claim
/// was still synthesizing its text when it stopped waiting.
pub const SYNTHESIS_IN_PROGRESS: (&str, &str) = (
    "synthesis_in_progress",
    "another replica is still synthesizing this text",
);

/// Why no audio was made.
#[derive(Debug, thiserror::Error)]
pub enum MakeAudioError {
    /// The provider chain produced nothing.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The bucket could not be read or written (after retries).
    #[error(transparent)]
    Storage(#[from] AudioStoreError),
}

/// Audio made under a lease: what to index, and the bytes when they are
/// the very bytes stored (so a caller may answer with them).
#[derive(Debug)]
pub struct Made {
    /// The object to index with the task that pays for it.
    pub audio: MadeAudio,
    /// Whether a provider was called for it now (`false`: an object left by
    /// an earlier holder was adopted).
    pub called_provider: bool,
    /// The stored bytes, when this call stored them.
    pub bytes: Option<Bytes>,
}

/// How [`make_audio`] stores what it makes.
#[derive(Debug, Clone, Copy)]
pub struct MakeOptions {
    /// How long a paid-for synthesis keeps retrying S3.
    pub storage_retry: Duration,
    /// Whether audio of a fallback provider may answer for the text
    /// (`cache.serve_fallback_audio`).
    pub serve_fallback_audio: bool,
}

/// Makes the audio of `request`, whose content hash is `content_hash` and
/// whose lease the caller holds: adopts an unindexed object already under
/// its key, or synthesizes and uploads it. Storage failures are retried for
/// up to `options.storage_retry` (the audio may be paid for already).
///
/// Audio of a fallback provider is stored under a hash of its own, unique to
/// this synthesis, unless `options.serve_fallback_audio`: it answers the
/// tasks it was made for, and the text's own hash stays free for the
/// dialect's first provider once it is back.
pub async fn make_audio(
    bucket: &AudioStore,
    providers: &Router,
    content_hash: &str,
    request: &SynthesisRequest<'_>,
    options: MakeOptions,
) -> Result<Made, MakeAudioError> {
    make(bucket, providers, content_hash, request, options, None).await
}

/// As [`make_audio`], the provider's bytes handed to `sink` as they arrive
/// when it streams (see [`Router::synthesize_streaming`]). The object is
/// still stored once, whole, after the provider finished; a provider that
/// fails mid-stream leaves nothing stored. An adopted object sends nothing.
pub async fn make_audio_streaming(
    bucket: &AudioStore,
    providers: &Router,
    content_hash: &str,
    request: &SynthesisRequest<'_>,
    options: MakeOptions,
    sink: &AudioSink,
) -> Result<Made, MakeAudioError> {
    make(
        bucket,
        providers,
        content_hash,
        request,
        options,
        Some(sink),
    )
    .await
}

async fn make(
    bucket: &AudioStore,
    providers: &Router,
    content_hash: &str,
    request: &SynthesisRequest<'_>,
    options: MakeOptions,
    sink: Option<&AudioSink>,
) -> Result<Made, MakeAudioError> {
    let storage_retry = options.storage_retry;
    let format = request.format;
    let key = object_key(content_hash, format);
    let found = retry_transient(storage_retry, "looking for an unindexed object", || {
        bucket.head(&key)
    })
    .await?;
    if let Some(head) = found
        && let Some(object) = object_from_head(content_hash, &key, format, &head)
    {
        tracing::info!(s3.key = %key, "indexing audio a previous claim uploaded but never indexed");
        return Ok(Made {
            audio: MadeAudio {
                lease_hash: content_hash.to_owned(),
                object,
            },
            called_provider: false,
            bytes: None,
        });
    }

    let (audio, provider) = match sink {
        Some(sink) => providers.synthesize_streaming(request, sink).await?,
        None => providers.synthesize(request).await?,
    };
    tracing::Span::current().record("provider", provider.as_str());
    let primary = providers
        .catalog()
        .get(request.dialect)
        .and_then(|d| d.provider_chain.first());
    let object_hash = if options.serve_fallback_audio || primary == Some(&provider) {
        content_hash.to_owned()
    } else {
        tracing::info!(
            provider,
            "fallback audio kept apart from the text's cache entry"
        );
        fallback_hash(content_hash, &provider)
    };
    let key = object_key(&object_hash, format);
    let sha256 = hex::encode(Sha256::digest(&audio.bytes));
    let duration_ms = i32::try_from(audio.duration_ms).unwrap_or(i32::MAX);
    let ours = AudioObject {
        hash: object_hash.clone(),
        s3_key: key.clone(),
        bytes: i64::try_from(audio.bytes.len()).unwrap_or(i64::MAX),
        format: format.as_str().to_owned(),
        duration_ms,
        provider: provider.clone(),
        sha256: sha256.clone(),
        created_at: chrono::Utc::now(),
    };
    // Marks first: once the audio is indexed, its marks must be there too.
    if !audio.marks.is_empty()
        && let Some(hash) = ContentHash::parse(&object_hash)
    {
        let marks_key = hash.marks_key();
        let json = Bytes::from(serde_json::to_vec(&audio.marks).unwrap_or_default());
        retry_transient(storage_retry, "storing marks", || {
            bucket
                .put(&marks_key, json.clone(), "application/json")
                .instrument(tracing::info_span!("s3.put", s3.key = %marks_key))
        })
        .await?;
    }
    let duration = duration_ms.to_string();
    let metadata = [
        (META_SHA256, sha256.as_str()),
        (META_DURATION_MS, duration.as_str()),
        (META_PROVIDER, provider.as_str()),
    ];
    let bytes = ours.bytes;
    let outcome = retry_transient(storage_retry, "storing audio", || {
        bucket
            .put_hashed(
                &key,
                audio.bytes.clone(),
                &sha256,
                format.content_type(),
                &metadata,
            )
            .instrument(tracing::info_span!("s3.put", s3.key = %key, bytes))
    })
    .await?;
    let (object, held) = match outcome {
        PutOutcome::Stored => (ours, Some(audio.bytes)),
        // Someone stored this key between the look and the upload (a stale
        // claim): index what is really there.
        PutOutcome::AlreadyExisted => {
            let stored = stored_object(bucket, &key, &ours, storage_retry).await?;
            (stored, None)
        }
    };
    Ok(Made {
        audio: MadeAudio {
            lease_hash: content_hash.to_owned(),
            object,
        },
        called_provider: true,
        bytes: held,
    })
}

/// The object under `key` as it really is, after an upload found the key
/// taken: from its metadata, or else from its bytes (an object stored
/// without metadata), with `ours`' playing time and provider as the best
/// knowledge of the rest.
async fn stored_object(
    bucket: &AudioStore,
    key: &str,
    ours: &AudioObject,
    storage_retry: Duration,
) -> Result<AudioObject, AudioStoreError> {
    let format: AudioFormat = ours.format.parse().unwrap_or(AudioFormat::Mp3);
    let head = retry_transient(storage_retry, "reading a stored object", || {
        bucket.head(key)
    })
    .await?;
    if let Some(head) = &head
        && let Some(object) = object_from_head(&ours.hash, key, format, head)
    {
        return Ok(object);
    }
    let bytes =
        retry_transient(storage_retry, "reading a stored object", || bucket.get(key)).await?;
    Ok(AudioObject {
        bytes: i64::try_from(bytes.len()).unwrap_or(i64::MAX),
        sha256: hex::encode(Sha256::digest(&bytes)),
        ..ours.clone()
    })
}

/// The index row an object's metadata describes, when it carries them.
fn object_from_head(
    content_hash: &str,
    key: &str,
    format: AudioFormat,
    head: &ObjectHead,
) -> Option<AudioObject> {
    let sha256 = head.metadata.get(META_SHA256)?;
    Some(AudioObject {
        hash: content_hash.to_owned(),
        s3_key: key.to_owned(),
        bytes: head.bytes,
        format: format.as_str().to_owned(),
        duration_ms: head
            .metadata
            .get(META_DURATION_MS)
            .and_then(|d| d.parse().ok())
            .unwrap_or(0),
        provider: head
            .metadata
            .get(META_PROVIDER)
            .cloned()
            .unwrap_or_default(),
        sha256: sha256.clone(),
        created_at: chrono::Utc::now(),
    })
}

/// A hash for fallback audio of `content_hash`, unique to one synthesis: a
/// content hash no request computes, so no later request finds it.
fn fallback_hash(content_hash: &str, provider: &str) -> String {
    let mut digest = Sha256::new();
    digest.update(b"fallback\0");
    digest.update(content_hash.as_bytes());
    digest.update(b"\0");
    digest.update(provider.as_bytes());
    digest.update(b"\0");
    digest.update(uuid::Uuid::now_v7().as_bytes());
    hex::encode(digest.finalize())
}

/// The bucket key of a content hash's audio.
pub fn object_key(content_hash: &str, format: AudioFormat) -> String {
    ContentHash::parse(content_hash)
        .map(|h| h.object_key(format))
        .unwrap_or_else(|| format!("audio/invalid/{content_hash}.{}", format.extension()))
}
