//! The fleet manager's HTTPS base URL (`https://host[:port]`), as the
//! configuration names it for onboarding and the HTTP transport. Plain
//! parsing, built in every feature set so a configuration is checked the
//! same way whatever the build leaves out.

/// An `https://host[:port]` base URL (no path, no credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerUrl {
    pub host: String,
    pub port: u16,
}

/// Why a manager URL was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("must start with https:// (onboarding is only done over TLS)")]
    Scheme,
    #[error("has no host")]
    NoHost,
    #[error("port {0:?} is not a number from 1 to 65535")]
    Port(String),
    #[error("must be https://host[:port] without user, path or query")]
    Extra,
}

impl ManagerUrl {
    /// Parses `https://host[:port][/]`; the port defaults to 443.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let rest = url
            .trim()
            .strip_prefix("https://")
            .ok_or(UrlError::Scheme)?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '@', '?', '#']) {
            return Err(UrlError::Extra);
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or(UrlError::NoHost)?;
            match after.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None if after.is_empty() => (host, None),
                None => return Err(UrlError::Extra),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(UrlError::NoHost);
        }
        let port = match port {
            None => 443,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(UrlError::Port(p.chars().take(20).collect())),
            },
        };
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }

    /// The `Host` header value.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for ManagerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "https://{}", self.authority())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manager_urls() {
        let u = ManagerUrl::parse("https://wfm.example.com:8443/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("wfm.example.com", 8443));
        assert_eq!(u.authority(), "wfm.example.com:8443");
        assert_eq!(ManagerUrl::parse("https://h").unwrap().port, 443);
        let v6 = ManagerUrl::parse("https://[::1]:8443").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 8443));
        assert_eq!(v6.authority(), "[::1]:8443");
        assert_eq!(ManagerUrl::parse("http://h"), Err(UrlError::Scheme));
        assert_eq!(ManagerUrl::parse("https://"), Err(UrlError::NoHost));
        assert!(matches!(
            ManagerUrl::parse("https://h:0"),
            Err(UrlError::Port(_))
        ));
        assert_eq!(ManagerUrl::parse("https://h/api"), Err(UrlError::Extra));
        assert_eq!(ManagerUrl::parse("https://u@h"), Err(UrlError::Extra));
    }
}
