//! Objects too large to hold whole: a GET whose body is read as it arrives
//! ([`ObjectReader`]), and an upload written part by part
//! ([`MultipartWriter`], S3 multipart) that holds at most one part.

use aws_sdk_s3::{
    Client,
    primitives::ByteStream,
    types::{CompletedMultipartUpload, CompletedPart},
};
use bytes::Bytes;

use crate::{
    AudioStore,
    error::{AudioStoreError, cause_chain, http_status},
};

/// S3's most parts in one multipart upload.
const MAX_PARTS: usize = 10_000;

/// The body of a stored object (or of a range of it), read piece by piece
/// as it arrives, so that a large object is never held whole.
pub struct ObjectReader {
    /// Key read, for error messages.
    key: String,
    /// The response body.
    body: ByteStream,
    /// Size of the whole object, however much of it this reads.
    object_bytes: u64,
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReader")
            .field("key", &self.key)
            .field("object_bytes", &self.object_bytes)
            .finish_non_exhaustive()
    }
}

impl ObjectReader {
    /// Size of the whole object in bytes, also when only a range is read.
    pub fn object_bytes(&self) -> u64 {
        self.object_bytes
    }

    /// The next piece of the body as the server sent it; `None` at its end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, AudioStoreError> {
        match self.body.next().await {
            None => Ok(None),
            Some(Ok(chunk)) => Ok(Some(chunk)),
            Some(Err(err)) => Err(AudioStoreError::Unavailable {
                operation: "GetObject",
                detail: format!("reading the body of `{}`: {}", self.key, cause_chain(&err)),
            }),
        }
    }
}

impl AudioStore {
    /// Opens the object under `key` for reading as a stream (see
    /// [`ObjectReader`]). A missing key is [`AudioStoreError::NotFound`].
    pub async fn open(&self, key: &str) -> Result<ObjectReader, AudioStoreError> {
        self.open_range(key, 0, None).await
    }

    /// Opens bytes `first..=last` of the object under `key` (to its end
    /// when `last` is `None`; a range past the end is cut at the end, and
    /// one that starts past it reads nothing), e.g. to read a file's header
    /// without downloading the file.
    pub async fn open_range(
        &self,
        key: &str,
        first: u64,
        last: Option<u64>,
    ) -> Result<ObjectReader, AudioStoreError> {
        let mut request = self.client.get_object().bucket(&self.bucket).key(key);
        if first > 0 || last.is_some() {
            let last = last.map(|l| l.to_string()).unwrap_or_default();
            request = request.range(format!("bytes={first}-{last}"));
        }
        match request.send().await {
            Ok(response) => {
                // `bytes 0-4095/123456` for a range, else the body's length.
                let whole = response
                    .content_range()
                    .and_then(|range| range.rsplit_once('/'))
                    .and_then(|(_, total)| total.parse().ok());
                let sent = response
                    .content_length()
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0);
                Ok(ObjectReader {
                    key: key.to_owned(),
                    object_bytes: whole.unwrap_or(sent),
                    body: response.body,
                })
            }
            // 416: the range starts at or past the end of the object (an
            // empty object has no byte 0): there is nothing to read.
            Err(err) if http_status(&err) == Some(416) => Ok(ObjectReader {
                key: key.to_owned(),
                object_bytes: first,
                body: ByteStream::from_static(b""),
            }),
            Err(err) => Err(self.not_found_or("GetObject", key, &err)),
        }
    }

    /// Starts a multipart upload of `key` whose parts are `part_bytes` long
    /// (S3 wants at least 5 MiB each but the last). The object appears only
    /// when [`MultipartWriter::complete`] succeeds, replacing any object
    /// under `key`; until then nothing is visible.
    pub async fn create_multipart(
        &self,
        key: &str,
        content_type: &str,
        part_bytes: usize,
    ) -> Result<MultipartWriter, AudioStoreError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .send()
            .await
            .map_err(|err| AudioStoreError::from_sdk("CreateMultipartUpload", &err))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| AudioStoreError::Failed {
                operation: "CreateMultipartUpload",
                detail: format!("no upload id for `{key}`"),
            })?
            .to_owned();
        Ok(MultipartWriter {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            upload_id: Some(upload_id),
            part_bytes: part_bytes.max(1),
            buffer: Vec::new(),
            parts: Vec::new(),
            uploaded: 0,
            peak_buffered: 0,
        })
    }
}

/// An object written part by part (an S3 multipart upload): bytes are
/// gathered into one part of `part_bytes`, which is uploaded once full
/// before anything more is taken, so a writer holds at most one part
/// whatever the object's size.
///
/// End it with [`Self::complete`] or [`Self::abort`]. One dropped without
/// either (its task cancelled) aborts its upload in the background, so no
/// parts are left behind in the bucket, where they would be stored (and
/// billed) unseen.
pub struct MultipartWriter {
    /// The S3 client.
    client: Client,
    /// Bucket of the object.
    bucket: String,
    /// Key of the object.
    key: String,
    /// The upload; `None` once completed or aborted.
    upload_id: Option<String>,
    /// Length of every part but the last.
    part_bytes: usize,
    /// The part being gathered.
    buffer: Vec<u8>,
    /// Parts uploaded so far, in order.
    parts: Vec<CompletedPart>,
    /// Bytes in those parts.
    uploaded: u64,
    /// Most bytes the buffer has held.
    peak_buffered: usize,
}

