//! `[s3]`: the S3-compatible audio storage.

use schemars::JsonSchema;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::validation::{Checked, Invalid, http_url};

/// The default `s3.secret_access_key`: the secret of the local S3 server
/// that `deploy/local` starts. Anyone can read it here, so it is only
/// accepted for an endpoint on this machine (see [`is_loopback_url`]).
pub const LOCAL_S3_SECRET: &str = "ttsq-local-secret";

/// Whether an http(s) URL's host is this machine: `localhost` or a
/// loopback address (`127.0.0.0/8`, `::1`).
pub fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host_port)| host_port);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// S3 settings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// Endpoint URL of the S3-compatible server.
    pub endpoint: String,
    /// Signing region.
    pub region: String,
    /// Bucket holding the audio.
    pub bucket: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key. The default ([`LOCAL_S3_SECRET`]) is refused
    /// unless the endpoint is on this machine.
    #[serde(serialize_with = "crate::secret::redacted")]
    #[schemars(with = "String", extend("writeOnly" = true))]
    pub secret_access_key: SecretString,
    /// Create the bucket at start when missing.
    pub create_bucket: bool,
    /// Lifetime of presigned URLs, in seconds.
    pub presign_ttl_secs: u64,
    /// The server honours `If-None-Match: *` on PutObject, so no HeadObject
    /// needs to guard an upload against overwriting stored audio.
    pub conditional_writes: bool,
}

impl S3Settings {
    /// Range checks serde cannot express, and the published local secret
    /// used against a server elsewhere.
    pub(crate) fn check(&self) -> Checked {
        http_url("s3.endpoint", &self.endpoint)?;
        if self.bucket.is_empty() {
            return Err(Invalid::new("s3.bucket", "must not be empty"));
        }
        if self.secret_access_key.expose_secret() == LOCAL_S3_SECRET
            && !is_loopback_url(&self.endpoint)
        {
            return Err(Invalid::new(
                "s3.secret_access_key",
                "is the published default of the local S3 server, but s3.endpoint is not on \
                 this machine: set the secret of that S3 server",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::LOCAL_S3_SECRET;
    use crate::{Settings, tests::env};

    #[test]
    fn the_local_s3_secret_is_the_default_one() {
        let s = Settings::load(None, env(&[])).unwrap();
        assert_eq!(s.s3.secret_access_key.expose_secret(), LOCAL_S3_SECRET);
    }

    #[test]
    fn the_published_s3_secret_is_refused_for_a_server_off_this_machine() {
        for endpoint in [
            "https://s3.example.com",
            "http://10.0.0.5:8014",
            "http://s3:8014",
            "http://127.0.0.1.example.com:8014",
        ] {
            let err = Settings::load(None, env(&[("TTSQ_S3_ENDPOINT", endpoint)])).unwrap_err();
            assert!(
                err.to_string().contains("TTSQ_S3_SECRET_ACCESS_KEY"),
                "{endpoint}: {err}"
            );
            Settings::load(
                None,
                env(&[
                    ("TTSQ_S3_ENDPOINT", endpoint),
                    ("TTSQ_S3_SECRET_ACCESS_KEY", "a-secret-of-our-own"),
                ]),
            )
            .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
        }
        for endpoint in [
            "http://127.0.0.1:8014",
            "http://localhost:8014/",
            "http://[::1]:8014",
            "https://127.8.9.10",
        ] {
            Settings::load(None, env(&[("TTSQ_S3_ENDPOINT", endpoint)]))
                .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
        }
    }
}
