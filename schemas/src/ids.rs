//! Identifiers that end up in MQTT topics, certificate names and file names.
//!
//! Each type can only be built through validation, so holding one proves the
//! string is safe to put into a topic (no `/`, `+`, `#`, no empty levels).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest client id we accept (a base32 UUID is 26 characters).
pub const MAX_CLIENT_ID_LEN: usize = 64;
/// Longest deployment id we accept (a UUID is 36 characters).
pub const MAX_DEPLOYMENT_ID_LEN: usize = 128;
/// Longest device id (gateway paths such as `gw/child/grandchild`).
pub const MAX_DEVICE_ID_LEN: usize = 255;

/// Why an identifier was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} is {len} characters long, the limit is {max}")]
    TooLong {
        kind: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{kind} {value:?} contains {ch:?} at byte {at}; allowed: {allowed}")]
    BadChar {
        kind: &'static str,
        value: String,
        ch: char,
        at: usize,
        allowed: &'static str,
    },
}

fn check(
    kind: &'static str,
    value: &str,
    max: usize,
    allowed: &'static str,
    ok: impl Fn(char) -> bool,
) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > max {
        return Err(IdError::TooLong {
            kind,
            len: value.len(),
            max,
        });
    }
    if let Some((at, ch)) = value.char_indices().find(|(_, c)| !ok(*c)) {
        return Err(IdError::BadChar {
            kind,
            value: value.chars().take(80).collect(),
            ch,
            at,
            allowed,
        });
    }
    Ok(())
}

/// RFC 3986 "unreserved" characters.
pub fn is_unreserved(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr, $allowed:literal, $ok:expr, $extra:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates `value` and wraps it.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check($kind, &value, $max, $allowed, $ok)?;
                #[allow(clippy::redundant_closure_call)]
                ($extra)(&value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// A client id assigned by the manager: lowercase ASCII letters and digits.
    ClientId,
    "client id",
    MAX_CLIENT_ID_LEN,
    "lowercase letters a-z and digits 0-9",
    |c: char| c.is_ascii_lowercase() || c.is_ascii_digit(),
    |_: &str| Ok::<(), IdError>(())
);

string_id!(
    /// A deployment id (`metadata.annotations.id`, normally a UUID): RFC 3986 unreserved characters.
    DeploymentId,
    "deployment id",
    MAX_DEPLOYMENT_ID_LEN,
    "RFC 3986 unreserved characters (A-Z a-z 0-9 - . _ ~)",
    is_unreserved,
    |v: &str| {
        if v == "." || v == ".." {
            Err(IdError::BadChar {
                kind: "deployment id",
                value: v.to_string(),
                ch: '.',
                at: 0,
                allowed: "an id other than . or ..",
            })
        } else {
            Ok(())
        }
    }
);

string_id!(
    /// A device id: unreserved characters, with `/` separating gateway children (`gw/child`).
    DeviceId,
    "device id",
    MAX_DEVICE_ID_LEN,
    "RFC 3986 unreserved characters and / between path segments",
    |c: char| is_unreserved(c) || c == '/',
    |v: &str| {
        if v.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
            Err(IdError::BadChar {
                kind: "device id",
                value: v.to_string(),
                ch: '/',
                at: v.find("//").or_else(|| v.find('/')).unwrap_or(0),
                allowed: "non-empty path segments other than . and ..",
            })
        } else {
            Ok(())
        }
    }
);

string_id!(
    /// The random id of one agent store (created with the store, kept across
    /// restarts): which copy of an identity an uplink message or an ack
    /// belongs to. Lowercase ASCII letters and digits.
    InstanceId,
    "instance id",
    MAX_CLIENT_ID_LEN,
    "lowercase letters a-z and digits 0-9",
    |c: char| c.is_ascii_lowercase() || c.is_ascii_digit(),
    |_: &str| Ok::<(), IdError>(())
);

impl InstanceId {
    /// A fresh random instance id (26 lowercase base32 characters of a v4 UUID).
    pub fn generate() -> Self {
        Self(ClientId::generate().0)
    }
}

impl ClientId {
    /// A fresh random client id: the 26-character lowercase base32 form of a v4 UUID.
    pub fn generate() -> Self {
        let uuid = uuid::Uuid::new_v4();
        let encoded = data_encoding::BASE32_NOPAD
            .encode(uuid.as_bytes())
            .to_ascii_lowercase();
        Self(encoded)
    }
}

impl DeviceId {
    /// The parent of a gateway child (`gw/a` → `gw`), or `None` for a top-level device.
    pub fn parent(&self) -> Option<DeviceId> {
        self.0
            .rsplit_once('/')
            .map(|(parent, _)| DeviceId(parent.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_client_ids_are_valid_and_distinct() {
        let a = ClientId::generate();
        let b = ClientId::generate();
        assert_eq!(a.as_str().len(), 26);
        assert!(ClientId::new(a.as_str()).is_ok());
        assert_ne!(a, b);
    }

    #[test]
    fn generated_instance_ids_are_valid_and_distinct() {
        let a = InstanceId::generate();
        assert!(InstanceId::new(a.as_str()).is_ok());
        assert_ne!(a, InstanceId::generate());
        assert!(InstanceId::new("A/b").is_err());
    }

    #[test]
    fn client_id_rejects_topic_characters() {
        for bad in ["", "A", "a/b", "a+b", "a#", "a b", "é"] {
            assert!(ClientId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(ClientId::new("x".repeat(65)).is_err());
    }

    #[test]
    fn deployment_id_accepts_uuids_and_rejects_traversal() {
        assert!(DeploymentId::new("a3e2f5dc-912e-494f-8395-52cf3769bc06").is_ok());
        for bad in ["", ".", "..", "a/b", "a+b", "a#b", "%2e"] {
            assert!(DeploymentId::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn device_id_paths() {
        let child = DeviceId::new("gw/a").unwrap();
        assert_eq!(child.parent().unwrap().as_str(), "gw");
        assert!(DeviceId::new("gw").unwrap().parent().is_none());
        for bad in ["", "/gw", "gw/", "gw//a", "gw/../a", "gw/+"] {
            assert!(DeviceId::new(bad).is_err(), "{bad:?} accepted");
        }
    }
}
