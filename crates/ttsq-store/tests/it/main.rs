//! The store's integration tests on a real Postgres, one module per area,
//! in one binary.

mod finance;
mod grants;
mod leases;
mod limits;
mod long_jobs;
mod quota;
mod submissions;
mod support;
