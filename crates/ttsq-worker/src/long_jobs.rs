//! The join of a long job's chunks (issue 21).
//!
//! When the last chunk of a long job succeeds, the trigger on `tasks` leaves
//! its `long_jobs` row `joining`. A sweeper in every worker
//! ([`LongJoiner::run`]: [`LongJoiner::sweep`] every 250 ms) takes the job
//! under a lease, so one replica at a time joins it, streams its chunks'
//! audio in order (see [`crate::join`]) into one object under the job's own
//! content hash (`audio/{hh}/{hash}.{ext}`), merges the chunks' speech
//! marks into the marks file beside it, and sets the job `succeeded` in one
//! transaction fenced by the lease; the trigger bills it (nothing: its
//! chunks billed themselves), queues its webhook and closes the join. When
//! that object is indexed already (an equal long job was joined before),
//! it is used as it is, not written again.
//!
//! Chunks that cannot be joined (formats, layouts, a chunk's object
//! missing, the size cap) fail the job with `join_failed` at once. Other
//! failures (S3, Postgres) release the lease to be tried again later, like
//! batches' joins, and once `batches.join_attempts` takes are used up the
//! job fails with `join_failed` too.

use std::time::Duration;

use ttsq_audio::AudioStore;
use ttsq_config::BatchSettings;
use ttsq_core::{AudioFormat, ContentHash, Mark};
use ttsq_store::{AudioObject, ChunkAudio, Store, StoreError};
use uuid::Uuid;

use crate::{
    join::{AudioPart, JoinError, JoinLimits, join_parts},
    leased::{JOINS_PER_SWEEP, retry_delay, sweep_until, while_renewing},
};

/// Joins the chunks of long jobs waiting for it; every worker runs one, and
/// one replica at a time joins a job, under its lease.
#[derive(Clone)]
pub struct LongJoiner {
    /// Postgres: the long jobs, their chunks and leases.
    store: Store,
    /// S3: the chunks' audio and marks, the joined files.
    audio: AudioStore,
    /// What bounds a join (`batches.join_part_bytes`, `max_joined_bytes`).
    limits: JoinLimits,
    /// Takes of a job before it fails with `join_failed`.
    attempts: u32,
    /// How long a lease lasts unrenewed.
    lease_ttl: Duration,
    /// This replica (its heartbeat id), named on the leases it takes.
    holder: Uuid,
}

impl std::fmt::Debug for LongJoiner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LongJoiner")
            .field("limits", &self.limits)
            .field("attempts", &self.attempts)
            .field("lease_ttl", &self.lease_ttl)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

/// What one [`LongJoiner::sweep`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LongSweep {
    /// Long jobs it joined and set `succeeded`.
    pub joined: usize,
    /// Long jobs it set `succeeded` with their audio found stored already.
    pub reused: usize,
    /// Long jobs it failed with `join_failed`.
    pub failed: usize,
}

/// A long job's audio, ready to be indexed with it.
struct Ready {
    /// Its index row.
    object: AudioObject,
    /// Its first chunk's provider, named on the job.
    provider: String,
    /// Whether the object was found stored rather than made now.
    reused: bool,
}

impl LongJoiner {
    /// A joiner within the batches' join `settings` (part size, byte cap,
    /// attempts, lease), for the replica `holder`.
    pub fn new(store: Store, audio: AudioStore, settings: &BatchSettings, holder: Uuid) -> Self {
        Self {
            store,
            audio,
            limits: JoinLimits::from_settings(settings),
            attempts: settings.join_attempts,
            lease_ttl: settings.join_lease(),
            holder,
        }
    }

