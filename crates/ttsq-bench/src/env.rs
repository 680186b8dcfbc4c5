//! Where a run's services, binary and files are.

use std::path::PathBuf;

/// Where everything lives, shared by the scenarios.
#[derive(Debug, Clone)]
pub struct Env {
    /// The `ttsq` binary.
    pub ttsq_bin: PathBuf,
    /// Postgres admin URL.
    pub admin_url: String,
    /// RabbitMQ URL.
    pub amqp_url: String,
    /// S3 endpoint.
    pub s3_endpoint: String,
    /// S3 key id.
    pub s3_key: String,
    /// S3 secret.
    pub s3_secret: String,
    /// The run's bucket.
    pub bucket: String,
    /// `--set` settings of every ttsq process.
    pub settings: Vec<(String, String)>,
    /// Logs and config files of the run.
    pub work_dir: PathBuf,
}
