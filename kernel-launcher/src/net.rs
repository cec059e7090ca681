//! The machine's own addresses: "is this host us?" (EG launches on such hosts without SSH).
use std::net::{IpAddr, Ipv4Addr};

/// Every address of this machine's network interfaces (empty if they cannot be listed).
pub fn local_addresses() -> Vec<IpAddr> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for interface in interfaces {
        let Some(address) = interface.address else {
            continue;
        };
        let ip = if let Some(v4) = address.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = address.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if !found.contains(&ip) {
            found.push(ip);
        }
    }
    found
}

/// Whether `ip` is this machine: a loopback or unspecified address, or one of `local`
/// (from [`local_addresses`]).
pub fn is_local_ip(ip: IpAddr, local: &[IpAddr]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    ip.is_loopback() || ip.is_unspecified() || local.contains(&ip)
}

/// The address EG calls the gateway's "local IP": the first IPv4 address of a non-loopback
/// interface, else `127.0.0.1`.
pub fn primary_local_ip() -> IpAddr {
    local_addresses()
        .into_iter()
        .find(|ip| ip.is_ipv4() && !ip.is_loopback() && !ip.is_unspecified())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_checks() {
        let local = local_addresses();
        assert!(local.iter().any(IpAddr::is_loopback), "{local:?}");
        let check = |ip: &str, expected: bool| {
            let ip: IpAddr = ip.parse().unwrap_or(IpAddr::V4(Ipv4Addr::BROADCAST));
            assert_eq!(is_local_ip(ip, &local), expected, "{ip}");
        };
        check("127.0.0.1", true);
        check("127.1.2.3", true);
        check("::1", true);
        check("::ffff:127.0.0.1", true);
        check("0.0.0.0", true);
        check("192.0.2.55", false);
        let primary = primary_local_ip();
        assert!(is_local_ip(primary, &local));
    }
}
