//! The jobs resource: `POST /v1/tts/jobs` ([`submit`]), reading a task, its
//! audio and marks ([`read`]), the tenant's task list ([`list`]) and
//! cancelling a queued task ([`cancel`]).

pub mod cancel;
pub mod list;
pub mod read;
pub mod submit;
