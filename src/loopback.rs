//! Telling loopback hosts apart, for the rules that keep secrets off plain-text networks.

use std::net::IpAddr;

/// Whether `host` (a URL's host, IPv6 possibly in brackets) names this machine: `localhost`,
/// `*.localhost`, `127.0.0.0/8` or `::1`.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    if host.eq_ignore_ascii_case("localhost")
        || host
            .rsplit_once('.')
            .is_some_and(|(_, tld)| tld.eq_ignore_ascii_case("localhost"))
    {
        return true;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn loopback_names_and_addresses_are_recognised() {
        for host in [
            "localhost",
            "LOCALHOST",
            "api.localhost",
            "127.0.0.1",
            "127.1.2.3",
            "[::1]",
            "::1",
            "localhost.",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "example.com",
            "localhost.example.com",
            "10.0.0.1",
            "128.0.0.1",
            "[::2]",
            "",
            "evil-localhost",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