impl std::fmt::Debug for MultipartWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultipartWriter")
            .field("bucket", &self.bucket)
            .field("key", &self.key)
            .field("parts", &self.parts.len())
            .field("uploaded", &self.uploaded)
            .finish_non_exhaustive()
    }
}

impl MultipartWriter {
    /// Appends `data`, uploading each part as it fills.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), AudioStoreError> {
        while !data.is_empty() {
            if self.buffer.capacity() == 0 {
                // One allocation per part, never a doubling past it.
                self.buffer = Vec::with_capacity(self.part_bytes);
            }
            let take = (self.part_bytes - self.buffer.len()).min(data.len());
            self.buffer.extend_from_slice(&data[..take]);
            self.peak_buffered = self.peak_buffered.max(self.buffer.len());
            data = &data[take..];
            if self.buffer.len() == self.part_bytes {
                self.upload_part().await?;
            }
        }
        Ok(())
    }

    /// Bytes written so far, uploaded or gathered.
    pub fn bytes_written(&self) -> u64 {
        self.uploaded + self.buffer.len() as u64
    }

    /// Parts uploaded so far.
    pub fn parts_uploaded(&self) -> usize {
        self.parts.len()
    }

    /// Most bytes the writer has held at once: at most one part.
    pub fn peak_buffered(&self) -> usize {
        self.peak_buffered
    }

    /// Uploads the gathered bytes as the next part, handing the buffer to
    /// the request rather than copying it.
    async fn upload_part(&mut self) -> Result<(), AudioStoreError> {
        let upload_id = self
            .upload_id
            .clone()
            .ok_or_else(|| self.ended("UploadPart"))?;
        if self.parts.len() >= MAX_PARTS {
            return Err(AudioStoreError::Failed {
                operation: "UploadPart",
                detail: format!(
                    "`{}` would need more than {MAX_PARTS} parts of {} bytes",
                    self.key, self.part_bytes
                ),
            });
        }
        let number = i32::try_from(self.parts.len() + 1).unwrap_or(i32::MAX);
        let body = Bytes::from(std::mem::take(&mut self.buffer));
        let size = body.len() as u64;
        let sent = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|err| AudioStoreError::from_sdk("UploadPart", &err))?;
        self.parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(sent.e_tag().map(str::to_owned))
                .build(),
        );
        self.uploaded += size;
        Ok(())
    }

    /// Uploads what is gathered as the last part and makes the object;
    /// returns its size. On failure the upload is aborted.
    pub async fn complete(mut self) -> Result<u64, AudioStoreError> {
        let result = self.finish().await;
        if result.is_err() {
            self.abort_upload().await;
        }
        result
    }

    async fn finish(&mut self) -> Result<u64, AudioStoreError> {
        // S3 wants at least one part; the last may be short, even empty.
        if !self.buffer.is_empty() || self.parts.is_empty() {
            self.upload_part().await?;
        }
        let upload_id = self
            .upload_id
            .clone()
            .ok_or_else(|| self.ended("CompleteMultipartUpload"))?;
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(std::mem::take(&mut self.parts)))
                    .build(),
            )
            .send()
            .await
            .map_err(|err| AudioStoreError::from_sdk("CompleteMultipartUpload", &err))?;
        self.upload_id = None;
        tracing::debug!(key = %self.key, bytes = self.uploaded, "stored a multipart object");
        Ok(self.uploaded)
    }

    /// Gives the upload up: S3 drops its parts and no object is made.
    pub async fn abort(mut self) -> Result<(), AudioStoreError> {
        let Some(upload_id) = self.upload_id.take() else {
            return Ok(());
        };
        abort_upload(&self.client, &self.bucket, &self.key, &upload_id).await
    }

    /// Aborts, logging a failure (the caller already has an error to report).
    async fn abort_upload(&mut self) {
        if let Some(upload_id) = self.upload_id.take()
            && let Err(err) = abort_upload(&self.client, &self.bucket, &self.key, &upload_id).await
        {
            tracing::warn!(key = %self.key, error = %err, "aborting a multipart upload failed");
        }
    }

    fn ended(&self, operation: &'static str) -> AudioStoreError {
        AudioStoreError::Failed {
            operation,
            detail: format!("the upload of `{}` has ended", self.key),
        }
    }
}

impl Drop for MultipartWriter {
    fn drop(&mut self) {
        let Some(upload_id) = self.upload_id.take() else {
            return;
        };
        // Dropped mid-way (its task cancelled): abort in the background when
        // a runtime is there to run it; else the bucket's lifecycle rule
        // for incomplete uploads removes the parts.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (client, bucket, key) =
                (self.client.clone(), self.bucket.clone(), self.key.clone());
            runtime.spawn(async move {
                if let Err(err) = abort_upload(&client, &bucket, &key, &upload_id).await {
                    tracing::warn!(%key, error = %err, "aborting a dropped multipart upload failed");
                }
            });
        }
    }
}

/// `AbortMultipartUpload`; an upload already gone counts as aborted.
async fn abort_upload(
    client: &Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
) -> Result<(), AudioStoreError> {
    match client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(err) if http_status(&err) == Some(404) => Ok(()),
        Err(err) => Err(AudioStoreError::from_sdk("AbortMultipartUpload", &err)),
    }
}
