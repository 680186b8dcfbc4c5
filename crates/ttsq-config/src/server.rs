//! `[server]`: the HTTP API.

use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::{Checked, at_least_one, http_url};

/// HTTP API settings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address the API listens on.
    pub listen: SocketAddr,
    /// Where an API process (`ttsq api`, `ttsq all`) serves its operations
    /// endpoints: `/metrics`, `/health` and the detailed `/ready`. Kept off
    /// the public address because they show dependency hosts and errors.
    pub ops_listen: SocketAddr,
    /// Base URL clients reach the API at, without a trailing slash.
    pub public_url: String,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Longest long-poll a client may ask for, in seconds.
    pub max_wait_secs: u64,
    /// How often a long-poll re-reads its task even without a notification
    /// (notifications are lost while the listener reconnects), in ms.
    pub wait_poll_ms: u64,
}

impl ServerSettings {
    /// Range checks serde cannot express.
    pub(crate) fn check(&self) -> Checked {
        http_url("server.public_url", &self.public_url)?;
        at_least_one(
            "server.max_body_bytes",
            u64::try_from(self.max_body_bytes).unwrap_or(u64::MAX),
        )?;
        at_least_one("server.wait_poll_ms", self.wait_poll_ms)
    }
}
