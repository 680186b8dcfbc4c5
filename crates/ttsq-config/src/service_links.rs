//! Kubernetes' service-link variables. For every Service in a pod's
//! namespace, Kubernetes injects `{NAME}_SERVICE_HOST`, `{NAME}_SERVICE_PORT`
//! (and `_SERVICE_PORT_{PORT NAME}`) and the Docker-link style `{NAME}_PORT`
//! and `{NAME}_PORT_{port}_{PROTO}[_PROTO|_PORT|_ADDR]`, the name upper-cased
//! with `-` as `_`. A Service named `ttsq-api` makes `TTSQ_API_SERVICE_HOST`:
//! inside the `TTSQ_` prefix, yet no setting. They are told apart from
//! settings by both name and value, so a mistyped setting is still refused.

use std::net::IpAddr;

/// Whether `suffix` (a variable's name after `TTSQ_`) with `value` is a
/// service-link variable rather than a mistyped setting.
pub(crate) fn is_service_link(suffix: &str, value: &str) -> bool {
    // `TTSQ_SERVICE_HOST` is the link of a Service named `ttsq`: the middle
    // part may be empty, so look at the whole name with its separator.
    let name = format!("_{suffix}");
    if name.ends_with("_SERVICE_HOST") {
        return is_ip(value);
    }
    if let Some((_, port_name)) = name.rsplit_once("_SERVICE_PORT")
        && (port_name.is_empty() || is_port_name(port_name))
    {
        return is_port(value);
    }
    if let Some(link) = port_link(&name, value) {
        return link;
    }
    name.ends_with("_PORT") && is_link_url(value)
}

/// `{NAME}_PORT_{port}_{PROTO}[_PROTO|_PORT|_ADDR]`: whether `value` fits,
/// or `None` when the name has another shape.
fn port_link(name: &str, value: &str) -> Option<bool> {
    let (_, link) = name.rsplit_once("_PORT_")?;
    let mut parts = link.split('_');
    let (port, proto) = (parts.next()?, parts.next()?);
    if !is_port(port) || !is_protocol(proto) {
        return None;
    }
    Some(match (parts.next(), parts.next()) {
        (None, _) => is_link_url(value),
        (Some("PROTO"), None) => value.eq_ignore_ascii_case(proto),
        (Some("PORT"), None) => value == port,
        (Some("ADDR"), None) => is_ip(value),
        _ => false,
    })
}

/// `_HTTP`, `_OPS_PORT`: a named port, upper-cased.
fn is_port_name(suffix: &str) -> bool {
    suffix.strip_prefix('_').is_some_and(|name| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    })
}

fn is_protocol(proto: &str) -> bool {
    matches!(proto, "TCP" | "UDP" | "SCTP")
}

fn is_port(value: &str) -> bool {
    value.parse::<u16>().is_ok_and(|port| port > 0)
}

fn is_ip(value: &str) -> bool {
    value.parse::<IpAddr>().is_ok()
}

/// `tcp://10.0.0.11:8080` (IPv6 addresses in brackets).
fn is_link_url(value: &str) -> bool {
    let Some((proto, address)) = value.split_once("://") else {
        return false;
    };
    is_protocol(&proto.to_ascii_uppercase()) && address.parse::<std::net::SocketAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::is_service_link;

    /// What Kubernetes injects for a Service `ttsq-api` with a port named
    /// `http` (8080), with `TTSQ_` taken off.
    const TTSQ_API: &[(&str, &str)] = &[
        ("API_SERVICE_HOST", "10.96.0.12"),
        ("API_SERVICE_PORT", "8080"),
        ("API_SERVICE_PORT_HTTP", "8080"),
        ("API_PORT", "tcp://10.96.0.12:8080"),
        ("API_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
        ("API_PORT_8080_TCP_PROTO", "tcp"),
        ("API_PORT_8080_TCP_PORT", "8080"),
        ("API_PORT_8080_TCP_ADDR", "10.96.0.12"),
    ];

    #[test]
    fn every_variable_of_a_service_is_a_link() {
        for (suffix, value) in TTSQ_API {
            assert!(is_service_link(suffix, value), "{suffix}={value}");
        }
        // A Service named `ttsq`, and an IPv6 cluster.
        assert!(is_service_link("SERVICE_HOST", "fd00::12"));
        assert!(is_service_link("PORT", "tcp://[fd00::12]:8080"));
        assert!(is_service_link(
            "WORKER_METRICS_PORT_9464_TCP_ADDR",
            "fd00::12"
        ));
    }

    #[test]
    fn settings_and_typos_are_not_links() {
        for (suffix, value) in [
            // Right name, wrong value: someone meant a setting.
            ("API_SERVICE_HOST", "api.example.com"),
            ("API_SERVICE_PORT", "http"),
            ("API_PORT", "8080"),
            ("API_PORT_8080_TCP_PORT", "9090"),
            ("API_PORT_8080_TCP_PROTO", "udp"),
            // Names that merely contain the words.
            ("SERVER_LISTEN", "0.0.0.0:8080"),
            ("SERVER_PORT_NUMBER", "8080"),
            ("API_PORT_HTTP_TCP", "tcp://10.96.0.12:8080"),
            ("API_PORT_8080_TCP_HOST", "10.96.0.12"),
            ("S3_SERVICE_HOSTNAME", "10.96.0.12"),
        ] {
            assert!(!is_service_link(suffix, value), "{suffix}={value}");
        }
    }
}