    /// Sweeps until `shutdown`, every worker alike ([`sweep_until`]).
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        sweep_until(shutdown, "long jobs", || self.sweep(JOINS_PER_SWEEP)).await;
    }

    /// Joins the chunks of up to `limit` long jobs waiting for it, one at a
    /// time, each under its lease; first fails those whose attempts are
    /// used up.
    pub async fn sweep(&self, limit: usize) -> Result<LongSweep, StoreError> {
        let metrics = ttsq_telemetry::metrics::get();
        let mut sweep = LongSweep::default();
        let exhausted = self.store.fail_exhausted_long_joins(self.attempts).await?;
        if exhausted > 0 {
            tracing::warn!(
                long_jobs = exhausted,
                "long jobs whose joins were interrupted on every attempt failed"
            );
            metrics
                .long_job_joins
                .with_label_values(&["failed"])
                .inc_by(exhausted);
            sweep.failed += usize::try_from(exhausted).unwrap_or(usize::MAX);
        }
        for _ in 0..limit {
            let token = Uuid::now_v7();
            let Some(lease) = self
                .store
                .take_long_join_lease(self.holder, token, self.lease_ttl, self.attempts)
                .await?
            else {
                break;
            };
            let id = lease.task_id;
            let joined = while_renewing(self.join(id), self.lease_ttl, || {
                self.store.renew_long_join_lease(&lease, self.lease_ttl)
            })
            .await;
            let failure = match joined {
                Ok(ready) => {
                    if self
                        .store
                        .finish_long_join(&lease, &ready.object, &ready.provider)
                        .await?
                    {
                        let outcome = if ready.reused { "reused" } else { "joined" };
                        metrics.long_job_joins.with_label_values(&[outcome]).inc();
                        tracing::info!(
                            task_id = %id, bytes = ready.object.bytes, reused = ready.reused,
                            "long job joined"
                        );
                        if ready.reused {
                            sweep.reused += 1;
                        } else {
                            sweep.joined += 1;
                        }
                    } else {
                        metrics
                            .long_job_joins
                            .with_label_values(&["lease_lost"])
                            .inc();
                        tracing::warn!(task_id = %id, "a long job's join ended after its lease was lost");
                    }
                    continue;
                }
                Err(JoinError::Unjoinable(reason)) => {
                    format!("the chunks' audio could not be joined: {reason}")
                }
                Err(JoinError::LeaseLost) => {
                    metrics
                        .long_job_joins
                        .with_label_values(&["lease_lost"])
                        .inc();
                    tracing::warn!(task_id = %id, "another replica took over a long job this one was joining");
                    continue;
                }
                Err(err) if lease.attempt >= i32::try_from(self.attempts).unwrap_or(i32::MAX) => {
                    tracing::warn!(
                        task_id = %id, attempt = lease.attempt, error = %err,
                        "joining a long job's chunks failed on its last attempt"
                    );
                    format!(
                        "the chunks' audio could not be joined in {} attempts: {}",
                        lease.attempt,
                        err.public_reason()
                    )
                }
                Err(err) => {
                    let retry_in = retry_delay(lease.attempt);
                    tracing::warn!(
                        task_id = %id, attempt = lease.attempt, error = %err, ?retry_in,
                        "joining a long job's chunks failed; retrying later"
                    );
                    metrics.long_job_joins.with_label_values(&["retried"]).inc();
                    self.store
                        .release_long_join_lease(&lease, &err.public_reason(), retry_in)
                        .await?;
                    continue;
                }
            };
            if self.store.fail_long_join(&lease, &failure).await? {
                metrics.long_job_joins.with_label_values(&["failed"]).inc();
                tracing::warn!(task_id = %id, reason = %failure, "long job failed: its chunks cannot be joined");
                sweep.failed += 1;
            }
        }
        Ok(sweep)
    }

    /// The audio of long job `id`: found indexed under its content hash, or
    /// made now from its chunks (with its merged marks when it asked for
    /// them).
    async fn join(&self, id: Uuid) -> Result<Ready, JoinError> {
        let Some((job, chunks)) = self.store.long_join_input(id).await? else {
            // It ended meanwhile (cancelled): the trigger closed its join.
            return Err(JoinError::LeaseLost);
        };
        let expected = usize::try_from(job.chunks_total).unwrap_or(0);
        let in_order = chunks
            .iter()
            .enumerate()
            .all(|(i, c)| usize::try_from(c.chunk_index).is_ok_and(|index| index == i));
        if chunks.len() != expected || !in_order {
            return Err(JoinError::Unjoinable(format!(
                "{} of its {} chunks have stored audio",
                chunks.len(),
                job.chunks_total
            )));
        }
        let Some(first) = chunks.first() else {
            return Err(JoinError::Unjoinable("it has no chunks".into()));
        };
        let provider = first.provider.clone();
        let format: AudioFormat = job
            .format
            .parse()
            .map_err(|()| JoinError::Unjoinable(format!("unknown format `{}`", job.format)))?;
        if let Some(other) = chunks.iter().find(|c| c.format != job.format) {
            return Err(JoinError::Unjoinable(format!(
                "chunk {} is {} audio, not {}",
                i64::from(other.chunk_index) + 1,
                other.format,
                job.format
            )));
        }
        let hash = ContentHash::parse(&job.content_hash).ok_or_else(|| {
            JoinError::Unjoinable(format!("invalid content hash `{}`", job.content_hash))
        })?;
        if let Some(object) = self.store.find_audio(hash.as_str()).await? {
            return Ok(Ready {
                object,
                provider,
                reused: true,
            });
        }

        let key = hash.object_key(format);
        let parts: Vec<AudioPart> = chunks.iter().map(AudioPart::from).collect();
        let joined = join_parts(&self.audio, &key, format, &parts, self.limits).await?;
        if !job.marks.is_empty() {
            let marks = self
                .merged_marks(&chunks, &joined.starts_ms, joined.duration_ms)
                .await?;
            let json = serde_json::to_vec(&marks).map_err(|err| {
                JoinError::Unjoinable(format!("the merged speech marks cannot be written: {err}"))
            })?;
            self.audio
                .put(&hash.marks_key(), json.into(), "application/json")
                .await?;
        }
        Ok(Ready {
            object: AudioObject {
                hash: hash.as_str().to_owned(),
                s3_key: key,
                bytes: i64::try_from(joined.bytes).unwrap_or(i64::MAX),
                format: format.as_str().to_owned(),
                duration_ms: joined.duration_ms,
                provider: provider.clone(),
                sha256: joined.sha256,
                created_at: chrono::Utc::now(),
            },
            provider,
            reused: false,
        })
    }

    /// The chunks' marks files read back and merged (see [`merge_marks`]);
    /// `starts_ms` are the chunks' starts in the joined audio of
    /// `duration_ms`.
    async fn merged_marks(
        &self,
        chunks: &[ChunkAudio],
        starts_ms: &[i64],
        duration_ms: i32,
    ) -> Result<Vec<Mark>, JoinError> {
        let mut parts = Vec::with_capacity(chunks.len());
        for (chunk, start_ms) in chunks.iter().zip(starts_ms) {
            let number = i64::from(chunk.chunk_index) + 1;
            let hash = ContentHash::parse(&chunk.audio_hash).ok_or_else(|| {
                JoinError::Unjoinable(format!("chunk {number} has an invalid audio hash"))
            })?;
            let bytes = match self.audio.get(&hash.marks_key()).await {
                Ok(bytes) => bytes,
                Err(err) if err.is_not_found() => {
                    return Err(JoinError::Unjoinable(format!(
                        "chunk {number}'s speech marks are missing from storage"
                    )));
                }
                Err(err) => return Err(err.into()),
            };
            let marks: Vec<Mark> = serde_json::from_slice(&bytes).map_err(|err| {
                JoinError::Unjoinable(format!(
                    "chunk {number}'s speech marks are unreadable: {err}"
                ))
            })?;
            parts.push(ChunkMarks {
                marks,
                start_ms: *start_ms,
                offset: u32::try_from(chunk.chunk_offset).unwrap_or(0),
            });
        }
        Ok(merge_marks(parts, i64::from(duration_ms)))
    }
}

