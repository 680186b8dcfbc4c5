//! Group commit of single submissions.
//!
//! A transaction per normal-priority `POST /v1/tts/jobs` would cost each its
//! own commit (a WAL flush) and half a dozen round trips: a few hundred
//! submits a second at most. Handlers hand their validated job to
//! [`SubmitCoalescer`] instead, whose background task takes every
//! submission waiting (up to [`MAX_GROUP`]), looks their content hashes up
//! in the audio cache with one query, writes them all with one
//! [`Store::insert_submissions`] transaction and answers each handler.
//!
//! There is no timer: a group is whatever arrived while the previous
//! transaction ran, so a lone submission goes straight through and a burst
//! is written in a few transactions. `database.submit_committers`
//! transactions run at once, so that one group's commit overlaps the next
//! group's statements. Each handler then wakes the dispatcher, which
//! publishes the tasks in their tenants' turns.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};
use ttsq_core::{Job, JobChunk};
use ttsq_store::{
    CostEstimate, NewChunk, NewTask, Store, StoreError, Submission, Submitted, TaskRow,
};
use ttsq_synthesis::cache_hit;
use uuid::Uuid;

use crate::ApiError;

/// Most submissions written by one transaction.
pub const MAX_GROUP: usize = 512;

/// A validated single submission, owned, to be written by a group.
#[derive(Debug)]
pub struct PendingSubmission {
    /// Id to give the task.
    pub id: Uuid,
    /// Owner.
    pub tenant_id: Uuid,
    /// The validated job; the handler keeps a handle for its audit record.
    pub job: Arc<Job>,
    /// Client's `Idempotency-Key`, if sent.
    pub idempotency_key: Option<String>,
    /// Visible prefix of the submitting API key.
    pub key_prefix: Option<String>,
    /// Its expected cost and that cost's currency, reserved while it is queued.
    pub estimate: Option<(f64, String)>,
    /// W3C `traceparent` of the submitting request.
    pub traceparent: Option<String>,
    /// A long job's chunks, in order; empty for every other job.
    pub chunks: Vec<PendingChunk>,
}

/// A chunk of a long job, owned, to be written with it.
#[derive(Debug)]
pub struct PendingChunk {
    /// Id to give its task.
    pub id: Uuid,
    /// Its job and where its text starts in the long job's.
    pub chunk: JobChunk,
    /// Its expected cost and that cost's currency, reserved while it is open.
    pub estimate: Option<(f64, String)>,
}

/// The cost estimate a store call takes, borrowed from an owned one.
fn borrowed(estimate: Option<&(f64, String)>) -> Option<CostEstimate<'_>> {
    estimate.map(|(cost, currency)| CostEstimate {
        cost: *cost,
        currency,
    })
}

impl PendingSubmission {
    fn task(&self) -> NewTask<'_> {
        NewTask {
            id: self.id,
            tenant_id: self.tenant_id,
            job: &self.job,
            idempotency_key: self.idempotency_key.as_deref(),
            key_prefix: self.key_prefix.as_deref(),
            estimate: borrowed(self.estimate.as_ref()),
            traceparent: self.traceparent.as_deref(),
        }
    }
}

/// A submission and where its answer goes.
struct Waiting {
    submission: PendingSubmission,
    answer: oneshot::Sender<Result<(TaskRow, bool), ApiError>>,
}

/// The handlers' side; cheap to clone. The background task ends once every
/// clone is dropped, after writing what it holds.
#[derive(Clone, Debug)]
pub struct SubmitCoalescer {
    sender: mpsc::Sender<Waiting>,
}

impl SubmitCoalescer {
    /// Starts the background task on the current runtime, running at most
    /// `committers` transactions at once (at least 1).
    pub fn start(store: Store, providers: Arc<ttsq_providers::Router>, committers: usize) -> Self {
        // Room for a few groups: beyond that, handlers wait to hand theirs
        // over, which is the back-pressure Postgres asks for.
        let (sender, receiver) = mpsc::channel(MAX_GROUP * 4);
        tokio::spawn(gather(store, providers, receiver, committers.max(1)));
        Self { sender }
    }

