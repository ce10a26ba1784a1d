//! The network a source address counts against in every per-source limit:
//! an IPv4 address itself, an IPv6 address's /64 (one subscriber usually
//! holds a whole /64, so a limit per single IPv6 address would be no limit
//! at all). An IPv4-mapped IPv6 address counts as its IPv4 address.

use std::net::{IpAddr, Ipv6Addr};

/// The network `ip` counts against: the IPv4 address, or the IPv6 /64 (its
/// first 64 bits, the rest zero).
pub fn of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & (u128::MAX << 64);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
    }
}

/// [`of`] as shown in logs and errors: `192.0.2.7`, `2001:db8:1:2::/64`.
pub fn display(ip: IpAddr) -> String {
    match of(ip) {
        v4 @ IpAddr::V4(_) => v4.to_string(),
        v6 => format!("{v6}/64"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_is_itself_ipv6_its_slash_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(of(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(
            of(ip("2001:db8:1:2:aaaa::1")),
            of(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(of(ip("2001:db8:1:2::1")), of(ip("2001:db8:1:3::1")));
        assert_eq!(of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(display(ip("2001:db8:1:2:aaaa::1")), "2001:db8:1:2::/64");
        assert_eq!(display(ip("192.0.2.7")), "192.0.2.7");
    }
}