/// One chunk's speech marks and where the chunk sits in its long job.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkMarks {
    /// Its marks, timed from the start of its own audio, offsets into its
    /// own text.
    pub marks: Vec<Mark>,
    /// When its audio starts in the joined audio, in ms.
    pub start_ms: i64,
    /// Where its text starts in the long job's normalised text, in
    /// characters.
    pub offset: u32,
}

/// The marks of a long job of `duration_ms` from its chunks' (in order):
/// each chunk's times shifted by its start and its `start`/`end` offsets
/// by its offset. Times are kept within the chunk's own span of the joined
/// audio (its start to the next chunk's), so a chunk's marks never overlap
/// the next one's even where durations were rounded.
pub fn merge_marks(chunks: Vec<ChunkMarks>, duration_ms: i64) -> Vec<Mark> {
    let ends: Vec<i64> = chunks
        .iter()
        .skip(1)
        .map(|c| c.start_ms)
        .chain(std::iter::once(duration_ms))
        .collect();
    let to_ms = |ms: i64| u32::try_from(ms.max(0)).unwrap_or(u32::MAX);
    let mut merged = Vec::with_capacity(chunks.iter().map(|c| c.marks.len()).sum());
    for (chunk, end) in chunks.into_iter().zip(ends) {
        let start = chunk.start_ms;
        let end = end.max(start);
        for mut mark in chunk.marks {
            let from = (start + i64::from(mark.start_ms)).min(end);
            let to = (start + i64::from(mark.end_ms)).clamp(from, end);
            mark.start_ms = to_ms(from);
            mark.end_ms = to_ms(to);
            mark.start = mark.start.map(|s| s.saturating_add(chunk.offset));
            mark.end = mark.end.map(|e| e.saturating_add(chunk.offset));
            merged.push(mark);
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use ttsq_core::MarkKind;

    use super::*;

    fn word(value: &str, start_ms: u32, end_ms: u32, start: u32) -> Mark {
        Mark {
            kind: MarkKind::Word,
            start_ms,
            end_ms,
            value: value.to_owned(),
            start: Some(start),
            end: Some(start + value.chars().count() as u32),
        }
    }

    #[test]
    fn marks_are_shifted_by_their_chunk_start_and_offset_and_kept_within_their_span() {
        let text = "Hello there. Général Kenobi!";
        let chunks = vec![
            ChunkMarks {
                marks: vec![word("Hello", 0, 300, 0), word("there", 300, 610, 6)],
                start_ms: 0,
                offset: 0,
            },
            ChunkMarks {
                marks: vec![word("Général", 10, 400, 0), word("Kenobi", 400, 900, 8)],
                start_ms: 600,
                offset: 13,
            },
        ];

        let merged = merge_marks(chunks, 1400);

        let chars: Vec<char> = text.chars().collect();
        for mark in &merged {
            let (start, end) = (
                mark.start.expect("start") as usize,
                mark.end.expect("end") as usize,
            );
            let spoken: String = chars[start..end].iter().collect();
            assert_eq!(spoken, mark.value);
        }
        let times: Vec<(u32, u32)> = merged.iter().map(|m| (m.start_ms, m.end_ms)).collect();
        // "there" ran 10 ms past the first chunk's span: cut at its end.
        assert_eq!(times, [(0, 300), (300, 600), (610, 1000), (1000, 1400)]);
    }
}
