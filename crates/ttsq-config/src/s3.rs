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
///
/// Credentials are either static keys (`access_key_id` and
/// `secret_access_key`, both set) or, with both empty, whatever the AWS
/// SDK's default chain finds: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`,
/// a shared profile (`AWS_PROFILE`), web identity (IRSA), EKS Pod Identity,
/// ECS or instance metadata.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// Endpoint URL of the S3-compatible server; empty for AWS S3 itself,
    /// whose endpoint follows from the region.
    pub endpoint: String,
    /// Signing region; empty to take it from the AWS default chain
    /// (`AWS_REGION`, the profile, instance metadata).
    pub region: String,
    /// Bucket holding the audio.
    pub bucket: String,
    /// Access key id of static credentials; empty, with an empty
    /// `secret_access_key`, for the AWS default credential chain.
    pub access_key_id: String,
    /// Secret access key of static credentials. The default
    /// ([`LOCAL_S3_SECRET`]) is refused unless the endpoint is on this
    /// machine.
    #[serde(serialize_with = "crate::secret::redacted")]
    #[schemars(with = "String", extend("writeOnly" = true))]
    pub secret_access_key: SecretString,
    /// Address objects as `endpoint/bucket/key` (path style) instead of
    /// `bucket.endpoint/key` (virtual-hosted, AWS's way): for servers on a
    /// bare host name or IP address, which have no per-bucket DNS names.
    pub force_path_style: bool,
    /// Create the bucket at start when missing.
    pub create_bucket: bool,
    /// Lifetime of presigned URLs, in seconds.
    pub presign_ttl_secs: u64,
    /// The server honours `If-None-Match: *` on PutObject, so no HeadObject
    /// needs to guard an upload against overwriting stored audio.
    pub conditional_writes: bool,
}

impl S3Settings {
    /// The static credentials, `(access key id, secret access key)`, or
    /// `None` when both are empty and the AWS default chain provides them.
    /// [`crate::Settings::load`] refuses one without the other.
    pub fn static_credentials(&self) -> Option<(&str, &SecretString)> {
        (!self.access_key_id.is_empty() || !self.secret_access_key.expose_secret().is_empty())
            .then_some((self.access_key_id.as_str(), &self.secret_access_key))
    }

    /// Range checks serde cannot express, static keys given by halves, and
    /// the published local secret used against a server elsewhere.
    pub(crate) fn check(&self) -> Checked {
        if !self.endpoint.is_empty() {
            http_url("s3.endpoint", &self.endpoint)?;
        }
        if self.bucket.is_empty() {
            return Err(Invalid::new("s3.bucket", "must not be empty"));
        }
        let secret = self.secret_access_key.expose_secret();
        match (self.access_key_id.is_empty(), secret.is_empty()) {
            (false, true) => {
                return Err(Invalid::new(
                    "s3.secret_access_key",
                    "is empty while s3.access_key_id is set: set both for static keys, or \
                     neither for the AWS default credential chain",
                ));
            }
            (true, false) => {
                return Err(Invalid::new(
                    "s3.access_key_id",
                    "is empty while s3.secret_access_key is set: set both for static keys, or \
                     neither for the AWS default credential chain",
                ));
            }
            _ => {}
        }
        if secret == LOCAL_S3_SECRET && !is_loopback_url(&self.endpoint) {
            return Err(Invalid::new(
                "s3.secret_access_key",
                "is the published default of the local S3 server, but s3.endpoint is not on \
                 this machine: set the secret of that S3 server, or empty both \
                 s3.access_key_id and s3.secret_access_key to use the AWS default credential \
                 chain",
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
            // AWS S3 itself.
            "",
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

    #[test]
    fn an_empty_endpoint_with_empty_keys_means_aws_with_the_default_chain() {
        let s = Settings::load(
            None,
            env(&[
                ("TTSQ_S3_ENDPOINT", ""),
                ("TTSQ_S3_REGION", ""),
                ("TTSQ_S3_ACCESS_KEY_ID", ""),
                ("TTSQ_S3_SECRET_ACCESS_KEY", ""),
                ("TTSQ_S3_FORCE_PATH_STYLE", "false"),
            ]),
        )
        .unwrap();

        assert_eq!(s.s3.endpoint, "");
        assert!(s.s3.static_credentials().is_none());
        assert!(!s.s3.force_path_style);
    }

    #[test]
    fn static_keys_are_used_when_both_are_set() {
        let s = Settings::load(None, env(&[])).unwrap();

        let (id, secret) =
            s.s3.static_credentials()
                .expect("the defaults are static keys");

        assert_eq!(id, "ttsq");
        assert_eq!(secret.expose_secret(), LOCAL_S3_SECRET);
    }

    #[test]
    fn one_static_key_without_the_other_is_refused_naming_the_missing_one() {
        let secret = "only-half-of-a-pair";
        for (set, missing) in [
            (
                [
                    ("TTSQ_S3_ACCESS_KEY_ID", "AKIAEXAMPLE"),
                    ("TTSQ_S3_SECRET_ACCESS_KEY", ""),
                ],
                "TTSQ_S3_SECRET_ACCESS_KEY",
            ),
            (
                [
                    ("TTSQ_S3_ACCESS_KEY_ID", ""),
                    ("TTSQ_S3_SECRET_ACCESS_KEY", secret),
                ],
                "TTSQ_S3_ACCESS_KEY_ID",
            ),
        ] {
            let err = Settings::load(None, env(&set)).unwrap_err().to_string();

            assert!(err.contains(&format!("(env {missing}")), "{err}");
            assert!(err.contains("AWS default credential chain"), "{err}");
            assert!(!err.contains(secret), "secret leaked: {err}");
        }
    }

    #[test]
    fn path_style_is_the_default_for_the_local_server_and_can_be_turned_off() {
        let local = Settings::load(None, env(&[])).unwrap();
        let aws = Settings::load(
            None,
            env(&[
                ("TTSQ_S3_ENDPOINT", ""),
                ("TTSQ_S3_ACCESS_KEY_ID", ""),
                ("TTSQ_S3_SECRET_ACCESS_KEY", ""),
                ("TTSQ_S3_FORCE_PATH_STYLE", "false"),
            ]),
        )
        .unwrap();

        assert!(local.s3.force_path_style);
        assert!(!aws.s3.force_path_style);
    }

    #[test]
    fn the_settings_debug_output_holds_no_s3_secret() {
        let secret = "wJalrXUtnFEMI-example-secret";
        let s = Settings::load(
            None,
            env(&[
                (
                    "TTSQ_S3_ENDPOINT",
                    "https://example.r2.cloudflarestorage.com",
                ),
                ("TTSQ_S3_SECRET_ACCESS_KEY", secret),
            ]),
        )
        .unwrap();

        assert!(!format!("{:?}", s.s3).contains(secret));
        assert!(!format!("{s:?}").contains(secret));
    }
}
