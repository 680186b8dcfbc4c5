//! What one task asks a provider to say, read the same way from a job being
//! submitted and from a task a worker claimed.

use ttsq_core::{AudioFormat, Job, MarkKind};
use ttsq_providers::SynthesisRequest;
use ttsq_store::ClaimedTask;

/// A stored task that names a format this build does not know: written by
/// another version, or by hand. Nothing can be made of it.
#[derive(Debug, thiserror::Error)]
#[error("stored format `{0}` is unknown")]
pub struct UnknownFormat(pub String);

/// The text, voice and output of one synthesis, owning what a
/// [`SynthesisRequest`] borrows.
#[derive(Debug, Clone)]
pub struct Utterance<'a> {
    text: &'a str,
    dialect: &'a str,
    voice: &'a str,
    speed: f64,
    emotion: Option<&'a str>,
    format: AudioFormat,
    marks: Vec<MarkKind>,
    instructions: Option<&'a str>,
    sample_rate_hz: Option<u32>,
}

impl<'a> Utterance<'a> {
    /// What a validated job asks for.
    pub fn of_job(job: &'a Job) -> Self {
        Self {
            text: &job.text,
            dialect: &job.dialect,
            voice: &job.voice,
            speed: job.speed,
            emotion: job.emotion.as_deref(),
            format: job.format,
            marks: job.marks.clone(),
            instructions: job.instructions.as_deref(),
            sample_rate_hz: Some(job.output_rate_hz),
        }
    }

    /// What a claimed task asks for. Mark names this build does not know are
    /// left out: the audio is still worth making.
    pub fn of_task(task: &'a ClaimedTask) -> Result<Self, UnknownFormat> {
        let format = task
            .format
            .parse()
            .map_err(|_| UnknownFormat(task.format.clone()))?;
        Ok(Self {
            text: &task.text,
            dialect: &task.dialect,
            voice: &task.voice,
            speed: task.speed,
            emotion: task.emotion.as_deref(),
            format,
            marks: task
                .marks
                .iter()
                .flatten()
                .filter_map(|m| m.parse().ok())
                .collect(),
            instructions: task.instructions.as_deref(),
            sample_rate_hz: task
                .sample_rate_hz
                .and_then(|rate| u32::try_from(rate).ok()),
        })
    }

    /// The request to hand the provider router.
    pub fn request(&self) -> SynthesisRequest<'_> {
        SynthesisRequest {
            text: self.text,
            dialect: self.dialect,
            voice: self.voice,
            speed: self.speed,
            emotion: self.emotion,
            format: self.format,
            marks: &self.marks,
            instructions: self.instructions,
            sample_rate_hz: self.sample_rate_hz,
        }
    }
}
