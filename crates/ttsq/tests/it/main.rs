//! The ttsq integration tests, one module per area, linked into one binary
//! so the whole stack is linked once rather than once per file. The chaos
//! and fleet suites stay binaries of their own (`tests/chaos.rs`,
//! `tests/fleet.rs`): `.config/nextest.toml` runs them alone by binary.

mod bad_input;
mod batches;
mod cli;
mod clients;
mod config_check;
mod docs;
mod documented;
mod finance;
mod health;
mod hot_cache;
mod long_jobs;
mod long_jobs_api;
mod long_joins;
mod long_poll;
mod marks;
mod metrics;
mod observability;
mod outbox;
mod pipeline;
mod properties;
mod providers;
mod python_sdk;
mod restart;
mod retention;
mod retries;
mod schema;
mod streaming;
mod tenants;
mod webhooks;
