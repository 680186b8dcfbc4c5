//! `[webhooks]`: webhook delivery.

use std::net::IpAddr;

use schemars::JsonSchema;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::validation::{Checked, Invalid, at_least_one};

/// Webhook delivery: signing, SSRF guard, timeouts.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Key every tenant's signing secret is derived from (a secret); empty
    /// disables webhooks (`callback_url` is then refused).
    #[serde(serialize_with = "crate::secret::redacted")]
    #[schemars(with = "String", extend("writeOnly" = true))]
    pub signing_key: SecretString,
    /// Networks (CIDR, e.g. `127.0.0.1/32`, `::1/128`) a webhook may target
    /// although they are loopback, private, link-local or otherwise internal.
    /// An IPv4-mapped entry (`::ffff:10.1.2.0/120`) is the IPv4 network it
    /// maps (`10.1.2.0/24`); one wider than /96 is refused.
    pub allow_private: Vec<String>,
    /// Longest one delivery attempt may take, in seconds.
    pub timeout_secs: u64,
    /// How long a rotated-out secret keeps signing beside the new one, in seconds.
    pub secret_grace_secs: u64,
    /// Deliveries one worker makes at once.
    pub concurrency: u16,
    /// Most deliveries of one tenant in flight across the fleet (published
    /// and not yet settled, retries waiting included), per unit of the
    /// tenant's weight: a tenant whose endpoint is slow or failing holds at
    /// most this many of the workers' delivery slots per unit, and the other
    /// tenants' webhooks go past it.
    pub per_tenant_in_flight: u16,
}

impl WebhookSettings {
    /// The signing key, when webhooks are enabled.
    pub fn enabled_key(&self) -> Option<&SecretString> {
        (!self.signing_key.expose_secret().is_empty()).then_some(&self.signing_key)
    }

    /// [`Self::allow_private`] parsed as (network address, prefix length).
    pub fn allowed_networks(&self) -> Result<Vec<(IpAddr, u8)>, String> {
        self.allow_private
            .iter()
            .map(|raw| parse_cidr(raw))
            .collect()
    }

    /// Networks that do not parse, and range checks serde cannot express.
    pub(crate) fn check(&self) -> Checked {
        if let Err(reason) = self.allowed_networks() {
            return Err(Invalid::new("webhooks.allow_private", reason));
        }
        at_least_one("webhooks.concurrency", self.concurrency.into())?;
        at_least_one(
            "webhooks.per_tenant_in_flight",
            self.per_tenant_in_flight.into(),
        )
    }
}

/// Parses `addr/len` (or a bare address: one host) into a network, in the
/// canonical form of [`canonical_network`].
pub fn parse_cidr(raw: &str) -> Result<(IpAddr, u8), String> {
    let (addr, len) = raw.trim().split_once('/').unwrap_or((raw.trim(), ""));
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("`{raw}` is not an IP network (CIDR)"))?;
    let len = if len.is_empty() {
        if addr.is_ipv4() { 32 } else { 128 }
    } else {
        len.parse::<u8>()
            .map_err(|_| format!("`{raw}` has an invalid prefix length"))?
    };
    canonical_network(addr, len).map_err(|reason| format!("`{raw}` {reason}"))
}

/// A network (address, prefix length) in the form addresses are compared
/// in: an IPv4-mapped IPv6 network (`::ffff:10.1.2.0/120`) is the IPv4
/// network it maps (`10.1.2.0/24`), because connections to mapped addresses
/// are checked as IPv4 ones. Refuses a prefix longer than the address, and a
/// mapped prefix shorter than 96, which would span more than the mapped range.
pub fn canonical_network(addr: IpAddr, len: u8) -> Result<(IpAddr, u8), String> {
    match addr {
        IpAddr::V4(_) if len > 32 => Err("has a prefix length above 32".to_owned()),
        IpAddr::V6(_) if len > 128 => Err("has a prefix length above 128".to_owned()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => match len.checked_sub(96) {
                Some(v4_len) => Ok((IpAddr::V4(v4), v4_len)),
                None => Err(
                    "is an IPv4-mapped network, so its prefix length must be at least 96; \
                     write the IPv4 network instead"
                        .to_owned(),
                ),
            },
            None => Ok((addr, len)),
        },
        IpAddr::V4(_) => Ok((addr, len)),
    }
}

#[cfg(test)]
mod tests {
    use crate::{Settings, tests::env};

    #[test]
    fn an_ipv4_mapped_allowlist_entry_is_the_ipv4_network_it_names() {
        let s = Settings::load(
            None,
            env(&[(
                "TTSQ_WEBHOOKS_ALLOW_PRIVATE",
                "::ffff:10.1.2.0/120,::ffff:127.0.0.1",
            )]),
        )
        .unwrap();
        assert_eq!(
            s.webhooks.allowed_networks().unwrap(),
            [
                ("10.1.2.0".parse().unwrap(), 24),
                ("127.0.0.1".parse().unwrap(), 32)
            ]
        );
    }

    #[test]
    fn an_ipv4_mapped_prefix_wider_than_the_mapped_range_is_refused_by_name() {
        for raw in ["::ffff:0.0.0.0/64", "::ffff:10.0.0.0/95"] {
            let err =
                Settings::load(None, env(&[("TTSQ_WEBHOOKS_ALLOW_PRIVATE", raw)])).unwrap_err();
            assert!(
                err.to_string().contains("TTSQ_WEBHOOKS_ALLOW_PRIVATE"),
                "{raw}: {err}"
            );
        }
    }
}
