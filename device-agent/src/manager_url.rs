//! The fleet manager's HTTPS base URL (`https://host[:port][/base/path]`), as
//! the configuration names it for onboarding and the HTTP transport. Plain
//! parsing, built in every feature set so a configuration is checked the
//! same way whatever the build leaves out.
//!
//! A Margo WFM may serve its API under a prefix (`https://wfm:8443/v1alpha2/margo`
//! → `/v1alpha2/margo/api/v1/...`): the base path is kept and put in front of
//! every API path ([`ManagerUrl::path`]). A trailing slash is ignored.

/// An `https://host[:port][/base]` URL (no query, fragment or credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerUrl {
    pub host: String,
    pub port: u16,
    /// `""` or `/seg/seg` (no trailing slash), put in front of every API path.
    pub base_path: String,
}

/// Longest base path accepted.
const MAX_BASE_PATH: usize = 256;

/// Why a manager URL was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("must start with https:// (onboarding is only done over TLS)")]
    Scheme,
    #[error("has no host")]
    NoHost,
    #[error("port {0:?} is not a number from 1 to 65535")]
    Port(String),
    #[error("must be https://host[:port][/base/path] without user, query or fragment")]
    Extra,
    #[error(
        "base path {0:?} is not usable: segments of RFC 3986 path characters (no empty, . or .. \
         segments), at most 256 characters"
    )]
    BasePath(String),
}

/// RFC 3986 `pchar` without `%` escapes checked: unreserved, sub-delims, `:` and `@`
/// (`@` is refused anyway: it would read as credentials).
fn is_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:%".contains(&b)
}

impl ManagerUrl {
    /// Parses `https://host[:port][/base/path][/]`; the port defaults to 443.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let rest = url
            .trim()
            .strip_prefix("https://")
            .ok_or(UrlError::Scheme)?;
        if rest.contains(['@', '?', '#']) {
            return Err(UrlError::Extra);
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let base_path = Self::parse_base_path(path)?;
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or(UrlError::NoHost)?;
            match after.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None if after.is_empty() => (host, None),
                None => return Err(UrlError::Extra),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
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
            base_path,
        })
    }

    fn parse_base_path(path: &str) -> Result<String, UrlError> {
        let trimmed = path.strip_suffix('/').unwrap_or(path);
        if trimmed.is_empty() {
            return Ok(String::new());
        }
        let bad = || UrlError::BasePath(path.chars().take(80).collect());
        if trimmed.len() > MAX_BASE_PATH {
            return Err(bad());
        }
        for segment in trimmed[1..].split('/') {
            if segment.is_empty()
                || segment == "."
                || segment == ".."
                || !segment.bytes().all(is_path_char)
            {
                return Err(bad());
            }
        }
        Ok(trimmed.to_string())
    }

    /// The `Host` header value.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The request path of the API path `api_path` (`/api/v1/...`) under the base path.
    pub fn path(&self, api_path: &str) -> String {
        format!("{}{api_path}", self.base_path)
    }

    /// The absolute URI of a request path (for `@target-uri`).
    pub fn target_uri(&self, request_path: &str) -> String {
        format!("https://{}{request_path}", self.authority())
    }
}

impl std::fmt::Display for ManagerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "https://{}{}", self.authority(), self.base_path)
    }
}

/// Percent-encodes one path segment: everything but RFC 3986 unreserved characters.
pub fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manager_urls() {
        let u = ManagerUrl::parse("https://wfm.example.com:8443/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("wfm.example.com", 8443));
        assert_eq!(u.authority(), "wfm.example.com:8443");
        assert_eq!(u.base_path, "");
        assert_eq!(u.path("/api/v1/onboarding"), "/api/v1/onboarding");
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
        assert_eq!(ManagerUrl::parse("https://u@h"), Err(UrlError::Extra));
        assert_eq!(ManagerUrl::parse("https://h/a?x=1"), Err(UrlError::Extra));
        assert_eq!(ManagerUrl::parse("https://h/a#f"), Err(UrlError::Extra));
    }

    #[test]
    fn base_paths_with_or_without_trailing_slash() {
        for url in [
            "https://wfm:8443/v1alpha2/margo",
            "https://wfm:8443/v1alpha2/margo/",
        ] {
            let u = ManagerUrl::parse(url).unwrap();
            assert_eq!(u.base_path, "/v1alpha2/margo");
            assert_eq!(u.port, 8443);
            assert_eq!(
                u.path("/api/v1/deployments"),
                "/v1alpha2/margo/api/v1/deployments"
            );
            assert_eq!(u.to_string(), "https://wfm:8443/v1alpha2/margo");
            assert_eq!(
                u.target_uri(&u.path("/api/v1/x")),
                "https://wfm:8443/v1alpha2/margo/api/v1/x"
            );
        }
        let v6 = ManagerUrl::parse("https://[::1]:9/p").unwrap();
        assert_eq!((v6.host.as_str(), v6.base_path.as_str()), ("::1", "/p"));
        for bad in [
            "https://h//x",
            "https://h/a//b",
            "https://h/a/../b",
            "https://h/./b",
            "https://h/a b",
            "https://h/a\"b",
        ] {
            assert!(
                matches!(ManagerUrl::parse(bad), Err(UrlError::BasePath(_))),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(
            encode_segment("a3e2f5dc-912e-494f-8395-52cf3769bc06"),
            "a3e2f5dc-912e-494f-8395-52cf3769bc06"
        );
        assert_eq!(encode_segment("ab=="), "ab%3D%3D");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }
}
