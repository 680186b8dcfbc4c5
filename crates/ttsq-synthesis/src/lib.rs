//! The steps from a task's text to its stored audio that both roles take:
//! the API's high-priority path inline, and the worker for queued jobs.
//!
//! - [`Utterance`]: what to synthesize, read alike from a submitted job and
//!   from a claimed task;
//! - [`cache_hit`]: the outcome of a task whose audio is stored already;
//! - [`make_audio`]: making one content hash's audio under its fleet-wide
//!   lease (adopting an object a crashed holder left, or synthesizing and
//!   uploading it with its facts in the object's metadata);
//! - [`retry_transient`]: riding out S3 and Postgres blips around a
//!   synthesis that may be paid for already.
//!
//! It does not own the lease or the index (`ttsq-store`), the provider calls
//! (`ttsq-providers`), batching and settling deliveries (`ttsq-worker`) or
//! answering HTTP (`ttsq-api`).

mod make;
mod retry;
mod utterance;

use ttsq_providers::Router;
use ttsq_store::{AudioObject, TaskOutcome};

pub use make::{
    Made, MakeAudioError, MakeOptions, SYNTHESIS_IN_PROGRESS, make_audio, make_audio_streaming,
    object_key,
};
pub use retry::{Transient, retry_transient};
pub use utterance::{UnknownFormat, Utterance};

/// The outcome of a task whose audio is stored already: succeeded at once,
/// nothing billable, priced in the currency of the provider that made it.
pub fn cache_hit(providers: &Router, object: &AudioObject) -> TaskOutcome {
    TaskOutcome::Succeeded {
        audio_hash: object.hash.clone(),
        cache_hit: true,
        provider: object.provider.clone(),
        price_per_1k: 0.0,
        currency: providers.currency(&object.provider).to_owned(),
    }
}
