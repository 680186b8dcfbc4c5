#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`catalog`]: the dialects a deployment offers, with voices, formats and
//!   the provider chain; validation checks requests against it.
//! - [`format`]: the output audio formats.
//! - [`job`]: the submitted job, its raw wire form and its validated form.
//! - [`marks`]: speech marks (word, sentence, viseme timings) and the viseme table.
//! - [`hash`]: text normalisation and the content hash that keys the cache.
//! - [`task`]: task states and their transitions.
//! - [`message`]: the versioned message that travels through RabbitMQ.
//! - [`error`]: field-level validation errors.
//! - [`backoff`]: exponential back-off with jitter for every retry loop.

pub mod backoff;
pub mod catalog;
pub mod error;
pub mod format;
pub mod hash;
pub mod job;
pub mod marks;
pub mod message;
pub mod task;

pub use catalog::{Catalog, DialectInfo};
pub use error::{FieldError, ValidationErrors};
pub use format::AudioFormat;
pub use hash::{ContentHash, normalize_text};
pub use job::{AuditKey, EdgeRules, Job, JobChunk, JobLimits, JobRequest, Priority};
pub use marks::{Mark, MarkKind};
pub use message::{JobMessage, MessageDecodeError};
pub use task::TaskStatus;