    /// Writes `submission` with whatever else is waiting; answers as
    /// [`Store::insert_queued`] would: the task on file and whether it was
    /// created now, or why not.
    pub async fn submit(&self, submission: PendingSubmission) -> Result<(TaskRow, bool), ApiError> {
        let (answer, answered) = oneshot::channel();
        self.sender
            .send(Waiting { submission, answer })
            .await
            .map_err(|_| ApiError::Unavailable("the database"))?;
        // Dropped unanswered only if the task panicked or the runtime is
        // shutting down.
        answered
            .await
            .unwrap_or(Err(ApiError::Unavailable("the database")))
    }
}

/// Takes what is waiting whenever a committer is free, and hands it to a
/// committer of its own.
async fn gather(
    store: Store,
    providers: Arc<ttsq_providers::Router>,
    mut receiver: mpsc::Receiver<Waiting>,
    committers: usize,
) {
    let free = Arc::new(Semaphore::new(committers));
    loop {
        // The semaphore is never closed.
        let Ok(permit) = Arc::clone(&free).acquire_owned().await else {
            return;
        };
        let mut group = Vec::with_capacity(MAX_GROUP);
        if receiver.recv_many(&mut group, MAX_GROUP).await == 0 {
            return;
        }
        let store = store.clone();
        let providers = Arc::clone(&providers);
        tokio::spawn(async move {
            commit(&store, &providers, group).await;
            drop(permit);
        });
    }
}

/// Writes one group and answers every submission of it.
async fn commit(store: &Store, providers: &ttsq_providers::Router, group: Vec<Waiting>) {
    ttsq_telemetry::metrics::get()
        .submit_group_size
        .observe(group.len() as f64);
    match write(store, providers, &group).await {
        Ok(answers) => {
            for (waiting, answer) in group.into_iter().zip(answers) {
                // A handler gone (client disconnected) no longer listens; its
                // task is committed and the dispatcher's next poll finds it.
                let _ = waiting.answer.send(answer.map_err(ApiError::from));
            }
        }
        Err(err) if group.len() == 1 => {
            if let Some(waiting) = group.into_iter().next() {
                let _ = waiting.answer.send(Err(err.into()));
            }
        }
        Err(err) => {
            // Only what may clear up fails a whole group (see
            // `Store::insert_submissions`): each submitter may retry.
            tracing::warn!(error = %err, submissions = group.len(), "a group of submissions failed");
            for waiting in group {
                let _ = waiting
                    .answer
                    .send(Err(ApiError::Unavailable("the database")));
            }
        }
    }
}

async fn write(
    store: &Store,
    providers: &ttsq_providers::Router,
    group: &[Waiting],
) -> Result<Vec<Submitted>, StoreError> {
    // A long job's own hash (its joined audio) and its chunks' hashes are
    // looked up with the rest, in the one query.
    let mut hashes: Vec<String> = group
        .iter()
        .flat_map(|w| {
            let chunks = w.submission.chunks.iter().map(|c| &c.chunk.job.hash);
            std::iter::once(&w.submission.job.hash).chain(chunks)
        })
        .map(|hash| hash.as_str().to_owned())
        .collect();
    hashes.sort_unstable();
    hashes.dedup();
    let stored = store.find_audio_many(&hashes).await?;
    let submissions: Vec<Submission<'_>> = group
        .iter()
        .map(|w| Submission {
            task: w.submission.task(),
            finished: stored
                .get(w.submission.job.hash.as_str())
                .map(|object| cache_hit(providers, object)),
            claim: None,
            chunks: w
                .submission
                .chunks
                .iter()
                .map(|c| NewChunk {
                    task_id: c.id,
                    job: &c.chunk.job,
                    offset: crate::long_jobs::offset(&c.chunk),
                    estimate: borrowed(c.estimate.as_ref()),
                    cached: stored
                        .get(c.chunk.job.hash.as_str())
                        .map(|object| cache_hit(providers, object)),
                })
                .collect(),
        })
        .collect();
    store.insert_submissions(&submissions).await
}
