//! The SSRF guard: a target must resolve only to public addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why a webhook target is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetRefused {
    /// Not an absolute http(s) URL with a host.
    #[error("must be an absolute http(s) URL")]
    Malformed,
    /// The host does not resolve.
    #[error("host `{0}` does not resolve")]
    Unresolvable(String),
    /// The host resolves to an internal address.
    #[error(
        "resolves to {0}, a loopback, private, link-local or otherwise internal address; webhooks only go to public addresses"
    )]
    Internal(IpAddr),
}

/// Decides which webhook targets may be called.
#[derive(Debug, Clone, Default)]
pub struct TargetGuard {
    allow: Vec<(IpAddr, u8)>,
}

/// A target that passed the guard, with the addresses checked.
#[derive(Debug, Clone)]
pub struct CheckedTarget {
    /// The URL.
    pub url: reqwest::Url,
    /// Host name, when not an IP literal.
    pub domain: Option<String>,
    /// Addresses it resolved to, all allowed.
    pub addrs: Vec<SocketAddr>,
}

impl TargetGuard {
    /// A guard allowing the internal networks in `allow` (address, prefix).
    pub fn new(allow: Vec<(IpAddr, u8)>) -> Self {
        Self { allow }
    }

    /// Resolves `raw` and checks every address it resolves to.
    pub async fn check(&self, raw: &str) -> Result<CheckedTarget, TargetRefused> {
        let url = reqwest::Url::parse(raw).map_err(|_| TargetRefused::Malformed)?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(TargetRefused::Malformed);
        }
        let host = url.host_str().ok_or(TargetRefused::Malformed)?.to_owned();
        let port = url
            .port_or_known_default()
            .ok_or(TargetRefused::Malformed)?;
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        let (domain, addrs) = match literal.parse::<IpAddr>() {
            Ok(ip) => (None, vec![SocketAddr::new(ip, port)]),
            Err(_) => {
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
                    .await
                    .map_err(|_| TargetRefused::Unresolvable(host.clone()))?
                    .collect();
                (Some(host.clone()), addrs)
            }
        };
        if addrs.is_empty() {
            return Err(TargetRefused::Unresolvable(host));
        }
        for addr in &addrs {
            let ip = addr.ip().to_canonical();
            if is_internal(ip) && !self.allow.iter().any(|net| in_network(ip, *net)) {
                return Err(TargetRefused::Internal(ip));
            }
        }
        Ok(CheckedTarget { url, domain, addrs })
    }
}

/// Whether `ip` is not a public unicast address.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240 // reserved
}

fn internal_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    // NAT64 (64:ff9b::/96) and IPv4-compatible addresses embed an IPv4 one.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || (segments[..6] == [0; 6] && segments[6] != 0)
    {
        let [.., a, b, c, d] = ip.octets();
        return internal_v4(Ipv4Addr::new(a, b, c, d));
    }
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00 // unique local
        || (segments[0] & 0xffc0) == 0xfe80 // link-local
        || (segments[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
}

/// Whether `ip` lies in the network. A network that is not valid (a prefix
/// longer than its address, an IPv4-mapped one shorter than /96) contains
/// nothing: an allowlist entry never opens more than it names.
fn in_network(ip: IpAddr, (net, len): (IpAddr, u8)) -> bool {
    let Ok((net, len)) = ttsq_config::canonical_network(net, len) else {
        return false;
    };
    // `canonical_network` bounds `len` by the address width, so the
    // subtractions below cannot underflow; a /0 shifts by the full width.
    match (ip.to_canonical(), net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip} should be internal");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip} should be public");
        }
    }

    #[test]
    fn allowlisted_networks_match_by_prefix() {
        let net = ("127.0.0.0".parse().unwrap(), 8);
        assert!(in_network("127.1.2.3".parse().unwrap(), net));
        assert!(!in_network("128.0.0.1".parse().unwrap(), net));
        let v6 = ("::1".parse().unwrap(), 128);
        assert!(in_network("::1".parse().unwrap(), v6));
        assert!(!in_network("::2".parse().unwrap(), v6));
        assert!(in_network(
            "10.0.0.1".parse().unwrap(),
            ("0.0.0.0".parse().unwrap(), 0)
        ));
    }

    #[tokio::test]
    async fn an_ipv4_mapped_allowlist_entry_opens_only_its_own_network() {
        let net = ttsq_config::parse_cidr("::ffff:10.1.2.0/120").unwrap();
        let guard = TargetGuard::new(vec![net]);
        assert!(guard.check("http://10.1.2.7/h").await.is_ok());
        for url in [
            "http://169.254.169.254/latest",
            "http://10.1.3.1/h",
            "http://127.0.0.1/h",
        ] {
            assert!(
                matches!(guard.check(url).await, Err(TargetRefused::Internal(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn a_network_given_unparsed_never_panics_nor_widens() {
        let metadata: IpAddr = "169.254.169.254".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.1.2.0".parse().unwrap();
        assert!(in_network("10.1.2.9".parse().unwrap(), (mapped, 120)));
        assert!(!in_network(metadata, (mapped, 120)));
        assert!(!in_network(metadata, (mapped, 64)));
        assert!(!in_network(metadata, ("10.0.0.0".parse().unwrap(), 200)));
        assert!(!in_network(
            "fd00::1".parse().unwrap(),
            ("fd00::".parse().unwrap(), 200)
        ));
    }

    #[tokio::test]
    async fn the_guard_refuses_internal_literals_unless_allowlisted() {
        let guard = TargetGuard::default();
        for url in [
            "http://10.0.0.1/h",
            "http://169.254.169.254/latest",
            "http://[::1]:8080/h",
        ] {
            assert!(
                matches!(guard.check(url).await, Err(TargetRefused::Internal(_))),
                "{url}"
            );
        }
        assert_eq!(
            guard.check("ftp://x/").await.unwrap_err(),
            TargetRefused::Malformed
        );
        let open = TargetGuard::new(vec![("::1".parse().unwrap(), 128)]);
        assert!(open.check("http://[::1]:8080/h").await.is_ok());
    }
}
