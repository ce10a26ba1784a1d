//! `mqtt://host:port` and `mqtts://host:port` broker addresses.

use std::fmt;

/// Why a broker URL was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerUrlError {
    #[error("{0:?} is not a broker URL (expected mqtts://host:port, or mqtt://host:port)")]
    NotAUrl(String),
    #[error("{url:?}: scheme {scheme:?} is not supported (use mqtts, or mqtt)")]
    Scheme { url: String, scheme: String },
    #[error("{0:?}: only host and port are allowed (no path, query or user)")]
    Extra(String),
    #[error("{0:?}: unclosed [ or text after ] in an IPv6 address")]
    Ipv6(String),
    #[error("{0:?} has no host")]
    NoHost(String),
    #[error("{0:?}: the host is not a name or an IPv4 address, nor an IPv6 address in [brackets]")]
    Host(String),
    #[error("{url:?}: port {port:?} is not a number between 1 and 65535")]
    Port { url: String, port: String },
}

/// A parsed broker address. `tls` is true for `mqtts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    /// Host name or IP address, without brackets; also the TLS server name.
    pub host: String,
    /// Port (default 8883 for `mqtts`, 1883 for `mqtt`).
    pub port: u16,
}

impl BrokerUrl {
    /// Parses `mqtts://host[:port]` or `mqtt://host[:port]` (`ssl`/`tcp` are aliases).
    pub fn parse(url: &str) -> Result<Self, BrokerUrlError> {
        let short = || url.chars().take(200).collect::<String>();
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| BrokerUrlError::NotAUrl(short()))?;
        let tls = match scheme {
            "mqtts" | "ssl" => true,
            "mqtt" | "tcp" => false,
            other => {
                return Err(BrokerUrlError::Scheme {
                    url: short(),
                    scheme: other.chars().take(20).collect(),
                })
            }
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(BrokerUrlError::Extra(short()));
        }
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6
                    .split_once(']')
                    .ok_or_else(|| BrokerUrlError::Ipv6(short()))?;
                match after.strip_prefix(':') {
                    Some(p) => (host, Some(p)),
                    None if after.is_empty() => (host, None),
                    None => return Err(BrokerUrlError::Ipv6(short())),
                }
            }
            None => match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            },
        };
        if host.is_empty() {
            return Err(BrokerUrlError::NoHost(short()));
        }
        // Only an IPv6 address goes in brackets, and a bare host has no
        // `:`, `[` or `]`: otherwise `Display` writes a URL that does not
        // parse back (found by the fuzz target `config`).
        let bracketed = rest.starts_with('[');
        let bad = if bracketed {
            host.parse::<std::net::Ipv6Addr>().is_err()
        } else {
            host.contains([':', '[', ']'])
        };
        if bad {
            return Err(BrokerUrlError::Host(short()));
        }
        let port =
            match port {
                Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                    BrokerUrlError::Port {
                        url: short(),
                        port: p.chars().take(20).collect(),
                    }
                })?,
                None if tls => 8883,
                None => 1883,
            };
        Ok(Self {
            tls,
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for BrokerUrl {
    type Err = BrokerUrlError;
    fn from_str(s: &str) -> Result<Self, BrokerUrlError> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn forms() {
        let u = BrokerUrl::parse("mqtts://gw.example.com:8884").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port),
            (true, "gw.example.com", 8884)
        );
        assert_eq!(BrokerUrl::parse("mqtts://h").unwrap().port, 8883);
        assert_eq!(BrokerUrl::parse("mqtt://h/").unwrap().port, 1883);
        let v6 = BrokerUrl::parse("mqtt://[::1]:1884").unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.to_string(), "mqtt://[::1]:1884");
        assert_eq!(u.to_string(), "mqtts://gw.example.com:8884");
    }

    #[test]
    fn rejects() {
        for bad in [
            // Found by the fuzz target `config`: Display wrote these as
            // URLs that do not parse back.
            "mqtts://edge.example.com:]888le.com:8883",
            "mqtts://a:b:8883",
            "mqtts://[not-v6]:8883",
            "gw:8883",
            "http://gw:80",
            "mqtts://",
            "mqtts://:8883",
            "mqtts://gw:0",
            "mqtts://gw:99999",
            "mqtts://gw:x",
            "mqtts://user@gw",
            "mqtts://gw/path",
            "mqtts://[::1",
            "mqtts://[::1]x",
        ] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad} accepted");
        }
    }

    proptest! {
        #[test]
        fn display_parse_roundtrip(host in "[a-z][a-z0-9.-]{0,20}", port in 1u16.., tls: bool) {
            let u = BrokerUrl { tls, host, port };
            prop_assert_eq!(BrokerUrl::parse(&u.to_string()).unwrap(), u);
        }
    }
}
